//! The order's payment as we know it (`payments`): one row per order, mirroring the provider's intent, and the
//! idempotency keys every call to the provider carries. The provider's client is the worker's
//! (`orderflow_worker::provider`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::order::{Fulfilment, OrderRow};

/// The status of our payment row. Persisted: never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// The authorization may or may not have reached the provider: whoever finds it asks the provider again
    /// with the same idempotency key.
    Pending,
    /// The provider waits for the customer to complete the payment (3-D Secure): the pay step waits too.
    RequiresAction,
    /// The provider settles the payment later (a bank debit): the pay step waits.
    Processing,
    Authorized,
    /// Shipments captured part of the hold; the rest is still held for the units not shipped yet.
    PartiallyCaptured,
    Captured,
    Declined,
    Voided,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 9] = [
        Self::Pending,
        Self::RequiresAction,
        Self::Processing,
        Self::Authorized,
        Self::PartiallyCaptured,
        Self::Captured,
        Self::Declined,
        Self::Voided,
        Self::Refunded,
    ];

    /// Statuses in which money may still be held or taken: a cancellation must void or refund.
    pub const OPEN: [PaymentStatus; 6] = [
        Self::Pending,
        Self::RequiresAction,
        Self::Processing,
        Self::Authorized,
        Self::PartiallyCaptured,
        Self::Captured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::RequiresAction => "REQUIRES_ACTION",
            Self::Processing => "PROCESSING",
            Self::Authorized => "AUTHORIZED",
            Self::PartiallyCaptured => "PARTIALLY_CAPTURED",
            Self::Captured => "CAPTURED",
            Self::Declined => "DECLINED",
            Self::Voided => "VOIDED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// The authorization's verdict is not in yet: asked (PENDING) or waiting for the customer or the provider.
    pub const UNDECIDED: [PaymentStatus; 3] = [Self::Pending, Self::RequiresAction, Self::Processing];

    /// Waiting for the customer or the provider, with an intent to ask about.
    pub fn is_waiting(self) -> bool {
        matches!(self, Self::RequiresAction | Self::Processing)
    }
}

stored_as_text!(PaymentStatus);

#[derive(Debug, Clone, Serialize)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub idempotency_key: String,
    pub provider_ref: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub payment_token: String,
    pub status: PaymentStatus,
    pub decline_code: Option<String>,
    /// The hold was asked for with multicapture (a shipment order's), so every repeat asks for it too.
    pub multicapture: bool,
    /// Which authorization of the order this is: 1 for the pay step's, one more per re-authorization after a
    /// lapsed hold ([`reauthorization_key`]).
    pub attempt: i32,
    /// The lapsed intent this authorization replaced (none for the first).
    pub replaces: Option<String>,
    /// When the provider says the hold lapses; read by the reconciler for a waiting order's hold, null until then.
    pub capture_before: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The idempotency key of an order's authorization: derived from the order, so every retry, every worker and
/// the reconciler send the same one and the provider holds the money at most once.
pub fn authorization_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-authorize")
}

/// The idempotency key of an order's authorization number `attempt` (2 and on: re-authorizations after a lapsed
/// hold). Derived from the order and the number, so every repeat of one re-authorization is a replay.
pub fn reauthorization_key(order_id: Uuid, attempt: i32) -> String {
    format!("orderflow-{order_id}-reauthorize-{attempt}")
}

pub fn capture_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-capture")
}

pub fn void_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-void")
}

/// The key of the release of what is left of a shipment order's hold (its cancel, once something shipped).
pub fn release_rest_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-release-rest")
}

pub fn refund_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-refund")
}

pub async fn find(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as!(
        PaymentRow,
        r#"select order_id, idempotency_key, provider_ref, amount, currency, payment_token, status as "status: _",
                  decline_code, multicapture, attempt, replaces, capture_before, created_at, updated_at
           from payments where order_id = $1"#,
        order_id
    )
    .fetch_optional(executor)
    .await
}

pub async fn find_many(
    executor: impl PgExecutor<'_>,
    order_ids: &[Uuid],
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as!(
        PaymentRow,
        r#"select order_id, idempotency_key, provider_ref, amount, currency, payment_token, status as "status: _",
                  decline_code, multicapture, attempt, replaces, capture_before, created_at, updated_at
           from payments where order_id = any($1)"#,
        order_ids
    )
    .fetch_all(executor)
    .await
}

