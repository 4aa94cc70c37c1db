//! What the API answers: the JSON shapes of orders, skus, events and sagas, and the reads that assemble them.
//! Handlers (in `routes`) and the dashboard shape their answers from these; no route module needs another.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use orderflow_shared::admin::SagaSummary;
use orderflow_shared::events::{self, EventRow};
use orderflow_shared::flow::Step;
use orderflow_shared::inventory::UnitLine;
use orderflow_shared::inventory::adjustment::{Adjusted, Kind};
use orderflow_shared::inventory::ledger::Movement;
use orderflow_shared::inventory::{self, Level, Reservation, ReservationStatus, SkuStock};
use orderflow_shared::operator::{self, RecordedAction};
use orderflow_shared::order::create::NewOrder;
use orderflow_shared::order::{self, CancelReason, Fulfilment, OrderLineRow, OrderRow, OrderStatus};
use orderflow_shared::payment::{self, PaymentRow, PaymentStatus};
use orderflow_shared::queue::JobStatus;
use orderflow_shared::queue::views::{self as queue_views, QueueStats, SagaJob};
use orderflow_shared::refund::{self, Money, Refund, RefundReason, RefundStatus};
use orderflow_shared::returns::{self, Return, ReturnLine};
use orderflow_shared::shipment::{self, Shipment, ShipmentLine, ShipmentStatus};
use orderflow_shared::step_log::{self, Attempt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ApiError;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub status: OrderStatus,
    /// `auto`: the saga fulfils the order right after payment. `shipment` (any of its skus ships): the order
    /// waits in PAID, its payment authorized and its units reserved, for the warehouse's shipments.
    pub fulfilment: Fulfilment,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    pub lines: Vec<LineView>,
    pub payment: Option<PaymentView>,
    pub cancel_reason: Option<CancelReason>,
    /// The customer's own words when they cancelled, if any.
    pub cancel_note: Option<String>,
    /// The saga step the order is in (or the compensation it parked in).
    pub current_step: Option<Step>,
    /// Until when the reserved stock is held if payment has not started (RESERVED orders); past it the order
    /// is cancelled with `reservation_expired`.
    pub reserved_until: Option<DateTime<Utc>>,
    /// Why a live order is held up, as a stable code: `step_retrying` (a step failed and is retried
    /// shortly) or `needs_attention` (the order is parked for an operator). The error's text stays on the
    /// admin API and dashboard: it can name the provider's internals.
    pub error_code: Option<ErrorCode>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A held-up order's stable code in the public view (`OrderView::error_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A step failed; the saga retries it shortly (or, out of attempts, compensates).
    StepRetrying,
    /// A compensation ran out of attempts: an operator takes over.
    NeedsAttention,
}

