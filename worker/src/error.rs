//! How a step fails: transient (retry with backoff) or permanent (compensate), decided where the error happens.

use orderflow_shared::flow::Failure;
use orderflow_shared::order::{CancelReason, TransitionError};

use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth retrying: connection trouble, timeouts, 5xx, serialization failures.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Retrying cannot help: the saga must be compensated with `reason`.
    #[error("{error:#}")]
    Permanent {
        reason: CancelReason,
        error: anyhow::Error,
    },
}

impl StepError {
    pub fn permanent(reason: CancelReason, error: impl Into<anyhow::Error>) -> Self {
        Self::Permanent {
            reason,
            error: error.into(),
        }
    }

    /// The failure as the flow weighs it (see `flow::after_failure`).
    pub fn failure(&self) -> Failure {
        match self {
            Self::Transient(_) => Failure::Transient,
            Self::Permanent { reason, .. } => Failure::Permanent(*reason),
        }
    }

    /// The label of the step-duration metric's `outcome`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Transient(_) => "transient_error",
            Self::Permanent { .. } => "permanent_error",
        }
    }
}

/// Database errors are retried: transient ones cure themselves, and anything else is retried until the budget
/// runs out and the saga compensates.
impl From<sqlx::Error> for StepError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(anyhow::Error::new(error).context("database error"))
    }
}

impl From<TransitionError> for StepError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::Database(e) => e.into(),
            // The order row is locked and its status checked before every transition, so this is a bug.
            TransitionError::Invalid(e) => Self::permanent(CancelReason::StepFailed, e),
        }
    }
}

impl StepError {
    /// A provider error met while paying or capturing.
    pub fn from_provider(error: ProviderError) -> Self {
        match error {
            ProviderError::Transient(_) => Self::Transient(error.into()),
            ProviderError::Rejected { .. } => Self::permanent(CancelReason::PaymentFailed, error),
        }
    }
}
