//! The saga's flow, written down once: the steps in order and every rule about each of them (its queue, the
//! status it runs from, where its success takes the order and what runs next, what undoes it, the cancel reason
//! its failure gives, its attempt budget), where a saga in a given state resumes, what follows a failed attempt,
//! and how an attempt ends. The worker's runner, the reconciler, the operator actions and the API read it here;
//! none of them restates it.
//!
//! ```text
//! forward:      reserve ──▶ pay ──▶ commit ──▶ fulfil
//!               CREATED     RESERVED  PAID      PAID (captured) ──▶ FULFILLED
//!                  └─ out of stock ──▶ CANCELLED
//! a shipment order (`Fulfilment::Shipment`): reserve ──▶ pay (multicapture) ──▶ PAID, waiting for shipments;
//!               each shipment: ship (capture its part, its units leave stock) ──▶ PARTIALLY_FULFILLED,
//!               and once nothing is left to ship: fulfil ──▶ FULFILLED; or, cancelled after a shipment,
//!               release_rest (the units not shipped, the hold's remainder) ──▶ FULFILLED
//! cancellation: any forward state but PARTIALLY_FULFILLED ──▶ CANCELLING: release_inventory ──▶ cancel_payment ──▶ CANCELLED
//!                                     a compensation out of attempts ──▶ NEEDS_ATTENTION (an operator resumes it)
//! ```
//!
//! The status moves themselves are the transition table, `order::OrderStatus::apply`; the rows they write are
//! `order::advance`'s.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::order::{
    self, CancelReason, Fulfilment, Move, OrderRow, OrderStatus, PlannedTransition, Transition,
    TransitionError,
};
use crate::payment::{self, PaymentStatus};
use crate::queue::NextJob;
use crate::step_log::AttemptStatus;

/// One saga step or compensation; each has its own queue. Persisted by name (`Step::name`) in the step log,
/// `orders.current_step` and `saga_jobs`, and by queue name in `apalis.jobs`: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Reserve,
    Pay,
    Commit,
    Fulfil,
    ReleaseInventory,
    CancelPayment,
    /// A shipment order's pending shipments, oldest first: the capture of each one's part, its units out of
    /// stock (`crate::shipment`). Not a compensation and never compensated: what shipped stays shipped.
    Ship,
    /// A PARTIALLY_FULFILLED order cancelled: the units not shipped go back to stock and the rest of the hold is
    /// released; what shipped stays shipped and captured, and the order ends FULFILLED.
    ReleaseRest,
    /// An order's accepted refunds, oldest first: captured money given back (`crate::refund`). The status stays;
    /// never compensated: what was refunded stays refunded.
    Refund,
}

impl Step {
    /// In the flow's order: the forward steps, then the compensations, then the steps after payment (ship and
    /// release_rest a shipment order's, refund any order's once some of its money is captured).
    pub const ALL: [Step; 9] = [
        Self::Reserve,
        Self::Pay,
        Self::Commit,
        Self::Fulfil,
        Self::ReleaseInventory,
        Self::CancelPayment,
        Self::Ship,
        Self::ReleaseRest,
        Self::Refund,
    ];

    /// The step a new order starts with; order creation queues it.
    pub const FIRST: Step = Self::Reserve;

    /// The step a cancellation starts with, from any state (see [`start_cancellation`]). Stock goes back first,
    /// then the money (void or refund), so a refund never precedes the release of what it paid for.
    pub const FIRST_COMPENSATION: Step = Self::ReleaseInventory;

