//! The gateway's coordinated shutdown, against the real process: SIGTERM
//! under load loses no accepted request; a request longer than the drain
//! deadline is cut and named; `/readyz` fails during the readiness delay
//! while `/healthz` and traffic keep being served; a second signal forces.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Gateway, get, wait_for_metric};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How one request ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 200 with the complete expected body.
    Ok,
    /// 503 with `Retry-After` and `Connection: close`.
    Unavailable,
    /// The connection was refused (or reset before any response byte on a
    /// brand-new connection: it sat in the closed listener's backlog).
    Refused,
    /// Some response bytes, then the connection ended: a reset or
    /// truncation mid-response. Must never happen.
    Truncated,
    /// Anything else (wrong status, wrong body). Must never happen.
    Other,
}

/// What reading a response produced.
enum Read {
    /// Status, headers (lowercase names), body.
    Complete(u16, Vec<(String, String)>, Vec<u8>),
    /// The connection ended before any response byte.
    ClosedBeforeResponse,
    /// The connection ended mid-response.
    Truncated,
}

/// Reads one HTTP/1.1 response (content-length or chunked).
async fn read_response(stream: &mut TcpStream) -> Read {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return Read::ClosedBeforeResponse,
            Ok(0) | Err(_) => return Read::Truncated,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut rest = buf[head_end..].to_vec();
    let body = if header("transfer-encoding") == Some("chunked") {
        // Decode in place once the terminating chunk has arrived.
        loop {
            if let Some(body) = decode_chunked(&rest) {
                break body;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Read::Truncated,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Read::Truncated,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest
    };
    Read::Complete(status, headers, body)
}

/// The decoded body once `raw` holds a whole chunked body, else `None`.
fn decode_chunked(raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + raw[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from the gateway: the final CRLF ends the body.
            return (raw.len() >= at + 2).then_some(body);
        }
        if raw.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// One keep-alive client connection, reconnecting as needed.
struct Client {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    /// Requests retried because a reused keep-alive connection was closed
    /// by the server before any response byte (the keep-alive race every
    /// HTTP client retries; the request was never accepted).
    retries: usize,
}

impl Client {
    async fn request(&mut self, path: &str, expected: &str) -> Class {
        loop {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                match TcpStream::connect(self.addr).await {
                    Ok(s) => self.conn = Some(s),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Class::Refused;
                    }
                    Err(e) => panic!("connect: {e}"),
                }
            }
            let stream = self.conn.as_mut().unwrap();
            let raw = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\n\r\n");
            let read = match stream.write_all(raw.as_bytes()).await {
                Ok(()) => read_response(stream).await,
                Err(_) => Read::ClosedBeforeResponse,
            };
            match read {
                Read::ClosedBeforeResponse => {
                    self.conn = None;
                    if reused {
                        self.retries += 1;
                        continue;
                    }
                    return Class::Refused;
                }
                Read::Truncated => {
                    self.conn = None;
                    return Class::Truncated;
                }
                Read::Complete(status, headers, body) => {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.as_str())
                    };
                    if header("connection") == Some("close") {
                        self.conn = None;
                    }
                    return match status {
                        200 if body == expected.as_bytes() => Class::Ok,
                        503 if header("retry-after") == Some("1")
                            && header("connection") == Some("close") =>
                        {
                            Class::Unavailable
                        }
                        _ => {
                            eprintln!("unexpected {status} {headers:?} {body:?}");
                            Class::Other
                        }
                    };
                }
            }
        }
    }
}

