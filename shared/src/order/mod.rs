//! The order: its states, the one transition table that moves it, its rows and the reads of them. Creating an
//! order is [`create`] (its request parsed by [`request`]); moving one on is [`advance`], the one statement that
//! writes an order's status, its events, its step attempts and its next job.

pub mod advance;
pub mod create;
pub mod request;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::events::EventType;
use crate::flow::{self, Step};
use crate::input::{self, FieldError};

pub use advance::{Move, advance};

/// Where an order is in its life. Persisted and shown as the upper-case strings of [`OrderStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Reserved,
    Paid,
    /// A shipment order some of whose units shipped (their part captured); the rest is still reserved, its part
    /// of the hold still open.
    PartiallyFulfilled,
    Fulfilled,
    /// Compensations (release stock, void or refund) are running; ends in `Cancelled`.
    Cancelling,
    Cancelled,
    /// A compensation kept failing past its retry budget: parked, with its last error, for an operator. Not
    /// terminal (money or stock may still be held), but nothing retries it by itself.
    NeedsAttention,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        Self::Created,
        Self::Reserved,
        Self::Paid,
        Self::PartiallyFulfilled,
        Self::Fulfilled,
        Self::Cancelling,
        Self::Cancelled,
        Self::NeedsAttention,
    ];

    /// The statuses a saga may still run in: the reconciler watches the orders in these that have a step to run
    /// (a shipment order waiting for shipments has none, nor has a FULFILLED order without a refund on its way:
    /// see [`OrderRow::waits`]).
    pub const LIVE: [OrderStatus; 6] = [
        Self::Created,
        Self::Reserved,
        Self::Paid,
        Self::PartiallyFulfilled,
        Self::Fulfilled,
        Self::Cancelling,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Reserved => "RESERVED",
            Self::Paid => "PAID",
            Self::PartiallyFulfilled => "PARTIALLY_FULFILLED",
            Self::Fulfilled => "FULFILLED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
            Self::NeedsAttention => "NEEDS_ATTENTION",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// The saga is over: nothing moves the order's status any more (a FULFILLED order may still refund).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Fulfilled | Self::Cancelled)
    }

    /// The transition table: the status `transition` leads to from `self`, or why it may not happen.
    pub fn apply(self, transition: &Transition) -> Result<OrderStatus, InvalidTransition> {
        use OrderStatus::*;
        let next = match (self, transition) {
            (Created, Transition::Reserve) => Some(Reserved),
            (Created, Transition::RejectOutOfStock) => Some(Cancelled),
            (Reserved, Transition::Pay) => Some(Paid),
            (Paid | PartiallyFulfilled, Transition::Fulfil) => Some(Fulfilled),
            (Paid | PartiallyFulfilled, Transition::Ship) => Some(PartiallyFulfilled),
            (Paid, Transition::FailShipment) => Some(Paid),
            (PartiallyFulfilled, Transition::FailShipment) => Some(PartiallyFulfilled),
            (PartiallyFulfilled, Transition::Refund | Transition::FailRefund) => Some(PartiallyFulfilled),
            (Fulfilled, Transition::Refund | Transition::FailRefund) => Some(Fulfilled),
            (PartiallyFulfilled, Transition::Return) => Some(PartiallyFulfilled),
            (Fulfilled, Transition::Return) => Some(Fulfilled),
            (Created | Reserved | Paid, Transition::StartCancel(_)) => Some(Cancelling),
            (Cancelling, Transition::FinishCancel) => Some(Cancelled),
            (Cancelling, Transition::Park) => Some(NeedsAttention),
            (NeedsAttention, Transition::Resume) => Some(Cancelling),
            (NeedsAttention, Transition::Resolve) => Some(Cancelled),
            _ => None,
        };
        next.ok_or(InvalidTransition {
            from: self,
            transition: transition.name(),
        })
    }
}

stored_as_text!(OrderStatus);

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an order's goods reach the customer, per sku and so per order (`skus.fulfilment`, `orders.fulfilment`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Fulfilment {
    // Declared in this order on purpose: an order's mode is the greatest of its skus' (`of_order`).
    /// The saga fulfils the order right after its capture (digital goods; today's behaviour, the default).
    #[default]
    Auto,
    /// The warehouse ships the goods: the saga stops in PAID with the authorization open, and shipments capture
    /// what they ship.
    Shipment,
}

