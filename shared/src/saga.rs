//! The saga step log (`saga_steps`): a row per step attempt, written before the step's side effect and saying
//! what undoes it, then closed with its outcome. The reconciler and operators read it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct StepRow {
    pub id: i64,
    pub order_id: Uuid,
    pub step: String,
    pub attempt: i32,
    pub status: String,
    pub undo: Option<String>,
    pub worker: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Opens a step attempt (STARTED) and returns its id.
pub async fn start(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    step: &str,
    attempt: u32,
    undo: Option<&str>,
    worker: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r#"insert into saga_steps (order_id, step, attempt, status, undo, worker)
           values ($1, $2, $3, 'STARTED', $4, $5) returning id"#,
    )
    .bind(order_id)
    .bind(step)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(undo)
    .bind(worker)
    .fetch_one(executor)
    .await
}

/// Closes a step attempt with SUCCEEDED, FAILED or SKIPPED.
pub async fn finish(
    executor: impl PgExecutor<'_>,
    id: i64,
    status: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("update saga_steps set status = $2, error = $3, finished_at = now() where id = $1")
        .bind(id)
        .bind(status)
        .bind(error)
        .execute(executor)
        .await?;
    Ok(())
}

pub async fn for_order(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(
        r#"select id, order_id, step, attempt, status, undo, worker, error, started_at, finished_at
           from saga_steps where order_id = $1 order by id"#,
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}
