//! The `http` feature: 429 mapping, header fields and key extractors.
#![cfg(feature = "http")]

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use http::{HeaderValue, Request, Response, StatusCode};
use palisade_ratelimit::{
    Clock, KeyExtractor, KeyedLimiter, Limiter, PerKey, Quota,
    http::{
        ClientIp, ForwardedHeader, Global, HeaderKey, Headers, HttpRateLimitLayer, PeerAddr,
        PeerIp, RouteKey, retry_after_secs,
    },
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder().uri("/api/items");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut req = builder.body(()).unwrap();
    req.extensions_mut()
        .insert(SocketAddr::new(ip(peer), 40_000));
    req
}

#[test]
fn retry_after_rounds_up_and_is_never_zero() {
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
    assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
    assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
}

#[test]
fn client_supplied_forwarding_headers_do_not_change_the_key() {
    let extractor = ClientIp::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
    let spoof = [("x-forwarded-for", "1.2.3.4")];

    // An untrusted peer: its own address, whatever it claims.
    assert_eq!(
        extractor.extract(&request("198.51.100.7", &spoof)),
        Some(ip("198.51.100.7"))
    );
    assert_eq!(
        extractor.extract(&request("198.51.100.7", &[])),
        Some(ip("198.51.100.7"))
    );

    // A trusted proxy: the rightmost untrusted hop, so a client prepending a
    // fake address gets nothing.
    let chained = [("x-forwarded-for", "1.2.3.4, 203.0.113.5")];
    assert_eq!(
        extractor.extract(&request("10.1.1.1", &chained)),
        Some(ip("203.0.113.5"))
    );
    // Trusted hops are skipped, including across several header lines.
    let req = request(
        "10.1.1.1",
        &[
            ("x-forwarded-for", "1.2.3.4, 203.0.113.5"),
            ("x-forwarded-for", "10.2.2.2"),
        ],
    );
    assert_eq!(extractor.extract(&req), Some(ip("203.0.113.5")));
    // Garbage stops the walk at the last trusted hop.
    let garbage = [("x-forwarded-for", "1.2.3.4, not-an-ip, 10.2.2.2")];
    assert_eq!(
        extractor.extract(&request("10.1.1.1", &garbage)),
        Some(ip("10.2.2.2"))
    );
    // All trusted: the leftmost.
    let internal = [("x-forwarded-for", "10.9.9.9, 10.2.2.2")];
    assert_eq!(
        extractor.extract(&request("10.1.1.1", &internal)),
        Some(ip("10.9.9.9"))
    );
    // Ports and IPv4-mapped peers are normalised.
    let ported = [("x-forwarded-for", "203.0.113.5:1234")];
    assert_eq!(
        extractor.extract(&request("::ffff:10.1.1.1", &ported)),
        Some(ip("203.0.113.5"))
    );
    // A trusted proxy that sent no header: the proxy itself.
    assert_eq!(
        extractor.extract(&request("10.1.1.1", &[])),
        Some(ip("10.1.1.1"))
    );

    // RFC 7239 Forwarded, right to left, quoted IPv6 with a port.
    let forwarded =
        ClientIp::new(["10.0.0.0/8".parse().unwrap()]).header(ForwardedHeader::Forwarded);
    let req = request(
        "10.1.1.1",
        &[(
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8::17]:4711\";proto=https, For=10.3.3.3",
        )],
    );
    // IPv6 clients are keyed by their /64 by default.
    assert_eq!(forwarded.extract(&req), Some(ip("2001:db8::")));
    assert_eq!(
        forwarded.clone().ipv6_prefix(128).extract(&req),
        Some(ip("2001:db8::17"))
    );
    assert_eq!(
        forwarded.extract(&request("192.0.2.1", &[("forwarded", "for=1.2.3.4")])),
        Some(ip("192.0.2.1"))
    );
    let hidden = [("forwarded", "for=1.2.3.4, for=_hidden")];
    assert_eq!(
        forwarded.extract(&request("10.1.1.1", &hidden)),
        Some(ip("10.1.1.1"))
    );
}

