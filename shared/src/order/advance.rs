//! [`advance`]: the one statement that moves orders on. Whatever moves an order (a step's end, a retry, a
//! cancellation, an operator's action, the reconciler) describes the move as a [`Move`] and this writes it: the
//! order row (status, cancel reason, current step, job, reservation hold, last error), the transition's event
//! (the only writer of `order_events` after creation, with the per-order sequence), the step attempt it ends, and
//! the next job (through the queue's one piece of job SQL, [`crate::step_job_inserts!`]). For many orders at once
//! it is still one statement, one round trip.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::flow::{Ending, Step};
use crate::order::{CancelReason, OrderRow, PlannedTransition, Transition, TransitionError};
use crate::queue::{self, NextJob};
use crate::step_log::AttemptStatus;

/// One order's move. The caller holds the order's row lock (and read `order` under it), so the move is
/// validated against the order as it is.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    pub order: &'a OrderRow,
    /// The step attempt the move ends, if it ends one.
    pub attempt: Option<AttemptEnd<'a>>,
    pub transition: Option<Transition>,
    /// The customer's (or operator's) words given with a cancellation.
    pub cancel_note: Option<String>,
    /// The job queued next; it becomes the order's `job_id` and its step the order's `current_step`.
    pub next: Option<NextJob>,
    /// The reservation is held until this long from now.
    pub hold_for: Option<Duration>,
    /// The last error a step met, for operators (not progress: `updated_at` stays).
    pub last_error: Option<String>,
    /// For a move that parks the saga: the compensation it parks in (its `current_step`, where it resumes).
    pub parked_in: Option<Step>,
    /// The shipment the transition's event names (`order.shipped`, `order.shipment_failed`).
    pub shipment_id: Option<Uuid>,
    /// The refund the transition's event names (`order.refunded`, `order.refund_failed`).
    pub refund_id: Option<Uuid>,
    /// New work a client asked for (a shipment, a cancel of the rest): progress, as a transition is, so the
    /// order's `updated_at` moves and it does not count as stuck. A retry is not progress.
    pub progress: bool,
    /// A transition that leaves the order's current step as it is (a return's event while a step runs); without
    /// it a transition with no next job ends the saga's current step.
    pub keeps_step: bool,
}

/// Which attempt of which step, run by whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptOf<'a> {
    pub step: Step,
    pub number: u32,
    /// Its STARTED row, written before a remote call; without one a row is written with its end.
    pub log_id: Option<i64>,
    /// The worker instance, recorded with a new row.
    pub worker: &'a str,
}

/// How a step attempt ends in a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd<'a> {
    pub of: AttemptOf<'a>,
    pub status: AttemptStatus,
    pub note: Option<String>,
}

impl<'a> Move<'a> {
    /// A move that writes nothing yet.
    pub fn new(order: &'a OrderRow) -> Self {
        Self {
            order,
            attempt: None,
            transition: None,
            cancel_note: None,
            next: None,
            hold_for: None,
            last_error: None,
            parked_in: None,
            shipment_id: None,
            refund_id: None,
            progress: false,
            keeps_step: false,
        }
    }

    /// New work a client asked for: `step` queued as the order's current step, as progress.
    pub fn client_asked(order: &'a OrderRow, step: Step) -> Self {
        Self {
            next: Some(NextJob::first(step)),
            progress: true,
            ..Self::new(order)
        }
    }

    /// The end of an attempt as the step decided it.
    pub fn ending(order: &'a OrderRow, attempt: AttemptOf<'a>, ending: Ending) -> Self {
        Self {
            last_error: ending.for_operators.then(|| ending.note.clone()).flatten(),
            attempt: Some(AttemptEnd {
                of: attempt,
                status: ending.status,
                note: ending.note,
            }),
            transition: ending.transition,
            // A wait queues the step's own next attempt, later; otherwise the step that follows, at once.
            next: match ending.wait {
                Some(delay) => Some(NextJob {
                    step: attempt.step,
                    attempt: attempt.number + 1,
                    delay: Some(delay),
                    trace: None,
                }),
                None => ending.next.map(NextJob::first),
            },
            hold_for: ending.hold_for,
            shipment_id: ending.shipment,
            refund_id: ending.refund,
            // A wait is progress (the payment moved to waiting); a retry is not.
            progress: ending.wait.is_some(),
            ..Self::new(order)
        }
    }
}

