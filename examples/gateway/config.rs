//! Configuration: one [`Config`] struct read from a TOML file, then
//! overridden by command-line flags.
//!
//! Every struct denies unknown fields, so a typo is a start-up error that
//! names the key instead of a silently ignored knob. Every section is
//! `#[serde(default)]`, so a pattern adds its own section with one field:
//!
//! ```ignore
//! #[serde(default)]
//! pub ratelimit: RateLimitConfig,
//! ```
//!
//! Durations are written with a unit (`"250ms"`, `"30s"`, `"2m"`) and parsed by
//! [`ConfigDuration`] (`duration.rs`), which the pattern sections reuse. The
//! command-line flags are in `cli.rs`.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

pub use crate::cli::Cli;
pub use crate::duration::ConfigDuration;

/// The whole gateway configuration. See `docs/gateway.md` for every key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the listening side.
    pub server: ServerConfig,
    /// `[upstream]`: where requests go and how long they may take.
    pub upstream: UpstreamConfig,
    /// `[log]`: logging format, filter and access log.
    pub log: LogConfig,
    /// `[demo]`: the embedded demo upstream's initial fault injection.
    pub demo: DemoConfig,
    /// `[shutdown]`: the coordinated shutdown sequence (palisade-shutdown).
    pub shutdown: ShutdownConfig,
    /// `[breaker]`: one circuit breaker per upstream (palisade-breaker).
    pub breaker: crate::breaker::BreakerConfig,
    /// `[limit]`: one adaptive concurrency limit per upstream
    /// (palisade-limit).
    pub limit: crate::limit::LimitConfig,
    /// `[ratelimit]`: per-client and global limits (palisade-ratelimit).
    pub ratelimit: crate::ratelimit::RateLimitConfig,
    /// `[batch]`: `/items/{id}` lookups coalesced (palisade-batch).
    pub batch: crate::batch::BatchConfig,
    /// `[scatter]`: a route that asks every upstream (palisade-fanout).
    pub scatter: crate::scatter::ScatterConfig,
    /// `[hedge]`: hedged idempotent requests (palisade-fanout).
    pub hedge: crate::hedge::HedgeConfig,
    /// `[cpu]`: the demo upstream's `/cpu/{ms}` route (palisade-pool).
    pub cpu: crate::cpu::CpuConfig,
    /// `[access_log]`: the access log on a pipeline (palisade-pipeline).
    pub access_log: crate::access_log::AccessLogConfig,
    /// `[stack]`: which optional layers are built (benchmarks; `switch.rs`).
    pub stack: crate::switch::StackConfig,
    /// `[reload]`: hot reload on SIGHUP / `POST /admin/reload` (hook:
    /// palisade-reload, `reload.rs`).
    pub reload: crate::reload::ReloadConfig,
}

/// `[shutdown]` section: the phases after SIGINT/SIGTERM (see
/// `examples/gateway/shutdown.rs` and `docs/shutdown.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to keep serving after `/readyz` turned 503, so load
    /// balancers stop sending first (Kubernetes: longer than the readiness
    /// probe takes to fail, commonly 5-15 s).
    pub readiness_delay: ConfigDuration,
    /// Deadline for in-flight requests; what is left is cut. Unset: the
    /// value of `server.shutdown_timeout` (and `--shutdown-timeout`).
    pub drain_deadline: Option<ConfigDuration>,
    /// Deadline for background work (batch queues) to flush.
    pub flush_deadline: ConfigDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            readiness_delay: ConfigDuration::from_secs(1),
            drain_deadline: None,
            flush_deadline: ConfigDuration::from_secs(5),
        }
    }
}

impl ShutdownConfig {
    /// The effective drain deadline.
    pub fn drain_deadline(&self, config: &Config) -> Duration {
        self.drain_deadline
            .unwrap_or(config.server.shutdown_timeout)
            .get()
    }
}

