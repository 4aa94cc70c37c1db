//! The order: its states, the one transition table that moves it, and the `orders` / `order_lines` SQL.

use std::fmt;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::events::EventType;
use crate::idempotency::{self, NewRecord, StoredResponse};
use crate::inventory::SkuRow;
use crate::jobs::{self, Step, StepJob};

/// Where an order is in its life. Persisted and shown as the upper-case strings of [`OrderStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Reserved,
    Paid,
    Fulfilled,
    /// Compensations (release stock, void or refund) are running; ends in `Cancelled`.
    Cancelling,
    Cancelled,
    /// A compensation kept failing past its retry budget: parked, with its last error, for an operator. Not
    /// terminal (money or stock may still be held), but nothing retries it by itself.
    NeedsAttention,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        Self::Created,
        Self::Reserved,
        Self::Paid,
        Self::Fulfilled,
        Self::Cancelling,
        Self::Cancelled,
        Self::NeedsAttention,
    ];

    /// The statuses of a saga that is still running: the reconciler watches these.
    pub const LIVE: [OrderStatus; 4] = [Self::Created, Self::Reserved, Self::Paid, Self::Cancelling];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Reserved => "RESERVED",
            Self::Paid => "PAID",
            Self::Fulfilled => "FULFILLED",
            Self::Cancelling => "CANCELLING",
            Self::Cancelled => "CANCELLED",
            Self::NeedsAttention => "NEEDS_ATTENTION",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

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
            (Paid, Transition::Fulfil) => Some(Fulfilled),
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

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order was cancelled. Persisted as the snake_case strings of [`CancelReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
            Self::OperatorRequest => "operator_request",
        }
    }
}

/// One explicit move of the state machine. Each has a stable event type for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Reserve,
    RejectOutOfStock,
    Pay,
    Fulfil,
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    pub status: String,
    pub payment_token: String,
    pub cancel_reason: Option<String>,
    pub cancel_note: Option<String>,
    pub current_step: Option<String>,
    pub last_error: Option<String>,
    /// The apalis job that moves the saga on (see `jobs::enqueue`).
    pub job_id: Option<String>,
    /// Until when the reserved stock is held (set by the reserve step).
    pub reserved_until: Option<DateTime<Utc>>,
    /// The W3C trace id of the request that created the order.
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    /// The parsed status; the table's CHECK constraint guarantees one of ours.
    pub fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status).unwrap_or(OrderStatus::Created)
    }
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct OrderLineRow {
    pub order_id: Uuid,
    pub line_no: i32,
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
}

/// A validated order ready to insert.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    pub payment_token: String,
    pub trace_id: Option<String>,
    /// (sku, quantity, unit price snapshot), in request order.
    pub lines: Vec<(String, i64, i64)>,
    /// Its first job's id (reserve): see [`jobs::new_job_id`].
    pub job_id: String,
    /// The creating transaction's timestamp ([`Admission::now`]), so the rows below are the rows as written.
    pub created_at: DateTime<Utc>,
}

impl NewOrder {
    /// The order's row as [`insert`] writes it.
    pub fn row(&self) -> OrderRow {
        OrderRow {
            id: self.id,
            customer_id: self.customer_id.clone(),
            currency: self.currency.clone(),
            total: self.total,
            status: OrderStatus::Created.as_str().to_owned(),
            payment_token: self.payment_token.clone(),
            cancel_reason: None,
            cancel_note: None,
            current_step: Some(Step::Reserve.name().to_owned()),
            last_error: None,
            job_id: Some(self.job_id.clone()),
            reserved_until: None,
            trace_id: self.trace_id.clone(),
            created_at: self.created_at,
            updated_at: self.created_at,
        }
    }

    /// The order's lines as [`insert`] writes them, numbered from 1 in request order.
    pub fn line_rows(&self) -> Vec<OrderLineRow> {
        self.lines
            .iter()
            .zip(1..)
            .map(|((sku, quantity, unit_price), line_no)| OrderLineRow {
                order_id: self.id,
                line_no,
                sku: sku.clone(),
                quantity: *quantity,
                unit_price: *unit_price,
            })
            .collect()
    }
}

pub(crate) const ORDER_COLUMNS: &str = "id, customer_id, currency, total, status, payment_token, cancel_reason, cancel_note, \
     current_step, last_error, job_id, reserved_until, trace_id, created_at, updated_at";

/// What order creation reads before it writes, in one round trip (see [`admit`]).
#[derive(Debug, Clone)]
pub struct Admission {
    /// Whether this transaction now holds the request's Idempotency-Key; if not, a request with the same key
    /// is in flight, and nothing else was read.
    pub key_held: bool,
    /// The record of an earlier request with the key; if there is one, the skus were not read.
    pub stored: Option<StoredResponse>,
    /// The skus the order names that exist.
    pub skus: Vec<SkuRow>,
    /// The transaction's timestamp: the order's `created_at`.
    pub now: DateTime<Utc>,
}

/// Takes the lock of the Idempotency-Key `key` for the rest of the transaction and reads, in the same
/// statement, the key's stored record, the skus `skus` and the transaction's timestamp (see
/// [`crate::idempotency`] for the one race this leaves and how it ends).
#[tracing::instrument(skip_all, err)]
pub async fn admit(conn: &mut PgConnection, key: &str, skus: &[&str]) -> Result<Admission, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"with l as (select {} as held)
               select l.held, now() as now,
                      i.request_hash, i.order_id, i.response_status, i.response_body,
                      s.sku, s.on_hand, s.reserved, s.price, s.currency, s.created_at, s.updated_at
               from l
               left join idempotency_keys i on l.held and i.key = $1
               left join skus s on l.held and i.key is null and s.sku = any($2)"#,
            idempotency::try_lock_sql(1)
        )
    });
    let rows = sqlx::query(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(key)
        .bind(skus)
        .fetch_all(&mut *conn)
        .await?;
    let first = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    // The joins leave the record's columns null when there is none, and the sku columns null on the one row
    // without a sku.
    let stored = match first.try_get::<Option<Uuid>, _>("order_id")? {
        Some(_) => Some(StoredResponse::from_row(first)?),
        None => None,
    };
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<String>, _>("sku")?.is_some() {
            found.push(SkuRow::from_row(row)?);
        }
    }
    Ok(Admission {
        key_held: first.try_get("held")?,
        stored,
        skus: found,
        now: first.try_get("now")?,
    })
}

/// Inserts the order in CREATED (its row is [`NewOrder::row`]), its lines, its `order.created` event, its first
/// saga job (reserve, with its `saga_jobs` row, as `jobs::enqueue` writes one) and the request's idempotency
/// record, in one statement. A key written meanwhile by another request fails it on
/// [`idempotency::KEY_CONSTRAINT`].
#[tracing::instrument(skip_all, fields(order_id = %order.id), err)]
pub async fn insert(
    conn: &mut PgConnection,
    order: &NewOrder,
    record: &NewRecord<'_>,
) -> Result<(), sqlx::Error> {
    let skus: Vec<&str> = order.lines.iter().map(|(sku, _, _)| sku.as_str()).collect();
    let quantities: Vec<i64> = order.lines.iter().map(|(_, q, _)| *q).collect();
    let prices: Vec<i64> = order.lines.iter().map(|(_, _, p)| *p).collect();
    let first = StepJob {
        order_id: order.id,
        attempt: 1,
        trace: None, // the job takes the order's trace id
    };
    // One statement, one round trip: the order already names its first job, so nothing updates it again. The
    // job's parameters follow the order's ($13 on, in `jobs::bind_job`'s order): the order takes its job id ($13)
    // and its current step ($14) from them; the idempotency record's follow ($20 on).
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"with o as (
               insert into orders (id, customer_id, currency, total, status, payment_token, current_step, trace_id,
                                   job_id, created_at, updated_at)
               values ($1, $2, $3, $4, 'CREATED', $5, $14, $6, $13, $12, $12)
               returning id, trace_id
           ),
           l as (
               insert into order_lines (order_id, line_no, sku, quantity, unit_price)
               select o.id, ordinality::integer, sku, quantity, unit_price
               from o, unnest($7::text[], $8::bigint[], $9::bigint[]) with ordinality as l(sku, quantity, unit_price)
           ),
           e as (
               insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status)
               select $10, o.id, 1, $11, null, 'CREATED' from o
           ),
           {},
           {}
           select 1"#,
            jobs::job_ctes(13),
            idempotency::record_cte(20)
        )
    });
    let query = sqlx::query(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(order.id)
        .bind(&order.customer_id)
        .bind(&order.currency)
        .bind(order.total)
        .bind(&order.payment_token)
        .bind(&order.trace_id)
        .bind(&skus)
        .bind(&quantities)
        .bind(&prices)
        .bind(Uuid::now_v7())
        .bind(EventType::Created.as_str())
        .bind(order.created_at);
    let query = jobs::bind_job(query, &order.job_id, Step::Reserve, &first, None);
    idempotency::bind_record(query, record)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn find(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ORDER_COLUMNS} from orders where id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Reads the order and locks its row until the transaction ends. Every saga step and the cancel endpoint take
/// this lock first, so steps of one order never interleave.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ORDER_COLUMNS} from orders where id = $1 for update"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Like `lock`, but `None` at once when another transaction holds the row (SKIP LOCKED): for the reconciler,
/// which leaves an order a step is working on alone.
pub async fn try_lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {ORDER_COLUMNS} from orders where id = $1 for update skip locked"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Locks many orders at once (in id order, so two transactions locking overlapping sets cannot deadlock) and
/// reads them; orders that do not exist are missing from the result. For steps run for many orders together.
pub async fn lock_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<OrderRow>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!("select {ORDER_COLUMNS} from orders where id = any($1) order by id for update")
    });
    sqlx::query_as(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(ids)
        .fetch_all(conn)
        .await
}

pub async fn lines(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<OrderLineRow>, sqlx::Error> {
    sqlx::query_as(
        "select order_id, line_no, sku, quantity, unit_price from order_lines where order_id = $1 order by line_no",
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

/// Lines of many orders at once, for list pages.
pub async fn lines_of(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<OrderLineRow>, sqlx::Error> {
    sqlx::query_as(
        "select order_id, line_no, sku, quantity, unit_price from order_lines where order_id = any($1) \
         order by order_id, line_no",
    )
    .bind(ids)
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

/// A page of orders in id order (UUIDv7 ids, so creation order).
pub async fn list(executor: impl PgExecutor<'_>, filter: &ListFilter) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"select {ORDER_COLUMNS} from orders
           where ($1::text is null or status = $1)
             and ($2::text is null or customer_id = $2)
             and ($3::uuid is null or id > $3)
           order by id
           limit $4"#
    )))
    .bind(filter.status.map(OrderStatus::as_str))
    .bind(filter.customer_id.as_deref())
    .bind(filter.after)
    .bind(filter.limit)
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
    pub reason: Option<&'static str>,
    /// The reason the event carries: the transition's own, or the order's for the cancel's last events.
    pub event_reason: Option<String>,
    pub event_type: EventType,
}

impl PlannedTransition {
    /// Validates `transition` from the order's current status.
    pub fn new(order: &OrderRow, transition: &Transition) -> Result<Self, InvalidTransition> {
        let from = order.status();
        let to = from.apply(transition)?;
        let reason = match transition {
            Transition::StartCancel(reason) => Some(reason.as_str()),
            Transition::RejectOutOfStock => Some(CancelReason::OutOfStock.as_str()),
            _ => None,
        };
        let event_reason = reason.map(str::to_owned).or_else(|| {
            order
                .cancel_reason
                .clone()
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
}

/// Applies `transition` to a locked order: validates it against the table, writes the new status and appends
/// the event, in the caller's transaction. Returns the new status.
#[tracing::instrument(skip_all, fields(order_id = %order.id, transition = transition.name()), err)]
pub async fn transition(
    conn: &mut PgConnection,
    order: &OrderRow,
    transition: Transition,
    next_step: Option<&str>,
    note: Option<&str>,
) -> Result<OrderStatus, TransitionError> {
    let planned = PlannedTransition::new(order, &transition)?;
    // The status change and its event in one statement (one round trip); the caller holds the row lock, so the
    // event's per-order sequence cannot race.
    sqlx::query(
        r#"with o as (
               update orders
               set status = $2,
                   cancel_reason = coalesce($3, cancel_reason),
                   cancel_note = coalesce($4, cancel_note),
                   current_step = $5,
                   updated_at = now()
               where id = $1
               returning id
           )
           insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
           select $6, o.id, coalesce((select max(sequence) from order_events where order_id = $1), 0) + 1,
                  $7, $8, $2, $9
           from o"#,
    )
    .bind(order.id)
    .bind(planned.to.as_str())
    .bind(planned.reason)
    .bind(note)
    .bind(next_step)
    .bind(Uuid::now_v7())
    .bind(planned.event_type.as_str())
    .bind(planned.from.as_str())
    .bind(&planned.event_reason)
    .execute(&mut *conn)
    .await?;
    tracing::info!(from = %planned.from, to = %planned.to, reason = planned.reason, "order transition");
    if let Transition::StartCancel(reason) = &transition {
        metrics::counter!("orderflow_compensations_total", "reason" => reason.as_str()).increment(1);
    }
    Ok(planned.to)
}

/// Holds the order's reservation until `ttl` from now (the reserve step's promise to the customer).
pub async fn hold_reservation(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    ttl: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query("update orders set reserved_until = now() + make_interval(secs => $2) where id = $1")
        .bind(id)
        .bind(ttl.as_secs_f64())
        .execute(executor)
        .await?;
    Ok(())
}

/// Records the last error a step met, for operators.
pub async fn set_last_error(executor: impl PgExecutor<'_>, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
    // Not `updated_at`: that is the saga's last progress, which a failure is not.
    sqlx::query("update orders set last_error = $2 where id = $1")
        .bind(id)
        .bind(error)
        .execute(executor)
        .await?;
    Ok(())
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
            (Paid, "start_cancel", Cancelling),
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

    #[test]
    fn terminal_states_accept_no_transition() {
        for from in [Fulfilled, Cancelled] {
            assert!(from.is_terminal());
            for transition in all_transitions() {
                assert!(
                    from.apply(&transition).is_err(),
                    "{from} accepted {}",
                    transition.name()
                );
            }
        }
    }

    #[test]
    fn paying_a_cancelled_order_is_rejected_with_a_clear_message() {
        let err = Cancelled.apply(&Transition::Pay).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("cannot pay an order that is CANCELLED"));
    }

    #[test]
    fn status_strings_round_trip() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("created"), None);
    }
}