#[test]
fn simple_extractors() {
    let req = request("2001:db8:aa:bb:1:2:3:4", &[("x-api-key", "k1")]);
    // Before the fix the default was the full address: a client rotating
    // addresses inside its /64 got a fresh budget with each one.
    assert_eq!(PeerIp::new().extract(&req), Some(ip("2001:db8:aa:bb::")));
    let rotated = request("2001:db8:aa:bb:ffff:1:2:3", &[]);
    assert_eq!(
        PeerIp::new().extract(&rotated),
        Some(ip("2001:db8:aa:bb::"))
    );
    assert_eq!(palisade_ratelimit::http::DEFAULT_IPV6_PREFIX, 64);
    assert_eq!(
        PeerIp::new().ipv6_prefix(128).extract(&req),
        Some(ip("2001:db8:aa:bb:1:2:3:4"))
    );
    // IPv4 is keyed whole whatever the prefix.
    assert_eq!(
        PeerIp::new().extract(&request("192.0.2.7", &[])),
        Some(ip("192.0.2.7"))
    );
    assert_eq!(PeerIp::new().extract(&Request::new(())), None);
    let header = HeaderKey::new(http::HeaderName::from_static("x-api-key"));
    assert_eq!(header.extract(&req), Some(HeaderValue::from_static("k1")));
    assert_eq!(header.extract(&Request::new(())), None);
    let routes = RouteKey::new(["/api", "/api/items", "/admin"]);
    assert_eq!(routes.extract(&req).as_deref(), Some("/api/items"));
    let other = Request::builder().uri("/health").body(()).unwrap();
    assert_eq!(routes.extract(&other), None);
    assert_eq!(
        KeyExtractor::<Request<()>>::extract(&Global, &other),
        Some(())
    );
}

fn ok_service()
-> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new("ok".to_string()))
    })
}

#[tokio::test(start_paused = true)]
async fn limited_requests_get_429_with_consistent_fields() {
    // 2 per second per IP, burst 2: T = 500 ms, window 1 s.
    let per_ip = PerKey::new(
        KeyedLimiter::builder(Quota::per_second(2).unwrap())
            .name("per-ip")
            .clock(Clock::tokio())
            .build()
            .unwrap(),
        PeerIp::new(),
    );
    let layer = HttpRateLimitLayer::new(per_ip).headers(Headers::default().legacy(true));
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let call = |peer: &'static str| {
        let svc = svc.clone();
        async move { svc.oneshot(request(peer, &[])).await.unwrap() }
    };

    let first = call("192.0.2.1").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body(), "ok");
    assert_eq!(first.headers()["ratelimit-policy"], "\"per-ip\";q=2;w=1");
    assert_eq!(first.headers()["ratelimit"], "\"per-ip\";r=1;t=1");
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(first.headers()["x-ratelimit-reset"], "1");

    let second = call("192.0.2.1").await;
    assert_eq!(second.headers()["ratelimit"], "\"per-ip\";r=0;t=1");

    tokio::time::advance(Duration::from_millis(100)).await;
    let limited = call("192.0.2.1").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body(), "");
    // 400 ms to the next cell: rounded up to 1, never 0.
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"per-ip\";q=2;w=1");
    assert_eq!(limited.headers()["ratelimit"], "\"per-ip\";r=0;t=1");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");

    // Another client is unaffected.
    assert_eq!(call("192.0.2.2").await.status(), StatusCode::OK);
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(call("192.0.2.1").await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn headers_can_be_limited_to_rejections_or_switched_off() {
    let quota = Quota::builder()
        .rate(1)
        .per(Duration::from_secs(10))
        .build()
        .unwrap();
    let limiter = || Limiter::builder(quota).clock(Clock::tokio()).build();

    let svc = ServiceBuilder::new()
        .layer(HttpRateLimitLayer::new(limiter()).headers(Headers::default().on_admitted(false)))
        .service(ok_service());
    let ok = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert!(ok.headers().is_empty());
    let limited = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "10");
    assert_eq!(limited.headers()["ratelimit"], "\"global\";r=0;t=10");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"global\";q=1;w=10");

    let svc = ServiceBuilder::new()
        .layer(HttpRateLimitLayer::new(limiter()).headers(Headers::none()))
        .service(ok_service());
    assert!(
        svc.clone()
            .oneshot(Request::new(()))
            .await
            .unwrap()
            .headers()
            .is_empty()
    );
    let limited = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(limited.headers().len(), 1);
    assert_eq!(limited.headers()["retry-after"], "10");
}

