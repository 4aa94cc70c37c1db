//! Refunds (issue 18): captured money given back to the customer, by amount or by lines, never more than was
//! captured (`POST /v1/orders/{id}/refunds`).
//!
//! A refund is PENDING when it is accepted ([`create`]: under its Idempotency-Key and the order's lock, which
//! every refund of the order takes, so the sum of the refunds that are not FAILED never passes what was captured:
//! of two that together would, the second waits for the first's commit and is refused), REFUNDING once the refund
//! step has asked the provider for it ([`begin`]), then DONE ([`complete`], the provider's refund id kept) or FAILED
//! ([`fail`]: refused for good; nothing was refunded, and it no longer counts against what is refundable). The
//! provider's idempotency key is the refund's own ([`provider_key`]), so a refund asked again after a crash is a
//! replay, never a second refund. Refunds of one order run one at a time, oldest first.
//!
//! What was captured is counted from rows, never from a balance kept beside them: a shipment order's DONE
//! shipments, an auto order's captured payment. What a line may be refunded by line is what was delivered of it
//! (shipped, or all of it once an auto order is FULFILLED) minus what refunds by line took of it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::flow::Step;
use crate::idempotency::{self, Answer, KeyError, Keyed, Made, Makes};
use crate::input::{self, FieldError};
use crate::inventory::{self, UnitLine};
use crate::money::{self, Quantity};
use crate::order::{self, Move, OrderRow, OrderStatus};
use crate::queue::announce::{Announcer, begin_quiet};

/// A new refund's answer status: accepted, the refund runs in the worker.
pub const ACCEPTED: u16 = 202;

/// Where a refund is. Persisted as the upper-case strings of [`RefundStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Accepted; the refund step has not asked for it yet.
    Pending,
    /// Asked of the provider; the answer is not recorded yet.
    Refunding,
    /// Refunded.
    Done,
    /// The provider refused it for good: nothing was refunded.
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 4] = [Self::Pending, Self::Refunding, Self::Done, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Refunding => "REFUNDING",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

stored_as_text!(RefundStatus);

/// Why the money goes back: Stripe's refund reasons, which the provider is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    RequestedByCustomer,
    Duplicate,
    Fraudulent,
}

impl RefundReason {
    pub const ALL: [RefundReason; 3] = [Self::RequestedByCustomer, Self::Duplicate, Self::Fraudulent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestedByCustomer => "requested_by_customer",
            Self::Duplicate => "duplicate",
            Self::Fraudulent => "fraudulent",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

stored_as_text!(RefundReason);

/// A refund as stored.
#[derive(Debug, Clone)]
pub struct RefundRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: RefundStatus,
    pub amount: i64,
    pub reason: RefundReason,
    pub note: Option<String>,
    /// The provider's refund (`re_…`), once DONE.
    pub provider_ref: Option<String>,
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The idempotency key of a refund at the provider: derived from the refund, so every retry, every worker and the
/// reconciler send the same one and the provider refunds it at most once.
pub fn provider_key(refund_id: Uuid) -> String {
    format!("orderflow-refund-{refund_id}")
}

/// `POST /v1/orders/{id}/refunds` as clients send it: an amount or lines, not both.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// Minor units to give back, at most what is captured and not refunded yet.
    pub amount: Option<i64>,
    /// Units of the order's lines to give back, at their prices; each sku once.
    pub lines: Option<Vec<UnitLine>>,
    /// Required: `requested_by_customer`, `duplicate` or `fraudulent` (the provider's reasons).
    pub reason: Option<String>,
    /// Free text for people (at most 500 characters).
    pub note: Option<String>,
}

/// What a valid request asks to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Amount(i64),
    /// (sku, quantity) in request order, each sku once.
    Lines(Vec<(String, Quantity)>),
}

/// A refund request whose fields are all valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRefund {
    pub asked: Asked,
    pub reason: RefundReason,
    pub note: Option<String>,
}