impl ErrorCode {
    /// The code of an order as its row says: its status and last step error. A shipment order waiting for
    /// shipments is held up by nothing, whatever error a step met before (a refused shipment, a retried call).
    pub fn of(order: &OrderRow) -> Option<Self> {
        match order.status {
            OrderStatus::NeedsAttention => Some(Self::NeedsAttention),
            _ if order.waits() => None,
            live if !live.is_terminal() && order.last_error.is_some() => Some(Self::StepRetrying),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
    /// Where the line's units are held, or were taken from or given back, per location (the reserve step's
    /// allocation); empty until the order is reserved, and for an order that found no stock.
    pub allocations: Vec<AllocationView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllocationView {
    pub location: String,
    pub quantity: i64,
    /// RESERVED (held), COMMITTED (taken out of stock) or RELEASED (given back).
    pub status: ReservationStatus,
    /// A shipment order's only: of `quantity`, the units shipped, and those given back when the rest was
    /// cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub status: PaymentStatus,
    pub provider_ref: Option<String>,
    /// What was authorized: the order's total, or after a lapsed hold what the re-authorization asked for (the
    /// total less what was captured before it).
    pub amount: i64,
    /// What was captured of it (a shipment order's shipments; an auto order's capture).
    pub captured: i64,
    /// What refunds gave back or are giving back (those on their way included, FAILED ones not, but for the parts
    /// a FAILED refund split over several intents made).
    pub refunded: i64,
    /// Which authorization of the order this is: 1, then one more each time a shipment found the hold lapsed and
    /// authorized what was left again.
    #[serde(default = "first_authorization")]
    pub authorization: i32,
    /// The lapsed intent this authorization replaced (a re-authorization's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// Why the provider declined it: a decline code (`card_declined`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
    /// When the hold lapses, as the provider says: read by the reconciler for an order waiting for shipments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_before: Option<DateTime<Utc>>,
}

fn first_authorization() -> i32 {
    1
}

impl OrderView {
    /// The order's view from its rows; `payment` with the order's money as its rows say (`refund::money_of`);
    /// `reservations` are the order's (any order: each goes to its line).
    pub fn new(
        row: OrderRow,
        lines: Vec<OrderLineRow>,
        payment: Option<(PaymentRow, Money)>,
        reservations: Vec<Reservation>,
    ) -> Self {
        let ships = row.fulfilment == Fulfilment::Shipment;
        let mut held: HashMap<String, Vec<AllocationView>> = HashMap::new();
        for reservation in reservations {
            held.entry(reservation.sku).or_default().push(AllocationView {
                location: reservation.location,
                quantity: reservation.quantity,
                status: reservation.status,
                shipped: ships.then_some(reservation.shipped),
                cancelled: ships.then_some(reservation.cancelled),
            });
        }
        let error_code = ErrorCode::of(&row);
        Self {
            id: row.id,
            status: row.status,
            fulfilment: row.fulfilment,
            customer_id: row.customer_id,
            currency: row.currency,
            total: row.total,
            lines: lines
                .into_iter()
                .map(|l| LineView {
                    allocations: held.remove(&l.sku).unwrap_or_default(),
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            payment: payment.map(|(p, money)| PaymentView {
                status: p.status,
                provider_ref: p.provider_ref,
                amount: p.amount,
                captured: money.captured,
                refunded: money.refunded,
                authorization: p.attempt,
                replaces: p.replaces,
                decline_code: p.decline_code,
                capture_before: p.capture_before,
            }),
            cancel_reason: row.cancel_reason,
            cancel_note: row.cancel_note,
            current_step: row.current_step,
            reserved_until: row.reserved_until,
            error_code,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    /// A new order as its creation writes it (the response stored with its Idempotency-Key).
    pub fn created(order: &NewOrder) -> Self {
        Self::new(order.row(), order.line_rows(), None, Vec::new())
    }
}

/// The order with its lines and payment.
pub async fn order(pool: &PgPool, id: Uuid) -> Result<OrderView, ApiError> {
    let row = order::find(pool, id).await?.ok_or(ApiError::NotFound {
        what: "order",
        id: id.to_string(),
    })?;
    let lines = order::lines(pool, id).await?;
    let payment = with_money(pool, payment::find(pool, id).await?).await?;
    let reservations = inventory::reservations_of(pool, &[id]).await?;
    Ok(OrderView::new(row, lines, payment, reservations))
}

/// The payment with its order's money, read only when there is a payment.
async fn with_money(
    pool: &PgPool,
    payment: Option<PaymentRow>,
) -> Result<Option<(PaymentRow, Money)>, ApiError> {
    let Some(payment) = payment else {
        return Ok(None);
    };
    let money = refund::money_of(pool, &[payment.order_id])
        .await?
        .remove(&payment.order_id)
        .unwrap_or_default();
    Ok(Some((payment, money)))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of orders with their lines, allocations and payments (five reads, whatever the page's size).
pub async fn orders(pool: &PgPool, filter: &order::ListFilter) -> Result<OrderList, ApiError> {
    let rows = order::list(pool, filter).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines: HashMap<Uuid, Vec<OrderLineRow>> = HashMap::new();
    for line in order::lines_of(pool, &ids).await? {
        lines.entry(line.order_id).or_default().push(line);
    }
    let mut money = refund::money_of(pool, &ids).await?;
    let mut payments: HashMap<Uuid, (PaymentRow, Money)> = payment::find_many(pool, &ids)
        .await?
        .into_iter()
        .map(|p| {
            let of = money.remove(&p.order_id).unwrap_or_default();
            (p.order_id, (p, of))
        })
        .collect();
    let mut reservations: HashMap<Uuid, Vec<Reservation>> = HashMap::new();
    for reservation in inventory::reservations_of(pool, &ids).await? {
        reservations
            .entry(reservation.order_id)
            .or_default()
            .push(reservation);
    }
    let next_cursor = (rows.len() as i64 == filter.limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let orders = rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            OrderView::new(
                row,
                lines.remove(&id).unwrap_or_default(),
                payments.remove(&id),
                reservations.remove(&id).unwrap_or_default(),
            )
        })
        .collect();
    Ok(OrderList { orders, next_cursor })
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub event_id: Uuid,
    pub sequence: i32,
    #[serde(rename = "type")]
    pub event_type: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: Option<String>,
    /// The shipment an `order.shipped` or `order.shipment_failed` event is about (absent on the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<Uuid>,
    /// The refund an `order.refunded` or `order.refund_failed` event is about (absent on the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

/// A shipment: its units per line and location, what its capture takes, and where it is.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShipmentView {
    pub id: Uuid,
    pub order_id: Uuid,
    /// PENDING (accepted), CAPTURING (its capture asked for), DONE (captured, its units out of stock) or FAILED
    /// (the provider refused the capture: nothing shipped, the units stay reserved).
    pub status: ShipmentStatus,
    pub lines: Vec<ShipmentLine>,
    /// Its units at the order's prices, in minor units: what its capture takes.
    pub amount: i64,
    /// Whether its capture is the order's last (it releases what the hold has left); set once it is CAPTURING.
    pub final_capture: Option<bool>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
    /// Why the capture was refused (FAILED only).
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Shipment> for ShipmentView {
    fn from(shipment: Shipment) -> Self {
        let row = shipment.row;
        Self {
            id: row.id,
            order_id: row.order_id,
            status: row.status,
            lines: shipment.lines,
            amount: row.amount,
            final_capture: row.final_capture,
            carrier: row.carrier,
            tracking: row.tracking,
            failure: row.failure,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShipmentList {
    pub shipments: Vec<ShipmentView>,
}

/// A refund: how much, why, by which lines if by lines, and where it is.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundView {
    pub id: Uuid,
    pub order_id: Uuid,
    /// PENDING (accepted), REFUNDING (asked of the provider), DONE (refunded) or FAILED (the provider refused it:
    /// nothing was refunded).
    pub status: RefundStatus,
    /// In minor units.
    pub amount: i64,
    pub reason: RefundReason,
    pub note: Option<String>,
    /// A refund by lines' units; empty for one by amount.
    pub lines: Vec<UnitLine>,
    /// Why the provider refused it (FAILED only).
    pub failure: Option<String>,
    /// What it gives back of which of the order's payment intents, in the order asked: one part, unless a lapsed
    /// hold was authorized again and the order's captures lie on more than one intent. Empty until the worker
    /// asks the provider.
    #[serde(default)]
    pub parts: Vec<RefundPartView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One part of a refund: what it gives back of one payment intent.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundPartView {
    pub payment_intent: String,
    /// In minor units.
    pub amount: i64,
    /// The provider's refund (`re_…`), once made.
    pub provider_ref: Option<String>,
}

impl From<Refund> for RefundView {
    fn from(refund: Refund) -> Self {
        let row = refund.row;
        Self {
            id: row.id,
            order_id: row.order_id,
            status: row.status,
            amount: row.amount,
            reason: row.reason,
            note: row.note,
            lines: refund.lines,
            failure: row.failure,
            parts: refund
                .parts
                .into_iter()
                .map(|p| RefundPartView {
                    payment_intent: p.payment_intent,
                    amount: p.amount,
                    provider_ref: p.provider_ref,
                })
                .collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An order's refunds, and its money as its rows say.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundList {
    pub refunds: Vec<RefundView>,
    /// What its captures took, in minor units (a shipment order's DONE shipments; an auto order's capture).
    pub captured: i64,
    /// What its refunds give back, those on their way included (FAILED ones excluded).
    pub refunded: i64,
    /// `captured − refunded`: the most a new refund may ask.
    pub refundable: i64,
}

/// The order's refunds, oldest first, with its money; 404 for an order that does not exist.
pub async fn refunds(pool: &PgPool, id: Uuid) -> Result<RefundList, ApiError> {
    if order::find(pool, id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "order",
            id: id.to_string(),
        });
    }
    let money = refund::money_of(pool, &[id])
        .await?
        .remove(&id)
        .unwrap_or_default();
    Ok(RefundList {
        refunds: refund::of_order(pool, id)
            .await?
            .into_iter()
            .map(RefundView::from)
            .collect(),
        captured: money.captured,
        refunded: money.refunded,
        refundable: money.refundable(),
    })
}

/// A return: its units per line and where they went, whether they were restocked, and the refund that follows.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnView {
    pub id: Uuid,
    pub order_id: Uuid,
    /// Whether the units went back to stock (`order_return` movements) or were written off.
    pub restock: bool,
    /// Per line: the units and the location they went back to (restocked) or came from (written off).
    pub lines: Vec<ReturnLine>,
    /// The refund of their value (see `/v1/orders/{id}/refunds`); null when declined, or when refunds by line gave
    /// every unit of it back already.
    pub refund_id: Option<Uuid>,
    /// The refund was declined by the caller.
    pub refund_declined: bool,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Return> for ReturnView {
    fn from(made: Return) -> Self {
        Self {
            id: made.id,
            order_id: made.order_id,
            restock: made.restock,
            lines: made.lines,
            refund_id: made.refund_id,
            refund_declined: made.refund_declined,
            note: made.note,
            created_at: made.created_at,
        }
    }
}

/// A new return's answer: the return and the refund that follows it (PENDING), if any.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnRecorded {
    #[serde(rename = "return")]
    pub made: ReturnView,
    pub refund: Option<RefundView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnList {
    pub returns: Vec<ReturnView>,
}

/// The order's returns, oldest first; 404 for an order that does not exist.
pub async fn returns(pool: &PgPool, id: Uuid) -> Result<ReturnList, ApiError> {
    if order::find(pool, id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "order",
            id: id.to_string(),
        });
    }
    Ok(ReturnList {
        returns: returns::of_order(pool, id)
            .await?
            .into_iter()
            .map(ReturnView::from)
            .collect(),
    })
}

/// The order's shipments, oldest first; 404 for an order that does not exist.
pub async fn shipments(pool: &PgPool, id: Uuid) -> Result<ShipmentList, ApiError> {
    if order::find(pool, id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "order",
            id: id.to_string(),
        });
    }
    Ok(ShipmentList {
        shipments: shipment::of_order(pool, id)
            .await?
            .into_iter()
            .map(ShipmentView::from)
            .collect(),
    })
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            event_id: e.event_id,
            sequence: e.sequence,
            event_type: e.event_type.as_str().to_owned(),
            from: e.from_status.map(|s| s.as_str().to_owned()),
            to: e.to_status.as_str().to_owned(),
            reason: e.reason.map(|r| r.as_str().to_owned()),
            shipment_id: e.shipment_id,
            refund_id: e.refund_id,
            at: e.created_at,
        }
    }
}

/// The order's events, oldest first; 404 for an order that does not exist.
pub async fn events_of(pool: &PgPool, id: Uuid) -> Result<Vec<EventView>, ApiError> {
    if order::find(pool, id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "order",
            id: id.to_string(),
        });
    }
    Ok(events::for_order(pool, id)
        .await?
        .into_iter()
        .map(EventView::from)
        .collect())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SkuView {
    pub sku: String,
    /// Over every location.
    pub on_hand: i64,
    pub reserved: i64,
    /// on_hand − reserved: what new orders can still take, over every location.
    pub available: i64,
    pub price: i64,
    pub currency: String,
    /// `auto` (the default: its orders are fulfilled right after payment) or `shipment` (an order with it waits
    /// in PAID for the warehouse's shipments).
    pub fulfilment: Fulfilment,
    /// The version of the sku's stock, as its `ETag` carries it (quoted there): it changes whenever the stock
    /// does, at any location. A `PUT` with `If-Match` sets the stock only while it is still this.
    pub version: String,
    /// The stock at each location that has held it, in allocation order.
    pub locations: Vec<Level>,
}

impl SkuView {
    pub fn new(stock: SkuStock) -> Self {
        let row = stock.sku;
        Self {
            available: row.on_hand - row.reserved,
            sku: row.sku,
            on_hand: row.on_hand,
            reserved: row.reserved,
            price: row.price,
            currency: row.currency,
            fulfilment: row.fulfilment,
            version: stock.version.0.to_string(),
            locations: stock.levels,
        }
    }
}

/// An adjustment as made, with the sku's stock right after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdjustmentView {
    pub id: Uuid,
    pub sku: String,
    pub location: String,
    pub delta: i64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The sku's stock after the adjustment (its `version` is the one to send as If-Match next).
    pub stock: SkuView,
}

/// A transfer as made, with the sku's stock right after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransferView {
    pub id: Uuid,
    pub sku: String,
    pub from: String,
    pub to: String,
    pub quantity: i64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The sku's stock after the transfer.
    pub stock: SkuView,
}

/// The answer to an adjustment or a transfer, as its kind is.
pub fn adjusted(adjusted: &Adjusted) -> Result<Value, serde_json::Error> {
    let stock = SkuView::new(adjusted.stock.clone());
    let (id, sku, reason, created_at) = (
        adjusted.id,
        adjusted.stock.sku.sku.clone(),
        adjusted.reason.clone(),
        adjusted.created_at,
    );
    match &adjusted.kind {
        Kind::Adjustment { location, delta } => serde_json::to_value(AdjustmentView {
            id,
            sku,
            location: location.clone(),
            delta: *delta,
            reason,
            created_at,
            stock,
        }),
        Kind::Transfer { from, to, quantity } => serde_json::to_value(TransferView {
            id,
            sku,
            from: from.clone(),
            to: to.clone(),
            quantity: *quantity,
            reason,
            created_at,
            stock,
        }),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MovementList {
    pub movements: Vec<Movement>,
    /// Pass as `after` for the next page; null on the last page (a later request from the last id gets what
    /// came since).
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueStats>,
    /// Admission control as the API process that answers sees it.
    pub admission: crate::admission::AdmissionView,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaList {
    pub sagas: Vec<SagaSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrentJob {
    pub id: String,
    pub status: Option<JobStatus>,
    pub worker: Option<String>,
    /// Whether the worker holding it is still connected (false: the reconciler will take it back).
    pub worker_alive: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaDetail {
    pub order: OrderView,
    /// The last error a saga step met, as the step reported it; for a NEEDS_ATTENTION order, why it is parked.
    pub last_error: Option<String>,
    /// Not over and without progress for longer than the stuck threshold.
    pub stuck: bool,
    pub last_progress_at: DateTime<Utc>,
    /// The job that should move the saga on.
    pub current_job: Option<CurrentJob>,
    pub steps: Vec<Attempt>,
    /// A shipment order's shipments, oldest first: what each shipped, from where, what it captured.
    pub shipments: Vec<ShipmentView>,
    /// The order's refunds, oldest first.
    pub refunds: Vec<RefundView>,
    pub jobs: Vec<SagaJob>,
    pub events: Vec<EventView>,
    pub actions: Vec<RecordedAction>,
}

/// One saga's whole story: the order, its step attempts, jobs, events and operator actions.
pub async fn saga(pool: &PgPool, id: Uuid, stuck_after: std::time::Duration) -> Result<SagaDetail, ApiError> {
    let row = order::find(pool, id).await?.ok_or(ApiError::NotFound {
        what: "saga",
        id: id.to_string(),
    })?;
    let jobs = queue_views::jobs_of_order(pool, id).await?;
    let current_job = match row.job_id.as_deref() {
        None => None,
        Some(job_id) => {
            let job = jobs.iter().find(|j| j.id == job_id);
            let worker = job.and_then(|j| j.worker.clone());
            let worker_alive = match &worker {
                Some(w) => Some(queue_views::worker_alive(pool, w).await?),
                None => None,
            };
            Some(CurrentJob {
                id: job_id.to_owned(),
                status: job.and_then(|j| j.status),
                worker,
                worker_alive,
            })
        }
    };
    // An order waiting for the warehouse (or a FULFILLED one for a refund) has no step to be stuck in; a FULFILLED
    // one whose refund is on its way has.
    let stuck = (!row.status.is_terminal() || row.current_step.is_some())
        && !row.waits()
        && (Utc::now() - row.updated_at)
            .to_std()
            .is_ok_and(|age| age > stuck_after);
    let last_progress_at = row.updated_at;
    let last_error = row.last_error.clone();
    let lines = order::lines(pool, id).await?;
    let payment = with_money(pool, payment::find(pool, id).await?).await?;
    let reservations = inventory::reservations_of(pool, &[id]).await?;
    Ok(SagaDetail {
        order: OrderView::new(row, lines, payment, reservations),
        last_error,
        stuck,
        last_progress_at,
        current_job,
        steps: step_log::attempts_of(pool, id).await?,
        shipments: shipment::of_order(pool, id)
            .await?
            .into_iter()
            .map(ShipmentView::from)
            .collect(),
        refunds: refund::of_order(pool, id)
            .await?
            .into_iter()
            .map(RefundView::from)
            .collect(),
        jobs,
        events: events::for_order(pool, id)
            .await?
            .into_iter()
            .map(EventView::from)
            .collect(),
        actions: operator::actions_of(pool, id).await?,
    })
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionResult {
    pub action: String,
    pub actor: String,
    /// What was done.
    pub outcome: String,
    pub order: OrderView,
}