#[tokio::test(start_paused = true)]
async fn layer_clones_share_state() {
    let limiter = Limiter::builder(Quota::per_second(1).unwrap())
        .clock(Clock::tokio())
        .build();
    let layer = HttpRateLimitLayer::new(limiter);
    let a = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ok_service());
    let b = ServiceBuilder::new().layer(layer).service(ok_service());
    assert_eq!(
        a.oneshot(Request::new(())).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        b.oneshot(Request::new(())).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

// Before the fix a request without a key (here: no `SocketAddr` extension,
// a server that never inserted it) passed unlimited, silently.
#[tokio::test(start_paused = true)]
async fn a_missing_key_is_a_500_logged_once_and_counted_unless_allowed() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let missing_total = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == palisade_ratelimit::metrics::MISSING_KEY)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => n,
                other => panic!("not a counter: {other:?}"),
            })
            .sum::<u64>()
    };
    let limiter = || {
        KeyedLimiter::builder(Quota::per_second(1).unwrap())
            .name("per-ip")
            .clock(Clock::tokio())
            .build()
            .unwrap()
    };
    let (strict, lenient) = metrics::with_local_recorder(&recorder, || {
        (
            PerKey::new(limiter(), PeerIp::new()),
            PerKey::new(limiter(), PeerIp::new()).allow_missing(),
        )
    });

    let errors = ErrorEvents::default();
    let _subscriber = tracing::subscriber::set_default(errors.clone());
    let svc = ServiceBuilder::new()
        .layer(HttpRateLimitLayer::new(strict))
        .service(ok_service());
    for _ in 0..2 {
        let response = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.body(), "");
    }
    assert_eq!(missing_total(), 2);
    assert_eq!(errors.count(), 1, "logged once per policy");

    // The tower layer refuses with a typed error naming the extension.
    let policy = metrics::with_local_recorder(&recorder, || PerKey::new(limiter(), PeerIp::new()));
    let mut core = palisade_ratelimit::RateLimitLayer::new(policy).layer(ok_service());
    let err = core
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap_err();
    let missing = err
        .downcast_ref::<palisade_ratelimit::MissingKey>()
        .expect("MissingKey");
    assert_eq!(missing.policy(), "per-ip");
    assert!(
        err.to_string()
            .contains("peer address request extension (`SocketAddr`"),
        "{err}"
    );

    // Opt-in: admitted unlimited, still counted.
    let svc = ServiceBuilder::new()
        .layer(HttpRateLimitLayer::new(lenient))
        .service(ok_service());
    for _ in 0..3 {
        let response = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // (A snapshot drains the debugging recorder's counters: 1 + 3 since.)
    assert_eq!(missing_total(), 4);
}

// Before the fix the key was the request's own `HeaderValue`, a slice of the
// server's read buffer: each tracked key kept a whole buffer alive.
#[test]
fn header_keys_own_a_bounded_copy_not_the_request_buffer() {
    let name = http::HeaderName::from_static("x-api-key");
    let extractor = HeaderKey::new(name.clone());
    // A 64 KiB read buffer holding a short key, as hyper shares it.
    let mut buffer = vec![b'a'; 64 * 1024];
    buffer[..6].copy_from_slice(b"key-42");
    let buffer = bytes::Bytes::from(buffer);
    let mut req = Request::new(());
    req.headers_mut().insert(
        name.clone(),
        HeaderValue::from_maybe_shared(buffer.slice(0..6)).unwrap(),
    );
    let key = extractor.extract(&req).unwrap();
    drop(req);
    assert_eq!(key.as_bytes(), b"key-42");
    assert!(buffer.is_unique(), "the key must not share the read buffer");

    // A 10 KiB header value: the key holds at most `max_len` bytes, and two
    // values that differ only past the kept prefix stay distinct keys.
    let long = |last: u8| {
        let mut v = vec![b'k'; 10 * 1024];
        *v.last_mut().unwrap() = last;
        let mut req = Request::new(());
        req.headers_mut()
            .insert(name.clone(), HeaderValue::from_bytes(&v).unwrap());
        req
    };
    let (a, b) = (
        extractor.extract(&long(b'1')).unwrap(),
        extractor.extract(&long(b'2')).unwrap(),
    );
    assert_eq!(a.len(), palisade_ratelimit::http::DEFAULT_HEADER_KEY_LEN);
    assert_eq!(b.len(), palisade_ratelimit::http::DEFAULT_HEADER_KEY_LEN);
    assert_ne!(a, b);
    assert_eq!(
        a,
        extractor.extract(&long(b'1')).unwrap(),
        "stable per extractor"
    );
    let short = HeaderKey::new(name.clone()).max_len(40);
    assert_eq!(short.extract(&long(b'1')).unwrap().len(), 40);
}

