//! What travels between stages.

use crate::error::Error;

/// One item on its way: its sequence number (position in the input) and
/// its value, or the error a stage failed it with. Failed items keep
/// travelling so ordered stages can release them in their place and the
/// output sees every admitted item exactly once.
#[derive(Debug)]
pub(crate) struct Item<T> {
    pub(crate) seq: u64,
    pub(crate) value: Result<T, Error>,
}
