//! Drain-layer overhead per request, against a bare service and against
//! tower-http's `InFlightRequests` (the anchor), in the same run.
//!
//! Each iteration is one whole request: build it, call the service, resolve
//! the (immediately ready) response future and, in HTTP mode, poll the
//! response body to its end and drop it. Only the layer differs between
//! rows, so the difference between rows is the layer's cost.
//!
//! ```text
//! cargo bench -p palisade-shutdown --all-features --bench drain -- --warm-up-time 1 --measurement-time 3
//! ```

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Empty;
use palisade_shutdown::Drain;
use palisade_shutdown::http::HttpDrainLayer;
use tower::{Layer, Service};
use tower_http::metrics::InFlightRequestsLayer;

/// Polls a ready future once; every service here answers synchronously.
/// Always inlined, like `drain_body`, so every row gets the same treatment
/// from the optimizer (otherwise a row's future may be moved through
/// `memcpy` and another's not, which measures the inliner, not the layer).
#[inline(always)]
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("bench services are always ready"),
    }
}

/// Polls a body to its end, then drops it.
#[inline(always)]
fn drain_body<B: Body + Unpin>(mut body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(frame)) = std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
        black_box(frame.ok());
    }
}

fn generic(c: &mut Criterion) {
    let mut group = c.benchmark_group("drain_layer_generic");
    let bare_fn = |x: u64| ready(Ok::<_, Infallible>(x));

    let mut bare = tower::service_fn(bare_fn);
    group.bench_function("bare", |b| b.iter(|| now(bare.call(black_box(7))).unwrap()));

    let drain = Drain::new();
    let mut counted = drain.layer().layer(tower::service_fn(bare_fn));
    group.bench_function("palisade_drain", |b| {
        b.iter(|| now(counted.call(black_box(7))).unwrap())
    });
    assert_eq!(drain.in_flight(), 0);
    group.finish();
}

#[derive(Clone)]
struct Echo;

impl Service<Request<()>> for Echo {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        // Consumed, not inspected: taking its address here would make the
        // optimizer copy the request in some rows and not in others.
        drop(req);
        ready(Ok(Response::new(Empty::new())))
    }
}

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("drain_layer_http");

    let mut bare = Echo;
    group.bench_function("bare", |b| {
        b.iter(|| drain_body(now(bare.call(Request::new(()))).unwrap().into_body()))
    });

    let drain = Drain::new();
    let mut no_token = HttpDrainLayer::builder(drain.clone())
        .request_token(false)
        .build()
        .unwrap()
        .layer(Echo);
    group.bench_function("palisade_http_drain", |b| {
        b.iter(|| drain_body(now(no_token.call(Request::new(()))).unwrap().into_body()))
    });

    let mut with_token = HttpDrainLayer::new(drain.clone()).layer(Echo);
    group.bench_function("palisade_http_drain_with_token", |b| {
        b.iter(|| drain_body(now(with_token.call(Request::new(()))).unwrap().into_body()))
    });
    assert_eq!(drain.in_flight(), 0);

    let (layer, counter) = InFlightRequestsLayer::pair();
    let mut anchor = layer.layer(Echo);
    group.bench_function("tower_http_in_flight_requests", |b| {
        b.iter(|| drain_body(now(anchor.call(Request::new(()))).unwrap().into_body()))
    });
    black_box(counter);
    group.finish();
}

criterion_group!(benches, generic, http);
criterion_main!(benches);