const CLIENTS: usize = 24;
const REQUESTS_PER_CLIENT: usize = 40;
/// SIGTERM once this many requests have completed.
const SIGTERM_AFTER: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_request_and_exits_0() {
    let toml = "[shutdown]\nreadiness_delay = \"200ms\"\ndrain_deadline = \"20s\"\n";
    let mut gw = Gateway::start_with_config(&["--no-access-log"], toml);
    let addr = gw.addr;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client {
                addr,
                conn: None,
                retries: 0,
            };
            let mut classes = Vec::with_capacity(REQUESTS_PER_CLIENT);
            for i in 0..REQUESTS_PER_CLIENT {
                // Every fifth request is slow, staggered across clients.
                let class = if (i + c) % 5 == 0 {
                    client.request("/delay/150", "delayed 150ms\n").await
                } else {
                    client.request("/", "hello\n").await
                };
                classes.push(class);
                done.fetch_add(1, Ordering::SeqCst);
                // A third of the clients pause between requests, so the
                // drain also meets idle keep-alive connections.
                if c % 3 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
            }
            (classes, client.retries)
        }));
    }
    while done.load(Ordering::SeqCst) < SIGTERM_AFTER {
        tokio::task::yield_now().await;
    }
    let done_at_sigterm = done.load(Ordering::SeqCst);
    gw.sigterm();

    let (mut ok, mut unavailable, mut refused, mut truncated, mut other, mut retries) =
        (0, 0, 0, 0, 0, 0);
    for t in tasks {
        let (classes, r) = t.await.unwrap();
        retries += r;
        for class in classes {
            match class {
                Class::Ok => ok += 1,
                Class::Unavailable => unavailable += 1,
                Class::Refused => refused += 1,
                Class::Truncated => truncated += 1,
                Class::Other => other += 1,
            }
        }
    }
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw.output())
    })
    .await
    .unwrap();
    println!(
        "shutdown under load: {} requests from {CLIENTS} keep-alive clients, SIGTERM after {done_at_sigterm}: \
         {ok} complete 200, {unavailable} 503, {refused} refused, {truncated} truncated/reset mid-response, \
         {other} other; {retries} keep-alive races retried",
        CLIENTS * REQUESTS_PER_CLIENT
    );

    assert_eq!(truncated, 0, "no response was cut");
    assert_eq!(other, 0);
    assert_eq!(ok + unavailable + refused, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(ok >= SIGTERM_AFTER, "requests before SIGTERM were served");
    assert!(unavailable + refused > 0, "load continued past the drain");
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("signal=\"SIGTERM\""), "{output}");
    assert!(output.contains("drained, exiting"), "{output}");
    assert!(output.contains(", 0 force-closed"), "{output}");
    assert!(output.contains("shutdown (SIGTERM) clean"), "{output}");
}

#[tokio::test]
async fn a_request_longer_than_the_deadline_is_cut_and_named() {
    let toml = "[shutdown]\nreadiness_delay = \"0\"\ndrain_deadline = \"500ms\"\n";
    let mut gw = Gateway::start_with_config(&["--upstream-timeout", "60s"], toml);
    let mut client = Client {
        addr: gw.addr,
        conn: None,
        retries: 0,
    };
    let slow = tokio::spawn(async move { client.request("/delay/30000", "never").await });
    wait_for_metric(&gw, "gateway_requests_in_flight", r#"route="proxy""#, 1.0).await;
    gw.sigterm();
    // Force-closed before its response started: the client sees the
    // connection end without a response (and does not retry: it was new).
    assert_eq!(slow.await.unwrap(), Class::Refused);
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw.output())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(1), "{output}");
    let line = output
        .lines()
        .find(|l| l.contains("shutdown cut work, exiting non-zero"))
        .unwrap_or_else(|| panic!("no cut line in:\n{output}"));
    assert!(line.contains("drain: 1 request(s) in flight"), "{line}");
    assert!(
        line.contains("drain: 1 connection(s) force-closed"),
        "{line}"
    );
    assert!(
        output.contains("phase drain: deadline_exceeded"),
        "{output}"
    );
}

#[tokio::test]
async fn readyz_fails_during_the_delay_while_healthz_and_traffic_are_served() {
    let toml = "[shutdown]\nreadiness_delay = \"60s\"\n";
    let mut gw = Gateway::start_with_config(&[], toml);
    assert_eq!(get(&gw.url("/readyz")).await.status, StatusCode::OK);
    gw.sigterm();
    gw.wait_for_line("readiness off");
    gw.wait_for_line("phase=readiness-delay");

    let ready = get(&gw.url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let health = get(&gw.url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    let proxied = get(&gw.url("/")).await;
    assert_eq!(proxied.status, StatusCode::OK);
    assert_eq!(proxied.text(), "hello\n");

    // A second signal forces: the delay is cut, later phases skipped.
    gw.sigterm();
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw.output())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(3), "{output}");
    assert!(
        output.contains("second signal: forcing shutdown"),
        "{output}"
    );
    assert!(output.contains("phase readiness-delay: forced"), "{output}");
    assert!(output.contains("phase drain: skipped"), "{output}");
}

#[tokio::test]
async fn an_http2_stream_in_flight_at_sigterm_completes_after_goaway() {
    let toml = "[shutdown]\nreadiness_delay = \"0\"\ndrain_deadline = \"20s\"\n";
    let mut gw = Gateway::start_with_config(&[], toml);
    let client = common::h2c_client::<http_body_util::Full<bytes::Bytes>>();
    let url = gw.url("/delay/300");
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let req = http::Request::get(url)
                .body(http_body_util::Full::default())
                .unwrap();
            let res = client.request(req).await.expect("stream answered");
            assert_eq!(res.version(), http::Version::HTTP_2);
            common::read(res).await
        }
    });
    wait_for_metric(&gw, "gateway_requests_in_flight", r#"route="proxy""#, 1.0).await;
    gw.sigterm();
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "delayed 300ms\n");
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit();
        (status, gw.output())
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("drained, exiting"), "{output}");
}