    /// The queue (apalis `job_type`) of the step.
    pub fn queue(self) -> &'static str {
        match self {
            Self::Reserve => "orderflow.reserve",
            Self::Pay => "orderflow.pay",
            Self::Commit => "orderflow.commit",
            Self::Fulfil => "orderflow.fulfil",
            Self::ReleaseInventory => "orderflow.release_inventory",
            Self::CancelPayment => "orderflow.cancel_payment",
            Self::Ship => "orderflow.ship",
            Self::ReleaseRest => "orderflow.release_rest",
            Self::Refund => "orderflow.refund",
        }
    }

    /// The step's name in the step log, `orders.current_step` and `ORDERFLOW_WORKER_STEPS`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Pay => "pay",
            Self::Commit => "commit",
            Self::Fulfil => "fulfil",
            Self::ReleaseInventory => "release_inventory",
            Self::CancelPayment => "cancel_payment",
            Self::Ship => "ship",
            Self::ReleaseRest => "release_rest",
            Self::Refund => "refund",
        }
    }

    /// The step named `name`.
    pub fn parse(name: &str) -> Option<Step> {
        Self::ALL.into_iter().find(|step| step.name() == name)
    }

    /// Compensations undo forward steps; they run only in CANCELLING and never start another cancellation.
    pub fn is_compensation(self) -> bool {
        matches!(self, Self::ReleaseInventory | Self::CancelPayment)
    }

    /// The statuses the step runs from; in any other it has nothing to do (done already, or overtaken).
    pub fn runs_from(self) -> &'static [OrderStatus] {
        match self {
            Self::Reserve => &[OrderStatus::Created],
            Self::Pay => &[OrderStatus::Reserved],
            Self::Commit => &[OrderStatus::Paid],
            Self::Fulfil | Self::Ship => &[OrderStatus::Paid, OrderStatus::PartiallyFulfilled],
            Self::ReleaseInventory | Self::CancelPayment => &[OrderStatus::Cancelling],
            Self::ReleaseRest => &[OrderStatus::PartiallyFulfilled],
            Self::Refund => &[OrderStatus::PartiallyFulfilled, OrderStatus::Fulfilled],
        }
    }

    /// Whether the step runs from `status` ([`Step::runs_from`]).
    pub fn runs_in(self, status: OrderStatus) -> bool {
        self.runs_from().contains(&status)
    }

    /// The transition a success makes. Commit captures without a status of its own (the order stays PAID until
    /// fulfil), release_inventory hands over to cancel_payment, which ends the cancellation.
    pub fn on_success(self) -> Option<Transition> {
        match self {
            Self::Reserve => Some(Transition::Reserve),
            Self::Pay => Some(Transition::Pay),
            Self::Commit | Self::ReleaseInventory => None,
            Self::Fulfil => Some(Transition::Fulfil),
            Self::CancelPayment => Some(Transition::FinishCancel),
            Self::Ship => Some(Transition::Ship),
            Self::ReleaseRest => Some(Transition::Fulfil),
            Self::Refund => Some(Transition::Refund),
        }
    }

    /// The step queued when this one succeeds; `None` ends the saga (or, after a step after payment, leaves it
    /// waiting: such a step queues what the order has pending itself, `crate::pending::Pending::next_step`).
    pub fn next(self) -> Option<Step> {
        match self {
            Self::Reserve => Some(Self::Pay),
            Self::Pay => Some(Self::Commit),
            Self::Commit => Some(Self::Fulfil),
            Self::Fulfil | Self::CancelPayment | Self::Ship | Self::ReleaseRest | Self::Refund => None,
            Self::ReleaseInventory => Some(Self::CancelPayment),
        }
    }

    /// The step queued when this one succeeds for an order fulfilled by `fulfilment`: [`Step::next`], except that
    /// a shipment order's saga stops after pay, in PAID with its authorization open, and waits for shipments.
    pub fn next_for(self, fulfilment: Fulfilment) -> Option<Step> {
        match (self, fulfilment) {
            (Self::Pay, Fulfilment::Shipment) => None,
            _ => self.next(),
        }
    }

    /// A step after something shipped (ship, release_rest, refund): it can neither cancel (what shipped stays
    /// shipped) nor park, and an unknown outcome of its call may be an effect that happened, so it retries every
    /// failure.
    pub fn never_gives_up(self) -> bool {
        matches!(self, Self::Ship | Self::ReleaseRest | Self::Refund)
    }

    /// The compensation that undoes the step's effect, recorded in the step log before the effect happens.
    pub fn undo(self) -> Option<Step> {
        match self {
            Self::Reserve | Self::Commit => Some(Self::ReleaseInventory),
            Self::Pay => Some(Self::CancelPayment),
            Self::Fulfil
            | Self::ReleaseInventory
            | Self::CancelPayment
            | Self::Ship
            | Self::ReleaseRest
            | Self::Refund => None,
        }
    }

    /// The reason a forward step's cancellation gives when its attempts run out without a reason of its own
    /// (a permanent failure names one: a decline, a failed inventory commit).
    pub fn failure_reason(self) -> CancelReason {
        match self {
            Self::Pay | Self::Commit => CancelReason::PaymentFailed,
            _ => CancelReason::StepFailed,
        }
    }
}