/// Records that each order's authorization is about to be sent (PENDING, with its key), unless the order has a
/// payment row already (a re-run: its key is the same), in one statement; returns every order's row as it now
/// is, in no particular order.
pub async fn begin_authorizations(
    executor: impl PgExecutor<'_>,
    orders: &[&OrderRow],
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let keys: Vec<String> = ids.iter().map(|id| authorization_key(*id)).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.total).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
    let tokens: Vec<&str> = orders.iter().map(|o| o.payment_token.as_str()).collect();
    let multicapture: Vec<bool> = orders
        .iter()
        .map(|o| o.fulfilment == Fulfilment::Shipment)
        .collect();
    // `union all` makes every column nullable to the checker; each comes from a row of `payments`, so none is.
    sqlx::query_as!(
        PaymentRow,
        r#"with v as (
               select * from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::boolean[])
                   as v(order_id, idempotency_key, amount, currency, payment_token, multicapture)
           ),
           inserted as (
               insert into payments (order_id, idempotency_key, amount, currency, payment_token, status,
                                     multicapture)
               select order_id, idempotency_key, amount, currency, payment_token, 'PENDING', multicapture from v
               on conflict (order_id) do nothing
               returning order_id, idempotency_key, provider_ref, amount, currency, payment_token, status,
                         decline_code, multicapture, attempt, replaces, capture_before, created_at, updated_at
           )
           select order_id as "order_id!", idempotency_key as "idempotency_key!", provider_ref,
                  amount as "amount!", currency as "currency!", payment_token as "payment_token!",
                  status as "status!: _", decline_code, multicapture as "multicapture!", attempt as "attempt!",
                  replaces, capture_before, created_at as "created_at!", updated_at as "updated_at!"
           from inserted
           union all
           select order_id, idempotency_key, provider_ref, amount, currency, payment_token, status, decline_code,
                  multicapture, attempt, replaces, capture_before, created_at, updated_at
           from payments
           where order_id in (select order_id from v) and order_id not in (select order_id from inserted)"#,
        &ids,
        &keys,
        &amounts,
        &currencies as &[&str],
        &tokens as &[&str],
        &multicapture
    )
    .fetch_all(executor)
    .await
}

/// What the provider said of one order's payment: its new status and, when learned, its reference and decline
/// code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub order_id: Uuid,
    pub status: PaymentStatus,
    pub provider_ref: Option<String>,
    pub decline_code: Option<String>,
}

/// Records many payments' outcomes in one statement: each row moves to its outcome's status if it is in one of
/// `from` (a row that moved on meanwhile is left alone), keeping its reference and decline code unless the
/// outcome brings them. Returns how many moved.
pub async fn record(
    executor: impl PgExecutor<'_>,
    from: &[PaymentStatus],
    outcomes: &[Outcome],
) -> Result<u64, sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = outcomes.iter().map(|o| o.order_id).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let refs: Vec<Option<&str>> = outcomes.iter().map(|o| o.provider_ref.as_deref()).collect();
    let codes: Vec<Option<&str>> = outcomes.iter().map(|o| o.decline_code.as_deref()).collect();
    let moved = sqlx::query!(
        r#"update payments
           set status = m.status, provider_ref = coalesce(m.provider_ref, payments.provider_ref),
               decline_code = coalesce(m.decline_code, payments.decline_code), updated_at = now()
           from unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) as m(order_id, status, provider_ref, decline_code)
           where payments.order_id = m.order_id and payments.status = any($5)"#,
        &ids,
        &statuses as &[&str],
        &refs as &[Option<&str>],
        &codes as &[Option<&str>],
        &from as &[&str]
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(moved)
}

/// A re-authorization the ship step made after the order's hold lapsed: the order's authorization number
/// `attempt`, for `amount`, replacing the intent `replaces`; `provider_ref` is the new intent (none if the
/// provider declined without naming one), `decline_code` the decline's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reauthorization {
    pub order_id: Uuid,
    pub attempt: i32,
    pub amount: i64,
    pub replaces: String,
    pub provider_ref: Option<String>,
    pub decline_code: Option<String>,
}