impl RefundRequest {
    /// Checks everything that needs no database: exactly one of an amount (1 to the largest order total) and lines
    /// (at least one, at most `money::MAX_ORDER_LINES`, each sku a valid code named once, each quantity in
    /// bounds), a known reason, a plain note.
    pub fn validate(&self) -> Result<ValidRefund, FieldError> {
        let asked = match (self.amount, &self.lines) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new("lines", "give an amount or lines, not both"));
            }
            (None, None) => {
                return Err(FieldError::new(
                    "amount",
                    "give an amount (minor units) or lines to refund",
                ));
            }
            (Some(amount), None) => {
                if !(1..=money::MAX_ORDER_TOTAL).contains(&amount) {
                    return Err(FieldError::new(
                        "amount",
                        format!("must be from 1 to {}", money::MAX_ORDER_TOTAL),
                    ));
                }
                Asked::Amount(amount)
            }
            (None, Some(lines)) => Asked::Lines(inventory::check_unit_lines("a refund by lines", lines)?),
        };
        let reasons = RefundReason::ALL.map(RefundReason::as_str).join(", ");
        let reason = match self.reason.as_deref() {
            None => {
                return Err(FieldError::new("reason", format!("required: one of {reasons}")));
            }
            Some(reason) => RefundReason::parse(reason)
                .ok_or_else(|| FieldError::new("reason", format!("{reason:?} is not one of {reasons}")))?,
        };
        Ok(ValidRefund {
            asked,
            reason,
            note: input::optional_text("note", self.note.as_deref(), 500)?,
        })
    }
}

/// A refund request, checked, with what identifies it.
#[derive(Debug, Clone)]
pub struct Refunding<'a> {
    pub order_id: Uuid,
    pub refund: &'a ValidRefund,
    /// Its Idempotency-Key, whose it is and the request's fingerprint ([`fingerprint`]).
    pub keyed: Keyed<'a>,
}

/// What identifies a refund request beyond its key: the order it names and its body.
pub fn fingerprint(order_id: Uuid, body: &Value) -> Vec<u8> {
    idempotency::fingerprint(&serde_json::json!({"refund_order": order_id, "body": body}))
}

/// A refund as made, for the answer.
#[derive(Debug, Clone)]
pub struct Refund {
    pub row: RefundRow,
    /// A refund by lines' lines; empty for one by amount.
    pub lines: Vec<UnitLine>,
    /// Which intents it draws on, in order ([`RefundPart`]); none until the refund step asks for it.
    pub parts: Vec<RefundPart>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    /// Nothing of the order is captured (not paid or not shipped yet, or cancelled).
    #[error("order {0} {1}")]
    NotRefundable(Uuid, String),
    /// More than is captured and not refunded yet.
    #[error("{0}")]
    ExceedsCaptured(String),
    /// More units of a line than were delivered and not refunded by line yet.
    #[error("{0}")]
    ExceedsDelivered(String),
    /// A cancel of the rest is releasing the order's hold: a refund waits for it.
    #[error("order {0} is being cancelled: what is left of it is being released; refund once that ends")]
    Releasing(Uuid),
    #[error("failed to render the response: {0}")]
    Render(#[from] serde_json::Error),
    /// Queueing the refund step failed.
    #[error(transparent)]
    Transition(#[from] order::TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Accepts the refund (or replays the answer of an earlier request with the key). `respond` renders the answer's
/// body, stored with the key so a repeat gets exactly the first answer.
#[tracing::instrument(skip_all, fields(order_id = %request.order_id), err)]
pub async fn create(
    pool: &sqlx::PgPool,
    announcer: &Announcer,
    request: &Refunding<'_>,
    respond: impl Fn(&Refund) -> Result<Value, serde_json::Error>,
) -> Result<Answer, RefundError> {
    idempotency::at_most_twice(|| create_once(pool, announcer, request, &respond))
        .await
        .inspect(|answer| {
            if !answer.replayed {
                tracing::info!(order_id = %request.order_id, "refund accepted");
            }
        })
}

async fn create_once(
    pool: &sqlx::PgPool,
    announcer: &Announcer,
    request: &Refunding<'_>,
    respond: &impl Fn(&Refund) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, RefundError> {
    // Quiet: a job it queues is announced after the commit.
    let mut tx = begin_quiet(pool).await?;
    let outcome = create_in(&mut tx, request, respond).await;
    idempotency::end_keyed(tx, outcome, announcer, Step::Refund.queue()).await
}

/// What an order's money is, as its rows say: what its captures took and what its refunds give back (those not
/// FAILED, and of a FAILED one the parts the provider made before a later part was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Money {
    pub captured: i64,
    pub refunded: i64,
}

impl Money {
    /// What can still be refunded.
    pub fn refundable(self) -> i64 {
        self.captured - self.refunded
    }
}

/// [`Money`] of each of the orders, in one read: a shipment order's captured is its DONE shipments', an auto
/// order's its payment's once captured.
pub async fn money_of(
    executor: impl PgExecutor<'_>,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Money>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select o.id,
                  case when o.fulfilment = 'shipment'
                       then coalesce((select sum(s.amount) from shipments s
                                      where s.order_id = o.id and s.status = 'DONE'), 0)
                       else coalesce((select p.amount from payments p
                                      where p.order_id = o.id and p.status = 'CAPTURED'), 0)
                  end::bigint as "captured!",
                  (coalesce((select sum(f.amount) from refunds f where f.order_id = o.id and f.status <> 'FAILED'), 0)
                   + coalesce((select sum(rp.amount) from refunds f join refund_parts rp on rp.refund_id = f.id
                               where f.order_id = o.id and f.status = 'FAILED' and rp.provider_ref is not null), 0))
                      ::bigint as "refunded!"
           from orders o where o.id = any($1)"#,
        order_ids
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let money = Money {
                captured: r.captured,
                refunded: r.refunded,
            };
            (r.id, money)
        })
        .collect())
}

