//! The saga step log (`saga_steps`): a row per step attempt, written before the step's side effect and saying
//! what undoes it, then closed with its outcome. The reconciler and operators read it.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::jobs::{self, Step};
use crate::order::{ORDER_COLUMNS, OrderRow, PlannedTransition, Transition, TransitionError};

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

/// Opens an attempt of `step` for each (order, attempt), as `start` does, in one statement; returns each
/// order's log id. The caller holds the orders' row locks.
pub async fn start_many(
    executor: impl PgExecutor<'_>,
    step: Step,
    attempts: &[(Uuid, u32)],
    worker: &str,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let ids: Vec<Uuid> = attempts.iter().map(|(id, _)| *id).collect();
    let numbers: Vec<i32> = attempts.iter().map(|(_, a)| attempt_number(*a)).collect();
    sqlx::query_as(
        r#"insert into saga_steps (order_id, step, attempt, status, undo, worker)
           select a.order_id, $3, a.attempt, $4, $5, $6 from unnest($1::uuid[], $2::integer[]) as a(order_id, attempt)
           returning order_id, id"#,
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(step.name())
    .bind(status::STARTED)
    .bind(step.undo().map(Step::name))
    .bind(worker)
    .fetch_all(executor)
    .await
}

/// How one order's step attempt ends when a step runs for many orders at once (see `end_many`).
#[derive(Debug)]
pub struct Ending<'a> {
    /// The order, locked by the caller, as it was read.
    pub order: &'a OrderRow,
    /// The attempt's STARTED row, closed with `log_status` and `log_error`.
    pub log_id: i64,
    pub log_status: &'static str,
    pub log_error: Option<&'static str>,
    /// The state machine's move, if the step makes one.
    pub transition: Option<Transition>,
    /// The step queued next (its first attempt), if any; it becomes the order's `current_step` and `job_id`.
    pub next: Option<Step>,
    /// The reserve step's hold: the reservation is kept until this long from now.
    pub hold_for: Option<Duration>,
}

/// Ends many orders' step attempts in one statement: per order, what `transition`, `order::hold_reservation`,
/// `jobs::enqueue` (first attempt, the order's trace) and `finish` write one by one, with the order row written
/// once. Every transition is validated against the table first; an invalid one writes nothing at all. Returns
/// each ending's transition as written, for the caller to log in the order's own span.
pub async fn end_many(
    conn: &mut PgConnection,
    endings: &[Ending<'_>],
) -> Result<Vec<Option<PlannedTransition>>, TransitionError> {
    let planned = endings
        .iter()
        .map(|e| {
            e.transition
                .as_ref()
                .map(|t| PlannedTransition::new(e.order, t))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = endings.len();
    let mut ids = Vec::with_capacity(n);
    let mut log_ids = Vec::with_capacity(n);
    let mut log_statuses = Vec::with_capacity(n);
    let mut log_errors = Vec::with_capacity(n);
    let mut to_statuses = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut event_reasons = Vec::with_capacity(n);
    let mut event_ids = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut from_statuses = Vec::with_capacity(n);
    let mut next_steps = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut job_ids = Vec::with_capacity(n);
    let mut holds = Vec::with_capacity(n);
    for (e, p) in endings.iter().zip(&planned) {
        ids.push(e.order.id);
        log_ids.push(e.log_id);
        log_statuses.push(e.log_status);
        log_errors.push(e.log_error);
        to_statuses.push(p.as_ref().map(|p| p.to.as_str()));
        reasons.push(p.as_ref().and_then(|p| p.reason));
        event_reasons.push(p.as_ref().and_then(|p| p.event_reason.clone()));
        event_ids.push(p.as_ref().map(|_| Uuid::now_v7()));
        event_types.push(p.as_ref().map(|p| p.event_type.as_str()));
        from_statuses.push(p.as_ref().map(|p| p.from.as_str()));
        next_steps.push(e.next.map(Step::name));
        queues.push(e.next.map(Step::queue));
        job_ids.push(e.next.map(|_| jobs::new_job_id()));
        holds.push(e.hold_for.map(|d| d.as_secs_f64()));
    }
    // The order row is updated where the step moves it (a transition) or hands it on (a next job); the job
    // rows are written as `jobs::job_ctes` writes them (the payload built in SQL in `StepJob`'s JSON form).
    const STATEMENT: &str = r#"with t as (
                   select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                        $7::text[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[],
                                        $13::text[], $14::double precision[])
                       as t(id, log_id, log_status, log_error, to_status, reason, event_reason, event_id,
                            event_type, from_status, next_step, queue, job_id, hold_secs)
               ),
               l as (
                   update saga_steps set status = t.log_status, error = t.log_error, finished_at = now()
                   from t where saga_steps.id = t.log_id
               ),
               o as (
                   update orders
                   set status = coalesce(t.to_status, orders.status),
                       cancel_reason = coalesce(t.reason, orders.cancel_reason),
                       current_step = t.next_step,
                       job_id = coalesce(t.job_id, orders.job_id),
                       reserved_until = coalesce(now() + make_interval(secs => t.hold_secs), orders.reserved_until),
                       updated_at = case when t.to_status is null then orders.updated_at else now() end
                   from t
                   where orders.id = t.id and (t.to_status is not null or t.job_id is not null)
                   returning orders.id, orders.trace_id
               ),
               e as (
                   insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
                   select t.event_id, t.id,
                          coalesce((select max(sequence) from order_events x where x.order_id = t.id), 0) + 1,
                          t.event_type, t.from_status, t.to_status, t.event_reason
                   from t where t.to_status is not null
               ),
               s as (
                   insert into saga_jobs (job_id, order_id, step, attempt)
                   select t.job_id, t.id, t.next_step, 1 from t where t.job_id is not null
               ),
               j as (
                   insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority,
                                            metadata)
                   select t.job_id, t.queue,
                          convert_to(jsonb_strip_nulls(jsonb_build_object(
                              'order_id', o.id,
                              'attempt', 1,
                              'trace', case when o.trace_id ~ '^[0-9a-f]{32}$' then o.trace_id end
                          ))::text, 'UTF8'),
                          'Pending', 0, $15, now(), 0, ''::hstore
                   from t join o on o.id = t.id
                   where t.job_id is not null
               )
               select count(*) from o"#;
    sqlx::query(STATEMENT)
        .bind(&ids)
        .bind(&log_ids)
        .bind(&log_statuses)
        .bind(&log_errors)
        .bind(&to_statuses)
        .bind(&reasons)
        .bind(&event_reasons)
        .bind(&event_ids)
        .bind(&event_types)
        .bind(&from_statuses)
        .bind(&next_steps)
        .bind(&queues)
        .bind(&job_ids)
        .bind(&holds)
        .bind(jobs::APALIS_MAX_ATTEMPTS)
        .execute(&mut *conn)
        .await?;
    Ok(planned)
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
