//! The admin listener (`server.admin_listen`): the operator's surface on an
//! address of its own, so the public port answers only what clients need.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8080"
//! admin_listen = "127.0.0.1:9901"   # unset (default): no second listener
//! ```
//!
//! | route | public port | admin listener |
//! |---|---|---|
//! | `/healthz`, `/readyz` | served | served |
//! | `/metrics` | forwarded upstream | served |
//! | `POST /admin/reload` (`[reload] admin`) | forwarded upstream | served, loopback peers only |
//! | `/demo/faults`, `/demo/stats` (demo upstream) | forwarded upstream | served; fault writes from loopback only |
//! | anything else | forwarded upstream | `404` |
//!
//! Without `server.admin_listen` the public port serves every row's
//! built-in route, as it always did (docs/gateway.md lists what that
//! exposes). The admin listener has no policy layers: it is not rate
//! limited or shed, and it is closed last at shutdown (with the backends),
//! so `/readyz` answers `503` there while the public connections drain.
//! It uses the public port's HTTP settings (head budget, timeouts).

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use palisade_shutdown::Scope;
use palisade_shutdown::server::{ConnectionLimits, Server};
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};

use crate::body::Body;
use crate::config::Config;
use crate::reload::AdminReloadLayer;
use crate::routes::BuiltinRoutesLayer;
use crate::stack::ConnectionService;

/// Operators and scrapers, not clients: a small cap.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Binds `server.admin_listen`, if set; before anything is served, so a
/// taken port fails start-up (exit 1, naming the address).
pub async fn bind(config: &Config) -> Result<Option<TcpListener>, BoxError> {
    let Some(addr) = config.server.admin_listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (server.admin_listen): {e}"))?;
    Ok(Some(listener))
}

/// Serves the admin routes on `listener` until `scope` is cancelled (the
/// shutdown's last phase), then closes its connections. Returns the bound
/// address.
pub fn spawn(
    listener: TcpListener,
    config: &Config,
    routes: BuiltinRoutesLayer,
    reload: AdminReloadLayer,
    scope: &Scope,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let service = ServiceBuilder::new()
        .layer(routes)
        .layer(reload)
        .service(tower::service_fn(not_found));
    let limits = ConnectionLimits::new()
        .max_connections(MAX_ADMIN_CONNECTIONS)
        .first_bytes_timeout(config.server.first_bytes_timeout.get())
        .idle_timeout(config.server.idle_timeout.get());
    let server = Server::from_fn(listener, move |peer| {
        ConnectionService::new(service.clone(), peer)
    })
    .with_http(crate::workers::http_builder(config))
    .with_limits(limits);
    let handle = server.handle();
    let token = scope.token();
    scope.spawn("admin-listener", async move {
        tokio::select! {
            () = server.run() => {}
            () = token.cancelled() => {}
        }
        handle.stop_accepting().await;
        handle.force_close();
    });
    Ok(addr)
}

/// Everything the admin listener does not serve.
async fn not_found(_req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Body::from("not found\n"));
    *res.status_mut() = StatusCode::NOT_FOUND;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(res)
}