/// `[server]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks an ephemeral port.
    pub listen: SocketAddr,
    /// Runtime worker threads; 0 = the CPUs this process may run on.
    pub workers: usize,
    /// How the workers are run: `"thread-per-core"` (default: one runtime
    /// and `SO_REUSEPORT` listener per worker) or `"multi-thread"` (one
    /// work-stealing runtime); see `workers.rs`.
    pub runtime: crate::workers::RuntimeMode,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout: ConfigDuration,
    /// Accept HTTP/2 with prior knowledge (h2c) besides HTTP/1.1.
    pub http2: bool,
    /// Close a client connection whose request head has not arrived in time
    /// (hyper's HTTP/1 timer: from the first byte of a request head to its
    /// end; the wait for that first byte is `first_bytes_timeout`).
    pub header_read_timeout: ConfigDuration,
    /// Close a new connection that has not sent its first byte in time. It
    /// covers the HTTP/1-or-HTTP/2 detection read, which has no timer of its
    /// own (nginx `client_header_timeout`, Envoy `request_headers_timeout`).
    pub first_bytes_timeout: ConfigDuration,
    /// Close a connection, gracefully, once no byte has moved either way for
    /// this long: an idle HTTP/1 keep-alive connection or an idle HTTP/2
    /// connection (nginx `keepalive_timeout`, Envoy `idle_timeout`).
    pub idle_timeout: ConfigDuration,
    /// Most client connections open at once. At the cap the gateway stops
    /// accepting (new connections wait in the kernel's backlog) and resumes
    /// as soon as one closes.
    pub max_connections: usize,
    /// Most requests in the stack at once (every connection together).
    /// Above it a request is answered `503` with `Retry-After: 1` at once
    /// (load shedding); the built-in routes are never shed.
    pub max_in_flight: usize,
    /// HTTP/2 streams a client may open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive: ping an idle-looking connection this often...
    pub http2_keep_alive_interval: ConfigDuration,
    /// ...and close it when the ping is not answered within this.
    pub http2_keep_alive_timeout: ConfigDuration,
    /// Largest request body in bytes. A larger `Content-Length` is answered
    /// `413` before any of the body is read; a chunked body is cut with
    /// `413` once it grows past the cap.
    pub max_request_body: u64,
    /// Longest pause between two pieces of a request body; a client that
    /// stops uploading for longer gets `408` (nginx `client_body_timeout`).
    pub body_timeout: ConfigDuration,
    /// Largest request head in bytes, 8 KiB..=1 MiB: hyper's HTTP/1 read
    /// buffer (so also the memory a head may take), the HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, and the gateway's own check of the
    /// parsed head (`edge.rs`). Over it: `431`, never forwarded. Envoy's
    /// `max_request_headers_kb` is 60 KiB.
    pub max_header_bytes: usize,
    /// Most header fields in a request head, 1..=10 000; more is `431`.
    /// 100 is Envoy's `max_headers_count` and hyper's own HTTP/1 default.
    pub max_headers: usize,
    /// A second listener for the admin surface: `/metrics`,
    /// `POST /admin/reload` and the demo controls (`/demo/faults`,
    /// `/demo/stats`), besides `/healthz` and `/readyz`. When set, the
    /// public port no longer answers those routes (it forwards their paths
    /// like any other); unset (the default), the public port serves them.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            runtime: crate::workers::RuntimeMode::default(),
            shutdown_timeout: ConfigDuration::from_secs(30),
            http2: true,
            header_read_timeout: ConfigDuration::from_secs(30),
            first_bytes_timeout: ConfigDuration::from_secs(30),
            idle_timeout: ConfigDuration::from_secs(60),
            max_connections: 10_000,
            max_in_flight: 10_000,
            http2_max_concurrent_streams: 128,
            http2_keep_alive_interval: ConfigDuration::from_secs(20),
            http2_keep_alive_timeout: ConfigDuration::from_secs(20),
            max_request_body: 16 * 1024 * 1024,
            body_timeout: ConfigDuration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            admin_listen: None,
        }
    }
}

