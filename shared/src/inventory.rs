//! Stock per sku and the two-phase reservations against it (`skus`, `reservations`).
//!
//! Phase one (reserve) moves units into `reserved` with a conditional update that cannot oversell under any
//! concurrency; phase two (commit) takes them out of `on_hand`; a release gives them back from either phase.
//! Multi-sku work always touches skus in sorted order, so two orders never wait on each other in a cycle.

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, PgExecutor};
use uuid::Uuid;

/// Name of the CHECK constraint that guards 0 <= reserved <= on_hand; the API maps it to 409.
pub const RESERVED_LE_ON_HAND: &str = "inventory_reserved_le_on_hand";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SkuRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub price: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SKU_COLUMNS: &str = "sku, on_hand, reserved, price, currency, created_at, updated_at";

pub async fn find(executor: impl PgExecutor<'_>, sku: &str) -> Result<Option<SkuRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {SKU_COLUMNS} from skus where sku = $1"
    )))
    .bind(sku)
    .fetch_optional(executor)
    .await
}

pub async fn find_many(executor: impl PgExecutor<'_>, skus: &[&str]) -> Result<Vec<SkuRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {SKU_COLUMNS} from skus where sku = any($1)"
    )))
    .bind(skus)
    .fetch_all(executor)
    .await
}

/// Creates the sku or sets its stock and price. Returns the row and whether it was created. Lowering `on_hand`
/// below what is reserved fails on [`RESERVED_LE_ON_HAND`].
pub async fn upsert(
    executor: impl PgExecutor<'_>,
    sku: &str,
    on_hand: i64,
    price: i64,
    currency: &str,
) -> Result<(SkuRow, bool), sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Upserted {
        #[sqlx(flatten)]
        row: SkuRow,
        created: bool,
    }
    // `xmax = 0` holds only for a freshly inserted row: it tells created from updated in one round trip.
    let upserted: Upserted = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        r#"insert into skus (sku, on_hand, price, currency) values ($1, $2, $3, $4)
           on conflict (sku) do update
             set on_hand = excluded.on_hand, price = excluded.price, currency = excluded.currency,
                 updated_at = now()
           returning {SKU_COLUMNS}, (xmax = 0) as created"#
    )))
    .bind(sku)
    .bind(on_hand)
    .bind(price)
    .bind(currency)
    .fetch_one(executor)
    .await?;
    Ok((upserted.row, upserted.created))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// At least one line could not be held; nothing is held.
    OutOfStock,
}

/// Reserves every line of an order, all or nothing. Lines are taken in sku order; each is a conditional
/// update (`on_hand - reserved >= quantity`) that the row lock makes atomic, so concurrent orders can never
/// hold more than is on hand. On a shortfall the savepoint rolls back the lines already held (an order of one
/// line needs none).
#[tracing::instrument(skip_all, fields(order_id = %order_id), err)]
pub async fn reserve(
    conn: &mut PgConnection,
    order_id: Uuid,
    lines: &[(String, i64)],
) -> Result<ReserveOutcome, sqlx::Error> {
    let mut sorted: Vec<&(String, i64)> = lines.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if let [(sku, quantity)] = sorted[..] {
        // One line: a shortfall holds nothing, so no savepoint (two round trips fewer).
        return match hold(conn, order_id, sku, *quantity).await? {
            true => Ok(ReserveOutcome::Reserved),
            false => Ok(ReserveOutcome::OutOfStock),
        };
    }
    let mut savepoint = conn.begin().await?;
    for (sku, quantity) in sorted {
        if !hold(&mut savepoint, order_id, sku, *quantity).await? {
            savepoint.rollback().await?;
            return Ok(ReserveOutcome::OutOfStock);
        }
    }
    savepoint.commit().await?;
    Ok(ReserveOutcome::Reserved)
}

/// Holds one line: the conditional update, then its reservation row. False (and nothing written) when the
/// stock left is short.
async fn hold(
    conn: &mut PgConnection,
    order_id: Uuid,
    sku: &str,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    let held = sqlx::query(
        r#"update skus set reserved = reserved + $2, updated_at = now()
           where sku = $1 and on_hand - reserved >= $2"#,
    )
    .bind(sku)
    .bind(quantity)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if held == 0 {
        return Ok(false);
    }
    sqlx::query(
        r#"insert into reservations (order_id, sku, quantity, status) values ($1, $2, $3, 'RESERVED')"#,
    )
    .bind(order_id)
    .bind(sku)
    .bind(quantity)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub sku: String,
    pub quantity: i64,
    pub status: String,
}

pub async fn reservations(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Vec<ReservationRow>, sqlx::Error> {
    sqlx::query_as(
        "select order_id, sku, quantity, status from reservations where order_id = $1 order by sku",
    )
    .bind(order_id)
    .fetch_all(executor)
    .await
}

/// Phase two: the order's RESERVED units leave stock (`on_hand` and `reserved` both drop). Idempotent: rows
/// already COMMITTED are left alone. Returns how many reservations it committed.
#[tracing::instrument(skip_all, fields(order_id = %order_id), err)]
pub async fn commit(conn: &mut PgConnection, order_id: Uuid) -> Result<usize, sqlx::Error> {
    let held = reservations(&mut *conn, order_id).await?;
    let mut committed = 0;
    for r in held.iter().filter(|r| r.status == "RESERVED") {
        sqlx::query(
            r#"update skus set on_hand = on_hand - $2, reserved = reserved - $2, updated_at = now()
               where sku = $1"#,
        )
        .bind(&r.sku)
        .bind(r.quantity)
        .execute(&mut *conn)
        .await?;
        set_status(&mut *conn, order_id, &r.sku, "COMMITTED").await?;
        committed += 1;
    }
    Ok(committed)
}

/// Compensation: gives back everything the order holds. RESERVED units leave `reserved`; COMMITTED units
/// (taken from stock but never shipped) return to `on_hand`. Idempotent. Returns how many it released.
#[tracing::instrument(skip_all, fields(order_id = %order_id), err)]
pub async fn release(conn: &mut PgConnection, order_id: Uuid) -> Result<usize, sqlx::Error> {
    let held = reservations(&mut *conn, order_id).await?;
    let mut released = 0;
    for r in &held {
        let statement = match r.status.as_str() {
            "RESERVED" => "update skus set reserved = reserved - $2, updated_at = now() where sku = $1",
            "COMMITTED" => "update skus set on_hand = on_hand + $2, updated_at = now() where sku = $1",
            _ => continue,
        };
        sqlx::query(statement)
            .bind(&r.sku)
            .bind(r.quantity)
            .execute(&mut *conn)
            .await?;
        set_status(&mut *conn, order_id, &r.sku, "RELEASED").await?;
        released += 1;
    }
    Ok(released)
}

async fn set_status(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    sku: &str,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("update reservations set status = $3, updated_at = now() where order_id = $1 and sku = $2")
        .bind(order_id)
        .bind(sku)
        .bind(status)
        .execute(executor)
        .await?;
    Ok(())
}
