//! The serving helper over real loopback sockets: idle keep-alive
//! connections close at once, busy ones finish with `Connection: close`
//! (HTTP/1) or GOAWAY (HTTP/2), the rest is force-closed, new connections are
//! refused.
#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_shutdown::Drain;
use palisade_shutdown::http::HttpDrainLayer;
use palisade_shutdown::server::{Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

struct Harness {
    addr: SocketAddr,
    handle: ServerHandle,
    drain: Drain,
    /// `/gate` requests wait for a permit.
    gate: Arc<Semaphore>,
    /// One message per `/gate` request that reached the handler.
    entered: mpsc::UnboundedReceiver<()>,
}

async fn start() -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drain = Drain::new();
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let svc = tower::ServiceBuilder::new()
        .layer(HttpDrainLayer::new(drain.clone()))
        .service_fn({
            let gate = gate.clone();
            move |req: Request<Incoming>| {
                let gate = gate.clone();
                let entered = entered_tx.clone();
                async move {
                    if req.uri().path() == "/gate" {
                        entered.send(()).unwrap();
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"hello world",
                    ))))
                }
            }
        });
    let server = Server::new(listener, svc);
    let handle = server.handle();
    tokio::spawn(server.run());
    Harness {
        addr,
        handle,
        drain,
        gate,
        entered,
    }
}

/// A raw HTTP/1.1 response: status, lowercase headers, body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn send(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads exactly one response (bodies here always carry content-length).
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "connection closed before a full response head: {buf:?}"
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no extra bytes after the response");
    Raw {
        status,
        headers,
        body,
    }
}

/// Whether the peer has closed the connection (EOF or reset, no more bytes).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(stream.read(&mut b).await, Ok(0) | Err(_))
}

