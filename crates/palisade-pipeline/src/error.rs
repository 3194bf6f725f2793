//! Error types: an item's failure ([`Error`]) and a rejected configuration
//! ([`ConfigError`]).

use std::fmt;
use std::sync::Arc;

use tower::BoxError;

/// Why one item did not make it through the pipeline. It names the stage
/// that failed it and the item's sequence number (its position in the
/// input, from 0), and comes out of the output in the item's place; the
/// later stages pass it along without calling their services.
///
/// `Clone` (the cause sits behind an `Arc`) so fan-out branches can each
/// receive it.
#[derive(Debug, Clone)]
pub struct Error {
    stage: Arc<str>,
    seq: u64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Failed(Arc<BoxError>),
    Panicked(Arc<str>),
}

impl Error {
    pub(crate) fn failed(stage: Arc<str>, seq: u64, err: BoxError) -> Self {
        Self {
            stage,
            seq,
            kind: Kind::Failed(Arc::new(err)),
        }
    }

    pub(crate) fn panicked(
        stage: Arc<str>,
        seq: u64,
        payload: &(dyn std::any::Any + Send),
    ) -> Self {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Self {
            stage,
            seq,
            kind: Kind::Panicked(msg.into()),
        }
    }

    /// The name of the stage that failed the item.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The item's sequence number: its position in the input, from 0.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the stage panicked (in `poll_ready`, `call` or its future)
    /// rather than returning an error.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Panicked(_))
    }

    /// The stage service's own error, when it returned one.
    pub fn service_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match &self.kind {
            Kind::Failed(e) => Some(&***e),
            Kind::Panicked(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Failed(e) => write!(f, "stage {:?} failed item {}: {e}", self.stage, self.seq),
            Kind::Panicked(m) => write!(
                f,
                "stage {:?} panicked on item {}: {m}",
                self.stage, self.seq
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Failed(e) => Some(&***e),
            Kind::Panicked(_) => None,
        }
    }
}

/// A pipeline setting [`PipelineBuilder::build`](crate::PipelineBuilder::build)
/// refused: it names the stage (if any), the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    stage: Option<String>,
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(stage: Option<&str>, field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            stage: stage.map(str::to_owned),
            field,
            reason: reason.into(),
        }
    }

    /// The stage whose setting is wrong, or `None` for a pipeline setting.
    pub fn stage(&self) -> Option<&str> {
        self.stage.as_deref()
    }

    /// The setting, as its builder method is named (`concurrency`,
    /// `reorder_window`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stage {
            Some(s) => write!(f, "pipeline stage {s:?}: `{}` {}", self.field, self.reason),
            None => write!(f, "pipeline: `{}` {}", self.field, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}