stored_as_text!(Step, name);

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Attempts a step gets before it gives up: a forward step then starts the cancellation, a compensation parks
/// the saga in NEEDS_ATTENTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    /// Every forward step's (`ORDERFLOW_MAX_STEP_ATTEMPTS`).
    pub forward: u32,
    /// Every compensation's (`ORDERFLOW_MAX_COMPENSATION_ATTEMPTS`): more, as a compensation has no fallback.
    pub compensation: u32,
    /// One step's own, over its kind's (`ORDERFLOW_MAX_ATTEMPTS_<STEP>`).
    pub per_step: HashMap<Step, u32>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            forward: 8,
            compensation: 12,
            per_step: HashMap::new(),
        }
    }
}

impl Budgets {
    /// The attempts `step` gets.
    pub fn of(&self, step: Step) -> u32 {
        self.per_step
            .get(&step)
            .copied()
            .unwrap_or(if step.is_compensation() {
                self.compensation
            } else {
                self.forward
            })
    }
}

/// How an attempt failed, as the step decided where the error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (connection trouble, timeouts, the provider briefly unable).
    Transient,
    /// No attempt can succeed: the saga is cancelled with this reason.
    Permanent(CancelReason),
}

/// What follows a failed attempt of a step, while the order is still in the step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The same step again, as attempt `attempt`, after a backoff.
    Retry { attempt: u32 },
    /// A forward step gives up: the cancellation starts with this reason.
    Cancel(CancelReason),
    /// A compensation gives up: the saga parks in NEEDS_ATTENTION for an operator.
    Park,
}

/// What follows failed attempt `attempt` (1-based) of `step` with `budget` attempts: a transient failure is
/// retried while attempts are left; then, or at once for a permanent one, a forward step cancels (with the
/// failure's reason, else [`Step::failure_reason`]) and a compensation parks.
pub fn after_failure(step: Step, attempt: u32, budget: u32, failure: Failure) -> AfterFailure {
    match failure {
        Failure::Transient if attempt < budget => AfterFailure::Retry { attempt: attempt + 1 },
        // Ship never gives up: a capture whose outcome is unknown may have gone through, and giving up on it could
        // lose a capture that happened (a later shipment of the same units would capture them again). It asks
        // again, under the same key, until the provider answers; a refusal it settles itself (the shipment fails).
        _ if step.never_gives_up() => AfterFailure::Retry { attempt: attempt + 1 },
        _ if step.is_compensation() => AfterFailure::Park,
        Failure::Permanent(reason) => AfterFailure::Cancel(reason),
        Failure::Transient => AfterFailure::Cancel(step.failure_reason()),
    }
}

/// The step a saga in `status` resumes with (the reconciler settling a stranded saga, an operator's retry):
/// `current_step` when it fits the status (a parked saga resumes the compensation it parked in), else the one
/// the status implies (a PAID order whose capture is recorded is in fulfil). `None` for a saga that is over, or
/// a shipment order in PAID without a step (it waits for shipments: [`OrderRow::waits`]). A FULFILLED order
/// resumes only its refund.
pub fn resume(
    status: OrderStatus,
    current_step: Option<Step>,
    capture_recorded: bool,
    fulfilment: Fulfilment,
) -> Option<Step> {
    let fits = |step: Step| match status {
        OrderStatus::NeedsAttention => step.is_compensation(),
        status => step.runs_in(status),
    };
    if let Some(step) = current_step.filter(|step| fits(*step)) {
        return Some(step);
    }
    match status {
        OrderStatus::Created => Some(Step::Reserve),
        OrderStatus::Reserved => Some(Step::Pay),
        OrderStatus::Paid if fulfilment == Fulfilment::Shipment => None,
        OrderStatus::Paid if capture_recorded => Some(Step::Fulfil),
        OrderStatus::Paid => Some(Step::Commit),
        // Only a shipment order is ever PARTIALLY_FULFILLED.
        OrderStatus::PartiallyFulfilled => None,
        OrderStatus::Cancelling | OrderStatus::NeedsAttention => Some(Step::FIRST_COMPENSATION),
        OrderStatus::Fulfilled | OrderStatus::Cancelled => None,
    }
}

