//! `[access_log]`: the access log off the request path, on a
//! palisade-pipeline (see `docs/gateway.md`, "Access-log pipeline").
//!
//! ```text
//! request done ─try_send─▶ [buffer] ─▶ format ─▶ batch ─▶ write ─▶ stdout | file
//!              full? dropped, counted   JSON line   64 lines   one write
//! ```
//!
//! The request path pays one `try_send` of a small record (method, URI and
//! upstream are reference-counted clones, no formatting); the pipeline's
//! tasks format the line, gather `batch` lines (or whatever arrived within
//! `flush`, nginx's `access_log ... buffer= flush=`) and write them with one
//! call on the blocking pool. When the buffer is full the record is dropped
//! and counted in `gateway_access_log_dropped_total`, so a slow disk never
//! slows requests. At shutdown the `access-log` phase, after the requests
//! have drained, closes the buffer, pushes a flush marker behind the last
//! record and drains the pipeline: every record of a finished request is
//! written before the process exits.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use http::uri::Authority;
use http::{Method, Uri};
use metrics::Counter;
use palisade::pipeline::{PipelineBuilder, PipelineHandle, StageConfig, from_fn};
use palisade::shutdown::Phase;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::BoxError;

use crate::config::{ConfigDuration, ConfigError};

/// `[access_log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write the access log through the pipeline instead of a `tracing`
    /// event on the request path.
    pub pipeline: bool,
    /// Append to this file; unset: stdout.
    pub path: Option<PathBuf>,
    /// Records waiting for the pipeline before new ones are dropped.
    pub buffer: usize,
    /// Lines per write.
    pub batch: usize,
    /// Longest a line waits for its batch to fill.
    pub flush: ConfigDuration,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            pipeline: false,
            path: None,
            buffer: 4096,
            batch: 64,
            flush: ConfigDuration::from_millis(100),
        }
    }
}

/// One finished request, as the request path hands it over: clones that
/// copy no bytes.
#[derive(Debug)]
pub struct AccessRecord {
    /// Request method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// Response status.
    pub status: u16,
    /// Microseconds to the response head.
    pub latency_us: u64,
    /// The upstream, when the request went to one.
    pub upstream: Option<Authority>,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Route name.
    pub route: &'static str,
}

/// The line's fields, in order.
#[derive(Serialize)]
struct Line<'a> {
    method: &'a str,
    path: String,
    status: u16,
    latency_us: u64,
    upstream: &'a str,
    client: Option<IpAddr>,
    route: &'static str,
}

/// What travels: a record, or "write what you have" (the timer, shutdown).
#[derive(Debug)]
enum Entry {
    Record(AccessRecord),
    Flush,
}

/// The request path's end of the pipeline: a bounded channel and the
/// overflow counter, behind one `Arc` so a request clones one pointer.
#[derive(Debug, Clone)]
pub struct AccessLogSink(Arc<SinkInner>);

#[derive(Debug)]
struct SinkInner {
    tx: mpsc::Sender<Entry>,
    dropped: Counter,
}

impl AccessLogSink {
    /// Hands `record` over without waiting; a full buffer drops it (counted).
    pub fn record(&self, record: AccessRecord) {
        if self.0.tx.try_send(Entry::Record(record)).is_err() {
            self.0.dropped.increment(1);
        }
    }
}

/// The running access-log pipeline.
#[derive(Debug)]
pub struct AccessLog {
    /// Given to the telemetry layer.
    pub sink: AccessLogSink,
    handle: PipelineHandle,
    /// The shutdown phase's own sender: the flush marker goes in after the
    /// last record.
    flush_tx: mpsc::Sender<Entry>,
}

/// Checks `[access_log]` (part of `Config::validate`).
pub fn validate(config: &AccessLogConfig) -> Result<(), ConfigError> {
    if config.buffer == 0 {
        return Err(ConfigError::key("access_log.buffer", "must be at least 1"));
    }
    if config.batch == 0 {
        return Err(ConfigError::key("access_log.batch", "must be at least 1"));
    }
    Ok(())
}

