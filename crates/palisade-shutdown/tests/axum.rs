//! Wiring into axum: the drain layer on a `Router`, served by the palisade
//! `Server`; a long stream watches its `DrainToken` and ends gracefully.
#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade_shutdown::http::HttpDrainLayer;
use palisade_shutdown::server::Server;
use palisade_shutdown::{Drain, DrainToken};
use tokio::net::{TcpListener, TcpStream};

/// Ticks every 10 ms until draining starts, then sends a last "bye" chunk
/// and ends: a stream that wraps up instead of being cut.
async fn stream(Extension(token): Extension<DrainToken>) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.draining() => {
                    let _ = tx.send(Ok(Bytes::from_static(b"bye\n"))).await;
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(10)) => {
                    if tx.send(Ok(Bytes::from_static(b"tick\n"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Body::from_stream(tokio_stream_shim::ReceiverStream(rx))
}

/// A tiny `Stream` over an mpsc receiver (tokio-stream is not a dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(crate) struct ReceiverStream<T>(pub(crate) tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::test]
async fn an_axum_router_drains_and_its_stream_ends_gracefully() {
    let drain = Drain::new();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/stream", get(stream))
        .route("/", get(|| async { "hello" }))
        .layer(
            HttpDrainLayer::builder(drain.clone())
                .exempt("/healthz")
                .build()
                .unwrap(),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener, app);
    let handle = server.handle();
    tokio::spawn(server.run());

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(Request::get("/stream").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "tick\n");
    assert_eq!(drain.in_flight(), 1, "the open stream is in flight");

    // Health checks pass while draining; everything else gets a 503.
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut probe, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    drain.start();
    let health = probe
        .send_request(
            Request::get("/healthz")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.into_body().collect().await.unwrap().to_bytes(), "ok");
    let refused = probe
        .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["connection"], "close");

    // The stream saw the token, sent its last chunk and ended.
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert!(
        rest.ends_with(b"bye\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    let report = handle.drain(std::future::pending::<()>()).await;
    assert_eq!(report.forced, 0);
    assert_eq!(report.open_at_drain, report.closed_gracefully);
    drain.drained().await;
    assert_eq!(drain.in_flight(), 0);
}
