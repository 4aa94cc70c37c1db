//! Saga jobs: the stable queue names and the payload, and enqueueing inside the caller's transaction.
//!
//! A job exists iff the transaction that enqueued it commits (`enqueue` writes it on the caller's
//! connection). Queue names are persisted in `apalis.jobs.job_type`: never rename one.

use std::sync::LazyLock;
use std::time::Duration;

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

/// How often apalis itself re-runs a job whose handler returned an error (it does so at once, with no backoff).
/// Our handlers return an error only when they could not even record a failure (the database is gone); the
/// reconciler takes over a job that used these up.
pub const APALIS_MAX_ATTEMPTS: i32 = 3;

/// Enqueues `step` for `job` in the caller's transaction, to run after `delay`, records the new job as the
/// order's `job_id` (for a saga that is not over, the job named there is the one that moves it on) and the step
/// as its `current_step` (so a step handing over to the next needs no write of its own for it), and in
/// `saga_jobs`, and carries the order's trace id (the job's own, else the order's). Returns the job's id. The
/// caller holds the order's row lock; for an order that does not exist it writes nothing.
///
/// One statement, one round trip: it writes the apalis row itself, as `apalis_postgres::queries::push_tasks`
/// would (`queries/task/sink.sql` of apalis-postgres 1.0: same columns, status `Pending`, no metadata), and
/// builds the payload in SQL in `StepJob`'s JSON form. apalis's insert trigger notifies the queue's listeners
/// as for any insert. `saga::an_enqueued_job_is_the_step_job_apalis_hands_the_worker` in the tests pins the payload to what `StepJob` reads.
pub async fn enqueue(
    conn: &mut PgConnection,
    step: Step,
    job: StepJob,
    delay: Option<Duration>,
) -> Result<String, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "with o as (update orders set job_id = $2, current_step = $3 where id = $1 returning id, trace_id), {} \
             select 1",
            job_ctes(2)
        )
    });
    let job_id = new_job_id();
    bind_job(
        sqlx::query(sqlx::AssertSqlSafe(STATEMENT.as_str())).bind(job.order_id),
        &job_id,
        step,
        &job,
        delay,
    )
    .execute(&mut *conn)
    .await?;
    Ok(job_id)
}

/// A fresh job id: a ULID, so ids sort by creation.
pub fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// The two CTEs that write a step job for the order in CTE `o` (its `id` and `trace_id`): the `saga_jobs` row
/// and the apalis row. Their seven parameters start at `$first`, in `bind_job`'s order. Data-modifying CTEs run
/// whether or not the statement reads them, so a statement can end in any `select`.
pub(crate) fn job_ctes(first: usize) -> String {
    let [job, step, attempt, queue, trace, max_attempts, delay] =
        std::array::from_fn(|i| format!("${}", first + i));
    format!(
        r#"s as (insert into saga_jobs (job_id, order_id, step, attempt) select {job}, id, {step}, {attempt} from o),
           j as (insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
                 select {job}, {queue},
                        convert_to(jsonb_strip_nulls(jsonb_build_object(
                            'order_id', o.id,
                            'attempt', {attempt}::integer,
                            'trace', coalesce({trace}, case when o.trace_id ~ '^[0-9a-f]{{32}}$' then o.trace_id end)
                        ))::text, 'UTF8'),
                        'Pending', 0, {max_attempts}, now() + make_interval(secs => {delay}), 0, ''::hstore
                 from o)"#
    )
}

/// Binds `job_ctes`'s seven parameters, in order.
pub(crate) fn bind_job<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    job_id: &str,
    step: Step,
    job: &StepJob,
    delay: Option<Duration>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(job_id.to_owned())
        .bind(step.name())
        .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
        .bind(step.queue())
        .bind(job.trace.map(|t| t.to_string()))
        .bind(APALIS_MAX_ATTEMPTS)
        .bind(delay.map_or(0.0, |d| d.as_secs_f64()))
}

/// How every OrderFlow queue worker talks to apalis-postgres (the worker and `orderflow-queue-bench` share it):
///
/// - `batch_size` jobs per fetch: one round trip and one commit claim up to that many (a fetch with batch 1 is
///   a durable commit per job, which capped a queue at a few hundred jobs/s). Fetched jobs wait in the worker's
///   buffer while its slots are busy; apalis sends no heartbeat meanwhile, so the batch stays at most the
///   worker's concurrency: the buffer then drains within one step timeout, far inside apalis's five-minute
///   orphan window (a job re-run anyway is harmless: every step is idempotent).
/// - No lock event: apalis would write `Running` in one more transaction before each job starts. A claimed job
///   stays `Queued` under its worker's name until its result is written; our recovery, apalis's and the admin
///   views all treat `Queued` and `Running` alike.
/// - No result writes by apalis: its statement scans every job the worker ever ran. The handler reports to a
///   [`crate::completion::Completer`] instead, which writes them by id, in batches.
pub fn queue_config(queue: &str, batch_size: usize) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(queue)
        .batch_size(batch_size.max(1))
        .lock_tasks(false)
        .persist_results(false)
}
