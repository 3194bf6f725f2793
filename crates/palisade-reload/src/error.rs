//! The error of a reload that did not take effect.

use std::fmt;
use std::sync::Arc;

use palisade_core::BoxError;

/// Where a rejected reload failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading, parsing or validating the new value (the `load` closure of
    /// [`Reloader::reload_with`](crate::Reloader::reload_with)).
    Load,
    /// Building the service from it (the reloader's build function).
    Build,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Load => "load",
            Self::Build => "build",
        })
    }
}

/// A reload that did not take effect; the previous version keeps serving.
///
/// The [`source`](std::error::Error::source) is the error of the failed
/// step, whose message names the offending field when the loader's or
/// builder's errors do (as palisade's `ConfigError`s and the gateway's do).
#[derive(Debug)]
pub enum ReloadError {
    /// The new value was refused before anything was published.
    Rejected {
        /// The reloader's name.
        name: Arc<str>,
        /// The step that failed.
        stage: Stage,
        /// The version still serving.
        serving: u64,
        /// Why.
        source: BoxError,
    },
    /// The new version was published, failed the health check, and the
    /// previous value was published again as a newer version.
    RolledBack {
        /// The reloader's name.
        name: Arc<str>,
        /// The version that failed its health check.
        failed: u64,
        /// The version carrying the previous value again.
        restored: u64,
        /// The health check's error.
        source: BoxError,
    },
}

impl ReloadError {
    /// `"rejected"` or `"rolled_back"`, the `result` label of the reload
    /// counter.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::RolledBack { .. } => "rolled_back",
        }
    }

    /// The version serving after this failed reload.
    pub fn serving(&self) -> u64 {
        match self {
            Self::Rejected { serving, .. } => *serving,
            Self::RolledBack { restored, .. } => *restored,
        }
    }
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                name,
                stage,
                serving,
                source,
            } => write!(
                f,
                "reload of `{name}` rejected at {stage}, version {serving} keeps serving: {source}"
            ),
            Self::RolledBack {
                name,
                failed,
                restored,
                source,
            } => write!(
                f,
                "reload of `{name}`: version {failed} failed its health check and was rolled back \
                 (previous value restored as version {restored}): {source}"
            ),
        }
    }
}

impl std::error::Error for ReloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected { source, .. } | Self::RolledBack { source, .. } => Some(&**source),
        }
    }
}