impl Fulfilment {
    pub const ALL: [Fulfilment; 2] = [Self::Auto, Self::Shipment];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Shipment => "shipment",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == value)
    }

    /// An order's mode from its skus': a shipment order when any of them ships.
    pub fn of_order(skus: impl IntoIterator<Item = Fulfilment>) -> Self {
        skus.into_iter().max().unwrap_or_default()
    }
}

stored_as_text!(Fulfilment);

/// Why an order was cancelled. Persisted as the snake_case strings of [`CancelReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    OutOfStock,
    PaymentDeclined,
    /// The provider kept failing (or could not capture) past the retry budget.
    PaymentFailed,
    /// Committing the reserved stock failed for good.
    InventoryCommitFailed,
    /// A step kept failing past its retry budget for a reason other than payment.
    StepFailed,
    CustomerRequest,
    /// The reservation's hold ran out before payment started.
    ReservationExpired,
    /// An operator compensated the saga (admin API, CLI or dashboard).
    OperatorRequest,
    /// The customer did not complete an asynchronous payment (3-D Secure, a bank debit still processing) by
    /// its deadline.
    PaymentNotCompleted,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::PaymentDeclined => "payment_declined",
            Self::PaymentFailed => "payment_failed",
            Self::InventoryCommitFailed => "inventory_commit_failed",
            Self::StepFailed => "step_failed",
            Self::CustomerRequest => "customer_request",
            Self::ReservationExpired => "reservation_expired",
            Self::PaymentNotCompleted => "payment_not_completed",
            Self::OperatorRequest => "operator_request",
        }
    }

    pub const ALL: [CancelReason; 9] = [
        Self::OutOfStock,
        Self::PaymentDeclined,
        Self::PaymentFailed,
        Self::InventoryCommitFailed,
        Self::StepFailed,
        Self::CustomerRequest,
        Self::ReservationExpired,
        Self::OperatorRequest,
        Self::PaymentNotCompleted,
    ];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

stored_as_text!(CancelReason);

/// One explicit move of the state machine. Each has a stable event type for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Reserve,
    RejectOutOfStock,
    Pay,
    Fulfil,
    /// A shipment's units left stock and its part was captured.
    Ship,
    /// A shipment's capture was refused for good (or its retries ran out): nothing shipped, the order stays.
    FailShipment,
    /// A refund of captured money went through; the status stays.
    Refund,
    /// The provider refused a refund for good: nothing was refunded; the status stays.
    FailRefund,
    /// Units of the order came back (restocked or written off); the status stays.
    Return,
    StartCancel(CancelReason),
    FinishCancel,
    /// A compensation used up its retries: park the saga for an operator.
    Park,
    /// An operator retries a parked saga's compensation.
    Resume,
    /// An operator declares a parked saga repaired by hand: it ends CANCELLED.
    Resolve,
}

impl Transition {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::RejectOutOfStock => "reject_out_of_stock",
            Self::Pay => "pay",
            Self::Fulfil => "fulfil",
            Self::Ship => "ship",
            Self::FailShipment => "fail_shipment",
            Self::Refund => "refund",
            Self::FailRefund => "fail_refund",
            Self::Return => "return",
            Self::StartCancel(_) => "start_cancel",
            Self::FinishCancel => "finish_cancel",
            Self::Park => "park",
            Self::Resume => "resume",
            Self::Resolve => "resolve",
        }
    }

    pub fn event_type(&self) -> EventType {
        match self {
            Self::Reserve => EventType::Reserved,
            Self::Pay => EventType::Paid,
            Self::Fulfil => EventType::Fulfilled,
            Self::Ship => EventType::Shipped,
            Self::FailShipment => EventType::ShipmentFailed,
            Self::Refund => EventType::Refunded,
            Self::FailRefund => EventType::RefundFailed,
            Self::Return => EventType::Returned,
            Self::StartCancel(_) => EventType::CancellationStarted,
            Self::RejectOutOfStock | Self::FinishCancel | Self::Resolve => EventType::Cancelled,
            Self::Park => EventType::NeedsAttention,
            Self::Resume => EventType::CancellationResumed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition} an order that is {from}")]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub transition: &'static str,
}

