//! The `http` feature: 5xx as failures, 503 + Retry-After for rejections.
#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use http::{Response, StatusCode};
use palisade_breaker::http::{
    HttpClassifier, rejected_response, response_for_error, retry_after_secs,
};
use palisade_breaker::{CircuitBreakerLayer, Classify, Outcome, Rejected, State};
use support::{Log, build, builder};
use tower::{BoxError, Layer, Service, ServiceExt};

fn status(code: u16) -> Result<Response<()>, BoxError> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(r)
}

#[test]
fn classifier_counts_5xx_and_errors() {
    let c = HttpClassifier::default();
    assert_eq!(c.classify(&status(200)), Outcome::Success);
    assert_eq!(c.classify(&status(404)), Outcome::Success);
    assert_eq!(c.classify(&status(499)), Outcome::Success);
    assert_eq!(c.classify(&status(500)), Outcome::Failure);
    assert_eq!(c.classify(&status(599)), Outcome::Failure);
    assert_eq!(
        c.classify(&Err::<Response<()>, BoxError>("io".into())),
        Outcome::Failure
    );

    let only_gateway =
        HttpClassifier::from_statuses([StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT])
            .with_status(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(only_gateway.classify(&status(500)), Outcome::Success);
    assert_eq!(only_gateway.classify(&status(502)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(504)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(429)), Outcome::Failure);
    assert_eq!(only_gateway.classify(&status(999)), Outcome::Success);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_secs(Duration::from_secs(5)), 5);
    assert_eq!(retry_after_secs(Duration::from_millis(5_001)), 6);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);

    let r: Response<()> = rejected_response(&Rejected::Open {
        retry_after: Duration::from_millis(1_200),
    });
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "2");
    let r: Response<()> = rejected_response(&Rejected::ForcedOpen);
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn server_errors_open_the_breaker_and_rejections_map_to_503() {
    let b = build(
        builder(&Log::default())
            .count_window(3)
            .minimum_calls(3)
            .wait_duration(Duration::from_millis(2_500)),
    );
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .classifier(HttpClassifier::default())
        .layer(tower::service_fn(|code: u16| async move { status(code) }));
    for code in [200, 502, 503] {
        let r = svc.ready().await.unwrap().call(code).await.unwrap();
        assert_eq!(r.status().as_u16(), code);
    }
    assert_eq!(b.state(), State::Open);
    let err = svc.ready().await.unwrap().call(200).await.unwrap_err();
    let r: Response<()> = response_for_error(&*err).expect("a rejection");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "3");
    let other: BoxError = "not a rejection".into();
    assert!(response_for_error::<()>(&*other).is_none());
}

type Frames = http_body_util::StreamBody<
    futures_util::stream::Iter<
        std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>,
    >,
>;

/// A 200 whose body yields one chunk, then fails (`fail`) or ends.
fn streamed(fail: bool) -> Response<Frames> {
    let mut frames = vec![Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"half",
    )))];
    if fail {
        frames.push(Err(std::io::Error::other("upstream reset mid-body")));
    }
    Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

async fn read_to_end<B: http_body::Body>(body: B) -> bool {
    http_body_util::BodyExt::collect(body).await.is_ok()
}

// A 200 whose body fails mid-stream: classified at the head it counts as a
// success (what CircuitBreakerLayer + HttpClassifier does), classified at
// the body's end it counts as a failure.
#[tokio::test(start_paused = true)]
async fn body_end_classification_sees_a_body_failing_mid_stream() {
    use palisade_breaker::http::BodyEndLayer;
    let at_head = build(builder(&Log::default()).count_window(1).minimum_calls(1));
    let at_end = build(builder(&Log::default()).count_window(1).minimum_calls(1));
    let inner = tower::service_fn(|fail: http::Request<bool>| async move {
        Ok::<_, BoxError>(streamed(*fail.body()))
    });

    let mut head = CircuitBreakerLayer::new(at_head.clone())
        .classifier(HttpClassifier::default())
        .layer(inner);
    let response = head
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(true))
        .await
        .unwrap();
    assert!(!read_to_end(response.into_body()).await);
    assert_eq!(at_head.state(), State::Closed, "the head said 200");

    let mut end = BodyEndLayer::new(at_end.clone()).layer(inner);
    // A body read to its end is a success.
    let ok = end.ready().await.unwrap().call(http::Request::new(false));
    assert!(read_to_end(ok.await.unwrap().into_body()).await);
    assert_eq!(at_end.counts().calls, 1);
    assert_eq!(at_end.state(), State::Closed);
    // The same 200 failing mid-body opens the breaker.
    let failing = end.ready().await.unwrap().call(http::Request::new(true));
    let response = failing.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        at_end.state(),
        State::Closed,
        "undecided until the body ends"
    );
    assert!(!read_to_end(response.into_body()).await);
    assert_eq!(at_end.state(), State::Open);
    // And a rejected call fails fast with Rejected.
    let err = end
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(false))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>());
}

// === gRPC ===

mod grpc {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
    use http_body::{Body, Frame};
    use palisade_breaker::http::{BodyEndLayer, GrpcClassifier};
    use palisade_breaker::{Outcome, Rejected, State};
    use palisade_core::grpc::Code;
    use tower::{BoxError, Layer, Service, ServiceExt};

    use super::support::{Log, build, builder};

