//! The drain layer, step by step with `tower_test::mock`, plus a stress test
//! and a property test against a reference model.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use palisade_shutdown::{Drain, DrainLayer, Draining, Error};
use proptest::prelude::*;
use tokio_test_shim::*;
use tower::{Service, ServiceExt};
use tower_test::{assert_request_eq, mock};

/// Small stand-ins for `tokio-test` helpers (not a dependency here).
mod tokio_test_shim {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Polls a future once with a no-op waker.
    pub(crate) fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::Pin::new(f).poll(&mut cx)
    }

    /// Whether `f` is still pending after one poll.
    pub(crate) fn is_pending<F: Future>(f: F) -> bool {
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        f.as_mut().poll(&mut cx).is_pending()
    }
}

#[tokio::test]
async fn counts_until_the_response_future_resolves() {
    let drain = Drain::new();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(drain.layer());
    handle.allow(2);

    assert!(svc.poll_ready().is_ready());
    let mut first = svc.call("a");
    assert!(svc.poll_ready().is_ready());
    let second = svc.call("b");
    assert_eq!(drain.in_flight(), 2);

    let send_a = assert_request_eq!(handle, "a");
    let send_b = assert_request_eq!(handle, "b");
    assert!(poll_once(&mut first).is_pending());
    assert_eq!(drain.in_flight(), 2, "a pending future stays counted");

    send_a.send_response("A");
    assert_eq!(first.await.unwrap(), "A");
    assert_eq!(drain.in_flight(), 1);

    // An error response is released too, and the inner error is kept.
    send_b.send_error("boom");
    let err = second.await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(drain.in_flight(), 0);
}

#[tokio::test]
async fn dropping_a_response_future_releases_its_slot() {
    let drain = Drain::new();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(drain.layer());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let fut = svc.call("a");
    assert_eq!(drain.in_flight(), 1);
    drop(fut);
    assert_eq!(drain.in_flight(), 0);
}

#[tokio::test]
async fn once_draining_new_requests_fail_fast_without_reaching_the_inner_service() {
    let drain = Drain::new();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(drain.layer());
    handle.allow(2);

    assert!(svc.poll_ready().is_ready());
    let accepted = svc.call("before");
    let send = assert_request_eq!(handle, "before");

    assert_eq!(
        drain.start(),
        1,
        "one request in flight when draining starts"
    );
    assert!(drain.is_draining());
    assert_eq!(drain.start(), 1, "start is idempotent");

    assert!(svc.poll_ready().is_ready());
    let err = svc.call("after").await.unwrap_err();
    assert_eq!(err.downcast_ref::<Draining>(), Some(&Draining));
    assert!(
        handle.poll_request().is_pending(),
        "the inner service never saw it"
    );
    assert_eq!(drain.in_flight(), 1, "a refused request is not counted");

    // drained() waits for the accepted request, and only for it.
    let drained = drain.drained();
    let mut drained = std::pin::pin!(drained);
    assert!(poll_once(&mut drained).is_pending());
    send.send_response("ok");
    assert_eq!(accepted.await.unwrap(), "ok");
    assert!(poll_once(&mut drained).is_ready());
    assert_eq!(drain.in_flight(), 0);
}

#[tokio::test]
async fn drained_waits_for_drain_to_start() {
    let drain = Drain::new();
    assert!(
        is_pending(drain.drained()),
        "idle but not draining: not drained"
    );
    drain.start();
    assert!(!is_pending(drain.drained()));
}

#[tokio::test]
async fn the_token_fires_when_draining_starts() {
    let drain = Drain::new();
    let token = drain.token();
    assert!(!token.is_draining());
    assert!(is_pending(token.draining()));
    drain.start();
    assert!(token.is_draining());
    token.draining().await;
}

#[tokio::test]
async fn services_built_per_connection_share_one_count() {
    let drain = Drain::new();
    let layer = DrainLayer::new(drain.clone());
    let mut a = tower::Layer::layer(&layer, tower::service_fn(|()| async { Ok::<_, Error>(()) }));
    let mut b = tower::Layer::layer(&layer, tower::service_fn(|()| async { Ok::<_, Error>(()) }));
    let fa = a.ready().await.unwrap().call(());
    let fb = b.ready().await.unwrap().call(());
    assert_eq!(drain.in_flight(), 2);
    drop((fa, fb));
    assert_eq!(drain.in_flight(), 0);
}