/// An order row as the saga and the API read it.
#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    pub status: OrderStatus,
    /// Fixed at creation from the lines' skus.
    pub fulfilment: Fulfilment,
    pub payment_token: String,
    pub cancel_reason: Option<CancelReason>,
    pub cancel_note: Option<String>,
    /// The step the saga is in (queued or running), or the compensation it parked in; `None` once it is over.
    pub current_step: Option<Step>,
    pub last_error: Option<String>,
    /// The apalis job that moves the saga on (see [`advance`]).
    pub job_id: Option<String>,
    /// Until when the reserved stock is held (set by the reserve step).
    pub reserved_until: Option<DateTime<Utc>>,
    /// The W3C trace id of the request that created the order.
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderLineRow {
    pub order_id: Uuid,
    pub line_no: i32,
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
}

pub async fn find(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        r#"select id, customer_id, currency, total, status as "status: _", fulfilment as "fulfilment: _", payment_token,
                  cancel_reason as "cancel_reason: _", cancel_note, current_step as "current_step: _", last_error,
                  job_id, reserved_until, trace_id, created_at, updated_at
           from orders where id = $1"#,
        id
    )
    .fetch_optional(executor)
    .await
}

impl OrderRow {
    /// An order with no step to run that waits for a client: a shipment order whose authorization is in place,
    /// in PAID or PARTIALLY_FULFILLED, waits for the warehouse's shipments (or a cancel); a FULFILLED one for a
    /// refund. Not stranded, and nothing retries it.
    pub fn waits(&self) -> bool {
        self.current_step.is_none()
            && match self.status {
                OrderStatus::Paid | OrderStatus::PartiallyFulfilled => {
                    self.fulfilment == Fulfilment::Shipment
                }
                OrderStatus::Fulfilled => true,
                _ => false,
            }
    }
}

/// Reads the order and locks its row until the transaction ends. Every saga step, the API's cancel and the
/// operators' actions take this lock first, so nothing else moves an order while one of them does.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        r#"select id, customer_id, currency, total, status as "status: _", fulfilment as "fulfilment: _", payment_token,
                  cancel_reason as "cancel_reason: _", cancel_note, current_step as "current_step: _", last_error,
                  job_id, reserved_until, trace_id, created_at, updated_at
           from orders where id = $1 for update"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Like `lock`, but `None` at once when another transaction holds the row (SKIP LOCKED): for the reconciler,
/// which leaves an order a step is working on alone.
pub async fn try_lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        r#"select id, customer_id, currency, total, status as "status: _", fulfilment as "fulfilment: _", payment_token,
                  cancel_reason as "cancel_reason: _", cancel_note, current_step as "current_step: _", last_error,
                  job_id, reserved_until, trace_id, created_at, updated_at
           from orders where id = $1 for update skip locked"#,
        id
    )
    .fetch_optional(conn)
    .await
}

/// Locks many orders at once (in id order, so two transactions locking overlapping sets cannot deadlock) and
/// reads them; orders that do not exist are missing from the result. For steps run for many orders together.
pub async fn lock_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        r#"select id, customer_id, currency, total, status as "status: _", fulfilment as "fulfilment: _", payment_token,
                  cancel_reason as "cancel_reason: _", cancel_note, current_step as "current_step: _", last_error,
                  job_id, reserved_until, trace_id, created_at, updated_at
           from orders where id = any($1) order by id for update"#,
        ids
    )
    .fetch_all(conn)
    .await
}

pub async fn lines(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<OrderLineRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderLineRow,
        "select order_id, line_no, sku, quantity, unit_price from order_lines where order_id = $1 order by line_no",
        order_id
    )
    .fetch_all(executor)
    .await
}

