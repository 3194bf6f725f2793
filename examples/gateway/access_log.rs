//! `[access_log]`: the access log off the request path, on a
//! palisade-pipeline (see `docs/gateway.md`, "Access-log pipeline").
//!
//! ```text
//! request done ─try_send─▶ [buffer] ─▶ format ─▶ write = Batch(lines) ─▶ stdout | file
//!                  full? dropped, counted   (one task)   (one write per batch)
//! ```
//!
//! The request path pays one `try_send` of a small record; formatting and
//! the write happen on the pipeline's tasks, a batch of up to `batch` lines
//! per write, at least every `flush` (nginx's `access_log ... buffer=
//! flush=`). When the buffer is full the record is dropped and counted in
//! `gateway_access_log_dropped_total`, so a slow disk never slows requests.
//! At shutdown the `access-log` phase, after the requests have drained,
//! writes every record already accepted before the process exits: the
//! channel is closed, its records go through, and the batcher is closed
//! (so its last partial batch is written at once) when the write stage has
//! handed it everything.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use metrics::Counter;
use palisade::batch::{BatchLayer, Flush};
use palisade::pipeline::{PipelineBuilder, PipelineHandle, StageConfig, from_fn};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::{BoxError, Layer, service_fn};

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

/// One finished request, as the request path hands it over.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Microseconds to the response head.
    pub latency_us: u64,
    /// `host:port` of the upstream, or `-`.
    pub upstream: String,
    /// Client address.
    pub client: Option<IpAddr>,
    /// Route name.
    pub route: &'static str,
}

/// The request path's end of the pipeline: a bounded channel and the
/// overflow counter, behind one `Arc` so a request clones one pointer.
#[derive(Debug, Clone)]
pub struct AccessLogSink(Arc<SinkInner>);

#[derive(Debug)]
struct SinkInner {
    tx: mpsc::Sender<AccessRecord>,
    dropped: Counter,
}

impl AccessLogSink {
    /// Hands `record` over without waiting; a full buffer drops it (counted).
    pub fn record(&self, record: AccessRecord) {
        if self.0.tx.try_send(record).is_err() {
            self.0.dropped.increment(1);
        }
    }
}

/// The running access-log pipeline.
#[derive(Debug)]
pub struct AccessLog {
    /// Given to the telemetry layer.
    pub sink: AccessLogSink,
    /// Drained by the `access-log` shutdown phase.
    pub handle: PipelineHandle,
}

/// Checks `[access_log]` and, when `pipeline = true`, starts the pipeline
/// (call inside the runtime, after the metrics recorder is installed).
pub fn start(config: &AccessLogConfig) -> Result<Option<AccessLog>, BoxError> {
    if config.buffer == 0 {
        return Err(ConfigError::key("access_log.buffer", "must be at least 1").into());
    }
    if config.batch == 0 {
        return Err(ConfigError::key("access_log.batch", "must be at least 1").into());
    }
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
    // One write per batch, on the blocking pool: a slow disk stalls the
    // write stage (and, once the buffer is full, drops records), never a
    // runtime worker.
    let writer = service_fn(move |lines: Vec<String>| {
        let out = out.clone();
        async move {
            let n = lines.len();
            tokio::task::spawn_blocking(move || {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                out.write_all(lines.concat().as_bytes())?;
                out.flush()
            })
            .await??;
            Ok::<_, BoxError>(vec![(); n])
        }
    });
    let batcher = BatchLayer::builder()
        .name("access-log")
        .flush(Flush::Timer)
        .max_items(config.batch)
        .max_latency(config.flush.get())
        // Writes in order, one at a time.
        .max_in_flight(1)
        .queue_capacity(config.batch * 2)
        .build()
        .map_err(|e| ConfigError::key("access_log", e))?;
    let batch = batcher.handle();
    let write = batcher.layer(writer);
    let pipeline = PipelineBuilder::new("access-log")
        .stage(
            StageConfig::new("format").queue_capacity(256),
            from_fn(|r: AccessRecord| async move {
                let mut line = serde_json::to_string(&r)?;
                line.push('\n');
                Ok::<_, serde_json::Error>(line)
            }),
        )
        // Each call waits for its batch, so the stage needs `batch` calls in
        // flight to fill one.
        .stage(
            StageConfig::new("write")
                .concurrency(config.batch)
                .unordered()
                .queue_capacity(config.batch),
            write,
        )
        // At shutdown, once every record is in the batcher, write the last
        // partial batch at once instead of after `flush`.
        .flush_with(move || batch.close())
        .build()
        .map_err(|e| ConfigError::key("access_log", e))?;
    let (tx, rx) = mpsc::channel(config.buffer);
    let (handle, output) = pipeline.run_channel(rx);
    // Results are `()`; a failed write is logged (the line is lost, and
    // counted by the pipeline's error metric).
    tokio::spawn(output.for_each(|r| async move {
        if let Err(e) = r {
            tracing::warn!(error = %e, "access log write failed");
        }
    }));
    metrics::describe_counter!(
        "gateway_access_log_dropped_total",
        "Access-log records dropped because the pipeline's buffer was full."
    );
    Ok(Some(AccessLog {
        sink: AccessLogSink(Arc::new(SinkInner {
            tx,
            dropped: metrics::counter!("gateway_access_log_dropped_total"),
        })),
        handle,
    }))
}