async fn wait_open(h: &ServerHandle, n: usize) {
    while h.open_connections() != n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_once() {
    let h = start().await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        send(&mut c, "/").await;
        let r = read_response(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.header("connection"), None, "keep-alive before drain");
        clients.push(c);
    }
    assert_eq!(h.handle.accepted(), 10);
    wait_open(&h.handle, 10).await;

    let report = h.handle.drain(std::future::pending::<()>()).await;
    assert_eq!(
        (
            report.open_at_drain,
            report.closed_gracefully,
            report.forced
        ),
        (10, 10, 0)
    );
    for c in &mut clients {
        assert!(closed(c).await);
    }
    assert_eq!(h.handle.open_connections(), 0);
    let refused = TcpStream::connect(h.addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_busy_http1_connection_finishes_its_response_with_connection_close() {
    let mut h = start().await;
    let mut busy = TcpStream::connect(h.addr).await.unwrap();
    send(&mut busy, "/gate").await;
    h.entered.recv().await.unwrap();
    assert_eq!(h.drain.in_flight(), 1);

    let handle = h.handle.clone();
    let drain = h.drain.clone();
    let draining = tokio::spawn(async move {
        drain.start();
        handle.drain(std::future::pending::<()>()).await
    });
    while !h.drain.is_draining() {
        tokio::task::yield_now().await;
    }
    // The listener is closed before connections are drained.
    h.handle.stop_accepting().await;
    let refused = TcpStream::connect(h.addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    h.gate.add_permits(1);
    let r = read_response(&mut busy).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world", "complete body");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&mut busy).await);

    let report = draining.await.unwrap();
    assert_eq!(
        (
            report.open_at_drain,
            report.closed_gracefully,
            report.forced
        ),
        (1, 1, 0)
    );
    assert_eq!(h.drain.in_flight(), 0);
}

#[tokio::test]
async fn a_request_arriving_after_drain_started_gets_503_and_connection_close() {
    // Pipelined on a busy keep-alive connection: the second request reaches
    // the drain layer after draining started, so it is answered 503 (never
    // reset), and the 503's `Connection: close` ends the connection.
    let mut h = start().await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    send(&mut c, "/gate").await;
    h.entered.recv().await.unwrap();
    h.drain.start();
    send(&mut c, "/after").await;
    h.gate.add_permits(1);
    let first = read_response(&mut c).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"hello world");
    let second = read_response(&mut c).await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(second.header("connection"), Some("close"));
    assert!(second.body.is_empty());
    assert!(closed(&mut c).await);
    assert_eq!(h.drain.in_flight(), 0);
}

#[tokio::test]
async fn http2_connections_get_goaway_and_finish_open_streams() {
    let mut h = start().await;
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);

    let ok = sender
        .send_request(
            Request::get("http://test/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.version(), http::Version::HTTP_2);

    let busy = tokio::spawn(
        sender.send_request(
            Request::get("http://test/gate")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ),
    );
    h.entered.recv().await.unwrap();
    h.drain.start();
    let handle = h.handle.clone();
    let draining = tokio::spawn(async move { handle.drain(std::future::pending::<()>()).await });

    h.gate.add_permits(1);
    let response = busy.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello world", "the open stream completed");

    let report = draining.await.unwrap();
    assert_eq!(
        (
            report.open_at_drain,
            report.closed_gracefully,
            report.forced
        ),
        (1, 1, 0)
    );
    // The client connection ended cleanly after GOAWAY.
    conn_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn what_remains_at_the_deadline_is_force_closed() {
    let mut h = start().await;
    let mut stuck = TcpStream::connect(h.addr).await.unwrap();
    send(&mut stuck, "/gate").await;
    h.entered.recv().await.unwrap();
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    send(&mut idle, "/").await;
    assert_eq!(read_response(&mut idle).await.status, 200);
    wait_open(&h.handle, 2).await;

    h.drain.start();
    let (force, force_at) = oneshot::channel::<()>();
    let handle = h.handle.clone();
    let draining = tokio::spawn(async move { handle.drain(force_at).await });
    assert!(closed(&mut idle).await, "idle connection closed at once");
    assert_eq!(
        h.drain.in_flight(),
        1,
        "the stuck request is still in flight"
    );

    force.send(()).unwrap();
    let report = draining.await.unwrap();
    assert_eq!(
        (
            report.open_at_drain,
            report.closed_gracefully,
            report.forced
        ),
        (2, 1, 1)
    );
    assert!(closed(&mut stuck).await, "stuck connection cut");
    assert_eq!(
        h.drain.in_flight(),
        0,
        "the cut request's slot was released"
    );
    assert_eq!(h.handle.open_connections(), 0);
}

#[tokio::test]
async fn the_drain_phase_reports_what_it_finished_and_what_it_cut() {
    let mut h = start().await;
    let mut stuck = TcpStream::connect(h.addr).await.unwrap();
    send(&mut stuck, "/gate").await;
    h.entered.recv().await.unwrap();
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    send(&mut idle, "/").await;
    assert_eq!(read_response(&mut idle).await.status, 200);
    wait_open(&h.handle, 2).await;

    let shutdown = palisade_shutdown::Shutdown::new();
    shutdown
        .add_phase(h.handle.drain_phase(
            "drain",
            std::time::Duration::from_millis(200),
            h.drain.clone(),
        ))
        .unwrap();
    shutdown.start(palisade_shutdown::Trigger::Requested);
    let outcome = shutdown.run().await;

    assert!(closed(&mut idle).await);
    assert!(closed(&mut stuck).await);
    assert!(h.drain.is_draining());
    assert_eq!(h.drain.in_flight(), 0);
    let phase = outcome.phase("drain").expect("the drain phase ran");
    assert_eq!(phase.finished, ["1 connection(s) closed gracefully"]);
    assert_eq!(
        phase.cut,
        ["1 request(s) in flight", "1 connection(s) force-closed"]
    );
    assert!(!outcome.is_clean());
    assert_eq!(outcome.code(), 1);
}
