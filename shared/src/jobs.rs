//! Saga jobs: the stable queue names and the payload, and enqueueing inside the caller's transaction.
//!
//! A job exists iff the transaction that enqueued it commits (`apalis_postgres::queries::push_tasks` on our
//! connection). Queue names are persisted in `apalis.jobs.job_type`: never rename one.

use std::time::Duration;

use apalis_postgres::PgTask;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::order::OrderStatus;

/// One saga step or compensation; each has its own apalis queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    Reserve,
    Pay,
    Commit,
    Fulfil,
    ReleaseInventory,
    CancelPayment,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Self::Reserve,
        Self::Pay,
        Self::Commit,
        Self::Fulfil,
        Self::ReleaseInventory,
        Self::CancelPayment,
    ];

    /// The apalis queue (job_type) of the step.
    pub fn queue(self) -> &'static str {
        match self {
            Self::Reserve => "orderflow.reserve",
            Self::Pay => "orderflow.pay",
            Self::Commit => "orderflow.commit",
            Self::Fulfil => "orderflow.fulfil",
            Self::ReleaseInventory => "orderflow.release_inventory",
            Self::CancelPayment => "orderflow.cancel_payment",
        }
    }

    /// The step's name in the step log and in `orders.current_step`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Pay => "pay",
            Self::Commit => "commit",
            Self::Fulfil => "fulfil",
            Self::ReleaseInventory => "release_inventory",
            Self::CancelPayment => "cancel_payment",
        }
    }

    pub fn is_compensation(self) -> bool {
        matches!(self, Self::ReleaseInventory | Self::CancelPayment)
    }

    /// The order status the step runs from; in any other status the step has nothing to do.
    pub fn runs_from(self) -> OrderStatus {
        match self {
            Self::Reserve => OrderStatus::Created,
            Self::Pay => OrderStatus::Reserved,
            Self::Commit | Self::Fulfil => OrderStatus::Paid,
            Self::ReleaseInventory | Self::CancelPayment => OrderStatus::Cancelling,
        }
    }

    /// The compensation that undoes the step's effect, recorded in the step log before the effect happens.
    /// Compensation always starts with releasing stock; cancel_payment follows it.
    pub fn undo(self) -> Option<Step> {
        match self {
            Self::Reserve | Self::Commit => Some(Self::ReleaseInventory),
            Self::Pay => Some(Self::CancelPayment),
            Self::Fulfil | Self::ReleaseInventory | Self::CancelPayment => None,
        }
    }
}

/// The payload of every saga job: which order, and which attempt of the step this is (1-based). Steps read
/// everything else from the database under the order's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJob {
    pub order_id: Uuid,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("failed to encode the job: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("failed to enqueue the job: {0}")]
    Queue(#[from] apalis_postgres::Error),
}

/// Enqueues `step` for `job` in the caller's transaction, to run after `delay` (whole seconds: apalis stores
/// run_at in seconds).
pub async fn enqueue(
    conn: &mut PgConnection,
    step: Step,
    job: StepJob,
    delay: Option<Duration>,
) -> Result<(), EnqueueError> {
    let mut builder = apalis::prelude::TaskBuilder::new(serde_json::to_vec(&job)?);
    if let Some(delay) = delay {
        builder = builder.run_after(delay);
    }
    let task: PgTask = builder.build();
    apalis_postgres::queries::push_tasks(conn, step.queue(), vec![task]).await?;
    Ok(())
}
