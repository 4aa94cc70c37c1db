//! What operators see of the queues and of one saga's jobs, and the one write an operator makes on a job:
//! superseding it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::flow::Step;
use crate::queue::JobStatus;

/// One queue's jobs by state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub queue: String,
    /// Due and waiting for a worker.
    pub pending: i64,
    /// Waiting for their time (retries with backoff).
    pub scheduled: i64,
    /// Fetched by a worker (Queued or Running).
    pub running: i64,
    /// Failed, with apalis attempts left (re-run at once).
    pub failed: i64,
    /// Killed, or failed with no attempt left: the reconciler settles their sagas.
    pub dead: i64,
    /// Age of the oldest due job, if any.
    pub oldest_pending_seconds: Option<f64>,
}

/// Every saga queue, in the flow's order, with zeros for the idle ones.
pub async fn queue_stats(executor: impl PgExecutor<'_>) -> Result<Vec<QueueStats>, sqlx::Error> {
    let names: Vec<&str> = Step::ALL.iter().map(|s| s.queue()).collect();
    sqlx::query_as!(
        QueueStats,
        r#"select q.queue as "queue!",
                  count(j.id) filter (where j.status = 'Pending' and j.run_at <= now()) as "pending!",
                  count(j.id) filter (where j.status = 'Pending' and j.run_at > now()) as "scheduled!",
                  count(j.id) filter (where j.status in ('Queued', 'Running')) as "running!",
                  count(j.id) filter (where j.status = 'Failed' and j.attempts < j.max_attempts) as "failed!",
                  count(j.id) filter (where j.status = 'Killed'
                                       or (j.status = 'Failed' and j.attempts >= j.max_attempts)) as "dead!",
                  extract(epoch from now() - min(j.run_at) filter (
                      where j.status = 'Pending' and j.run_at <= now()))::float8 as oldest_pending_seconds
           from unnest($1::text[]) with ordinality as q(queue, n)
           left join apalis.jobs j on j.job_type = q.queue and j.status <> 'Done'
           group by q.queue, q.n
           order by q.n"#,
        &names as &[&str]
    )
    .fetch_all(executor)
    .await
}

/// The saga backlog admission control reads (`crate::admission`): over the saga's queues, the sum of the age
/// of each one's oldest job that is due and not yet taken by a worker (zero when none waits). One probe of
/// apalis's fetch index per queue, in the order its workers fetch.
pub async fn saga_backlog(executor: impl PgExecutor<'_>) -> Result<std::time::Duration, sqlx::Error> {
    let names: Vec<&str> = Step::ALL.iter().map(|s| s.queue()).collect();
    let seconds = sqlx::query_scalar!(
        r#"select coalesce(sum(extract(epoch from now() - due.run_at)), 0)::float8 as "seconds!"
           from unnest($1::text[]) as q(job_type)
           cross join lateral (
               select j.run_at from apalis.jobs j
               where j.job_type = q.job_type and j.status = 'Pending' and j.run_at <= now()
               order by j.priority desc, j.run_at
               limit 1
           ) due"#,
        &names as &[&str]
    )
    .fetch_one(executor)
    .await?;
    Ok(std::time::Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default())
}

/// The apalis status of each of `job_ids` that still has a row (Done rows are purged after their retention).
pub async fn job_statuses(
    executor: impl PgExecutor<'_>,
    job_ids: &[&str],
) -> Result<HashMap<String, JobStatus>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, status as "status: JobStatus" from apalis.jobs where id = any($1)"#,
        job_ids as &[&str]
    )
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.status)).collect())
}

/// One job of a saga, as apalis has it now (`status` null once cleaned up).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaJob {
    pub id: String,
    pub step: Step,
    pub attempt: i32,
    pub enqueued_at: DateTime<Utc>,
    pub status: Option<JobStatus>,
    pub run_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub apalis_attempts: Option<i32>,
    pub done_at: Option<DateTime<Utc>>,
    pub last_result: Option<serde_json::Value>,
}

/// Every job enqueued for the order (from `saga_jobs`, which outlives apalis's rows), oldest first.
pub async fn jobs_of_order(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Vec<SagaJob>, sqlx::Error> {
    sqlx::query_as!(
        SagaJob,
        r#"select s.job_id as id, s.step as "step: _", s.attempt, s.created_at as enqueued_at,
                  j.status as "status?: _", j.run_at as "run_at?", j.lock_by as worker,
                  j.attempts as "apalis_attempts?", j.done_at, j.last_result
           from saga_jobs s left join apalis.jobs j on j.id = s.job_id
           where s.order_id = $1 order by s.created_at, s.job_id"#,
        order_id
    )
    .fetch_all(executor)
    .await
}

/// Whether the worker instance of an apalis worker name (`<queue>@<instance>#<generation>`) is connected.
pub async fn worker_alive(executor: impl PgExecutor<'_>, worker: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from pg_stat_activity
                          where application_name = substring($1 from '@([^@#]+)#[0-9]+$')) as "alive!""#,
        worker
    )
    .fetch_one(executor)
    .await
}

/// Marks the saga's job superseded (an operator retried or compensated the saga), so that two jobs never run
/// the same saga side by side: a waiting one always, a fetched one only if its worker is gone (`orphaned`).
/// Returns whether it was still open.
pub async fn supersede_job(
    executor: impl PgExecutor<'_>,
    job_id: &str,
    by: &str,
    orphaned: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        r#"update apalis.jobs set status = 'Killed', done_at = now(), lock_by = null,
               last_result = jsonb_build_object('Err', 'superseded by ' || $2)
           where id = $1
             and (status in ('Pending', 'Failed') or ($3 and status in ('Queued', 'Running')))"#,
        job_id,
        by,
        orphaned
    )
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}