/// `server.max_headers` by default: Envoy's `max_headers_count`, and
/// hyper's HTTP/1 default (which keeps its parser's slots on the stack).
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// `[upstream]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Upstream base URLs (`http://host:port`), used round robin. Empty =
    /// start the embedded demo upstream.
    pub urls: Vec<String>,
    /// Time allowed for the upstream to answer: from the moment the request
    /// (its body included) has been handed to the upstream connection to the
    /// upstream's response head; slower answers become 504. The client's
    /// upload time is bounded by `server.body_timeout` instead.
    pub timeout: ConfigDuration,
    /// Time allowed to open a TCP connection to an upstream.
    pub connect_timeout: ConfigDuration,
    /// How long an idle pooled upstream connection is kept, checked when a
    /// connection is taken as well as when one is returned. Below the
    /// keep-alive timeouts upstreams commonly use (Node's 5 s, nginx's 60 to
    /// 75 s), so the gateway drops a connection before the upstream does.
    pub pool_idle_timeout: ConfigDuration,
    /// Most idle connections kept per upstream (0: no reuse).
    pub pool_max_idle: usize,
    /// Most connections open to one upstream at once (idle or in use; with
    /// thread-per-core workers, split across them, rounded up). Envoy's
    /// cluster default is 1,024 too.
    pub pool_max_connections: usize,
    /// How long a request waits for a connection when its upstream is at
    /// `pool_max_connections` before it is answered 503.
    pub pool_wait_timeout: ConfigDuration,
    /// How requests are spread over the upstreams whose breaker admits
    /// them: `"p2c"` (the less loaded of two, by requests awaiting their
    /// response head) or `"round_robin"`.
    pub balance: Balance,
    /// Retry an idempotent request without a body (GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE) once after it was sent: on a fresh connection
    /// when a reused one failed before any response byte, else on another
    /// upstream, after a connection failure before the response head or an
    /// answer in `retry_statuses`. Within the retry budget below.
    pub retry_idempotent: bool,
    /// Upstream statuses (500..=599) after which an idempotent request is
    /// retried on another upstream; none by default (nginx's default too:
    /// a 5xx is often the application's answer, not a broken upstream).
    pub retry_statuses: Vec<u16>,
    /// Retries on another upstream (after a connect error, when nothing was
    /// sent and any request may go elsewhere, and the idempotent retries of
    /// `retry_idempotent`): this share of the requests of the current
    /// window, 0.0..=1.0...
    pub retry_budget_ratio: f64,
    /// ...plus at least this many per window (0 and a ratio of 0 turn
    /// retries off)...
    pub retry_budget_min: u64,
    /// ...per window of this length.
    pub retry_budget_window: ConfigDuration,
    /// The upstream URLs of `urls`, parsed by [`Config::validate`]; the
    /// demo upstream's is added at start when `urls` is empty.
    #[serde(skip)]
    pub uris: Vec<Uri>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout: ConfigDuration::from_secs(30),
            connect_timeout: ConfigDuration::from_secs(5),
            pool_idle_timeout: ConfigDuration::from_secs(4),
            pool_max_idle: 1024,
            pool_max_connections: 1024,
            pool_wait_timeout: ConfigDuration::from_secs(1),
            balance: Balance::default(),
            retry_idempotent: true,
            retry_statuses: Vec::new(),
            retry_budget_ratio: 0.2,
            retry_budget_min: 10,
            retry_budget_window: ConfigDuration::from_secs(10),
            uris: Vec::new(),
        }
    }
}

/// `upstream.balance`: how the next upstream is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices: of two upstreams, the one with fewer requests
    /// awaiting a response head (measured in docs/architecture.md).
    #[default]
    P2c,
    /// Each upstream in turn.
    RoundRobin,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one line per event (colors on a terminal).
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directives; the `RUST_LOG` variable wins when set.
    pub filter: String,
    /// Emit one `gateway::access` event per request.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
            access_log: true,
        }
    }
}

/// `[demo]` section: the embedded demo upstream's fault injection and
/// capacity model at start (changeable at run time through `/demo/faults`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Fraction of demo-upstream requests answered with 500, 0.0..=1.0.
    pub error_rate: f64,
    /// Latency added to every demo-upstream response.
    pub latency: ConfigDuration,
    /// Requests the demo upstream serves at once; the others wait first
    /// come, first served in an unbounded queue, and finish even when their
    /// client left. 0 (the default) = unlimited.
    pub slots: usize,
    /// How long each request holds its slot (default 0).
    pub service_time: ConfigDuration,
}

