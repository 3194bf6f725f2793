//! How `Server` tells HTTP/1 from HTTP/2 (`server::Http`): by peeking at the
//! first bytes, also when they arrive split, and without holding a
//! connection that never sends any past the drain. Real loopback sockets;
//! every wait is bounded.
#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_shutdown::server::{Http, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(10);

/// The HTTP/2 prior-knowledge preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start(http: Http) -> (SocketAddr, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|req: Request<Incoming>| async move {
        let body = format!("{} {:?}", req.method(), req.version());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    });
    let server = Server::new(listener, svc).with_http(http);
    let handle = server.handle();
    tokio::spawn(server.run());
    (addr, handle)
}

/// Connects with Nagle off, so each write leaves as its own segment.
async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the peer closes (bounded); what was read.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("closed in time");
    out
}

/// The type of the first frame the server sends (bounded).
async fn first_frame_type(s: &mut TcpStream) -> u8 {
    let mut head = [0u8; 9];
    tokio::time::timeout(BOUND, s.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .expect("a frame header");
    head[3]
}

#[tokio::test]
async fn an_http1_request_split_after_its_first_byte_is_served_as_http1() {
    let (addr, _h) = start(Http::new()).await;
    let mut s = connect(addr).await;
    // `P` could begin the HTTP/2 preface: the server waits for more.
    s.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"OST / HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("POST HTTP/1.1"), "{out}");
}

#[tokio::test]
async fn an_http2_preface_split_in_two_is_served_as_http2() {
    let (addr, _h) = start(Http::new()).await;
    let mut s = connect(addr).await;
    s.write_all(&PREFACE[..2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&PREFACE[2..]).await.unwrap();
    // An empty SETTINGS frame completes the client's preface.
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    assert_eq!(first_frame_type(&mut s).await, 0x4, "the server's SETTINGS");
}

#[tokio::test]
async fn http1_only_answers_an_http2_preface_as_a_bad_http1_request() {
    let (addr, _h) = start(Http::new().http1_only()).await;
    let mut s = connect(addr).await;
    s.write_all(PREFACE).await.unwrap();
    let out = read_to_close(&mut s).await;
    // hyper's HTTP/1 parser recognizes the preface and closes without a
    // response: no HTTP/2 frame, no HTTP/1 status.
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
}

#[tokio::test]
async fn plain_http1_and_http2_are_served_side_by_side() {
    let (addr, _h) = start(Http::new()).await;
    let mut s = connect(addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = String::from_utf8(read_to_close(&mut s).await).unwrap();
    assert!(out.ends_with("GET HTTP/1.1"), "{out}");

    let stream = connect(addr).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let res = tokio::time::timeout(
        BOUND,
        sender.send_request(
            Request::get("http://t/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "GET HTTP/2.0");
}

#[tokio::test]
async fn a_connection_that_never_sent_a_byte_closes_at_the_drain() {
    // No first-bytes timeout: only the drain ends the wait.
    let (addr, handle) = start(Http::new()).await;
    let mut silent = connect(addr).await;
    tokio::time::timeout(BOUND, async {
        while handle.open_connections() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("accepted in time");
    let report = tokio::time::timeout(BOUND, handle.drain(std::future::pending::<()>()))
        .await
        .expect("drained without waiting for a byte");
    assert_eq!(
        (
            report.open_at_drain,
            report.closed_gracefully,
            report.forced
        ),
        (1, 1, 0)
    );
    assert!(read_to_close(&mut silent).await.is_empty());
}
