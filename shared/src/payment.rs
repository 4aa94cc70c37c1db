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
    Authorized,
    /// Shipments captured part of the hold; the rest is still held for the units not shipped yet.
    PartiallyCaptured,
    Captured,
    Declined,
    Voided,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        Self::Pending,
        Self::Authorized,
        Self::PartiallyCaptured,
        Self::Captured,
        Self::Declined,
        Self::Voided,
        Self::Refunded,
    ];

    /// Statuses in which money may still be held or taken: a cancellation must void or refund.
    pub const OPEN: [PaymentStatus; 4] = [
        Self::Pending,
        Self::Authorized,
        Self::PartiallyCaptured,
        Self::Captured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The idempotency key of an order's authorization: derived from the order, so every retry, every worker and
/// the reconciler send the same one and the provider holds the money at most once.
pub fn authorization_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-authorize")
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
                  decline_code, multicapture, created_at, updated_at
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
                  decline_code, multicapture, created_at, updated_at
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
                         decline_code, multicapture, created_at, updated_at
           )
           select order_id as "order_id!", idempotency_key as "idempotency_key!", provider_ref,
                  amount as "amount!", currency as "currency!", payment_token as "payment_token!",
                  status as "status!: _", decline_code, multicapture as "multicapture!",
                  created_at as "created_at!", updated_at as "updated_at!"
           from inserted
           union all
           select order_id, idempotency_key, provider_ref, amount, currency, payment_token, status, decline_code,
                  multicapture, created_at, updated_at
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