/// One move as the statement reads it: an array of JSON objects, one per move, instead of two dozen arrays of
/// columns. An array (`unnest($1::jsonb[])`), not one JSON array (`jsonb_to_recordset`): PostgreSQL's planner knows
/// how many elements an array parameter has and plans index lookups for that many orders; it takes any set
/// function's output for 100 rows, and then hash-joined `orders` and `saga_steps` with full scans (seen in
/// EXPLAIN on a bench database: every move scanned both tables).
/// Every persisted name is its `name()` / `as_str()`, as everywhere else, never serde's spelling of the enum.
#[derive(Debug, Serialize)]
struct MoveRow<'a> {
    id: Uuid,
    worker: Option<&'a str>,
    step: Option<&'static str>,
    attempt: Option<i32>,
    log_id: Option<i64>,
    log_status: Option<&'static str>,
    log_note: Option<&'a str>,
    undo: Option<&'static str>,
    to_status: Option<&'static str>,
    cancel_reason: Option<&'static str>,
    cancel_note: Option<&'a str>,
    event_id: Option<Uuid>,
    event_type: Option<&'static str>,
    from_status: Option<&'static str>,
    event_reason: Option<&'static str>,
    set_step: bool,
    current_step: Option<&'static str>,
    job_id: Option<String>,
    job_step: Option<&'static str>,
    queue: Option<&'static str>,
    job_attempt: Option<i32>,
    run_after: Option<f64>,
    trace: Option<String>,
    hold_secs: Option<f64>,
    last_error: Option<&'a str>,
    /// Absent (not null) on every move but a shipment's, so the others' JSON stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    shipment_id: Option<Uuid>,
    /// Absent on every move but a refund's, likewise.
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_id: Option<Uuid>,
    /// Absent unless true, likewise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    progress: bool,
}

/// The statement. Composed with the queue's job inserts (the one piece of SQL that writes a job row), so not a `query!`.
/// The order row is written where the move changes it; the event's sequence is the order's next (the caller
/// holds the order's lock, so it cannot race). Public for the benchmark's copy (bench/pgbench), which a test
/// keeps equal to it.
pub const STATEMENT: &str = concat!(
    r#"with t as (
           select t.* from unnest($1::jsonb[]) as m(move), jsonb_to_record(m.move) as t(
               id uuid, worker text, step text, attempt integer, log_id bigint, log_status text, log_note text,
               undo text, to_status text, cancel_reason text, cancel_note text, event_id uuid, event_type text,
               from_status text, event_reason text, set_step boolean, current_step text, job_id text,
               job_step text, queue text, job_attempt integer, run_after double precision, trace text,
               hold_secs double precision, last_error text, shipment_id uuid, refund_id uuid,
               progress boolean)
       ),
       attempts_closed as (
           update saga_steps set status = t.log_status, error = t.log_note, finished_at = now()
           from t where saga_steps.id = t.log_id
       ),
       attempts_recorded as (
           insert into saga_steps (order_id, step, attempt, status, undo, worker, error, finished_at)
           select t.id, t.step, t.attempt, t.log_status, t.undo, t.worker, t.log_note, now()
           from t where t.log_status is not null and t.log_id is null
       ),
       o as (
           update orders
           set status = coalesce(t.to_status, orders.status),
               cancel_reason = coalesce(t.cancel_reason, orders.cancel_reason),
               cancel_note = coalesce(t.cancel_note, orders.cancel_note),
               current_step = case when t.set_step then t.current_step else orders.current_step end,
               job_id = coalesce(t.job_id, orders.job_id),
               reserved_until = coalesce(now() + make_interval(secs => t.hold_secs), orders.reserved_until),
               last_error = coalesce(t.last_error, orders.last_error),
               updated_at = case when t.to_status is null and not coalesce(t.progress, false) then orders.updated_at
                                 else now() end
           from t
           where orders.id = t.id
             and (t.to_status is not null or t.job_id is not null or t.hold_secs is not null
                  or t.last_error is not null)
           returning orders.id, orders.trace_id
       ),
       events as (
           insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason,
                                     shipment_id, refund_id)
           select t.event_id, t.id,
                  coalesce((select max(sequence) from order_events x where x.order_id = t.id), 0) + 1,
                  t.event_type, t.from_status, t.to_status, t.event_reason, t.shipment_id, t.refund_id
           from t where t.to_status is not null
       ),
       new_jobs as (
           select t.id as order_id, t.job_id, t.job_step as step, t.queue, t.job_attempt as attempt,
                  t.run_after as delay_secs,
                  coalesce(t.trace, case when o.trace_id ~ '^[0-9a-f]{32}$' then o.trace_id end) as trace
           from t join o on o.id = t.id
           where t.job_id is not null
       ),
       "#,
    crate::step_job_inserts!(),
    r#"
       select count(*) from o"#
);