// === loading ===

/// A configuration error, ready to print: it names the key (and the line when
/// the file gives one).
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about `key`.
    pub fn key(key: &str, msg: impl fmt::Display) -> Self {
        Self(format!("invalid configuration: `{key}`: {msg}"))
    }
}

impl Config {
    /// Reads and parses a TOML file (no validation; see [`Config::validate`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// Parses TOML text; `origin` only labels errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let mut msg = format!("invalid config file {}", origin.display());
            if let Some(span) = e.span() {
                let (line_no, key) = locate_key(text, span.start);
                match key {
                    Some(key) => msg.push_str(&format!(": key `{key}` (line {line_no})")),
                    None => msg.push_str(&format!(" (line {line_no})")),
                }
            }
            msg.push_str(": ");
            msg.push_str(e.message());
            ConfigError(msg)
        })
    }

    /// The one validation pass: checks every value the types cannot express,
    /// every section included (`[ratelimit]`, `[breaker]`, `[batch]`, ...),
    /// and fills in the parsed upstream URIs (`upstream.uris`). Errors name
    /// the key. The builders run on a validated configuration afterwards
    /// cannot fail on configuration grounds.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let mut upstreams = Vec::with_capacity(self.upstream.urls.len());
        for (i, url) in self.upstream.urls.iter().enumerate() {
            upstreams.push(parse_upstream(&format!("upstream.urls[{i}]"), url)?);
        }
        if !(0.0..=1.0).contains(&self.demo.error_rate) {
            return Err(ConfigError::key(
                "demo.error_rate",
                format!("{} is not within 0.0..=1.0", self.demo.error_rate),
            ));
        }
        if self.demo.slots > crate::upstream::MAX_SLOTS {
            return Err(ConfigError::key(
                "demo.slots",
                format!(
                    "{} is more than {} (0 = unlimited)",
                    self.demo.slots,
                    crate::upstream::MAX_SLOTS
                ),
            ));
        }
        if self.demo.service_time.get() > crate::upstream::MAX_SERVICE_TIME {
            return Err(ConfigError::key(
                "demo.service_time",
                format!("{} is longer than 1h", self.demo.service_time),
            ));
        }
        let s = &self.server;
        // A zero here would close every connection (or fail every request)
        // at once: never what an operator meant.
        for (key, d) in [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.first_bytes_timeout", s.first_bytes_timeout),
            ("server.idle_timeout", s.idle_timeout),
            (
                "server.http2_keep_alive_interval",
                s.http2_keep_alive_interval,
            ),
            (
                "server.http2_keep_alive_timeout",
                s.http2_keep_alive_timeout,
            ),
            ("server.body_timeout", s.body_timeout),
            ("upstream.timeout", self.upstream.timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            (
                "upstream.pool_wait_timeout",
                self.upstream.pool_wait_timeout,
            ),
            (
                "upstream.pool_idle_timeout",
                self.upstream.pool_idle_timeout,
            ),
            ("shutdown.flush_deadline", self.shutdown.flush_deadline),
        ] {
            positive(key, d)?;
        }
        if s.workers > MAX_WORKERS {
            return Err(ConfigError::key(
                "server.workers",
                format!("{} is more than {MAX_WORKERS} threads", s.workers),
            ));
        }
        at_least_one("server.max_connections", s.max_connections as u64)?;
        at_least_one("server.max_in_flight", s.max_in_flight as u64)?;
        at_least_one(
            "server.http2_max_concurrent_streams",
            u64::from(s.http2_max_concurrent_streams),
        )?;
        at_least_one("server.max_request_body", s.max_request_body)?;
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB (it
        // panics), and a head above 1 MiB is an attack, not a request.
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&s.max_header_bytes) {
            return Err(ConfigError::key(
                "server.max_header_bytes",
                format!(
                    "{} is not within {MIN_HEADER_BYTES}..={MAX_HEADER_BYTES} bytes",
                    s.max_header_bytes
                ),
            ));
        }
        if !(1..=MAX_HEADERS).contains(&s.max_headers) {
            return Err(ConfigError::key(
                "server.max_headers",
                format!("{} is not within 1..={MAX_HEADERS}", s.max_headers),
            ));
        }
        if let Some(admin) = s.admin_listen
            && admin.port() != 0
            && admin == s.listen
        {
            return Err(ConfigError::key(
                "server.admin_listen",
                format!("{admin} is server.listen too; the admin surface needs its own address"),
            ));
        }
        if !(0.0..=1.0).contains(&self.upstream.retry_budget_ratio) {
            return Err(ConfigError::key(
                "upstream.retry_budget_ratio",
                format!(
                    "{} is not within 0.0..=1.0",
                    self.upstream.retry_budget_ratio
                ),
            ));
        }
        at_least_one(
            "upstream.pool_max_connections",
            self.upstream.pool_max_connections as u64,
        )?;
        if let Some(status) = self
            .upstream
            .retry_statuses
            .iter()
            .find(|s| !(500..=599).contains(*s))
        {
            return Err(ConfigError::key(
                "upstream.retry_statuses",
                format!("{status} is not a 5xx status"),
            ));
        }
        if self.upstream.pool_max_idle > MAX_POOL_IDLE {
            return Err(ConfigError::key(
                "upstream.pool_max_idle",
                format!("must be at most {MAX_POOL_IDLE}"),
            ));
        }
        // The pattern sections, with the same checks their builders make.
        let upstream_count = upstreams.len().max(1);
        crate::ratelimit::validate(&self.ratelimit)?;
        crate::breaker::validate(&self.breaker)?;
        crate::limit::validate(&self.limit)?;
        crate::batch::layer(&self.batch)?;
        crate::scatter::check(&self.scatter, upstream_count)?;
        crate::hedge::settings(&self.hedge)?;
        crate::cpu::validate(&self.cpu)?;
        crate::access_log::validate(&self.access_log)?;
        self.upstream.uris = upstreams;
        Ok(())
    }
}

