//! Deciding whether a call succeeded: palisade-core's one classifier shape,
//! shared with palisade-limit (which reads a failure as a drop).

pub use palisade_core::classify::{Classify, ClassifyFn, DefaultClassifier, Outcome, classify_fn};
