//! Saga jobs: the stable queue names and the payload, and enqueueing inside the caller's transaction.
//!
//! A job exists iff the transaction that enqueued it commits (`apalis_postgres::queries::push_tasks` on our
//! connection). Queue names are persisted in `apalis.jobs.job_type`: never rename one.

use std::time::Duration;

use apalis::prelude::TaskId;
use apalis_postgres::PgTask;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::order::OrderStatus;
use crate::telemetry::TraceId;

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

    /// The step named `name` (as in the step log and `orders.current_step`).
    pub fn parse(name: &str) -> Option<Step> {
        Self::ALL.into_iter().find(|step| step.name() == name)
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
    /// The order's trace (set by `enqueue` from the order row), for the step's log span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceId>,
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
    #[error("failed to record the order's job: {0}")]
    Database(#[from] sqlx::Error),
}

/// How often apalis itself re-runs a job whose handler returned an error (it does so at once, with no backoff).
/// Our handlers return an error only when they could not even record a failure (the database is gone); the
/// reconciler takes over a job that used these up.
pub const APALIS_MAX_ATTEMPTS: usize = 3;

/// Enqueues `step` for `job` in the caller's transaction, to run after `delay` (whole seconds: apalis stores
/// run_at in seconds), records the new job as the order's `job_id` (for a saga that is not over, the job named
/// there is the one that moves it on) and in `saga_jobs`, and carries the order's trace id. Returns the job's id.
pub async fn enqueue(
    conn: &mut PgConnection,
    step: Step,
    job: StepJob,
    delay: Option<Duration>,
) -> Result<String, EnqueueError> {
    let id = ulid::Ulid::generate();
    let job_id = id.to_string();
    // One round trip for our bookkeeping: point the order at its new job, list the job under the order, and read
    // the order's trace id for the payload.
    let trace: Option<String> = sqlx::query_scalar(
        r#"with o as (update orders set job_id = $2 where id = $1 returning id, trace_id),
                s as (insert into saga_jobs (job_id, order_id, step, attempt) select $2, id, $3, $4 from o)
           select trace_id from o"#,
    )
    .bind(job.order_id)
    .bind(&job_id)
    .bind(step.name())
    .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    let job = StepJob {
        trace: trace.and_then(|t| t.parse().ok()),
        ..job
    };
    let mut builder = apalis::prelude::TaskBuilder::new(serde_json::to_vec(&job)?)
        .task_id(TaskId::from_ulid(id))
        .max_attempts(APALIS_MAX_ATTEMPTS);
    if let Some(delay) = delay {
        builder = builder.run_after(delay);
    }
    let task: PgTask = builder.build();
    apalis_postgres::queries::push_tasks(&mut *conn, step.queue(), vec![task]).await?;
    Ok(job_id)
}