/// Lines of many orders at once, for list pages.
pub async fn lines_of(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<OrderLineRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderLineRow,
        r#"select order_id, line_no, sku, quantity, unit_price from order_lines where order_id = any($1)
           order by order_id, line_no"#,
        ids
    )
    .fetch_all(executor)
    .await
}

/// Filters of the order list; `after` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// The order list's query as clients send it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only orders in this status (upper case).
    pub status: Option<String>,
    pub customer_id: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

impl ListQuery {
    pub fn filter(&self) -> Result<ListFilter, FieldError> {
        Ok(ListFilter {
            status: self
                .status
                .as_deref()
                .map(|s| input::one_of("status", s, &OrderStatus::ALL, OrderStatus::as_str))
                .transpose()?,
            customer_id: self
                .customer_id
                .as_deref()
                .map(|text| input::filter_text("customer_id", text))
                .transpose()?,
            after: input::id_cursor(self.after.as_deref())?,
            limit: input::limit(self.limit.as_deref(), 20, 100)?,
        })
    }
}

/// A page of orders in id order (UUIDv7 ids, so creation order).
pub async fn list(executor: impl PgExecutor<'_>, filter: &ListFilter) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as!(
        OrderRow,
        r#"select id, customer_id, currency, total, status as "status: _", fulfilment as "fulfilment: _", payment_token,
                  cancel_reason as "cancel_reason: _", cancel_note, current_step as "current_step: _", last_error,
                  job_id, reserved_until, trace_id, created_at, updated_at
           from orders
           where ($1::text is null or status = $1)
             and ($2::text is null or customer_id = $2)
             and ($3::uuid is null or id > $3)
           order by id
           limit $4"#,
        filter.status.map(OrderStatus::as_str),
        filter.customer_id.as_deref(),
        filter.after,
        filter.limit
    )
    .fetch_all(executor)
    .await
}

/// What a transition writes, worked out (and validated against the table) before anything reaches the
/// database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The cancel reason the order takes (a cancel's own, or out of stock).
    pub reason: Option<CancelReason>,
    /// The reason the event carries: the transition's own, or the order's for the cancel's last events.
    pub event_reason: Option<CancelReason>,
    pub event_type: EventType,
}

impl PlannedTransition {
    /// Validates `transition` from the order's current status.
    pub fn new(order: &OrderRow, transition: &Transition) -> Result<Self, InvalidTransition> {
        let from = order.status;
        let to = from.apply(transition)?;
        let reason = match transition {
            Transition::StartCancel(reason) => Some(*reason),
            Transition::RejectOutOfStock => Some(CancelReason::OutOfStock),
            _ => None,
        };
        let event_reason = reason.or_else(|| {
            order
                .cancel_reason
                .filter(|_| matches!(to, OrderStatus::Cancelled | OrderStatus::NeedsAttention))
        });
        Ok(Self {
            from,
            to,
            reason,
            event_reason,
            event_type: transition.event_type(),
        })
    }

    /// Logs the move, in the caller's span (a step's carries the order's trace id).
    pub fn log(&self) {
        tracing::info!(from = %self.from, to = %self.to, reason = self.reason.map(CancelReason::as_str), "order transition");
    }
}

/// A customer's cancel request (`POST /v1/orders/{id}/cancel`, the body optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Free text kept with the order (at most 500 characters).
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    #[error("order {0} is FULFILLED and can no longer be cancelled")]
    Fulfilled(Uuid),
    /// A shipment is being captured: the cancel waits for it to end.
    #[error("order {0} {1}: it cannot be cancelled until that ends")]
    Shipping(Uuid, &'static str),
    /// A refund is on its way: the cancel of the rest waits for it to end.
    #[error("order {0} has a refund on its way: it cannot be cancelled until that ends")]
    Refunding(Uuid),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl From<sqlx::Error> for CancelError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transition(TransitionError::Database(error))
    }
}

