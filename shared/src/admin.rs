//! What operators see and do: queue counts, sagas (stuck or not) with their steps, jobs, events and the
//! operators' own actions. Read by the admin API; the actions themselves live there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::jobs::Step;

/// One queue's jobs by state.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// Every saga queue, with zeros for the idle ones.
pub async fn queues(executor: impl PgExecutor<'_>) -> Result<Vec<QueueStats>, sqlx::Error> {
    let names: Vec<&str> = Step::ALL.iter().map(|s| s.queue()).collect();
    sqlx::query_as(
        r#"select q.queue,
                  count(j.id) filter (where j.status = 'Pending' and j.run_at <= now()) as pending,
                  count(j.id) filter (where j.status = 'Pending' and j.run_at > now()) as scheduled,
                  count(j.id) filter (where j.status in ('Queued', 'Running')) as running,
                  count(j.id) filter (where j.status = 'Failed' and j.attempts < j.max_attempts) as failed,
                  count(j.id) filter (where j.status = 'Killed'
                                       or (j.status = 'Failed' and j.attempts >= j.max_attempts)) as dead,
                  extract(epoch from now() - min(j.run_at) filter (
                      where j.status = 'Pending' and j.run_at <= now()))::float8 as oldest_pending_seconds
           from unnest($1::text[]) with ordinality as q(queue, n)
           left join apalis.jobs j on j.job_type = q.queue and j.status <> 'Done'
           group by q.queue, q.n
           order by q.n"#,
    )
    .bind(names)
    .fetch_all(executor)
    .await
}

/// Filters of the saga list.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    pub status: Option<String>,
    pub step: Option<String>,
    /// Created more than this long ago.
    pub older_than: Option<Duration>,
    /// `last_error` contains this (case-insensitive).
    pub error: Option<String>,
    /// Only sagas not over (live or NEEDS_ATTENTION) without progress for longer than this.
    pub stuck_after: Option<Duration>,
    /// The last id of the previous page.
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SagaSummary {
    pub id: Uuid,
    pub status: String,
    pub current_step: Option<String>,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
    pub cancel_reason: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The saga's last progress (a transition or a step handing over).
    pub last_progress_at: DateTime<Utc>,
    /// The apalis status of the job that should move it on.
    pub job_status: Option<String>,
}

pub async fn sagas(
    executor: impl PgExecutor<'_>,
    filter: &SagaFilter,
) -> Result<Vec<SagaSummary>, sqlx::Error> {
    sqlx::query_as(
        r#"select o.id, o.status, o.current_step, o.customer_id, o.total, o.currency, o.cancel_reason,
                  o.last_error, o.created_at, o.updated_at as last_progress_at, j.status as job_status
           from orders o
           left join apalis.jobs j on j.id = o.job_id
           where ($1::text is null or o.status = $1)
             and ($2::text is null or o.current_step = $2)
             and ($3::float8 is null or o.created_at < now() - make_interval(secs => $3))
             and ($4::text is null or o.last_error ilike '%' || $4 || '%')
             and ($5::float8 is null or (
                   o.status in ('CREATED', 'RESERVED', 'PAID', 'CANCELLING', 'NEEDS_ATTENTION')
                   and o.updated_at < now() - make_interval(secs => $5)))
             and ($6::uuid is null or o.id > $6)
           order by o.id
           limit $7"#,
    )
    .bind(filter.status.as_deref())
    .bind(filter.step.as_deref())
    .bind(filter.older_than.map(|d| d.as_secs_f64()))
    .bind(filter.error.as_deref())
    .bind(filter.stuck_after.map(|d| d.as_secs_f64()))
    .bind(filter.after)
    .bind(filter.limit)
    .fetch_all(executor)
    .await
}

/// Live sagas (or parked ones) without progress for longer than `after`.
pub async fn stuck_count(executor: impl PgExecutor<'_>, after: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r#"select count(*) from orders
           where status in ('CREATED', 'RESERVED', 'PAID', 'CANCELLING', 'NEEDS_ATTENTION')
             and updated_at < now() - make_interval(secs => $1)"#,
    )
    .bind(after.as_secs_f64())
    .fetch_one(executor)
    .await
}

/// One attempt of one step, from the step log.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepAttempt {
    pub step: String,
    pub attempt: i32,
    pub status: String,
    /// The compensation that undoes it.
    pub undo: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<f64>,
}

pub async fn steps(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<StepAttempt>, sqlx::Error> {
    sqlx::query_as(
        r#"select step, attempt, status, undo, worker, error, started_at, finished_at,
                  (extract(epoch from finished_at - started_at) * 1000)::float8 as duration_ms
           from saga_steps where order_id = $1 order by id"#,
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

/// One job of a saga, as apalis has it now (`status` null once cleaned up).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SagaJob {
    pub id: String,
    pub step: String,
    pub attempt: i32,
    pub enqueued_at: DateTime<Utc>,
    pub status: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub apalis_attempts: Option<i32>,
    pub done_at: Option<DateTime<Utc>>,
    pub last_result: Option<serde_json::Value>,
}

pub async fn jobs(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<SagaJob>, sqlx::Error> {
    sqlx::query_as(
        r#"select s.job_id as id, s.step, s.attempt, s.created_at as enqueued_at, j.status, j.run_at,
                  j.lock_by as worker, j.attempts as apalis_attempts, j.done_at, j.last_result
           from saga_jobs s left join apalis.jobs j on j.id = s.job_id
           where s.order_id = $1 order by s.created_at, s.job_id"#,
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

/// An operator's action on a saga.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AdminAction {
    pub action: String,
    pub actor: String,
    pub role: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

pub async fn actions(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<AdminAction>, sqlx::Error> {
    sqlx::query_as(
        "select action, actor, role, outcome, detail, created_at as at from admin_actions \
         where order_id = $1 order by id",
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

pub async fn record_action(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    action: &str,
    actor: &str,
    role: &str,
    outcome: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into admin_actions (order_id, action, actor, role, outcome, detail) values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(action)
    .bind(actor)
    .bind(role)
    .bind(outcome)
    .bind(detail)
    .execute(executor)
    .await?;
    Ok(())
}

/// Whether the worker instance of an apalis worker name (`<queue>@<instance>#<generation>`) is connected.
pub async fn worker_alive(executor: impl PgExecutor<'_>, worker: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from pg_stat_activity \
         where application_name = substring($1 from '@([^@#]+)#[0-9]+$'))",
    )
    .bind(worker)
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
    let done = sqlx::query(
        r#"update apalis.jobs set status = 'Killed', done_at = now(), lock_by = null,
               last_result = jsonb_build_object('Err', 'superseded by ' || $2)
           where id = $1
             and (status in ('Pending', 'Failed') or ($3 and status in ('Queued', 'Running')))"#,
    )
    .bind(job_id)
    .bind(by)
    .bind(orphaned)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Parses `90`, `90s`, `5m`, `2h`, `1d` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        for bad in ["", "m", "5 minutes", "-5m", "1.5h", "5w"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
