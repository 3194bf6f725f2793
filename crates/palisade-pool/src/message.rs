//! What travels from a caller to a worker.

use tokio::sync::oneshot;
use tower::BoxError;

/// The channel a caller is answered on: exactly one send per job (or the
/// sender is dropped, which the caller reads as "the workers are gone").
pub(crate) type Tx<Resp> = oneshot::Sender<Result<Resp, BoxError>>;

/// One queued job.
pub(crate) struct Job<Req, Resp> {
    pub(crate) req: Req,
    pub(crate) tx: Tx<Resp>,
    /// Submission order across the whole pool: a worker with keyed jobs of
    /// its own and shared jobs waiting takes the older of the two heads.
    pub(crate) seq: u64,
    /// The caller's span, so the worker runs the job inside it.
    pub(crate) span: tracing::Span,
}
