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
//! [`ConfigDuration`], which the pattern sections reuse.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer};

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
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout: ConfigDuration,
    /// Accept HTTP/2 with prior knowledge (h2c) besides HTTP/1.1.
    pub http2: bool,
    /// Close a client connection whose request head has not arrived in time.
    pub header_read_timeout: ConfigDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            shutdown_timeout: ConfigDuration::from_secs(30),
            http2: true,
            header_read_timeout: ConfigDuration::from_secs(30),
        }
    }
}

/// `[upstream]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Upstream base URLs (`http://host:port`), used round robin. Empty =
    /// start the embedded demo upstream.
    pub urls: Vec<String>,
    /// Time allowed from forwarding a request to the upstream's response
    /// head; slower answers become 504.
    pub timeout: ConfigDuration,
    /// Time allowed to open a TCP connection to an upstream.
    pub connect_timeout: ConfigDuration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: ConfigDuration,
    /// Most idle connections kept per upstream.
    pub pool_max_idle: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout: ConfigDuration::from_secs(30),
            connect_timeout: ConfigDuration::from_secs(5),
            pool_idle_timeout: ConfigDuration::from_secs(90),
            pool_max_idle: 1024,
        }
    }
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

/// `[demo]` section: the embedded demo upstream's fault injection at start
/// (changeable at run time through `/demo/faults`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Fraction of demo-upstream requests answered with 500, 0.0..=1.0.
    pub error_rate: f64,
    /// Latency added to every demo-upstream response.
    pub latency: ConfigDuration,
}

// === impl ConfigDuration ===

/// A duration written with a unit: `"250ms"`, `"30s"`, `"1.5s"`, `"2m"`,
/// `"1h"`, `"500us"`, `"0"`. Deserializes from a TOML string and parses
/// from a command-line flag (`FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// Whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// The `std` duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Self {
        d.0
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

impl FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `"250ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`, `"500us"` or `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration {s:?}, expected a number with a unit like \"250ms\" or \"30s\"")
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| err())
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

    /// Checks values the types cannot express; errors name the key.
    pub fn validate(&self) -> Result<Vec<Uri>, ConfigError> {
        let mut upstreams = Vec::with_capacity(self.upstream.urls.len());
        for (i, url) in self.upstream.urls.iter().enumerate() {
            let key = format!("upstream.urls[{i}]");
            let uri: Uri = url
                .parse()
                .map_err(|e| ConfigError::key(&key, format!("{url:?}: {e}")))?;
            if uri.scheme_str() != Some("http") {
                return Err(ConfigError::key(
                    &key,
                    format!("{url:?}: only http:// upstreams are supported"),
                ));
            }
            if uri.authority().is_none() {
                return Err(ConfigError::key(&key, format!("{url:?}: missing host")));
            }
            if !matches!(
                uri.path_and_query().map(|p| p.as_str()),
                None | Some("/") | Some("")
            ) {
                return Err(ConfigError::key(
                    &key,
                    format!("{url:?}: must not have a path or query"),
                ));
            }
            upstreams.push(uri);
        }
        if !(0.0..=1.0).contains(&self.demo.error_rate) {
            return Err(ConfigError::key(
                "demo.error_rate",
                format!("{} is not within 0.0..=1.0", self.demo.error_rate),
            ));
        }
        if self.upstream.timeout.get().is_zero() {
            return Err(ConfigError::key(
                "upstream.timeout",
                "must be greater than 0",
            ));
        }
        if self.upstream.connect_timeout.get().is_zero() {
            return Err(ConfigError::key(
                "upstream.connect_timeout",
                "must be greater than 0",
            ));
        }
        Ok(upstreams)
    }
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

// === command line ===

/// Command-line flags; each one overrides the matching key of `--config`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "gateway",
    about = "palisade example reverse proxy: every palisade pattern wired into one hyper gateway"
)]
pub struct Cli {
    /// TOML configuration file (see docs/gateway.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address (`server.listen`), port 0 = ephemeral.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Upstream base URL, repeatable for round robin (`upstream.urls`).
    #[arg(long = "upstream", value_name = "URL")]
    pub upstreams: Vec<String>,
    /// Upstream response-head timeout, e.g. 2s (`upstream.timeout`).
    #[arg(long, value_name = "DURATION")]
    pub upstream_timeout: Option<ConfigDuration>,
    /// Log format (`log.format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Drain deadline after SIGINT/SIGTERM (`shutdown.drain_deadline`,
    /// `server.shutdown_timeout`).
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<ConfigDuration>,
    /// Runtime worker threads, 0 = available CPUs (`server.workers`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Disable the per-request access log (`log.access_log = false`).
    #[arg(long)]
    pub no_access_log: bool,
    /// Serve only the demo upstream on `--listen` (a benchmark upstream).
    #[arg(long)]
    pub demo_upstream_only: bool,
}

impl Cli {
    /// Loads `--config` (if any), applies the flags over it and validates.
    pub fn load(&self) -> Result<(Config, Vec<Uri>), ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if !self.upstreams.is_empty() {
            config.upstream.urls = self.upstreams.clone();
        }
        if let Some(t) = self.upstream_timeout {
            config.upstream.timeout = t;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        if let Some(t) = self.shutdown_timeout {
            config.server.shutdown_timeout = t;
            // The flag wins over `shutdown.drain_deadline` from the file.
            config.shutdown.drain_deadline = Some(t);
        }
        if let Some(w) = self.workers {
            config.server.workers = w;
        }
        if self.no_access_log {
            config.log.access_log = false;
        }
        let upstreams = config.validate()?;
        Ok((config, upstreams))
    }
}
