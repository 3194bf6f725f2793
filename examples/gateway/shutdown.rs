//! Serving and the coordinated shutdown (palisade-shutdown).
//!
//! The gateway serves with [`palisade_shutdown::server::Server`] and, after
//! SIGTERM/SIGINT, runs these phases in order, each with its deadline:
//!
//! ```text
//!  SIGTERM ─▶ readiness-off   /readyz → 503 (/healthz stays 200)
//!             readiness-delay keep serving `shutdown.readiness_delay`
//!             stop-accepting  close the listener: new connections refused
//!             drain           new requests → 503 + Retry-After + Connection: close;
//!                             idle keep-alive connections closed at once, busy ones
//!                             finish (Connection: close / GOAWAY); at
//!                             `shutdown.drain_deadline` the rest is force-closed
//!             flush           [batch] closed: queued lookups sent at once and answered,
//!                             the rest cut at `shutdown.flush_deadline`; background
//!                             scope cancelled and awaited
//!             access-log      [access_log] pipeline = true: every record of a finished
//!                             request written, the rest cut at `shutdown.flush_deadline`
//!             close-backends  backend scope (the demo upstream) cancelled and awaited
//!          ─▶ exit 0, or 1 naming what was cut, or 3 when a second signal forced it
//! ```
//!
//! See `docs/shutdown.md` and `docs/architecture.md`.

use std::time::Duration;

use palisade_shutdown::server::ServerHandle;
use palisade_shutdown::{Drain, Error, Outcome, Phase, Scope, Shutdown};

use crate::config::Config;
use crate::routes::Readiness;

/// Deadline of the short bookkeeping phases.
const SHORT: Duration = Duration::from_secs(1);
/// Deadline of `close-backends`.
const CLOSE_BACKENDS: Duration = Duration::from_secs(5);

/// What the phases act on.
#[derive(Debug)]
pub struct Parts {
    /// Backs `/readyz`.
    pub readiness: Readiness,
    /// The drain layer's handle (slot 4 of the stack).
    pub drain: Drain,
    /// The servers' connections: one server, or one per worker in the
    /// thread-per-core mode (drained together, `workers.rs`).
    pub connections: Vec<ServerHandle>,
    /// The `[batch]` batcher, when on.
    pub batch: Option<palisade::batch::BatchHandle>,
    /// The `[access_log]` pipeline, when on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Background work to flush after the requests that feed it.
    pub background: Scope,
    /// Backends to close last.
    pub backends: Scope,
}

/// Registers the gateway's phases on `shutdown`, in order.
pub fn register(shutdown: &Shutdown, config: &Config, parts: Parts) -> Result<(), Error> {
    let Parts {
        readiness,
        drain,
        connections,
        batch,
        access_log,
        background,
        backends,
    } = parts;
    let settings = &config.shutdown;
    let drain_deadline = settings.drain_deadline(config);

    shutdown.add_phase(
        Phase::new("readiness-off", SHORT).action(move |_| async move {
            readiness.set_ready(false);
            tracing::info!("readiness off: /readyz answers 503");
        }),
    )?;
    shutdown.add_phase(Phase::delay(
        "readiness-delay",
        settings.readiness_delay.get(),
    ))?;
    shutdown.add_phase(Phase::new("stop-accepting", SHORT).action({
        let connections = connections.clone();
        move |_| async move {
            futures_util::future::join_all(connections.iter().map(ServerHandle::stop_accepting))
                .await;
        }
    }))?;
    // Force-closing thousands of connections and counting them may take
    // longer than the default grace after the deadline.
    let drain = match <[ServerHandle; 1]>::try_from(connections) {
        Ok([one]) => one.drain_phase("drain", drain_deadline, drain),
        Err(many) => crate::workers::drain_phase(many, drain_deadline, drain),
    };
    shutdown.add_phase(drain.cut_grace(SHORT))?;
    // The drain phase has answered every request, lookups included; what a
    // batcher still holds (nothing, unless a caller left) goes out here.
    let flush = match batch {
        Some(batch) => batch.drain_phase("flush", settings.flush_deadline.get()),
        None => Phase::new("flush", settings.flush_deadline.get()),
    };
    shutdown.add_phase(flush.cancel(&background).wait(&background))?;
    // Every request has been answered: no record arrives after this.
    shutdown.add_phase(match access_log {
        Some(log) => log.drain_phase(settings.flush_deadline.get()),
        None => Phase::new("access-log", settings.flush_deadline.get()),
    })?;
    shutdown.add_phase(
        Phase::new("close-backends", CLOSE_BACKENDS)
            .cancel(&backends)
            .wait(&backends),
    )?;
    Ok(())
}

/// Logs the end of the shutdown and picks the exit code: 0 when nothing was
/// cut, 1 when something was (named in the log), 3 when forced.
pub fn finish(outcome: &Outcome) -> u8 {
    if outcome.is_clean() {
        tracing::info!(elapsed = ?outcome.elapsed, "drained, exiting");
    } else {
        let cut: Vec<String> = outcome.cut().map(|(p, c)| format!("{p}: {c}")).collect();
        tracing::error!(
            code = outcome.code(),
            forced = outcome.forced,
            cut = %cut.join("; "),
            "shutdown cut work, exiting non-zero"
        );
    }
    for line in outcome.to_string().lines() {
        tracing::info!("{}", line.trim());
    }
    outcome.code()
}