/// The step a live saga is in ([`resume`]), reading whether its capture is recorded when it is PAID; `None` for
/// an order that waits ([`OrderRow::waits`]) and for a FULFILLED one with no refund on its way.
pub async fn current_step(conn: &mut PgConnection, order: &OrderRow) -> Result<Option<Step>, sqlx::Error> {
    if order.waits() {
        return Ok(None);
    }
    let capture_recorded = order.status == OrderStatus::Paid
        && payment::find(&mut *conn, order.id)
            .await?
            .is_some_and(|p| p.status == PaymentStatus::Captured);
    let step = resume(
        order.status,
        order.current_step,
        capture_recorded,
        order.fulfilment,
    );
    Ok(match order.status.is_terminal() {
        true => step,
        false => Some(step.unwrap_or(Step::FIRST_COMPENSATION)),
    })
}

/// How one attempt of a step ends, as the step decided it: what the step log records, how the order moves and
/// what runs next. Built only by the constructors below, which apply the flow's rules (so no ending leaves an
/// attempt STARTED); `order::Move::ending` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub(crate) status: AttemptStatus,
    /// Why, for the step log (a decline code, "out of stock").
    pub(crate) note: Option<String>,
    pub(crate) transition: Option<Transition>,
    /// The step queued next (its first attempt).
    pub(crate) next: Option<Step>,
    /// The reservation is held until this long from now (the reserve step's promise).
    pub(crate) hold_for: Option<Duration>,
    /// The shipment the transition's event names (ship's).
    pub(crate) shipment: Option<uuid::Uuid>,
    /// The refund the transition's event names (refund's).
    pub(crate) refund: Option<uuid::Uuid>,
    /// The note is for operators too: it becomes the order's `last_error` (a dead end only they can see to).
    pub(crate) for_operators: bool,
    /// The step waits: its next attempt is queued this long from now (its job's `run_at`), holding no worker.
    pub(crate) wait: Option<Duration>,
}

impl Ending {
    /// `step` did its work: the order moves as a success of `step` moves it and the next step is queued. (A step
    /// whose next depends on the order says so with [`Ending::then`].)
    pub fn succeeded(step: Step) -> Self {
        Self {
            status: AttemptStatus::Succeeded,
            note: None,
            transition: step.on_success(),
            next: step.next(),
            hold_for: None,
            shipment: None,
            refund: None,
            for_operators: false,
            wait: None,
        }
    }

    /// The step cannot do its work and the saga cannot go on: the cancellation starts with `reason`.
    pub fn cancel(reason: CancelReason, note: impl Into<String>) -> Self {
        Self {
            status: AttemptStatus::Failed,
            note: Some(note.into()),
            transition: Some(Transition::StartCancel(reason)),
            next: Some(Step::FIRST_COMPENSATION),
            hold_for: None,
            shipment: None,
            refund: None,
            for_operators: false,
            wait: None,
        }
    }

    /// The step failed and `transition` ends the saga (out of stock), or with none the order stays where it is
    /// (the saga moved on while the step's call was out).
    pub fn failed(note: impl Into<String>, transition: Option<Transition>) -> Self {
        Self {
            status: AttemptStatus::Failed,
            note: Some(note.into()),
            transition,
            next: None,
            hold_for: None,
            shipment: None,
            refund: None,
            for_operators: false,
            wait: None,
        }
    }

    /// The step found its work overtaken: the order left the step's state while its remote call was out, and the
    /// step that moved it owns the saga now.
    pub fn overtaken(note: impl Into<String>) -> Self {
        Self {
            status: AttemptStatus::Skipped,
            note: Some(note.into()),
            transition: None,
            next: None,
            hold_for: None,
            shipment: None,
            refund: None,
            for_operators: false,
            wait: None,
        }
    }

