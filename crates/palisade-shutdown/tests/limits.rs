//! `ConnectionLimits` over real loopback sockets: a silent connection is
//! closed after the first-bytes timeout, an idle keep-alive connection after
//! the idle timeout, and at `max_connections` the next connection waits
//! until one closes. Every wait is bounded.
#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_shutdown::server::{ConnectionLimits, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(10);

async fn start(limits: ConnectionLimits) -> (SocketAddr, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    });
    let server = Server::new(listener, svc).with_limits(limits);
    let handle = server.handle();
    tokio::spawn(server.run());
    (addr, handle)
}

/// Sends a keep-alive `GET /` and reads its whole response.
async fn exchange(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        while !buf.ends_with(b"hello") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response in time");
    String::from_utf8(buf).unwrap()
}

/// Reads until the server closes the connection (bounded).
async fn closed_by_server(s: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(BOUND, s.read(&mut byte))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_first_bytes_timeout() {
    let (addr, handle) =
        start(ConnectionLimits::new().first_bytes_timeout(Duration::from_millis(100))).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut talking = TcpStream::connect(addr).await.unwrap();
    assert!(exchange(&mut talking).await.starts_with("HTTP/1.1 200"));
    closed_by_server(&mut silent).await;
    // The one that spoke in time is still served.
    assert!(exchange(&mut talking).await.starts_with("HTTP/1.1 200"));
    assert_eq!(handle.accepted(), 2);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (addr, handle) =
        start(ConnectionLimits::new().idle_timeout(Duration::from_millis(100))).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(exchange(&mut s).await.starts_with("HTTP/1.1 200"));
    closed_by_server(&mut s).await;
    tokio::time::timeout(BOUND, async {
        while handle.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the connection task ended");
}

#[tokio::test]
async fn at_max_connections_the_next_connection_waits_until_one_closes() {
    let (addr, handle) = start(ConnectionLimits::new().max_connections(1)).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(exchange(&mut first).await.starts_with("HTTP/1.1 200"));

    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.read(&mut byte))
            .await
            .is_err(),
        "served above max_connections"
    );
    assert_eq!(handle.accepted(), 1);
    drop(first);
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, async {
        while !rest.ends_with(b"hello") {
            let n = second.read(&mut byte).await.unwrap();
            assert!(n > 0);
            rest.push(byte[0]);
        }
    })
    .await
    .expect("served once the first closed");
    assert!(rest.starts_with(b"HTTP/1.1 200"));
    assert_eq!(handle.accepted(), 2);
}