/// Many tasks send requests while draining starts: every request is either
/// admitted (reaches the inner service, counted) or refused (never reaches
/// it); `drained()` resolves only once no admitted request is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_admission_and_drain_never_lose_a_request() {
    for _round in 0..20 {
        let drain = Drain::new();
        let running = Arc::new(AtomicUsize::new(0));
        let reached = Arc::new(AtomicUsize::new(0));
        let svc = tower::ServiceBuilder::new()
            .layer(drain.layer())
            .service_fn({
                let running = running.clone();
                let reached = reached.clone();
                move |()| {
                    let running = running.clone();
                    reached.fetch_add(1, Ordering::SeqCst);
                    running.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::task::yield_now().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Error>(())
                    }
                }
            });
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut refused) = (0usize, 0usize);
                for _ in 0..500 {
                    match svc.clone().oneshot(()).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            assert_eq!(e.downcast_ref::<Draining>(), Some(&Draining));
                            refused += 1;
                        }
                    }
                }
                (ok, refused)
            }));
        }
        tokio::task::yield_now().await;
        drain.start();
        drain.drained().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "drained while a request ran"
        );
        let reached_at_drained = reached.load(Ordering::SeqCst);
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = t.await.unwrap();
            ok += o;
            refused += r;
        }
        assert_eq!(ok + refused, 8 * 500);
        assert_eq!(ok, reached.load(Ordering::SeqCst));
        assert_eq!(ok, reached_at_drained, "nothing admitted after drained()");
        assert_eq!(drain.in_flight(), 0);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Call,
    Finish(usize),
    Start,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Call),
        4 => (0usize..16).prop_map(Op::Finish),
        1 => Just(Op::Start),
    ]
}

proptest! {
    /// The layer against a model: a counter and a flag.
    #[test]
    fn matches_a_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        let drain = Drain::new();
        let mut svc = tower::Layer::layer(
            &drain.layer(),
            tower::service_fn(|()| std::future::pending::<Result<(), Error>>()),
        );
        let mut futures = Vec::new();
        let (mut model_count, mut model_draining) = (0usize, false);
        for op in ops {
            match op {
                Op::Call => {
                    let mut fut = svc.call(());
                    let polled = poll_once(&mut fut);
                    if model_draining {
                        prop_assert!(matches!(polled, Poll::Ready(Err(_))));
                    } else {
                        prop_assert!(polled.is_pending());
                        futures.push(fut);
                        model_count += 1;
                    }
                }
                Op::Finish(i) => {
                    if !futures.is_empty() {
                        drop(futures.swap_remove(i % futures.len()));
                        model_count -= 1;
                    }
                }
                Op::Start => {
                    prop_assert_eq!(drain.start(), model_count);
                    model_draining = true;
                }
            }
            prop_assert_eq!(drain.in_flight(), model_count);
            prop_assert_eq!(drain.is_draining(), model_draining);
            prop_assert_eq!(
                !is_pending(drain.drained()),
                model_draining && model_count == 0
            );
        }
    }
}

#[cfg(feature = "http")]
mod http_mode {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::header::{CONNECTION, RETRY_AFTER};
    use http::{Request, Response, StatusCode, Version};
    use http_body_util::{BodyExt, Channel, Empty, Full};
    use palisade_shutdown::http::{HttpDrainLayer, draining_response};
    use palisade_shutdown::{Drain, DrainToken, Error};
    use tower::{Layer, ServiceExt};
    use tower_test::mock;

    use super::poll_once;

    type Req = Request<Empty<Bytes>>;

    fn req(path: &str) -> Req {
        Request::builder().uri(path).body(Empty::new()).unwrap()
    }

    #[tokio::test]
    async fn counts_until_the_response_body_ends_not_the_future() {
        let drain = Drain::new();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Channel<Bytes, Infallible>>, _>(
            HttpDrainLayer::new(drain.clone()),
        );
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(req("/stream"));
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(seen.uri(), "/stream");
        assert!(
            seen.extensions().get::<DrainToken>().is_some(),
            "token handed to the handler"
        );

        let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
        send.send_response(Response::new(body));
        let response = fut.await.unwrap();
        assert_eq!(
            drain.in_flight(),
            1,
            "the future resolved but the body is open"
        );

        let mut body = response.into_body();
        tx.send_data(Bytes::from_static(b"part")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part");
        assert_eq!(drain.in_flight(), 1);
        drop(tx);
        assert!(body.frame().await.is_none());
        assert_eq!(drain.in_flight(), 0, "released at end of stream");
    }

    #[tokio::test]
    async fn a_refused_grpc_call_gets_a_trailers_only_unavailable() {
        let drain = Drain::new();
        let (mut svc, mut handle) =
            mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(HttpDrainLayer::new(drain.clone()));
        handle.allow(1);
        drain.start();
        assert!(svc.poll_ready().is_ready());
        let mut grpc = req("/pkg.Service/Method");
        grpc.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        *grpc.version_mut() = Version::HTTP_2;
        let response = svc.call(grpc).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "server is draining");
        assert!(!response.headers().contains_key(RETRY_AFTER));
        assert!(!response.headers().contains_key("grpc-retry-pushback-ms"));
        assert!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );

        // A plain request on the same service keeps the 503.
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(req("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(drain.in_flight(), 0);
        drop(svc);
        assert!(
            handle.next_request().await.is_none(),
            "never reached the inner service"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_releases_its_slot() {
        let drain = Drain::new();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Channel<Bytes, Infallible>>, _>(
            HttpDrainLayer::new(drain.clone()),
        );
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(req("/"));
        let (_, send) = handle.next_request().await.unwrap();
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
        send.send_response(Response::new(body));
        let mut body = fut.await.unwrap().into_body();
        tx.send_data(Bytes::from_static(b"x")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        drain.start();
        let drained = drain.drained();
        let mut drained = std::pin::pin!(drained);
        assert!(poll_once(&mut drained).is_pending());
        drop(body); // client went away mid-stream
        assert_eq!(drain.in_flight(), 0);
        assert!(poll_once(&mut drained).is_ready());
    }

    #[tokio::test]
    async fn draining_answers_503_with_retry_after_and_connection_close() {
        let drain = Drain::new();
        let layer = HttpDrainLayer::builder(drain.clone())
            .retry_after(std::time::Duration::from_millis(2500))
            .build()
            .unwrap();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(layer);
        handle.allow(2);
        drain.start();

        assert!(svc.poll_ready().is_ready());
        let response = svc.call(req("/api")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "3", "rounded up");
        assert_eq!(response.headers()[CONNECTION], "close");
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "");

        // HTTP/2 has no Connection header: GOAWAY does that job.
        let mut h2 = req("/api");
        *h2.version_mut() = Version::HTTP_2;
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(h2).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().get(CONNECTION).is_none());

        assert!(
            handle.poll_request().is_pending(),
            "refused requests never reach the inner service"
        );
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test]
    async fn exempt_paths_pass_while_draining_and_are_not_counted() {
        let drain = Drain::new();
        let layer = HttpDrainLayer::builder(drain.clone())
            .exempt("/healthz")
            .build()
            .unwrap();
        let (mut svc, mut handle) = mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(layer);
        handle.allow(2);
        drain.start();

        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(req("/healthz"));
        assert_eq!(drain.in_flight(), 0);
        let (seen, send) = handle.next_request().await.unwrap();
        assert_eq!(seen.uri(), "/healthz");
        send.send_response(Response::new(Full::from("ok")));
        let response = fut.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );

        // Only the exact path is exempt.
        assert!(svc.poll_ready().is_ready());
        let response = svc.call(req("/healthz/deep")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn tokens_can_be_turned_off() {
        let drain = Drain::new();
        let layer = HttpDrainLayer::builder(drain.clone())
            .request_token(false)
            .build()
            .unwrap();
        let svc = layer.layer(tower::service_fn(|req: Req| async move {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(
                if req.extensions().get::<DrainToken>().is_some() {
                    "token"
                } else {
                    "none"
                },
            )))
        }));
        let response = svc.oneshot(req("/")).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "none"
        );
    }

    #[test]
    fn invalid_configuration_names_the_field() {
        let err = HttpDrainLayer::builder(Drain::new())
            .exempt("healthz")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "exempt",
                    ..
                }
            ),
            "{err}"
        );
        let err = HttpDrainLayer::builder(Drain::new())
            .retry_after(std::time::Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "retry_after",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn draining_response_maps_the_generic_error() {
        let r: Response<Empty<Bytes>> =
            draining_response(std::time::Duration::from_secs(4), Version::HTTP_11);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "4");
        assert_eq!(r.headers()[CONNECTION], "close");
    }

    // Before the fix this copy of the rounding lacked the floor of 1 and
    // sent `Retry-After: 0`, an invitation to retry at once.
    #[test]
    fn draining_response_never_says_retry_after_0() {
        for (wait, secs) in [(0, "1"), (1, "1"), (1_500, "2")] {
            let r: Response<Empty<Bytes>> =
                draining_response(std::time::Duration::from_millis(wait), Version::HTTP_2);
            assert_eq!(r.headers()[RETRY_AFTER], secs, "{wait} ms");
            assert!(r.headers().get(CONNECTION).is_none());
        }
    }

    #[tokio::test]
    async fn an_inner_error_releases_the_slot() {
        let drain = Drain::new();
        let (mut svc, mut handle) =
            mock::spawn_layer::<Req, Response<Full<Bytes>>, _>(HttpDrainLayer::new(drain.clone()));
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(req("/"));
        let (_, send) = handle.next_request().await.unwrap();
        assert_eq!(drain.in_flight(), 1);
        send.send_error("upstream down");
        assert_eq!(fut.await.unwrap_err().to_string(), "upstream down");
        assert_eq!(drain.in_flight(), 0);
    }
}