/// Checks `[access_log]` and, when `pipeline = true`, starts the pipeline
/// (call inside the runtime, after the metrics recorder is installed).
pub fn start(config: &AccessLogConfig) -> Result<Option<AccessLog>, BoxError> {
    validate(config)?;
    if !config.pipeline {
        return Ok(None);
    }
    let out: Box<dyn Write + Send> = match &config.path {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("access_log.path {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let out = Arc::new(Mutex::new(out));
    let batch = config.batch;
    // The batch stage runs one call at a time (concurrency 1, ordered), so
    // its buffer needs no more than this uncontended lock.
    let pending = Arc::new(Mutex::new((Vec::<u8>::new(), 0usize)));
    let pipeline = PipelineBuilder::new("access-log")
        .stage(
            StageConfig::new("format").queue_capacity(256),
            from_fn(|entry: Entry| async move {
                let Entry::Record(r) = entry else {
                    return Ok::<_, serde_json::Error>(None);
                };
                let upstream = r.upstream.as_ref().map_or("-", Authority::as_str);
                let mut line = serde_json::to_vec(&Line {
                    method: r.method.as_str(),
                    path: r.uri.to_string(),
                    status: r.status,
                    latency_us: r.latency_us,
                    upstream,
                    client: r.client,
                    route: r.route,
                })?;
                line.push(b'\n');
                Ok(Some(line))
            }),
        )
        .stage(
            StageConfig::new("batch").queue_capacity(256),
            from_fn(move |line: Option<Vec<u8>>| {
                let pending = pending.clone();
                async move {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    let flush = match line {
                        Some(line) => {
                            p.0.extend_from_slice(&line);
                            p.1 += 1;
                            p.1 >= batch
                        }
                        None => p.1 > 0,
                    };
                    if !flush {
                        return Ok::<_, std::convert::Infallible>(None);
                    }
                    p.1 = 0;
                    Ok(Some(std::mem::take(&mut p.0)))
                }
            }),
        )
        // One write per batch, on the blocking pool: a slow disk stalls this
        // stage (and, once the buffer is full, drops records), never a
        // runtime worker.
        .stage(
            StageConfig::new("write").queue_capacity(4),
            from_fn(move |chunk: Option<Vec<u8>>| {
                let out = out.clone();
                async move {
                    let Some(chunk) = chunk else { return Ok(()) };
                    tokio::task::spawn_blocking(move || {
                        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                        out.write_all(&chunk)?;
                        out.flush()
                    })
                    .await??;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .build()
        .map_err(|e| ConfigError::key("access_log", e))?;
    let (tx, rx) = mpsc::channel(config.buffer);
    let (handle, output) = pipeline.run_channel(rx);
    // A failed write is logged; its lines are lost and counted by the
    // pipeline's error metric.
    tokio::spawn(output.for_each(|r| async move {
        if let Err(e) = r {
            tracing::warn!(error = %e, "access log write failed");
        }
    }));
    // The flush timer: a marker through the same queue, so it is ordered
    // with the records. Skipped when the buffer is full (lines then flow in
    // full batches anyway); ends when the pipeline closes.
    let ticker = tx.clone();
    let every = config.flush.get().max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(mpsc::error::TrySendError::Closed(_)) = ticker.try_send(Entry::Flush) {
                return;
            }
        }
    });
    metrics::describe_counter!(
        "gateway_access_log_dropped_total",
        "Access-log records dropped because the pipeline's buffer was full."
    );
    Ok(Some(AccessLog {
        sink: AccessLogSink(Arc::new(SinkInner {
            tx: tx.clone(),
            dropped: metrics::counter!("gateway_access_log_dropped_total"),
        })),
        handle,
        flush_tx: tx,
    }))
}

impl AccessLog {
    /// The `access-log` shutdown phase: run it after every request has been
    /// answered. Queues the flush marker behind the last record, then
    /// drains the pipeline (closing its buffer) within `deadline`.
    pub fn drain_phase(self, deadline: Duration) -> Phase {
        let AccessLog {
            sink,
            handle,
            flush_tx,
        } = self;
        Phase::new("access-log", deadline).action(move |ctx| async move {
            drop(sink);
            // Waits for room: the buffer is draining, so this is bounded by
            // the phase deadline like the rest.
            let _ = tokio::time::timeout_at(ctx.deadline(), flush_tx.send(Entry::Flush)).await;
            drop(flush_tx);
            let report = handle.drain_until(ctx.deadline()).await;
            // Flush markers are pipeline items too, so `completed` counts
            // them alongside the records.
            ctx.finished(format!("{} pipeline item(s) completed", report.completed));
            if report.total_cut() > 0 {
                let by_stage: Vec<String> = report
                    .cut
                    .iter()
                    .map(|(s, n)| format!("{s}: {n}"))
                    .collect();
                ctx.cut(format!(
                    "{} pipeline item(s) cut ({})",
                    report.total_cut(),
                    by_stage.join(", ")
                ));
            }
        })
    }
}
