//! The order's payment as we know it (`payments`): one row per order, mirroring the provider's intent.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::order::OrderRow;

/// Statuses of our payment row. PENDING means "the authorization may or may not have reached the provider":
/// whoever finds it asks the provider again with the same idempotency key.
pub mod status {
    pub const PENDING: &str = "PENDING";
    pub const AUTHORIZED: &str = "AUTHORIZED";
    pub const CAPTURED: &str = "CAPTURED";
    pub const DECLINED: &str = "DECLINED";
    pub const VOIDED: &str = "VOIDED";
    pub const REFUNDED: &str = "REFUNDED";

    /// Statuses in which money may still be held or taken: a cancellation must void or refund.
    pub const OPEN: [&str; 3] = [PENDING, AUTHORIZED, CAPTURED];
}

#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub idempotency_key: String,
    pub provider_ref: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub payment_token: String,
    pub status: String,
    pub decline_code: Option<String>,
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

pub fn refund_key(order_id: Uuid) -> String {
    format!("orderflow-{order_id}-refund")
}

const PAYMENT_COLUMNS: &str = "order_id, idempotency_key, provider_ref, amount, currency, payment_token, status, \
     decline_code, created_at, updated_at";

pub async fn find(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {PAYMENT_COLUMNS} from payments where order_id = $1"
    )))
    .bind(order_id)
    .fetch_optional(executor)
    .await
}

/// Records that an authorization is about to be sent (PENDING), unless a row exists already; returns the row.
pub async fn begin_authorization(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    amount: i64,
    currency: &str,
    payment_token: &str,
) -> Result<PaymentRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"with inserted as (
             insert into payments (order_id, idempotency_key, amount, currency, payment_token, status)
             values ($1, $2, $3, $4, $5, 'PENDING')
             on conflict (order_id) do nothing
             returning {PAYMENT_COLUMNS}
           )
           select {PAYMENT_COLUMNS} from inserted
           union all
           select {PAYMENT_COLUMNS} from payments where order_id = $1 and not exists (select 1 from inserted)"#
    )))
    .bind(order_id)
    .bind(authorization_key(order_id))
    .bind(amount)
    .bind(currency)
    .bind(payment_token)
    .fetch_one(executor)
    .await
}

/// `begin_authorization` for many orders in one statement: a PENDING row for each order that has none, and
/// every order's row as it now is (in no particular order).
pub async fn begin_authorizations(
    executor: impl PgExecutor<'_>,
    orders: &[&OrderRow],
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            r#"with v as (
                   select * from unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[])
                       as v(order_id, idempotency_key, amount, currency, payment_token)
               ),
               inserted as (
                   insert into payments (order_id, idempotency_key, amount, currency, payment_token, status)
                   select order_id, idempotency_key, amount, currency, payment_token, 'PENDING' from v
                   on conflict (order_id) do nothing
                   returning {PAYMENT_COLUMNS}
               )
               select {PAYMENT_COLUMNS} from inserted
               union all
               select {PAYMENT_COLUMNS} from payments
               where order_id in (select order_id from v) and order_id not in (select order_id from inserted)"#
        )
    });
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let keys: Vec<String> = ids.iter().map(|id| authorization_key(*id)).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.total).collect();
    let currencies: Vec<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
    let tokens: Vec<&str> = orders.iter().map(|o| o.payment_token.as_str()).collect();
    sqlx::query_as(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(&ids)
        .bind(&keys)
        .bind(&amounts)
        .bind(&currencies)
        .bind(&tokens)
        .fetch_all(executor)
        .await
}

/// `set_status` for many orders in one statement, each with its own provider reference (or none); returns how
/// many moved.
pub async fn set_status_many(
    executor: impl PgExecutor<'_>,
    from: &[&str],
    to: &str,
    moves: &[(Uuid, Option<&str>)],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = moves.iter().map(|(id, _)| *id).collect();
    let refs: Vec<Option<&str>> = moves.iter().map(|(_, r)| *r).collect();
    let moved = sqlx::query(
        r#"update payments
           set status = $3, provider_ref = coalesce(m.provider_ref, payments.provider_ref), updated_at = now()
           from unnest($1::uuid[], $4::text[]) as m(order_id, provider_ref)
           where payments.order_id = m.order_id and payments.status = any($2)"#,
    )
    .bind(&ids)
    .bind(from)
    .bind(to)
    .bind(&refs)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(moved)
}

/// Moves the payment to `to` if it is in one of `from`; returns whether it moved. Sets the provider reference
/// and decline code when given.
pub async fn set_status(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    from: &[&str],
    to: &str,
    provider_ref: Option<&str>,
    decline_code: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        r#"update payments
           set status = $3, provider_ref = coalesce($4, provider_ref), decline_code = coalesce($5, decline_code),
               updated_at = now()
           where order_id = $1 and status = any($2)"#,
    )
    .bind(order_id)
    .bind(from)
    .bind(to)
    .bind(provider_ref)
    .bind(decline_code)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

pub async fn find_many(
    executor: impl PgExecutor<'_>,
    order_ids: &[Uuid],
) -> Result<Vec<PaymentRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {PAYMENT_COLUMNS} from payments where order_id = any($1)"
    )))
    .bind(order_ids)
    .fetch_all(executor)
    .await
}
