//! The gRPC example over a real socket with a real tonic client: every
//! refusal reaches the client as the exact `tonic::Code` gRPC defines for it,
//! the adaptive concurrency limit answers `UNAVAILABLE` with pushback when
//! full, the breaker opens on `UNAVAILABLE` calls (trailers-only, and in trailers
//! at the body's end), and SIGTERM drains open calls cleanly.

mod common;

use std::future::Future;

use common::{Gateway, PROCESS_TIMEOUT};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Bounds every wait on the server (a broken run fails instead of hanging).
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PROCESS_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PROCESS_TIMEOUT:?}"))
}

async fn client(app: &Gateway) -> HealthClient<Channel> {
    let channel = bounded(
        "connect",
        Channel::from_shared(format!("http://{}", app.addr))
            .expect("an endpoint")
            .connect(),
    )
    .await
    .expect("connected");
    HealthClient::new(channel)
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<HealthCheckResponse, tonic::Status> {
    bounded("check", client.check(request(service)))
        .await
        .map(tonic::Response::into_inner)
}

fn serving(response: Result<HealthCheckResponse, tonic::Status>) -> ServingStatus {
    let response = response.expect("an OK call");
    ServingStatus::try_from(response.status).expect("a known serving status")
}

/// Asserts `result` failed with exactly `code` and `message`.
fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    message: &str,
) -> tonic::Status {
    let status = result.expect_err("a failed call");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message, "{status:?}");
    status
}

/// The `grpc-retry-pushback-ms` of a refusal, in milliseconds.
fn pushback_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms in {status:?}"))
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole milliseconds")
}