/// Records re-authorizations on their orders' payment rows, each only if the row is still the authorization it
/// replaced (`attempt − 1`; a repeat that recorded it already writes nothing): the new key, amount and intent,
/// AUTHORIZED (the capture's record moves it on) or DECLINED, and no `capture_before` until the reconciler reads
/// the new hold's. Returns the orders recorded.
pub async fn record_reauthorizations(
    executor: impl PgExecutor<'_>,
    reauthorized: &[Reauthorization],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if reauthorized.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = reauthorized.iter().map(|r| r.order_id).collect();
    let attempts: Vec<i32> = reauthorized.iter().map(|r| r.attempt).collect();
    let keys: Vec<String> = reauthorized
        .iter()
        .map(|r| reauthorization_key(r.order_id, r.attempt))
        .collect();
    let amounts: Vec<i64> = reauthorized.iter().map(|r| r.amount).collect();
    let replaces: Vec<&str> = reauthorized.iter().map(|r| r.replaces.as_str()).collect();
    let refs: Vec<Option<&str>> = reauthorized.iter().map(|r| r.provider_ref.as_deref()).collect();
    let codes: Vec<Option<&str>> = reauthorized.iter().map(|r| r.decline_code.as_deref()).collect();
    sqlx::query_scalar!(
        r#"update payments p
           set attempt = r.attempt, idempotency_key = r.idempotency_key, amount = r.amount, replaces = r.replaces,
               provider_ref = r.provider_ref, decline_code = r.decline_code,
               status = case when r.decline_code is null then 'AUTHORIZED' else 'DECLINED' end,
               capture_before = null, updated_at = now()
           from unnest($1::uuid[], $2::int[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
               as r(order_id, attempt, idempotency_key, amount, replaces, provider_ref, decline_code)
           where p.order_id = r.order_id and p.attempt = r.attempt - 1
           returning p.order_id"#,
        &ids,
        &attempts,
        &keys,
        &amounts,
        &replaces as &[&str],
        &refs as &[Option<&str>],
        &codes as &[Option<&str>]
    )
    .fetch_all(executor)
    .await
}

/// A waiting order's hold whose end is not known yet: the reconciler asks the provider.
#[derive(Debug, Clone)]
pub struct UnreadHold {
    pub order_id: Uuid,
    pub attempt: i32,
    pub provider_ref: String,
}

/// The open holds of orders waiting for shipments (PAID or PARTIALLY_FULFILLED shipment orders) whose
/// `capture_before` is not read yet and was not asked for in the last hour, those never asked first, at most
/// `limit`. Found through the orders' status index.
pub async fn unread_holds(executor: impl PgExecutor<'_>, limit: i64) -> Result<Vec<UnreadHold>, sqlx::Error> {
    sqlx::query_as!(
        UnreadHold,
        r#"select p.order_id, p.attempt, p.provider_ref as "provider_ref!"
           from orders o join payments p on p.order_id = o.id
           where o.status in ('PAID', 'PARTIALLY_FULFILLED') and o.fulfilment = 'shipment'
             and p.status in ('AUTHORIZED', 'PARTIALLY_CAPTURED') and p.provider_ref is not null
             and p.capture_before is null
             and (p.hold_checked_at is null or p.hold_checked_at < now() - interval '1 hour')
           order by p.hold_checked_at nulls first, o.id limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await
}

/// The provider ended the order's open hold at `at` (its `payment_intent.canceled`): `capture_before` comes
/// forward to then, so the reconciler's hold check reports the hold as lapsed and the next shipment authorizes
/// again. It never moves later.
pub async fn hold_ended(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update payments set capture_before = least(capture_before, $2), hold_checked_at = now(),
                updated_at = now()
         where order_id = $1 and status in ('AUTHORIZED', 'PARTIALLY_CAPTURED')",
    )
    .bind(order_id)
    .bind(at)
    .execute(executor)
    .await?;
    Ok(())
}

/// Records that the order's authorization `attempt` was asked when its hold lapses, and the answer if there was
/// one (a hold read again later keeps what was read). Nothing if the authorization is another by now.
pub async fn record_capture_before(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    attempt: i32,
    capture_before: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "update payments set capture_before = coalesce($3, capture_before), hold_checked_at = now()
         where order_id = $1 and attempt = $2",
        order_id,
        attempt,
        capture_before
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A waiting order's hold that lapses within the warning.
#[derive(Debug, Clone, Serialize)]
pub struct ExpiringHold {
    pub order_id: Uuid,
    pub status: crate::order::OrderStatus,
    pub provider_ref: String,
    pub capture_before: DateTime<Utc>,
}

/// The open holds of orders waiting for shipments that lapse before `until` (soonest first, those lapsed already
/// included; at most `limit`), and how many there are in all.
pub async fn expiring_holds(
    executor: impl PgExecutor<'_>,
    until: DateTime<Utc>,
    limit: i64,
) -> Result<(Vec<ExpiringHold>, i64), sqlx::Error> {
    // `count(*) over ()` is taken before the limit: the number in all, on every row returned.
    let rows = sqlx::query!(
        r#"select p.order_id, o.status as "status: crate::order::OrderStatus", p.provider_ref as "provider_ref!",
                  p.capture_before as "capture_before!", count(*) over () as "total!"
           from orders o join payments p on p.order_id = o.id
           where o.status in ('PAID', 'PARTIALLY_FULFILLED') and o.fulfilment = 'shipment'
             and p.status in ('AUTHORIZED', 'PARTIALLY_CAPTURED') and p.provider_ref is not null
             and p.capture_before < $1
           order by p.capture_before limit $2"#,
        until,
        limit
    )
    .fetch_all(executor)
    .await?;
    let total = rows.first().map_or(0, |r| r.total);
    let holds = rows
        .into_iter()
        .map(|r| ExpiringHold {
            order_id: r.order_id,
            status: r.status,
            provider_ref: r.provider_ref,
            capture_before: r.capture_before,
        })
        .collect();
    Ok((holds, total))
}

/// Orders waiting for shipments whose hold lapsed and whose re-authorization was declined (their payment
/// DECLINED): they ship nothing until an operator sees to them. At most `limit`, oldest first, and how many in
/// all.
pub async fn declined_waiting(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<(Vec<Uuid>, i64), sqlx::Error> {
    let rows = sqlx::query!(
        r#"select o.id, count(*) over () as "total!" from orders o join payments p on p.order_id = o.id
           where o.status in ('PAID', 'PARTIALLY_FULFILLED') and o.fulfilment = 'shipment'
             and p.status = 'DECLINED'
           order by o.id limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await?;
    let total = rows.first().map_or(0, |r| r.total);
    Ok((rows.into_iter().map(|r| r.id).collect(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_statuses_round_trip_and_the_open_ones_hold_money() {
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
        }
        assert!(PaymentStatus::Captured.is_open());
        assert!(!PaymentStatus::Voided.is_open());
    }
}
