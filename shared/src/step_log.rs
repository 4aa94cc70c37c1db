//! The saga's step log (`saga_steps`): a row per step attempt. A step with a remote side effect commits its
//! attempt as STARTED, saying what undoes it, before the call; every attempt is closed with its outcome. The
//! reconciler and operators read it. Attempts end through `order::advance` (the statement that moves the order);
//! a failed attempt is recorded by [`fail_attempt`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::flow::Step;

/// The status of one attempt. Persisted: never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptStatus {
    /// Written before a remote call; the call's outcome is not recorded yet.
    Started,
    Succeeded,
    Failed,
    /// The step found its work overtaken (the order left the step's state while a remote call was out).
    Skipped,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 4] = [Self::Started, Self::Succeeded, Self::Failed, Self::Skipped];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

stored_as_text!(AttemptStatus);

/// Opens an attempt of `step` (STARTED, with the compensation that undoes it) for each (order, attempt number),
/// in one statement; returns each order's row id. The caller holds the orders' row locks.
pub async fn start_many(
    executor: impl PgExecutor<'_>,
    step: Step,
    attempts: &[(Uuid, u32)],
    worker: &str,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let ids: Vec<Uuid> = attempts.iter().map(|(id, _)| *id).collect();
    let numbers: Vec<i32> = attempts.iter().map(|(_, a)| attempt_number(*a)).collect();
    let started = sqlx::query!(
        r#"insert into saga_steps (order_id, step, attempt, status, undo, worker)
           select a.order_id, $3, a.attempt, 'STARTED', $4, $5
           from unnest($1::uuid[], $2::integer[]) as a(order_id, attempt)
           returning order_id, id"#,
        &ids,
        &numbers,
        step.name(),
        step.undo().map(Step::name),
        worker
    )
    .fetch_all(executor)
    .await?;
    Ok(started.into_iter().map(|row| (row.order_id, row.id)).collect())
}

/// Records attempt `attempt` of `step` as FAILED with `error`: its STARTED rows (written before a remote call)
/// are closed, or, if the attempt's own transaction rolled back and left none, a FAILED row is written, so every
/// failed attempt is in the log.
pub async fn fail_attempt(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: Step,
    attempt: u32,
    worker: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"with closed as (
               update saga_steps set status = 'FAILED', error = $4, finished_at = now()
               where order_id = $1 and step = $2 and attempt = $3 and status = 'STARTED'
               returning id
           )
           insert into saga_steps (order_id, step, attempt, status, undo, worker, error, finished_at)
           select $1, $2, $3, 'FAILED', $5, $6, $4, now()
           where not exists (select 1 from closed)"#,
        order_id,
        step.name(),
        attempt_number(attempt),
        error,
        step.undo().map(Step::name),
        worker
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The highest attempt of `step` in the order's log (0 if none).
pub async fn last_attempt(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    step: Step,
) -> Result<u32, sqlx::Error> {
    let attempt = sqlx::query_scalar!(
        "select max(attempt) from saga_steps where order_id = $1 and step = $2",
        order_id,
        step.name()
    )
    .fetch_one(executor)
    .await?;
    Ok(attempt.and_then(|a| u32::try_from(a).ok()).unwrap_or(0))
}

/// Closes the open (STARTED) attempts of worker processes that are gone as FAILED, so the log says what
/// happened to them; returns how many. An attempt of a live worker is never touched: its instance still has its
/// presence connection (see `queue::upkeep`).
pub async fn close_attempts_of_gone_workers(executor: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let closed = sqlx::query!(
        r#"update saga_steps
           set status = 'FAILED', error = 'worker ' || worker || ' is gone', finished_at = now()
           where status = 'STARTED'
             and worker not in (select application_name from pg_stat_activity where application_name <> '')"#
    )
    .execute(executor)
    .await?;
    Ok(closed.rows_affected())
}

/// One attempt of one step, as operators see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    pub step: Step,
    pub attempt: i32,
    pub status: AttemptStatus,
    /// The compensation that undoes it.
    pub undo: Option<Step>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<f64>,
}

/// The order's attempts, in the order they started.
pub async fn attempts_of(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as!(
        Attempt,
        r#"select step as "step: _", attempt, status as "status: _", undo as "undo: _", worker, error, started_at,
                  finished_at, (extract(epoch from finished_at - started_at) * 1000)::float8 as duration_ms
           from saga_steps where order_id = $1 order by id"#,
        order_id
    )
    .fetch_all(executor)
    .await
}

pub(crate) fn attempt_number(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_statuses_round_trip() {
        for status in AttemptStatus::ALL {
            assert_eq!(AttemptStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(AttemptStatus::parse("started"), None);
    }
}