    /// The step's work waits on someone else (the customer's 3-D Secure, a bank debit processing): the order
    /// stays where it is and the step's next attempt runs `wait` from now, or sooner if something wakes it
    /// (`queue::wake`). The attempt itself did its part (it asked, and recorded the answer): SUCCEEDED, with
    /// `note` saying what it waits for.
    pub fn waits(note: impl Into<String>, wait: Duration) -> Self {
        Self {
            status: AttemptStatus::Succeeded,
            wait: Some(wait),
            ..Self::overtaken(note)
        }
    }

    /// The same ending, its event naming `shipment`.
    pub fn for_shipment(self, shipment: uuid::Uuid) -> Self {
        Self {
            shipment: Some(shipment),
            ..self
        }
    }

    /// The same ending, its event naming `refund`.
    pub fn for_refund(self, refund: uuid::Uuid) -> Self {
        Self {
            refund: Some(refund),
            ..self
        }
    }

    /// The same ending with `next` queued after it instead.
    pub fn then(self, next: Option<Step>) -> Self {
        Self { next, ..self }
    }

    /// The same ending, its note kept as the order's `last_error` for operators (the admin API's `error` filter
    /// finds it).
    pub fn for_operators(self) -> Self {
        Self {
            for_operators: true,
            ..self
        }
    }

    pub fn with_note(self, note: impl Into<String>) -> Self {
        Self {
            note: Some(note.into()),
            ..self
        }
    }

    pub fn holding_stock_for(self, ttl: Duration) -> Self {
        Self {
            hold_for: Some(ttl),
            ..self
        }
    }
}

/// The move that starts the cancellation of `order`: CANCELLING with `reason` (and the customer's or operator's
/// `note`), and [`Step::FIRST_COMPENSATION`] queued. The same move as a step's [`Ending::cancel`]; a caller may
/// add to it (the worker records the failure that led to it in the same statement).
pub fn cancellation<'a>(order: &'a OrderRow, reason: CancelReason, note: Option<&str>) -> Move<'a> {
    let cancel = Ending::cancel(reason, reason.as_str());
    Move {
        transition: cancel.transition,
        next: cancel.next.map(NextJob::first),
        cancel_note: note.map(str::to_owned),
        ..Move::new(order)
    }
}