    /// A body of fixed frames (data, then optionally trailers).
    #[derive(Debug, Default)]
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn status_map(code: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static(code));
        map
    }

    /// What the backend answers, chosen by the request.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// Trailers-only: `grpc-status` in the headers, no body.
        TrailersOnly(&'static str),
        /// A message, then trailers with this `grpc-status`.
        Trailers(&'static str),
        /// A message, then the end without trailers.
        NoStatus,
        /// An HTTP error status without gRPC headers (a proxy in between).
        Http(u16),
    }

    fn respond(answer: Answer) -> Response<Frames> {
        let mut frames = VecDeque::new();
        let mut response = Response::new(Frames::default());
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        match answer {
            Answer::TrailersOnly(code) => {
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from_static(code));
            }
            Answer::Trailers(code) => {
                frames.push_back(Frame::data(Bytes::from_static(b"\0\0\0\0\0")));
                frames.push_back(Frame::trailers(status_map(code)));
            }
            Answer::NoStatus => frames.push_back(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Answer::Http(status) => *response.status_mut() = StatusCode::from_u16(status).unwrap(),
        }
        *response.body_mut() = Frames(frames);
        response
    }

    fn grpc_request(answer: Answer) -> Request<Answer> {
        let mut req = Request::new(answer);
        req.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        req
    }

    async fn drain<B: Body>(body: B) {
        let _ = http_body_util::BodyExt::collect(body).await;
    }

    /// A breaker that opens on one failure, and the layer around a backend.
    fn setup() -> (
        palisade_breaker::Breaker,
        impl Service<
            Request<Answer>,
            Response = Response<impl Body<Data = Bytes, Error = BoxError>>,
            Error = BoxError,
        > + Clone,
    ) {
        let breaker = build(
            builder(&Log::default())
                .consecutive_failures(1)
                .wait_duration(Duration::from_secs(10)),
        );
        let backend = tower::service_fn(|req: Request<Answer>| async move {
            Ok::<_, BoxError>(respond(*req.body()))
        });
        let svc = BodyEndLayer::new(breaker.clone())
            .classifier(GrpcClassifier::default())
            .layer(backend);
        (breaker, svc)
    }

    #[test]
    fn default_codes() {
        let c = GrpcClassifier::default();
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
        ] {
            assert_eq!(c.outcome(code), Outcome::Failure, "{code}");
        }
        assert_eq!(c.outcome(Code::Cancelled), Outcome::Ignored);
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::PermissionDenied,
        ] {
            assert_eq!(c.outcome(code), Outcome::Success, "{code}");
        }
        let only = GrpcClassifier::from_codes([Code::ResourceExhausted]);
        assert_eq!(only.outcome(Code::Unavailable), Outcome::Success);
        assert_eq!(only.outcome(Code::ResourceExhausted), Outcome::Failure);
        let ignored = GrpcClassifier::default().with_ignored(Code::Unavailable);
        assert_eq!(ignored.outcome(Code::Unavailable), Outcome::Ignored);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trailers_only_unavailable_is_a_failure_at_the_head() {
        let (breaker, mut svc) = setup();
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::TrailersOnly("14")))
            .await
            .unwrap();
        // Decided before the body is read.
        assert_eq!(breaker.state(), State::Open);
        drain(response.into_body()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_in_the_trailers_is_a_failure_when_the_body_ends() {
        let (breaker, mut svc) = setup();
        let ok = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::Trailers("0")))
            .await
            .unwrap();
        drain(ok.into_body()).await;
        assert_eq!(breaker.counts().calls, 1);
        assert_eq!(breaker.state(), State::Closed);

        let failing = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::Trailers("14")))
            .await
            .unwrap();
        assert_eq!(failing.status(), StatusCode::OK);
        assert_eq!(
            breaker.state(),
            State::Closed,
            "undecided until the trailers"
        );
        drain(failing.into_body()).await;
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_without_status_http_errors_and_cancelled_calls() {
        // A stream that ends without a status is UNKNOWN to the client.
        let (breaker, mut svc) = setup();
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::NoStatus));
        drain(r.await.unwrap().into_body()).await;
        assert_eq!(breaker.state(), State::Open);

        // An HTTP 503 with no grpc-status maps to UNAVAILABLE: a failure.
        let (breaker, mut svc) = setup();
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::Http(503)));
        drop(r.await.unwrap());
        assert_eq!(breaker.state(), State::Open);

        // A 404 maps to UNIMPLEMENTED, and CANCELLED is ignored: neither opens it.
        let (breaker, mut svc) = setup();
        for answer in [
            Answer::Http(404),
            Answer::Trailers("1"),
            Answer::TrailersOnly("5"),
        ] {
            let r = svc.ready().await.unwrap().call(grpc_request(answer));
            drain(r.await.unwrap().into_body()).await;
        }
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(
            breaker.counts().calls,
            2,
            "the cancelled call is not counted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_answers_grpc_calls_with_trailers_only_unavailable() {
        let (breaker, mut svc) = setup();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);

        let response = svc
            .ready()
            .await
            .unwrap()
            .call(grpc_request(Answer::Trailers("0")))
            .await
            .expect("a gRPC call is answered, not failed");
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "circuit breaker open");
        assert_eq!(h["grpc-retry-pushback-ms"], "10000");
        assert!(response.body().is_end_stream());

        // A plain HTTP request still fails with `Rejected`.
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(Answer::Trailers("0")))
            .await
            .err()
            .expect("an HTTP call fails");
        assert!(err.is::<Rejected>());
    }
}