/// Most runtime worker threads `server.workers` may ask for.
const MAX_WORKERS: usize = 1024;

/// Smallest `server.max_header_bytes`: hyper's smallest HTTP/1 read buffer.
const MIN_HEADER_BYTES: usize = 8 * 1024;

/// Largest `server.max_header_bytes`.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Most header fields `server.max_headers` may allow.
const MAX_HEADERS: usize = 10_000;

/// Most idle connections `upstream.pool_max_idle` may keep per upstream.
const MAX_POOL_IDLE: usize = 1 << 20;

fn positive(key: &str, d: ConfigDuration) -> Result<(), ConfigError> {
    if d.get().is_zero() {
        return Err(ConfigError::key(key, "must be greater than 0"));
    }
    Ok(())
}

fn at_least_one(key: &str, n: u64) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::key(key, "must be at least 1"));
    }
    Ok(())
}

/// An `http://host[:port]` upstream base URL.
fn parse_upstream(key: &str, url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| ConfigError::key(key, format!("{url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(ConfigError::key(
            key,
            format!("{url:?}: only http:// upstreams are supported"),
        ));
    }
    if uri.authority().is_none() {
        return Err(ConfigError::key(key, format!("{url:?}: missing host")));
    }
    if !matches!(
        uri.path_and_query().map(|p| p.as_str()),
        None | Some("/") | Some("")
    ) {
        return Err(ConfigError::key(
            key,
            format!("{url:?}: must not have a path or query"),
        ));
    }
    Ok(uri)
}

/// Finds the 1-based line of `offset` and the dotted key defined there
/// (`[table]` header above + the key left of `=`), so an error about a value
/// names its key even when the parser only reports a position.
fn locate_key(text: &str, offset: usize) -> (usize, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    // `[table]` or `[[array]]`, comments after the brackets ignored.
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    };
    // An error on a table header (an unknown section) names that section.
    if let Some(table) = header(line) {
        return (line_no, Some(table).filter(|t| !t.is_empty()));
    }
    let table = text[..line_start].lines().rev().find_map(header);
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty());
    let key = match (table, key) {
        (Some(t), Some(k)) if !t.is_empty() => Some(format!("{t}.{k}")),
        (_, Some(k)) => Some(k),
        _ => None,
    };
    (line_no, key)
}