/// Writes `moves` (each for a different order) in one statement, in the caller's transaction: per move the
/// attempt's row (closing its STARTED row, or a new one), the order row (written once), the transition's event
/// and the next job. Every transition is validated against the table first; an invalid one writes nothing at
/// all. Returns each move's transition as planned, for the caller to log in the order's span; counts
/// cancellations started in `orderflow_compensations_total`.
#[tracing::instrument(level = "debug", skip_all, fields(moves = moves.len()), err)]
pub async fn advance(
    conn: &mut PgConnection,
    moves: &[Move<'_>],
) -> Result<Vec<Option<PlannedTransition>>, TransitionError> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let planned = moves
        .iter()
        .map(|m| {
            m.transition
                .as_ref()
                .map(|t| PlannedTransition::new(m.order, t))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<MoveRow<'_>> = moves
        .iter()
        .zip(&planned)
        .map(|(m, p)| {
            // current_step: the queued job's step; a parked saga's compensation; nothing once a transition
            // leaves no job (the saga is over); else as it is.
            let current_step = match (&m.next, &m.transition) {
                (Some(next), _) => Some(Some(next.step)),
                (None, Some(Transition::Park)) => Some(m.parked_in),
                (None, Some(_)) if m.keeps_step => None,
                (None, Some(_)) => Some(None),
                (None, None) => None,
            };
            MoveRow {
                id: m.order.id,
                worker: m.attempt.as_ref().map(|a| a.of.worker),
                step: m.attempt.as_ref().map(|a| a.of.step.name()),
                attempt: m
                    .attempt
                    .as_ref()
                    .map(|a| crate::step_log::attempt_number(a.of.number)),
                log_id: m.attempt.as_ref().and_then(|a| a.of.log_id),
                log_status: m.attempt.as_ref().map(|a| a.status.as_str()),
                log_note: m.attempt.as_ref().and_then(|a| a.note.as_deref()),
                undo: m.attempt.as_ref().and_then(|a| a.of.step.undo()).map(Step::name),
                to_status: p.as_ref().map(|p| p.to.as_str()),
                cancel_reason: p.as_ref().and_then(|p| p.reason).map(CancelReason::as_str),
                cancel_note: m.cancel_note.as_deref(),
                event_id: p.as_ref().map(|_| Uuid::now_v7()),
                event_type: p.as_ref().map(|p| p.event_type.as_str()),
                from_status: p.as_ref().map(|p| p.from.as_str()),
                event_reason: p.as_ref().and_then(|p| p.event_reason).map(CancelReason::as_str),
                set_step: current_step.is_some(),
                current_step: current_step.flatten().map(Step::name),
                job_id: m.next.map(|_| queue::new_job_id()),
                job_step: m.next.map(|n| n.step.name()),
                queue: m.next.map(|n| n.step.queue()),
                job_attempt: m.next.map(|n| crate::step_log::attempt_number(n.attempt)),
                run_after: m.next.map(|n| n.delay.map_or(0.0, |d| d.as_secs_f64())),
                trace: m.next.and_then(|n| n.trace).map(|t| t.to_string()),
                hold_secs: m.hold_for.map(|d| d.as_secs_f64()),
                last_error: m.last_error.as_deref(),
                shipment_id: m.shipment_id,
                refund_id: m.refund_id,
                progress: m.progress,
            }
        })
        .collect();

    sqlx::query(STATEMENT)
        .bind(rows.iter().map(sqlx::types::Json).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    for p in planned.iter().flatten() {
        if let Some(reason) = p
            .reason
            .filter(|_| p.event_type == crate::events::EventType::CancellationStarted)
        {
            metrics::counter!("orderflow_compensations_total", "reason" => reason.as_str()).increment(1);
        }
    }
    Ok(planned)
}