/// The customer asks to cancel order `id`: a saga still going forward starts its cancellation
/// (`customer_request`, with the customer's words); one already cancelling, cancelled or parked is left as it is,
/// so repeating the request is harmless; a fulfilled order can no longer be cancelled. A shipment order that
/// shipped some of its units releases the rest instead (`Step::ReleaseRest`) and ends FULFILLED; while one of its
/// shipments is being captured, the request is refused until that ends.
#[tracing::instrument(skip_all, fields(order_id = %id), err)]
pub async fn request_cancellation(
    pool: &PgPool,
    id: Uuid,
    request: &CancelRequest,
) -> Result<(), CancelError> {
    let note = input::optional_text("reason", request.reason.as_deref(), 500)?;
    let mut tx = pool.begin().await?;
    let outcome = async {
        let order = lock(&mut tx, id).await?.ok_or(CancelError::NotFound(id))?;
        let shipping = matches!(order.status, OrderStatus::Paid | OrderStatus::PartiallyFulfilled)
            && order.fulfilment == Fulfilment::Shipment;
        if shipping && crate::shipment::in_flight(&mut *tx, id).await? {
            return Err(CancelError::Shipping(id, "has a shipment on its way"));
        }
        // A refund runs as the order's current step; the cancel of the rest would take its place.
        if order.status == OrderStatus::PartiallyFulfilled && crate::refund::in_flight(&mut *tx, id).await? {
            return Err(CancelError::Refunding(id));
        }
        match order.status {
            OrderStatus::Cancelling | OrderStatus::Cancelled | OrderStatus::NeedsAttention => {}
            OrderStatus::Fulfilled => return Err(CancelError::Fulfilled(id)),
            // Already releasing the rest: repeating the request is harmless.
            OrderStatus::PartiallyFulfilled if order.current_step == Some(Step::ReleaseRest) => {}
            OrderStatus::PartiallyFulfilled => {
                // Some of it shipped: what shipped stays shipped and captured; the rest is released, and the
                // order ends FULFILLED.
                let release = Move {
                    cancel_note: note.clone(),
                    ..Move::client_asked(&order, Step::ReleaseRest)
                };
                advance(&mut tx, &[release]).await?;
                tracing::info!("cancelling what is left of a partly shipped order");
            }
            OrderStatus::Created | OrderStatus::Reserved | OrderStatus::Paid => {
                let planned =
                    flow::start_cancellation(&mut tx, &order, CancelReason::CustomerRequest, note.as_deref())
                        .await?;
                planned.log();
            }
        }
        Ok(())
    }
    .await;
    // A refusal lets go of the order's lock before the answer goes.
    crate::db::finish(tx, outcome, true).await
}

/// Reserved orders past their hold with no authorization in flight, oldest deadline first: the reconciler
/// cancels them (`reservation_expired`). Read without locks; [`reservation_expired`] checks one again under its
/// lock.
pub async fn expired_reservations(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select o.id
           from orders o
           where o.status = 'RESERVED'
             and o.reserved_until < now()
             and not exists (select 1 from payments p where p.order_id = o.id and p.status = 'PENDING')
           order by o.reserved_until
           limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await
}