/// Runs a `Watch(service)` to its end: the messages, then the final status.
async fn watch_to_end(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> (Vec<ServingStatus>, Result<(), tonic::Status>) {
    let mut stream = match bounded("watch", client.watch(request(service))).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut seen = Vec::new();
    loop {
        match bounded("watch message", stream.message()).await {
            Ok(Some(message)) => seen.push(ServingStatus::try_from(message.status).unwrap()),
            Ok(None) => return (seen, Ok(())),
            Err(status) => return (seen, Err(status)),
        }
    }
}

#[tokio::test]
async fn a_per_client_limit_answers_resource_exhausted_with_pushback() {
    // 3 calls per hour: no cell comes back while the test runs.
    let app = Gateway::start_example(
        "grpc",
        &["--per-ip-rate", "3", "--per-ip-period-secs", "3600"],
    );
    let mut client = client(&app).await;
    for _ in 0..3 {
        assert_eq!(
            serving(check(&mut client, "").await),
            ServingStatus::Serving
        );
    }
    let status = assert_status(
        check(&mut client, "").await,
        Code::ResourceExhausted,
        "rate limited by policy per-ip",
    );
    // The next cell is one emission interval (1200 s) after the burst was
    // spent, less the moments the calls took (bounded by PROCESS_TIMEOUT).
    let ms = pushback_ms(&status);
    assert!((1_140_000..=1_200_000).contains(&ms), "pushback {ms} ms");
    // The IETF fields travel as metadata too.
    assert_eq!(
        status.metadata().get("ratelimit-policy").unwrap(),
        "\"per-ip\";q=3;w=3600"
    );
    // Refused calls spend nothing: still refused, same code.
    assert_status(
        check(&mut client, "").await,
        Code::ResourceExhausted,
        "rate limited by policy per-ip",
    );
}

#[tokio::test]
async fn a_full_concurrency_limit_answers_unavailable_with_pushback() {
    // At most 2 calls in flight; two held streams fill the limit.
    let app = Gateway::start_example("grpc", &["--max-concurrency", "2"]);
    let mut client = client(&app).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = bounded("watch", client.watch(request("hold")))
            .await
            .expect("admitted")
            .into_inner();
        let first = bounded("first message", stream.message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            ServingStatus::try_from(first.status).unwrap(),
            ServingStatus::Serving
        );
        held.push(stream);
    }
    // The streams hold their slots until their bodies end.
    let status = assert_status(
        check(&mut client, "").await,
        Code::Unavailable,
        "overloaded",
    );
    assert_eq!(pushback_ms(&status), 1000);
    // A stream that ends (the client drops it) gives its slot back.
    drop(held.pop());
    let admitted = bounded("admitted again", async {
        loop {
            match check(&mut client, "").await {
                Ok(response) => return response,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(
        ServingStatus::try_from(admitted.status).unwrap(),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn the_global_limit_answers_resource_exhausted_too() {
    let app = Gateway::start_example(
        "grpc",
        &["--global-rate", "2", "--global-period-secs", "3600"],
    );
    let mut client = client(&app).await;
    for _ in 0..2 {
        assert_eq!(
            serving(check(&mut client, "").await),
            ServingStatus::Serving
        );
    }
    let status = assert_status(
        check(&mut client, "").await,
        Code::ResourceExhausted,
        "rate limited by policy global",
    );
    assert!(pushback_ms(&status) > 1_000_000);
}

#[tokio::test]
async fn the_breaker_opens_on_trailers_only_unavailable_calls() {
    let app = Gateway::start_example(
        "grpc",
        &["--breaker-failures", "3", "--breaker-wait-ms", "3600000"],
    );
    let mut client = client(&app).await;
    for _ in 0..3 {
        assert_status(
            check(&mut client, "fail").await,
            Code::Unavailable,
            "backend failing",
        );
    }
    // Open: the backend is not called, the client learns why and when.
    let status = assert_status(
        check(&mut client, "").await,
        Code::Unavailable,
        "circuit breaker open",
    );
    let ms = pushback_ms(&status);
    assert!((3_540_000..=3_600_000).contains(&ms), "pushback {ms} ms");
    assert_status(
        check(&mut client, "fail").await,
        Code::Unavailable,
        "circuit breaker open",
    );
}

#[tokio::test]
async fn the_breaker_reads_unavailable_from_the_trailers_when_the_body_ends() {
    let app = Gateway::start_example(
        "grpc",
        &["--breaker-failures", "3", "--breaker-wait-ms", "3600000"],
    );
    let mut client = client(&app).await;
    // Two failures in the trailers, then a stream that ends OK: the success
    // is recorded at its end and resets the consecutive count.
    for _ in 0..2 {
        let (seen, end) = watch_to_end(&mut client, "fail").await;
        assert_eq!(seen, vec![ServingStatus::Serving]);
        assert_status(end, Code::Unavailable, "backend failing mid-stream");
    }
    let (seen, end) = watch_to_end(&mut client, "ok").await;
    assert_eq!(seen, vec![ServingStatus::Serving]);
    end.expect("a stream that ends OK");
    for _ in 0..2 {
        let (_, end) = watch_to_end(&mut client, "fail").await;
        assert_status(end, Code::Unavailable, "backend failing mid-stream");
    }
    // Still closed: two consecutive failures since the success.
    assert_eq!(
        serving(check(&mut client, "").await),
        ServingStatus::Serving
    );
    // The unary success above reset the count again; three more open it.
    for _ in 0..3 {
        let (_, end) = watch_to_end(&mut client, "fail").await;
        assert_status(end, Code::Unavailable, "backend failing mid-stream");
    }
    let (seen, end) = watch_to_end(&mut client, "ok").await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_status(end, Code::Unavailable, "circuit breaker open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_calls_refuses_new_ones_with_unavailable_and_exits_0() {
    let mut app = Gateway::start_example("grpc", &[]);
    let mut client = client(&app).await;
    let mut held = bounded("watch", client.watch(request("hold")))
        .await
        .expect("the hold call")
        .into_inner();
    let first = bounded("first message", held.message()).await.unwrap();
    assert_eq!(
        first.map(|m| ServingStatus::try_from(m.status).unwrap()),
        Some(ServingStatus::Serving)
    );

    app.sigterm();
    let line = tokio::task::block_in_place(|| app.wait_for_line("drain started"));
    assert!(line.contains("in_flight=1"), "{line}");

    // A new call on the open connection: refused, the way gRPC clients
    // expect a draining server to refuse.
    let (seen, end) = watch_to_end(&mut client, "other").await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_status(end, Code::Unavailable, "server is draining");
    // The health probe is exempt and reports the shutdown.
    assert_eq!(
        serving(check(&mut client, "").await),
        ServingStatus::NotServing
    );

    // The open call runs to its end, OK, and the process exits cleanly.
    assert_eq!(
        serving(check(&mut client, "release").await),
        ServingStatus::Serving
    );
    assert!(bounded("hold end", held.message()).await.unwrap().is_none());
    drop(client);
    let status = tokio::task::block_in_place(|| app.wait_exit());
    assert_eq!(status.code(), Some(0), "{}", app.output());
    let exiting = app.wait_for_line("exiting");
    assert!(exiting.contains("clean=true"), "{}", app.output());
}