/// One order line as a refund or a return by lines reads it: its price, what was delivered of it, what refunds by
/// line took of it and what came back of it in returns.
pub(crate) struct LineMoney {
    pub line_no: i32,
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub delivered: i64,
    pub refunded: i64,
    pub returned: i64,
}

/// The order's lines as [`LineMoney`], read under the order's lock.
pub(crate) async fn line_money(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<LineMoney>, sqlx::Error> {
    sqlx::query_as!(
        LineMoney,
        r#"select l.line_no, l.sku, l.quantity, l.unit_price,
                  case when o.fulfilment = 'shipment'
                       then coalesce((select sum(sl.quantity) from shipment_lines sl
                                      join shipments s on s.id = sl.shipment_id
                                      where sl.order_id = l.order_id and sl.line_no = l.line_no
                                        and s.status = 'DONE'), 0)
                       else l.quantity
                  end::bigint as "delivered!",
                  coalesce((select sum(rl.quantity) from refund_lines rl join refunds f on f.id = rl.refund_id
                            where rl.order_id = l.order_id and rl.line_no = l.line_no
                              and f.status <> 'FAILED'), 0)::bigint as "refunded!",
                  coalesce((select sum(tl.quantity) from return_lines tl
                            where tl.order_id = l.order_id and tl.line_no = l.line_no), 0)::bigint as "returned!"
           from order_lines l join orders o on o.id = l.order_id
           where l.order_id = $1 order by l.line_no"#,
        order_id
    )
    .fetch_all(conn)
    .await
}

/// Writes a PENDING refund of `asked` for `order`, which the caller has locked: refused unless the order's money is
/// captured (PARTIALLY_FULFILLED or FULFILLED, not releasing its rest), by lines at most what was delivered and not
/// refunded by line, in all at most what was captured and not refunded. It queues nothing. `lines`: the order's
/// [`line_money`], when the caller read it under the same lock (else it is read here for a refund by lines).
pub(crate) async fn write(
    tx: &mut PgConnection,
    order: &OrderRow,
    asked: &Asked,
    lines: Option<&[LineMoney]>,
    reason: RefundReason,
    note: Option<&str>,
) -> Result<Refund, RefundError> {
    let id = order.id;
    match order.status {
        OrderStatus::PartiallyFulfilled | OrderStatus::Fulfilled => {}
        OrderStatus::Cancelling | OrderStatus::Cancelled | OrderStatus::NeedsAttention => {
            return Err(RefundError::NotRefundable(
                id,
                format!(
                    "is {}: a cancellation gives back all of its money by itself",
                    order.status
                ),
            ));
        }
        status => {
            return Err(RefundError::NotRefundable(
                id,
                format!("is {status}: none of its money is captured yet"),
            ));
        }
    }
    if order.current_step == Some(Step::ReleaseRest) {
        return Err(RefundError::Releasing(id));
    }
    let money = money_of(&mut *tx, &[id]).await?.remove(&id).unwrap_or_default();
    let (amount, lines) = match asked {
        Asked::Amount(amount) => (*amount, Vec::new()),
        Asked::Lines(asked) => {
            let lines = match lines {
                Some(lines) => lines,
                None => &line_money(&mut *tx, id).await?,
            };
            let mut refunded: Vec<(i32, UnitLine)> = Vec::with_capacity(asked.len());
            let mut amount = 0_i64;
            for (i, (sku, quantity)) in asked.iter().enumerate() {
                let Some(line) = lines.iter().find(|l| l.sku == *sku) else {
                    return Err(FieldError::new(
                        format!("lines[{i}].sku"),
                        format!("{sku:?} is not a line of order {id}"),
                    )
                    .into());
                };
                let left = line.delivered - line.refunded;
                if quantity.get() > left {
                    return Err(RefundError::ExceedsDelivered(format!(
                        "lines[{i}]: {} of {sku} asked to refund; of the {} ordered {} were delivered and {} refunded \
                         by line, so at most {left}",
                        quantity.get(),
                        line.quantity,
                        line.delivered,
                        line.refunded
                    )));
                }
                amount += quantity.get() * line.unit_price;
                refunded.push((
                    line.line_no,
                    UnitLine {
                        sku: sku.clone(),
                        quantity: quantity.get(),
                    },
                ));
            }
            (amount, refunded)
        }
    };
    if amount > money.refundable() {
        return Err(RefundError::ExceedsCaptured(format!(
            "{amount} asked to refund; {} captured and {} refunded already, so at most {}",
            money.captured,
            money.refunded,
            money.refundable()
        )));
    }
    let row = sqlx::query_as!(
        RefundRow,
        r#"insert into refunds (id, order_id, status, amount, reason, note)
           values ($1, $2, 'PENDING', $3, $4, $5)
           returning id, order_id, status as "status: _", amount, reason as "reason: _", note, provider_ref, failure,
                     created_at, updated_at"#,
        Uuid::now_v7(),
        id,
        amount,
        reason.as_str(),
        note
    )
    .fetch_one(&mut *tx)
    .await?;
    if !lines.is_empty() {
        let (line_nos, quantities): (Vec<i32>, Vec<i64>) =
            lines.iter().map(|(n, l)| (*n, l.quantity)).unzip();
        sqlx::query!(
            r#"insert into refund_lines (refund_id, order_id, line_no, quantity)
               select $1, $2, l.line_no, l.quantity from unnest($3::integer[], $4::bigint[]) as l(line_no, quantity)"#,
            row.id,
            id,
            &line_nos,
            &quantities
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(Refund {
        parts: Vec::new(),
        row,
        lines: lines.into_iter().map(|(_, l)| l).collect(),
    })
}

/// [`create_once`]'s work inside its transaction, which it leaves to its caller to end; with the answer, whether
/// it queued a refund job. `None`: the key was written meanwhile (see [`create`]).
async fn create_in(
    tx: &mut PgConnection,
    request: &Refunding<'_>,
    respond: &impl Fn(&Refund) -> Result<Value, serde_json::Error>,
) -> Result<Option<(Answer, bool)>, RefundError> {
    let keyed = request.keyed;
    if let Some(replayed) = keyed
        .claim_or_replay::<RefundError>(tx, Makes::Refund, ACCEPTED)
        .await?
    {
        return Ok(Some(replayed));
    }
    let id = request.order_id;
    // The order's lock: every refund of the order takes it, so what the others took is read as committed.
    let order = order::lock(&mut *tx, id)
        .await?
        .ok_or(RefundError::NotFound(id))?;
    let refund = write(
        &mut *tx,
        &order,
        &request.refund.asked,
        None,
        request.refund.reason,
        request.refund.note.as_deref(),
    )
    .await?;
    // The order's refunds run one after another, and after any step the order is in: the step that runs queues
    // the refund when it ends (`pending::Pending::next_step`); with none, the refund queues itself.
    let queue_refund = order.current_step.is_none();
    if queue_refund {
        order::advance(&mut *tx, &[Move::client_asked(&order, Step::Refund)]).await?;
    }
    let body = respond(&refund)?;
    keyed
        .record(tx, Made::Refund(refund.row.id), ACCEPTED, body, queue_refund)
        .await
}

/// Whether the order has a refund on its way (PENDING or REFUNDING): a cancel of the rest waits for it.
pub async fn in_flight(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from refunds where order_id = $1 and status in ('PENDING', 'REFUNDING'))
           as "in_flight!""#,
        order_id
    )
    .fetch_one(executor)
    .await
}

/// The order's refunds, oldest first, with their lines.
pub async fn of_order(executor: &sqlx::PgPool, order_id: Uuid) -> Result<Vec<Refund>, sqlx::Error> {
    let rows = sqlx::query_as!(
        RefundRow,
        r#"select id, order_id, status as "status: _", amount, reason as "reason: _", note, provider_ref, failure,
                  created_at, updated_at
           from refunds where order_id = $1 order by id"#,
        order_id
    )
    .fetch_all(executor)
    .await?;
    let lines = sqlx::query!(
        r#"select rl.refund_id, l.sku, rl.quantity
           from refund_lines rl join order_lines l on l.order_id = rl.order_id and l.line_no = rl.line_no
           where rl.order_id = $1 order by rl.refund_id, rl.line_no"#,
        order_id
    )
    .fetch_all(executor)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut parts = parts_of(executor, &ids).await?;
    let mut by_refund: HashMap<Uuid, Vec<UnitLine>> = HashMap::new();
    for line in lines {
        by_refund.entry(line.refund_id).or_default().push(UnitLine {
            sku: line.sku,
            quantity: line.quantity,
        });
    }
    Ok(rows
        .into_iter()
        .map(|row| Refund {
            lines: by_refund.remove(&row.id).unwrap_or_default(),
            parts: parts.remove(&row.id).unwrap_or_default(),
            row,
        })
        .collect())
}

/// The refund each of the orders' refund step works on: the one REFUNDING if there is one (asked for already,
/// so it is finished before another starts), else its oldest PENDING one.
pub async fn current_of(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<Vec<RefundRow>, sqlx::Error> {
    sqlx::query_as!(
        RefundRow,
        r#"select distinct on (order_id)
                  id, order_id, status as "status: _", amount, reason as "reason: _", note, provider_ref, failure,
                  created_at, updated_at
           from refunds where order_id = any($1) and status in ('PENDING', 'REFUNDING')
           order by order_id, status = 'REFUNDING' desc, id"#,
        order_ids
    )
    .fetch_all(conn)
    .await
}

/// One part of a refund: what it gives back of one intent's captured money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPart {
    pub refund_id: Uuid,
    /// 1, 2, …: the order the parts are asked in, and each part's key ([`part_key`]).
    pub part: i32,
    pub payment_intent: String,
    pub amount: i64,
    /// The provider's refund, once the part was made and recorded.
    pub provider_ref: Option<String>,
}

/// The idempotency key of a refund's part at the provider: the refund's own key for its first part (as every refund
/// of one intent has), with `-n` after it for part n.
pub fn part_key(refund_id: Uuid, part: i32) -> String {
    match part {
        1 => provider_key(refund_id),
        n => format!("{}-{n}", provider_key(refund_id)),
    }
}

/// Splits `amount` over `intents` (each `(intent, what it has left to refund)`, in the order given): as much as
/// each has, the first first; what none has room for (the provider will refuse it) goes to the last.
pub fn split(amount: i64, intents: &[(String, i64)]) -> Vec<(String, i64)> {
    let mut left = amount;
    let mut parts: Vec<(String, i64)> = Vec::new();
    for (intent, room) in intents {
        let take = left.min(*room);
        if take > 0 {
            parts.push((intent.clone(), take));
            left -= take;
        }
    }
    if left > 0 {
        match (parts.last_mut(), intents.last()) {
            (Some((last, taken)), Some((newest, _))) if last == newest => *taken += left,
            (_, Some((newest, _))) => parts.push((newest.clone(), left)),
            (_, None) => {}
        }
    }
    parts
}

/// Makes the PENDING ones of `refunds` REFUNDING, fixing the parts of those without any: each of the order's
/// intents gives back at most what it captured less what other refunds' parts took of it, the oldest intent first
/// (after a lapsed hold an order's captures lie on more than one). They are asked of the provider once this
/// commits. Returns every refund's parts, in order; a refund whose order has no captured intent has none.
pub async fn begin(
    conn: &mut PgConnection,
    refunds: &[&RefundRow],
) -> Result<HashMap<Uuid, Vec<RefundPart>>, sqlx::Error> {
    let ids: Vec<Uuid> = refunds.iter().map(|r| r.id).collect();
    let order_ids: Vec<Uuid> = refunds.iter().map(|r| r.order_id).collect();
    sqlx::query!(
        r#"update refunds set status = 'REFUNDING', updated_at = now()
           where id = any($1) and status = 'PENDING'"#,
        &ids
    )
    .execute(&mut *conn)
    .await?;
    let mut parts = parts_of(&mut *conn, &ids).await?;
    let unsplit: Vec<&RefundRow> = refunds
        .iter()
        .copied()
        .filter(|r| !parts.contains_key(&r.id))
        .collect();
    if unsplit.is_empty() {
        return Ok(parts);
    }
    // What each intent captured (a shipment order's DONE shipments by the intent they drew on, oldest first; an
    // auto order's captured payment) less what other refunds' parts took of it.
    let rooms = sqlx::query!(
        r#"with captured as (
               select s.order_id, s.provider_ref as intent, sum(s.amount)::bigint as amount, min(s.id::text) as first
               from shipments s
               where s.order_id = any($1) and s.status = 'DONE' and s.provider_ref is not null
               group by s.order_id, s.provider_ref
               union all
               select p.order_id, p.provider_ref, p.amount, ''
               from payments p join orders o on o.id = p.order_id
               where p.order_id = any($1) and o.fulfilment = 'auto' and p.status = 'CAPTURED'
                 and p.provider_ref is not null
           ),
           taken as (
               select f.order_id, rp.payment_intent as intent, sum(rp.amount)::bigint as amount
               from refunds f join refund_parts rp on rp.refund_id = f.id
               where f.order_id = any($1) and (f.status in ('REFUNDING', 'DONE') or rp.provider_ref is not null)
               group by f.order_id, rp.payment_intent
           )
           select c.order_id as "order_id!", c.intent as "intent!",
                  (c.amount - coalesce(t.amount, 0))::bigint as "room!"
           from captured c left join taken t on t.order_id = c.order_id and t.intent = c.intent
           order by c.order_id, c.first"#,
        &order_ids
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut by_order: HashMap<Uuid, Vec<(String, i64)>> = HashMap::new();
    for room in rooms {
        by_order
            .entry(room.order_id)
            .or_default()
            .push((room.intent, room.room));
    }
    let (mut refund_ids, mut numbers, mut intents, mut amounts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for refund in unsplit {
        let rooms = by_order.get(&refund.order_id).map_or(&[][..], Vec::as_slice);
        for (number, (intent, amount)) in (1..).zip(split(refund.amount, rooms)) {
            refund_ids.push(refund.id);
            numbers.push(number);
            intents.push(intent);
            amounts.push(amount);
        }
    }
    sqlx::query!(
        r#"insert into refund_parts (refund_id, part, payment_intent, amount)
           select * from unnest($1::uuid[], $2::int[], $3::text[], $4::bigint[])
           on conflict (refund_id, part) do nothing"#,
        &refund_ids,
        &numbers,
        &intents,
        &amounts
    )
    .execute(&mut *conn)
    .await?;
    parts = parts_of(conn, &ids).await?;
    Ok(parts)
}

/// The refunds' parts, each refund's in order.
pub async fn parts_of(
    executor: impl PgExecutor<'_>,
    refund_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<RefundPart>>, sqlx::Error> {
    let rows = sqlx::query_as!(
        RefundPart,
        r#"select refund_id, part, payment_intent, amount, provider_ref
           from refund_parts where refund_id = any($1) order by refund_id, part"#,
        refund_ids
    )
    .fetch_all(executor)
    .await?;
    let mut parts: HashMap<Uuid, Vec<RefundPart>> = HashMap::new();
    for row in rows {
        parts.entry(row.refund_id).or_default().push(row);
    }
    Ok(parts)
}

/// Records the parts the provider made (`(refund, part, the provider's refund id)`).
pub async fn record_parts(conn: &mut PgConnection, made: &[(Uuid, i32, &str)]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = made.iter().map(|m| m.0).collect();
    let parts: Vec<i32> = made.iter().map(|m| m.1).collect();
    let refs: Vec<&str> = made.iter().map(|m| m.2).collect();
    sqlx::query!(
        r#"update refund_parts rp set provider_ref = m.provider_ref
           from unnest($1::uuid[], $2::int[], $3::text[]) as m(refund_id, part, provider_ref)
           where rp.refund_id = m.refund_id and rp.part = m.part and rp.provider_ref is null"#,
        &ids,
        &parts,
        &refs as &[&str]
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the REFUNDING refunds the provider made (`(refund, the provider's refund id)`) DONE; returns those it
/// recorded (one recorded already is left alone).
pub async fn complete(conn: &mut PgConnection, done: &[(Uuid, &str)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let (ids, refs): (Vec<Uuid>, Vec<&str>) = done.iter().copied().unzip();
    sqlx::query_scalar!(
        r#"update refunds f set status = 'DONE', provider_ref = d.provider_ref, updated_at = now()
           from unnest($1::uuid[], $2::text[]) as d(id, provider_ref)
           where f.id = d.id and f.status = 'REFUNDING'
           returning f.id"#,
        &ids,
        &refs as &[&str]
    )
    .fetch_all(conn)
    .await
}

/// Fails the REFUNDING refunds the provider refused for good (`(refund, why)`); returns those it failed. Nothing
/// of them was refunded: they no longer count against what is refundable.
pub async fn fail(conn: &mut PgConnection, refused: &[(Uuid, &str)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let (ids, reasons): (Vec<Uuid>, Vec<&str>) = refused.iter().copied().unzip();
    sqlx::query_scalar!(
        r#"update refunds f set status = 'FAILED', failure = d.failure, updated_at = now()
           from unnest($1::uuid[], $2::text[]) as d(id, failure)
           where f.id = d.id and f.status = 'REFUNDING'
           returning f.id"#,
        &ids,
        &reasons as &[&str]
    )
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn by_amount(amount: i64) -> RefundRequest {
        RefundRequest {
            amount: Some(amount),
            lines: None,
            reason: Some("requested_by_customer".to_owned()),
            note: Some(" damaged ".to_owned()),
        }
    }

    fn by_lines(lines: Vec<(&str, i64)>) -> RefundRequest {
        RefundRequest {
            amount: None,
            lines: Some(
                lines
                    .into_iter()
                    .map(|(sku, quantity)| UnitLine {
                        sku: sku.to_owned(),
                        quantity,
                    })
                    .collect(),
            ),
            ..by_amount(1)
        }
    }

    #[test]
    fn a_refund_request_is_an_amount_or_lines_with_a_known_reason() {
        let valid = by_amount(500).validate().unwrap();
        assert_eq!(valid.asked, Asked::Amount(500));
        assert_eq!(valid.reason, RefundReason::RequestedByCustomer);
        assert_eq!(valid.note.as_deref(), Some("damaged"));
        let lines = by_lines(vec![("A", 2)]).validate().unwrap();
        assert!(matches!(lines.asked, Asked::Lines(ref l) if l.len() == 1 && l[0].1.get() == 2));
        let field = |r: RefundRequest| r.validate().unwrap_err().field;
        assert_eq!(field(by_amount(0)), "amount");
        assert_eq!(field(by_amount(-5)), "amount");
        assert_eq!(field(by_amount(money::MAX_ORDER_TOTAL + 1)), "amount");
        assert_eq!(
            field(RefundRequest {
                amount: None,
                ..by_amount(1)
            }),
            "amount"
        );
        assert_eq!(
            field(RefundRequest {
                amount: Some(5),
                ..by_lines(vec![("A", 1)])
            }),
            "lines"
        );
        assert_eq!(field(by_lines(vec![])), "lines");
        assert_eq!(field(by_lines(vec![("A", 0)])), "lines[0].quantity");
        assert_eq!(field(by_lines(vec![("A", 1), ("A", 2)])), "lines[1].sku");
        assert_eq!(field(by_lines(vec![("bad sku", 1)])), "lines[0].sku");
        assert_eq!(
            field(RefundRequest {
                reason: Some("changed_mind".to_owned()),
                ..by_amount(1)
            }),
            "reason"
        );
        assert_eq!(
            field(RefundRequest {
                reason: None,
                ..by_amount(1)
            }),
            "reason"
        );
        assert_eq!(
            field(RefundRequest {
                note: Some("x".repeat(501)),
                ..by_amount(1)
            }),
            "note"
        );
    }

    #[test]
    fn refund_statuses_and_reasons_round_trip() {
        for status in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(status.as_str()), Some(status));
        }
        for reason in RefundReason::ALL {
            assert_eq!(RefundReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(RefundReason::parse("Duplicate"), None);
    }

    #[test]
    fn a_refund_is_split_over_the_intents_oldest_first_within_what_each_has() {
        let intents = vec![("pi_1".to_owned(), 1_000), ("pi_2".to_owned(), 2_000)];
        assert_eq!(split(600, &intents), vec![("pi_1".to_owned(), 600)]);
        assert_eq!(
            split(1_500, &intents),
            vec![("pi_1".to_owned(), 1_000), ("pi_2".to_owned(), 500)]
        );
        let spent = vec![("pi_1".to_owned(), 0), ("pi_2".to_owned(), 2_000)];
        assert_eq!(split(700, &spent), vec![("pi_2".to_owned(), 700)]);
        // More than any has room for (the provider will refuse it): the rest goes to the newest intent.
        assert_eq!(
            split(3_500, &intents),
            vec![("pi_1".to_owned(), 1_000), ("pi_2".to_owned(), 2_500)]
        );
        assert_eq!(
            split(500, &[("pi_1".to_owned(), 0), ("pi_2".to_owned(), 100)]),
            vec![("pi_2".to_owned(), 500)]
        );
        assert_eq!(split(500, &[]), vec![]);
        assert_eq!(part_key(Uuid::nil(), 1), provider_key(Uuid::nil()));
        assert_eq!(
            part_key(Uuid::nil(), 2),
            format!("{}-2", provider_key(Uuid::nil()))
        );
    }

    #[test]
    fn what_is_refundable_is_what_was_captured_less_what_refunds_took() {
        let money = Money {
            captured: 2300,
            refunded: 1000,
        };
        assert_eq!(money.refundable(), 1300);
    }
}
