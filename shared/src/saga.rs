//! The saga step log (`saga_steps`): a row per step attempt, written before the step's side effect and saying
//! what undoes it, then closed with its outcome. The reconciler and operators read it.

use std::sync::LazyLock;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::jobs::Step;
use crate::order::{ORDER_COLUMNS, OrderRow};

/// Statuses of a step-log row; persisted, so never renamed.
pub mod status {
    pub const STARTED: &str = "STARTED";
    pub const SUCCEEDED: &str = "SUCCEEDED";
    pub const FAILED: &str = "FAILED";
    /// The step found its work overtaken (the order left the step's state while a remote call was out).
    pub const SKIPPED: &str = "SKIPPED";
}

/// A step's first statement: locks the order until the transaction ends and, if it is in the status `step`
/// runs from, opens the attempt (as `start` does) in the same round trip. `None`: no such order; a `None`
/// log id: the order is in another status and nothing was written.
pub async fn lock_and_start(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: Step,
    attempt: u32,
    worker: &str,
) -> Result<Option<(OrderRow, Option<i64>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        order: OrderRow,
        log_id: Option<i64>,
    }
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"with o as (select {ORDER_COLUMNS} from orders where id = $1 for update),
                    s as (insert into saga_steps (order_id, step, attempt, status, undo, worker)
                          select id, $2, $3, $5, $6, $7 from o where status = $4
                          returning id)
               select o.*, (select id from s) as log_id from o"#
        )
    });
    let locked: Option<Locked> = sqlx::query_as(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(order_id)
        .bind(step.name())
        .bind(attempt_number(attempt))
        .bind(step.runs_from().as_str())
        .bind(status::STARTED)
        .bind(step.undo().map(Step::name))
        .bind(worker)
        .fetch_optional(conn)
        .await?;
    Ok(locked.map(|l| (l.order, l.log_id)))
}

/// Opens a step attempt (STARTED, with the compensation that undoes the step) and returns its id.
pub async fn start(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    step: Step,
    attempt: u32,
    worker: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r#"insert into saga_steps (order_id, step, attempt, status, undo, worker)
           values ($1, $2, $3, $4, $5, $6) returning id"#,
    )
    .bind(order_id)
    .bind(step.name())
    .bind(attempt_number(attempt))
    .bind(status::STARTED)
    .bind(step.undo().map(Step::name))
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

/// Closes the STARTED rows of a failed attempt as FAILED with `error`. If the attempt's own transaction rolled
/// back (so it left no row), writes a FAILED row instead: every failed attempt is in the log.
pub async fn fail_attempt(
    conn: &mut PgConnection,
    order_id: Uuid,
    step: Step,
    attempt: u32,
    worker: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let closed = sqlx::query(
        r#"update saga_steps set status = $5, error = $4, finished_at = now()
           where order_id = $1 and step = $2 and attempt = $3 and status = $6"#,
    )
    .bind(order_id)
    .bind(step.name())
    .bind(attempt_number(attempt))
    .bind(error)
    .bind(status::FAILED)
    .bind(status::STARTED)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if closed == 0 {
        let id = start(&mut *conn, order_id, step, attempt, worker).await?;
        finish(&mut *conn, id, status::FAILED, Some(error)).await?;
    }
    Ok(())
}

fn attempt_number(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}