/// Whether the order's reservation is past its hold with no authorization in flight, now (under its lock).
pub async fn reservation_expired(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (
               select 1 from orders o
               where o.id = $1 and o.status = 'RESERVED' and o.reserved_until < now()
                 and not exists (select 1 from payments p where p.order_id = o.id and p.status = 'PENDING'))
           as "expired!""#,
        order_id
    )
    .fetch_one(executor)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    Invalid(#[from] InvalidTransition),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn all_transitions() -> Vec<Transition> {
        vec![
            Transition::Reserve,
            Transition::RejectOutOfStock,
            Transition::Pay,
            Transition::Fulfil,
            Transition::Ship,
            Transition::FailShipment,
            Transition::Refund,
            Transition::FailRefund,
            Transition::Return,
            Transition::StartCancel(CancelReason::CustomerRequest),
            Transition::FinishCancel,
            Transition::Park,
            Transition::Resume,
            Transition::Resolve,
        ]
    }

    /// The whole table, written out once more by hand: every (status, transition) pair not listed is invalid.
    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let allowed = [
            (Created, "reserve", Reserved),
            (Created, "reject_out_of_stock", Cancelled),
            (Created, "start_cancel", Cancelling),
            (Reserved, "pay", Paid),
            (Reserved, "start_cancel", Cancelling),
            (Paid, "fulfil", Fulfilled),
            (Paid, "ship", PartiallyFulfilled),
            (Paid, "fail_shipment", Paid),
            (Paid, "start_cancel", Cancelling),
            (PartiallyFulfilled, "ship", PartiallyFulfilled),
            (PartiallyFulfilled, "fail_shipment", PartiallyFulfilled),
            (PartiallyFulfilled, "fulfil", Fulfilled),
            (PartiallyFulfilled, "refund", PartiallyFulfilled),
            (PartiallyFulfilled, "fail_refund", PartiallyFulfilled),
            (Fulfilled, "refund", Fulfilled),
            (Fulfilled, "fail_refund", Fulfilled),
            (PartiallyFulfilled, "return", PartiallyFulfilled),
            (Fulfilled, "return", Fulfilled),
            (Cancelling, "finish_cancel", Cancelled),
            (Cancelling, "park", NeedsAttention),
            (NeedsAttention, "resume", Cancelling),
            (NeedsAttention, "resolve", Cancelled),
        ];
        for from in OrderStatus::ALL {
            for transition in all_transitions() {
                let expected = allowed
                    .iter()
                    .find(|(f, t, _)| *f == from && *t == transition.name())
                    .map(|(_, _, to)| *to);
                match (from.apply(&transition), expected) {
                    (Ok(to), Some(want)) => assert_eq!(to, want, "{from} --{}-->", transition.name()),
                    (Err(e), None) => {
                        assert_eq!(e.from, from);
                        assert_eq!(e.transition, transition.name());
                    }
                    (got, want) => panic!("{from} --{}--> gave {got:?}, want {want:?}", transition.name()),
                }
            }
        }
    }

    /// The table in docs/ARCHITECTURE.md ("State machine") is this one: every row a move the code makes, every
    /// move the code makes a row.
    #[test]
    fn the_architecture_doc_shows_the_transition_table_of_the_code() {
        let doc = include_str!("../../../docs/ARCHITECTURE.md");
        let section = doc
            .split("## State machine")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        let mut documented = Vec::new();
        for row in section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| from"))
        {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let [froms, transition, to, event] = cells[..] else {
                panic!("a row of four cells: {row}");
            };
            for from in froms.split(',').map(str::trim) {
                documented.push((
                    from.to_owned(),
                    transition.to_owned(),
                    to.to_owned(),
                    event.trim_matches('`').to_owned(),
                ));
            }
        }
        let mut code = Vec::new();
        for from in OrderStatus::ALL {
            for transition in all_transitions() {
                if let Ok(to) = from.apply(&transition) {
                    code.push((
                        from.as_str().to_owned(),
                        transition.name().to_owned(),
                        to.as_str().to_owned(),
                        transition.event_type().as_str().to_owned(),
                    ));
                }
            }
        }
        documented.sort();
        code.sort();
        assert_eq!(
            documented, code,
            "docs/ARCHITECTURE.md's state machine differs from OrderStatus::apply"
        );
    }

    /// A terminal status moves no more: a FULFILLED order's refunds and returns keep it FULFILLED.
    #[test]
    fn terminal_states_accept_no_transition_but_a_refunds_own() {
        for from in [Fulfilled, Cancelled] {
            assert!(from.is_terminal());
            for transition in all_transitions() {
                if let Ok(to) = from.apply(&transition) {
                    assert!(
                        from == Fulfilled
                            && to == Fulfilled
                            && matches!(
                                transition,
                                Transition::Refund | Transition::FailRefund | Transition::Return
                            ),
                        "{from} accepted {}",
                        transition.name()
                    );
                }
            }
        }
    }

    #[test]
    fn paying_a_cancelled_order_is_rejected_with_a_clear_message() {
        let err = Cancelled.apply(&Transition::Pay).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("cannot pay an order that is CANCELLED"));
    }

    #[test]
    fn cancel_reasons_round_trip() {
        for reason in CancelReason::ALL {
            assert_eq!(CancelReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(CancelReason::parse("because"), None);
    }

    #[test]
    fn status_strings_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("created"), None);
    }
}
