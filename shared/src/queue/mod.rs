//! The job queue: every statement on apalis's tables (`apalis.jobs`, `apalis.workers`) lives in this module and
//! its children, so the coupling to apalis-postgres's schema is in one place.
//!
//! - here: the payload of a saga job ([`StepJob`]), the SQL that writes a job row ([`step_job_inserts!`]) and how
//!   every OrderFlow queue worker talks to apalis ([`queue_config`]);
//! - [`announce`]: waking a queue's workers after the commit that queued its jobs (creation and step batches);
//! - [`completion`]: marking jobs Done or Failed, in batches;
//! - [`upkeep`]: what the reconciler repairs (jobs of gone workers, due queues, stranded sagas, old Done rows);
//! - [`views`]: what operators see of the queues and of a saga's jobs, and superseding a job.
//!
//! A job exists iff the transaction that enqueued it commits: jobs are written by the statement that moves the
//! order (`order::advance`, and order creation for the first one), on the caller's connection.

pub mod announce;
pub mod completion;
pub mod upkeep;
pub mod views;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::flow::Step;
use crate::telemetry::TraceId;

/// The payload of every saga job: which order, and which attempt of the step this is (1-based). Steps read
/// everything else from the database under the order's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepJob {
    pub order_id: Uuid,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The order's trace, for the step's log span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceId>,
}

fn first_attempt() -> u32 {
    1
}

/// How often apalis itself re-runs a job whose handler returned an error (it does so at once, with no backoff).
/// Our handlers return an error only when they could not even record a failure (the database is gone); the
/// reconciler takes over a job that used these up. Written into every job row by [`step_job_inserts!`].
pub const APALIS_MAX_ATTEMPTS: i32 = 3;

/// A job's status in `apalis.jobs`, as apalis-postgres 1.0 writes it (and as the admin API shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JobStatus {
    Pending,
    /// Fetched by a worker (apalis's lock event, which we turn off, would make it Running).
    Queued,
    Running,
    Done,
    Failed,
    Killed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        Self::Pending,
        Self::Queued,
        Self::Running,
        Self::Done,
        Self::Failed,
        Self::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Queued => "Queued",
            Self::Running => "Running",
            Self::Done => "Done",
            Self::Failed => "Failed",
            Self::Killed => "Killed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

stored_as_text!(JobStatus);

/// A fresh job id: a ULID, so ids sort by creation.
pub fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// The job a statement queues for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextJob {
    pub step: Step,
    pub attempt: u32,
    /// Runs this long after the commit (a retry's backoff); at once when `None`.
    pub delay: Option<std::time::Duration>,
    /// The trace the job carries; `None` takes the order's.
    pub trace: Option<TraceId>,
}

impl NextJob {
    /// The first attempt of `step`, at once, with the order's trace.
    pub fn first(step: Step) -> Self {
        Self {
            step,
            attempt: 1,
            delay: None,
            trace: None,
        }
    }
}

/// The SQL that writes step jobs, the one piece of SQL that does: for each row of a CTE named `new_jobs`
/// (`order_id uuid, job_id text, step text, queue text, attempt integer, delay_secs double precision,
/// trace text`), the apalis row, with the payload built in [`StepJob`]'s JSON form, and its `saga_jobs` row (a
/// saga's record of its jobs, which outlives apalis's Done rows). It adds two CTEs after `new_jobs` and takes no
/// parameters of its own; the two statements that queue jobs, order creation (`order::insert`) and
/// `order::advance`, include it with `concat!`, so neither is a `query!` macro (sqlx's macros take one string
/// literal).
///
/// It writes what `apalis_postgres::queries::push_tasks` would (`queries/task/sink.sql` of apalis-postgres 1.0:
/// status `Pending`, no metadata); apalis's insert trigger notifies the queue's listeners as for any insert,
/// unless the transaction began with [`announce::begin_quiet`].
/// `max_attempts` is [`APALIS_MAX_ATTEMPTS`] (a unit test keeps them equal); `saga::an_enqueued_job_is_the_step_job_apalis_hands_the_worker`
/// in the tests pins the payload to what `StepJob` reads.
#[macro_export]
macro_rules! step_job_inserts {
    () => {
        r#"saga_job_rows as (
               insert into saga_jobs (job_id, order_id, step, attempt)
               select job_id, order_id, step, attempt from new_jobs
           ),
           apalis_job_rows as (
               insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
               select job_id, queue,
                      convert_to(jsonb_strip_nulls(jsonb_build_object(
                          'order_id', order_id, 'attempt', attempt, 'trace', trace))::text, 'UTF8'),
                      'Pending', 0, 3, now() + make_interval(secs => delay_secs), 0, ''::hstore
               from new_jobs
           )"#
    };
}

/// How every OrderFlow queue worker talks to apalis-postgres (the worker and `orderflow-queue-bench` share it):
///
/// - `fetch_size` jobs per fetch: one statement claims up to that many (a fetch per job capped a queue at a few
///   hundred jobs/s), and its commit does not wait for the disk (migration 20261204000003). Fetched jobs wait in
///   the worker's buffer (`poll::Paced`) while its slots are busy; the fetch stays at most the worker's
///   concurrency, so the buffer drains within one step timeout, far inside apalis's five-minute orphan window (a
///   job re-run anyway is harmless: every step is idempotent).
/// - No lock event: apalis would write `Running` in one more transaction before each job starts. A claimed job
///   stays `Queued` under its worker's name until its result is written; our recovery, apalis's and the admin
///   views all treat `Queued` and `Running` alike.
/// - No result writes by apalis: its statement scans every job the worker ever ran. The handler reports to a
///   [`completion::Completer`] instead, which writes them by id, in batches.
pub fn queue_config(queue: &str, fetch_size: usize) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(queue)
        .batch_size(fetch_size.max(1))
        .lock_tasks(false)
        .persist_results(false)
}

/// Brings the order's waiting job of `step` (Pending, due later: a retry's backoff, a wait) forward to now;
/// answers whether there was one. A job that runs now or ran is left alone.
pub async fn wake(conn: &mut sqlx::PgConnection, order_id: Uuid, step: Step) -> Result<bool, sqlx::Error> {
    let woken = sqlx::query(
        r#"update apalis.jobs j set run_at = now()
           from saga_jobs s
           where s.order_id = $1 and s.step = $2 and j.id = s.job_id
             and j.status = 'Pending' and j.run_at > now()"#,
    )
    .bind(order_id)
    .bind(step)
    .execute(&mut *conn)
    .await?;
    Ok(woken.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_rows_carry_apalis_max_attempts() {
        assert!(
            step_job_inserts!().contains(&format!("'Pending', 0, {APALIS_MAX_ATTEMPTS}, now()")),
            "APALIS_MAX_ATTEMPTS and the job inserts disagree"
        );
    }

    #[test]
    fn job_statuses_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}
