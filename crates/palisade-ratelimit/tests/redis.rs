//! The Redis backend against a real `redis-server` this test starts and stops.
#![cfg(all(feature = "redis", feature = "http"))]

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use http::{Request, Response, StatusCode};
use palisade_ratelimit::{
    Quota,
    http::PeerIp,
    redis::{FailPolicy, RedisLimiter, RedisRateLimitLayer},
};
use tower::{ServiceBuilder, ServiceExt};

/// A redis-server child on a loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        Self { child, port }
    }

    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Waits (bounded) until the server accepts connections.
    async fn ready(self) -> Self {
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// 10 per hour: nothing refills during a test, so counts are exact.
fn quota() -> Quota {
    Quota::per_minute(1).unwrap().with_burst(10).unwrap()
}

fn hourly() -> Quota {
    Quota::builder()
        .rate(10)
        .per(Duration::from_secs(3600))
        .build()
        .unwrap()
}

async fn redis_conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_quota_exactly() {
    let server = RedisServer::start().ready().await;
    // Two "gateways": separate limiters, separate connections, one Redis.
    let a = Arc::new(
        RedisLimiter::builder(server.url(), hourly())
            .prefix("t1:")
            .build()
            .unwrap(),
    );
    let b = Arc::new(
        RedisLimiter::builder(server.url(), hourly())
            .prefix("t1:")
            .build()
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for task in 0..64 {
        let limiter = if task % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..5 {
                admitted += usize::from(limiter.check("client-1").await.allowed());
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 10);
    assert_eq!(a.backend_errors() + b.backend_errors(), 0);

    // The key expires when it would be fully replenished: 10 cells × 360 s.
    let mut conn = redis_conn(&server).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("t1:client-1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 3_590_000 && ttl <= 3_600_001, "ttl {ttl}");

    // A limited decision carries the wait until the next cell.
    let limited = a.check("client-1").await;
    assert!(!limited.allowed());
    assert_eq!(limited.remaining(), 0);
    assert!(limited.retry_after() > Duration::from_secs(350));
    assert!(limited.retry_after() <= Duration::from_secs(360));
    server.stop();
}

#[tokio::test]
async fn script_is_reloaded_after_noscript() {
    let server = RedisServer::start().ready().await;
    let limiter = RedisLimiter::builder(server.url(), quota())
        .build()
        .unwrap();
    assert!(limiter.check("k").await.allowed());
    let mut conn = redis_conn(&server).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(limiter.check("k").await.allowed());
    assert_eq!(limiter.backend_errors(), 0);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_policy_holds_while_redis_is_down_and_limiting_resumes_after_restart() {
    let mut server = RedisServer::start().ready().await;
    let port = server.port;
    let budget = Duration::from_millis(100);
    let open = RedisLimiter::builder(server.url(), hourly())
        .fail(FailPolicy::Open)
        .budget(budget)
        .build()
        .unwrap();
    let closed = RedisLimiter::builder(server.url(), hourly())
        .fail(FailPolicy::Closed)
        .budget(budget)
        .build()
        .unwrap();
    let admitted = futures_util::future::join_all((0..15).map(|_| open.check("abuser"))).await;
    assert_eq!(admitted.iter().filter(|d| d.allowed()).count(), 10);
    assert!(closed.check("warm-up").await.allowed());

    server.kill();
    for _ in 0..5 {
        assert!(open.check("someone").await.allowed(), "fail open admits");
        let rejected = closed.check("someone").await;
        assert!(!rejected.allowed(), "fail closed rejects");
        assert_eq!(rejected.retry_after(), Duration::from_secs(1));
        // A key Redis already limited stays limited locally, without Redis.
        assert!(!open.check("abuser").await.allowed());
    }
    assert_eq!(open.backend_errors(), 5);
    assert_eq!(closed.backend_errors(), 5);

    // Same port, empty state (no persistence): the connection comes back by itself.
    let server = RedisServer::start_on(port).ready().await;
    let mut back = false;
    for _ in 0..100 {
        if open.ping().await && closed.ping().await {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "reconnected after the restart");
    let errors = closed.backend_errors();
    let admitted = futures_util::future::join_all((0..30).map(|_| closed.check("fresh"))).await;
    assert_eq!(admitted.iter().filter(|d| d.allowed()).count(), 10);
    assert_eq!(closed.backend_errors(), errors);
    server.stop();
}

#[tokio::test]
async fn http_layer_answers_429_from_redis_decisions() {
    let server = RedisServer::start().ready().await;
    let limiter = Arc::new(
        RedisLimiter::builder(server.url(), Quota::per_minute(2).unwrap())
            .name("fleet-per-ip")
            .build()
            .unwrap(),
    );
    let svc = ServiceBuilder::new()
        .layer(RedisRateLimitLayer::new(limiter, PeerIp::new()))
        .service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
        });
    let request = || {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, 9], 1234)));
        req
    };
    let first = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.body(), "ok");
    assert_eq!(first.headers()["ratelimit"], "\"fleet-per-ip\";r=1;t=30");
    assert_eq!(
        first.headers()["ratelimit-policy"],
        "\"fleet-per-ip\";q=2;w=60"
    );
    assert_eq!(
        svc.clone().oneshot(request()).await.unwrap().status(),
        StatusCode::OK
    );
    let limited = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry), "retry-after {retry}");
    // A request without a peer address is refused (500), not waved through
    // unlimited as before the fix.
    assert_eq!(
        svc.oneshot(Request::new(())).await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    server.stop();
}