/// Starts the cancellation of an order the caller has locked ([`cancellation`]), in the caller's transaction: the
/// one way a saga starts compensating outside a step's own ending. The API's cancel, an operator's compensate and
/// the reconciler's expiry call it; a step out of attempts writes the same move. An order whose status may not be
/// cancelled is a `TransitionError::Invalid`.
#[tracing::instrument(skip_all, fields(order_id = %order.id, reason = reason.as_str()), err)]
pub async fn start_cancellation(
    conn: &mut PgConnection,
    order: &OrderRow,
    reason: CancelReason,
    note: Option<&str>,
) -> Result<PlannedTransition, TransitionError> {
    let mut planned = order::advance(conn, &[cancellation(order, reason, note)]).await?;
    planned
        .pop()
        .flatten()
        .ok_or(TransitionError::Database(sqlx::Error::RowNotFound))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    fn order_in(status: OrderStatus) -> OrderRow {
        let now = chrono::Utc::now();
        OrderRow {
            id: uuid::Uuid::now_v7(),
            customer_id: "c1".to_owned(),
            currency: "USD".to_owned(),
            total: 100,
            status,
            fulfilment: Fulfilment::Auto,
            payment_token: "pm_card_visa".to_owned(),
            cancel_reason: None,
            cancel_note: None,
            current_step: status_step(status),
            last_error: None,
            job_id: None,
            reserved_until: None,
            trace_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn status_step(status: OrderStatus) -> Option<Step> {
        resume(status, None, false, Fulfilment::Auto)
    }

    /// The whole flow, written out once more by hand: for every step, its queue, its state, where its success
    /// goes, what follows it and what undoes it.
    #[test]
    fn the_flow_is_exactly_the_documented_one() {
        use OrderStatus::*;
        type Row = (
            Step,
            &'static str,
            &'static [OrderStatus],
            Option<&'static str>,
            Option<Step>,
            Option<Step>,
        );
        let table: [Row; 9] = [
            (
                Step::Reserve,
                "orderflow.reserve",
                &[Created],
                Some("reserve"),
                Some(Step::Pay),
                Some(Step::ReleaseInventory),
            ),
            (
                Step::Pay,
                "orderflow.pay",
                &[Reserved],
                Some("pay"),
                Some(Step::Commit),
                Some(Step::CancelPayment),
            ),
            (
                Step::Commit,
                "orderflow.commit",
                &[Paid],
                None,
                Some(Step::Fulfil),
                Some(Step::ReleaseInventory),
            ),
            (
                Step::Fulfil,
                "orderflow.fulfil",
                &[Paid, PartiallyFulfilled],
                Some("fulfil"),
                None,
                None,
            ),
            (
                Step::ReleaseInventory,
                "orderflow.release_inventory",
                &[Cancelling],
                None,
                Some(Step::CancelPayment),
                None,
            ),
            (
                Step::CancelPayment,
                "orderflow.cancel_payment",
                &[Cancelling],
                Some("finish_cancel"),
                None,
                None,
            ),
            (
                Step::Ship,
                "orderflow.ship",
                &[Paid, PartiallyFulfilled],
                Some("ship"),
                None,
                None,
            ),
            (
                Step::ReleaseRest,
                "orderflow.release_rest",
                &[PartiallyFulfilled],
                Some("fulfil"),
                None,
                None,
            ),
            (
                Step::Refund,
                "orderflow.refund",
                &[PartiallyFulfilled, Fulfilled],
                Some("refund"),
                None,
                None,
            ),
        ];
        assert_eq!(table.map(|row| row.0), Step::ALL);
        for (step, queue, froms, success, next, undo) in table {
            assert_eq!(step.queue(), queue);
            assert_eq!(step.runs_from(), froms, "{step}");
            assert_eq!(step.on_success().map(|t| t.name()), success, "{step}");
            assert_eq!(step.next(), next, "{step}");
            assert_eq!(step.undo(), undo, "{step}");
            assert_eq!(Step::parse(step.name()), Some(step));
            // A success moves the order only along the transition table, to a status its next step runs from.
            for from in froms {
                if let Some(transition) = step.on_success() {
                    let to = from
                        .apply(&transition)
                        .expect("a step's success is in the transition table");
                    if let Some(next) = step.next() {
                        assert!(next.runs_in(to), "{step} hands {next} an order it runs from");
                    }
                }
            }
        }
        assert_eq!(Step::parse("charge"), None);
        // Ship, the one step that queues what follows it itself, hands fulfil the status it leaves.
        assert!(Step::Fulfil.runs_in(PartiallyFulfilled));
        assert_eq!(Step::FIRST.runs_from(), &[Created]);
        assert!(Step::FIRST_COMPENSATION.is_compensation());
    }

    /// The table in docs/ARCHITECTURE.md ("The flow") is this module's flow.
    #[test]
    fn the_architecture_doc_shows_the_flow_of_the_code() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        let section = doc
            .split("## The flow")
            .nth(1)
            .and_then(|s| s.split("\n\n").nth(1))
            .unwrap_or_default();
        let documented: Vec<Vec<String>> = section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| step"))
            .map(|row| {
                row.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`').to_owned())
                    .collect()
            })
            .collect();
        let name = |step: Option<Step>| step.map_or("—".to_owned(), |s| s.name().to_owned());
        let code: Vec<Vec<String>> = Step::ALL
            .iter()
            .map(|step| {
                vec![
                    step.name().to_owned(),
                    step.queue().to_owned(),
                    step.runs_from()
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    step.on_success().map_or("—".to_owned(), |t| t.name().to_owned()),
                    name(step.next()),
                    name(step.undo()),
                ]
            })
            .collect();
        assert_eq!(
            documented, code,
            "docs/ARCHITECTURE.md's flow differs from flow::Step"
        );
    }

    #[test]
    fn every_forward_step_can_be_cancelled_and_the_cancellation_starts_where_compensations_run() {
        let cancel = Transition::StartCancel(CancelReason::CustomerRequest);
        for step in Step::ALL.into_iter().filter(|s| !s.is_compensation()) {
            // Some units of a PARTIALLY_FULFILLED order shipped: a cancellation would give them back to stock.
            // Its cancel is release_rest instead, which ends it FULFILLED. A FULFILLED order (which refunds) is
            // over: nothing cancels it.
            for from in step
                .runs_from()
                .iter()
                .filter(|s| !matches!(s, OrderStatus::PartiallyFulfilled | OrderStatus::Fulfilled))
            {
                let to = from
                    .apply(&cancel)
                    .expect("a forward state can start a cancellation");
                assert!(Step::FIRST_COMPENSATION.runs_in(to), "{step}");
            }
        }
        assert!(OrderStatus::PartiallyFulfilled.apply(&cancel).is_err());
        assert_eq!(
            Step::ReleaseRest
                .on_success()
                .map(|t| OrderStatus::PartiallyFulfilled.apply(&t)),
            Some(Ok(OrderStatus::Fulfilled))
        );
        let ending = Ending::cancel(CancelReason::PaymentDeclined, "declined: card_declined");
        assert_eq!(ending.next, Some(Step::FIRST_COMPENSATION));
        assert_eq!(ending.status, AttemptStatus::Failed);
        // A step's cancelling ending and a cancellation started from outside move the order alike.
        let order = order_in(OrderStatus::Reserved);
        let started = cancellation(&order, CancelReason::PaymentDeclined, None);
        assert_eq!(started.transition, ending.transition);
        assert_eq!(started.next.map(|n| n.step), ending.next);
    }

    #[test]
    fn a_failure_retries_while_attempts_are_left_then_cancels_or_parks() {
        use AfterFailure::*;
        assert_eq!(
            after_failure(Step::Pay, 1, 3, Failure::Transient),
            Retry { attempt: 2 }
        );
        assert_eq!(
            after_failure(Step::Pay, 3, 3, Failure::Transient),
            Cancel(CancelReason::PaymentFailed)
        );
        assert_eq!(
            after_failure(Step::Commit, 8, 8, Failure::Transient),
            Cancel(CancelReason::PaymentFailed)
        );
        assert_eq!(
            after_failure(Step::Reserve, 8, 8, Failure::Transient),
            Cancel(CancelReason::StepFailed)
        );
        assert_eq!(
            after_failure(Step::Fulfil, 8, 8, Failure::Transient),
            Cancel(CancelReason::StepFailed)
        );
        // A permanent failure cancels at once, with its own reason.
        assert_eq!(
            after_failure(
                Step::Commit,
                1,
                8,
                Failure::Permanent(CancelReason::InventoryCommitFailed)
            ),
            Cancel(CancelReason::InventoryCommitFailed)
        );
        // Ship never cancels (what shipped stays shipped) nor gives up: past the budget too it asks again (the
        // capture may have happened); the provider's refusal is an answer its record settles, not a failure.
        assert_eq!(
            after_failure(Step::Ship, 1, 8, Failure::Transient),
            Retry { attempt: 2 }
        );
        assert_eq!(
            after_failure(Step::Ship, 8, 8, Failure::Transient),
            Retry { attempt: 9 }
        );
        assert_eq!(
            after_failure(Step::Ship, 1, 8, Failure::Permanent(CancelReason::PaymentFailed)),
            Retry { attempt: 2 }
        );
        // A compensation never cancels: it retries, then parks, whatever the failure.
        assert_eq!(
            after_failure(Step::CancelPayment, 2, 12, Failure::Transient),
            Retry { attempt: 3 }
        );
        assert_eq!(
            after_failure(Step::CancelPayment, 12, 12, Failure::Transient),
            Park
        );
        assert_eq!(
            after_failure(
                Step::ReleaseInventory,
                1,
                12,
                Failure::Permanent(CancelReason::StepFailed)
            ),
            Park
        );
    }

    #[test]
    fn budgets_are_per_kind_with_per_step_overrides() {
        let mut budgets = Budgets::default();
        assert_eq!((budgets.of(Step::Pay), budgets.of(Step::CancelPayment)), (8, 12));
        budgets.per_step.insert(Step::Pay, 2);
        assert_eq!((budgets.of(Step::Pay), budgets.of(Step::Commit)), (2, 8));
    }

    #[test]
    fn a_saga_resumes_where_its_state_says() {
        use OrderStatus::*;
        // current_step when it fits the status.
        assert_eq!(
            resume(Paid, Some(Step::Fulfil), false, Fulfilment::Auto),
            Some(Step::Fulfil)
        );
        assert_eq!(
            resume(Cancelling, Some(Step::CancelPayment), false, Fulfilment::Auto),
            Some(Step::CancelPayment)
        );
        assert_eq!(
            resume(NeedsAttention, Some(Step::CancelPayment), false, Fulfilment::Auto),
            Some(Step::CancelPayment)
        );
        // Otherwise the status says.
        assert_eq!(
            resume(Created, None, false, Fulfilment::Auto),
            Some(Step::Reserve)
        );
        assert_eq!(
            resume(Reserved, Some(Step::Reserve), false, Fulfilment::Auto),
            Some(Step::Pay)
        );
        assert_eq!(resume(Paid, None, false, Fulfilment::Auto), Some(Step::Commit));
        assert_eq!(
            resume(Paid, Some(Step::Pay), true, Fulfilment::Auto),
            Some(Step::Fulfil)
        );
        assert_eq!(
            resume(Cancelling, Some(Step::Pay), false, Fulfilment::Auto),
            Some(Step::ReleaseInventory)
        );
        assert_eq!(
            resume(NeedsAttention, Some(Step::Pay), false, Fulfilment::Auto),
            Some(Step::ReleaseInventory)
        );
        assert_eq!(
            resume(Fulfilled, Some(Step::Fulfil), true, Fulfilment::Auto),
            None
        );
        assert_eq!(resume(Cancelled, None, false, Fulfilment::Auto), None);
        // A FULFILLED order resumes only its refund.
        assert_eq!(
            resume(Fulfilled, Some(Step::Refund), true, Fulfilment::Shipment),
            Some(Step::Refund)
        );
        assert_eq!(
            resume(Fulfilled, Some(Step::Refund), true, Fulfilment::Auto),
            Some(Step::Refund)
        );
        assert_eq!(
            resume(Fulfilled, Some(Step::Ship), true, Fulfilment::Shipment),
            None
        );
        // A shipment order in PAID waits for its shipments: there is no step to resume.
        assert_eq!(resume(Paid, None, false, Fulfilment::Shipment), None);
        assert_eq!(resume(Paid, Some(Step::Pay), false, Fulfilment::Shipment), None);
        // Before PAID, and once cancelling, it runs as any order.
        assert_eq!(
            resume(Reserved, None, false, Fulfilment::Shipment),
            Some(Step::Pay)
        );
        assert_eq!(
            resume(Cancelling, None, false, Fulfilment::Shipment),
            Some(Step::ReleaseInventory)
        );
    }

    #[test]
    fn a_shipment_orders_saga_stops_after_pay_and_every_other_step_goes_on_as_for_any_order() {
        for step in Step::ALL {
            let expected = if step == Step::Pay { None } else { step.next() };
            assert_eq!(step.next_for(Fulfilment::Shipment), expected, "{step}");
            assert_eq!(step.next_for(Fulfilment::Auto), step.next(), "{step}");
        }
        let mut order = order_in(OrderStatus::Reserved);
        order.fulfilment = Fulfilment::Shipment;
        let ending = Ending::succeeded(Step::Pay).then(Step::Pay.next_for(order.fulfilment));
        assert_eq!(ending.transition, Some(Transition::Pay));
        assert_eq!(ending.next, None);
        order.fulfilment = Fulfilment::Auto;
        assert_eq!(
            Ending::succeeded(Step::Pay).then(Step::Pay.next_for(order.fulfilment)),
            Ending::succeeded(Step::Pay)
        );
    }

    #[test]
    fn an_order_ships_when_any_of_its_skus_does() {
        use Fulfilment::*;
        assert_eq!(Fulfilment::of_order([]), Auto);
        assert_eq!(Fulfilment::of_order([Auto, Auto]), Auto);
        assert_eq!(Fulfilment::of_order([Auto, Shipment, Auto]), Shipment);
        for mode in Fulfilment::ALL {
            assert_eq!(Fulfilment::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(Fulfilment::parse("Shipment"), None);
    }
}