/// Counts error-level events (a minimal subscriber, enough to pin "logged
/// once").
#[derive(Clone, Default)]
struct ErrorEvents(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ErrorEvents {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl tracing::Subscriber for ErrorEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// === peer addresses from any server, gRPC rejections ===

#[test]
fn peer_ip_reads_axum_connect_info_and_custom_connection_info() {
    let peer = SocketAddr::from(([192, 0, 2, 9], 1234));
    let bare = || Request::new(());
    let with = |f: &dyn Fn(&mut http::Extensions)| {
        let mut req = bare();
        f(req.extensions_mut());
        req
    };
    let from_socket = with(&|e| {
        e.insert(peer);
    });
    assert_eq!(PeerIp::new().extract(&from_socket), Some(peer.ip()));

    // `axum::serve(.., into_make_service_with_connect_info::<SocketAddr>())`.
    #[cfg(feature = "axum")]
    {
        let from_axum = with(&|e| {
            e.insert(axum::extract::ConnectInfo(peer));
        });
        assert_eq!(PeerIp::new().extract(&from_axum), Some(peer.ip()));
        assert_eq!(
            ClientIp::new(["10.0.0.0/8".parse().unwrap()]).extract(&from_axum),
            Some(peer.ip())
        );
    }

    // A connection-info type of the user's own.
    #[derive(Clone)]
    struct Conn(SocketAddr);
    impl PeerAddr for Conn {
        fn peer_addr(&self) -> Option<SocketAddr> {
            Some(self.0)
        }
    }
    let other = SocketAddr::from(([198, 51, 100, 1], 1));
    let own = with(&|e| {
        e.insert(Conn(other));
        e.insert(peer);
    });
    // The configured type is tried first.
    assert_eq!(
        PeerIp::new().connect_info::<Conn>().extract(&own),
        Some(other.ip())
    );
    assert_eq!(PeerIp::new().extract(&own), Some(peer.ip()));
    // A lookup function, for a type of another crate (tonic's TcpConnectInfo).
    let lookup = PeerIp::new().peer_addr_with(|ext| ext.get::<Conn>().map(|c| c.0));
    assert_eq!(lookup.extract(&own), Some(other.ip()));

    // Nothing to read: no key (the policy refuses it, see the missing-key test).
    assert_eq!(PeerIp::new().extract(&bare()), None);
    assert_eq!(PeerIp::new().connect_info::<Conn>().extract(&bare()), None);
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_over_the_limit_get_resource_exhausted_or_the_configured_code() {
    let policy = || {
        Limiter::builder(Quota::per_second(1).unwrap())
            .name("global")
            .clock(Clock::tokio())
            .build()
    };
    let grpc = || {
        let mut req = request("192.0.2.1", &[("content-type", "application/grpc")]);
        *req.uri_mut() = "/pkg.Svc/Call".parse().unwrap();
        req
    };
    let svc = HttpRateLimitLayer::new(policy()).layer(ok_service());
    assert_eq!(
        svc.clone().oneshot(grpc()).await.unwrap().status(),
        StatusCode::OK
    );
    let limited = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(limited.status(), StatusCode::OK, "trailers-only");
    let h = limited.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "8");
    assert_eq!(h["grpc-message"], "rate limited by policy global");
    assert_eq!(h["grpc-retry-pushback-ms"], "1000");
    assert_eq!(h["ratelimit-policy"], "\"global\";q=1;w=1");
    assert!(!h.contains_key("retry-after"));
    assert_eq!(limited.body(), "");
    // Plain HTTP on the same limiter keeps the 429.
    let http = svc.oneshot(request("192.0.2.1", &[])).await.unwrap();
    assert_eq!(http.status(), StatusCode::TOO_MANY_REQUESTS);

    let unavailable = HttpRateLimitLayer::new(policy())
        .grpc_code(palisade_core::grpc::Code::Unavailable)
        .layer(ok_service());
    assert_eq!(
        unavailable.clone().oneshot(grpc()).await.unwrap().status(),
        StatusCode::OK
    );
    tokio::time::advance(Duration::from_millis(250)).await;
    let limited = unavailable.oneshot(grpc()).await.unwrap();
    assert_eq!(limited.headers()["grpc-status"], "14");
    assert_eq!(limited.headers()["grpc-retry-pushback-ms"], "750");
}

#[tokio::test]
async fn a_grpc_call_without_a_key_gets_internal() {
    let per_ip = PerKey::new(
        KeyedLimiter::builder(Quota::per_second(1).unwrap())
            .name("per-ip")
            .build()
            .unwrap(),
        PeerIp::new(),
    );
    let svc = HttpRateLimitLayer::new(per_ip).layer(ok_service());
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "13");
}
