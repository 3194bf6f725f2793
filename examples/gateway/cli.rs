//! Command-line flags ([`Cli`]); each one overrides a key of `--config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, ConfigDuration, ConfigError, LogFormat};

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
    /// Worker model: multi-thread or thread-per-core (`server.runtime`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub runtime: Option<crate::workers::RuntimeMode>,
    /// Disable the per-request access log (`log.access_log = false`).
    #[arg(long)]
    pub no_access_log: bool,
    /// Serve only the demo upstream on `--listen` (a benchmark upstream).
    #[arg(long)]
    pub demo_upstream_only: bool,
    /// Benchmark floor: forward to `--upstream` with the gateway's listener,
    /// pools and forwarding code but no policy layer (`bare.rs`).
    #[arg(long, conflicts_with = "demo_upstream_only")]
    pub bare: bool,
}

impl Cli {
    /// Loads `--config` (if any), applies the flags over it and validates
    /// the result in one pass ([`Config::validate`]).
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Applies the flags over `config` (a file just read, or re-read on a
    /// reload); validate afterwards.
    pub fn apply(&self, config: &mut Config) {
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
        if let Some(r) = self.runtime {
            config.server.runtime = r;
        }
        if self.no_access_log {
            config.log.access_log = false;
        }
    }
}
