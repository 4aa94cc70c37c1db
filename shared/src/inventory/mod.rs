//! Stock per sku and the two-phase reservations against it (`skus`, `reservations`).
//!
//! Phase one (reserve) moves units into `reserved`, decided on sku rows locked for the decision, so it cannot
//! oversell under any concurrency (and the CHECK constraint stands behind it); phase two (commit) takes them out of
//! `on_hand`; a release gives them back from either phase. Every change is set-based, for one order or many, and
//! locks its skus in sorted order first, so two transactions never wait on each other in a cycle.
//!
//! Every change of the counts is written with its movements by [`ledger`]'s one statement ([`stock_change!`]):
//! reservations, commits and releases here, absolute sets ([`upsert`]), and adjustments ([`adjustment`]).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::input::FieldError;

pub mod adjustment;
pub mod ledger;

use ledger::MovementReason;

/// Name of the CHECK constraint that guards 0 <= reserved <= on_hand; the API maps it to 409.
pub const RESERVED_LE_ON_HAND: &str = "inventory_reserved_le_on_hand";

/// A sku code: 1–64 characters of letters, digits, `.`, `_`, `-`, starting with a letter or digit. The same
/// rule is the table's `skus_sku_format` CHECK. `field` names where the code came from.
pub fn check_sku_code(field: &str, code: &str) -> Result<(), FieldError> {
    let valid = !code.is_empty()
        && code.len() <= 64
        && code.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{code:?} is not a sku code (1-64 letters, digits, '.', '_' or '-', starting alphanumeric)"
            ),
        ))
    }
}

#[derive(Debug, Clone)]
pub struct SkuRow {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub price: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn find(executor: impl PgExecutor<'_>, sku: &str) -> Result<Option<SkuRow>, sqlx::Error> {
    Ok(find_versioned(executor, sku).await?.map(|(row, _)| row))
}

/// The version of a sku's stock, which its `ETag` carries: PostgreSQL's `xmin` of the sku's row, the id of the
/// transaction that last wrote it. Every change to the row (a reservation, a release, a commit, a set) makes a new
/// one, so a client that read a version can tell whether the stock moved since (optimistic concurrency as
/// Npgsql and EF Core do it on PostgreSQL: no column to maintain, no write on the steps' path). So an order's
/// reservation or release moves it too, though a set never writes `reserved`: on a sku that sells all the time a
/// conditional set may need a few tries (a version moved only by what a set writes would come with the stock
/// ledger). Transaction ids are 32 bits and wrap around after about four billion transactions: a row left
/// unwritten for that long could show a version a client saw long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockVersion(pub i64);

/// A sku's row with the version of its stock, as the statements that read it for the catalogue return it.
#[derive(sqlx::FromRow)]
struct VersionedRow {
    sku: String,
    on_hand: i64,
    reserved: i64,
    price: i64,
    currency: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl VersionedRow {
    fn split(self) -> (SkuRow, StockVersion) {
        let row = SkuRow {
            sku: self.sku,
            on_hand: self.on_hand,
            reserved: self.reserved,
            price: self.price,
            currency: self.currency,
            created_at: self.created_at,
            updated_at: self.updated_at,
        };
        (row, StockVersion(self.version))
    }
}

/// [`find`], with the version of the sku's stock.
pub async fn find_versioned(
    executor: impl PgExecutor<'_>,
    sku: &str,
) -> Result<Option<(SkuRow, StockVersion)>, sqlx::Error> {
    let found = sqlx::query_as!(
        VersionedRow,
        r#"select sku, on_hand, reserved, price, currency, created_at, updated_at,
                  xmin::text::bigint as "version!"
           from skus where sku = $1"#,
        sku
    )
    .fetch_optional(executor)
    .await?;
    Ok(found.map(VersionedRow::split))
}

/// What a set of a sku's stock and price came to.
#[derive(Debug)]
pub enum SkuSet {
    Created(SkuRow, StockVersion),
    Updated(SkuRow, StockVersion),
    /// The set was conditional on a version and the sku's stock is at another one (`None`: there is no such
    /// sku); nothing was written.
    VersionMoved(Option<StockVersion>),
}

/// Which version a set is conditional on (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Whatever there is, or a new sku.
    Any,
    /// The sku exists, at whatever version (`If-Match: *`).
    Exists,
    /// The sku is at one of these versions.
    OneOf(Vec<StockVersion>),
}

impl Expected {
    /// Whether an existing sku at `version` meets it.
    pub fn admits(&self, version: StockVersion) -> bool {
        match self {
            Self::Any | Self::Exists => true,
            Self::OneOf(versions) => versions.contains(&version),
        }
    }
}

/// Creates the sku or sets its stock and price, if its stock is at the `expected` version; `actor` is who asks
/// (the ledger's `actor`). The stock arrives as a movement like any other (`stock_count`, the difference from the
/// count before): a new sku is made with none first. Lowering `on_hand` below what is reserved fails on
/// [`RESERVED_LE_ON_HAND`].
pub async fn upsert(
    conn: &mut PgConnection,
    sku: &str,
    on_hand: i64,
    price: i64,
    currency: &str,
    expected: &Expected,
    actor: &str,
) -> Result<SkuSet, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let created = *expected == Expected::Any
        && sqlx::query!(
            "insert into skus (sku, on_hand, price, currency) values ($1, 0, $2, $3) on conflict (sku) do nothing",
            sku,
            price,
            currency
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
    // Lock the row, compare, write: the version a refusal names is the one the row is at while it is locked.
    let current = sqlx::query!(
        r#"select on_hand, xmin::text::bigint as "version!" from skus where sku = $1 for no key update"#,
        sku
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(SkuSet::VersionMoved(None));
    };
    if !created && !expected.admits(StockVersion(current.version)) {
        return Ok(SkuSet::VersionMoved(Some(StockVersion(current.version))));
    }
    if !created {
        sqlx::query!(
            "update skus set price = $2, currency = $3 where sku = $1",
            sku,
            price,
            currency
        )
        .execute(&mut *tx)
        .await?;
    }
    let change = Change {
        sku,
        on_hand_delta: on_hand - current.on_hand,
        reason: MovementReason::StockCount,
        adjustment_id: None,
        actor,
    };
    let (row, version) = change.apply(&mut tx).await?;
    tx.commit().await?;
    Ok(match created {
        true => SkuSet::Created(row, version),
        false => SkuSet::Updated(row, version),
    })
}

/// A change of one sku's `on_hand` a client asked for: a count's difference or an adjustment.
struct Change<'a> {
    sku: &'a str,
    on_hand_delta: i64,
    reason: MovementReason,
    adjustment_id: Option<Uuid>,
    actor: &'a str,
}

impl Change<'_> {
    /// Applies it with its movement (through [`stock_change!`]) and returns the sku as changed. The caller holds
    /// the sku's row lock.
    async fn apply(&self, conn: &mut PgConnection) -> Result<(SkuRow, StockVersion), sqlx::Error> {
        const STATEMENT: &str = concat!(
            r#"with changes as (
                   select $1::text as sku, $2::text as location, $3::bigint as on_hand_delta,
                          0::bigint as reserved_delta, $4::text as reason, null::uuid as order_id,
                          $5::uuid as adjustment_id, $6::text as actor
               ),
               "#,
            crate::stock_change!(),
            r#"
               select sku, on_hand, reserved, price, currency, created_at, updated_at, version from applied"#
        );
        let row: VersionedRow = sqlx::query_as(STATEMENT)
            .bind(self.sku)
            .bind(ledger::DEFAULT_LOCATION)
            .bind(self.on_hand_delta)
            .bind(self.reason)
            .bind(self.adjustment_id)
            .bind(self.actor)
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.split())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// At least one line could not be held; nothing is held.
    OutOfStock,
}

/// Reserves the lines of one order or many in the caller's transaction, each order all or nothing, first come
/// first served in the order given (an order that does not fit leaves its stock to the orders after it). It locks
/// every sku the orders name, in sorted order, decides on the locked counts, then writes every hold in one
/// statement; the CHECK constraint still stands behind it. A sku that does not exist is out of stock.
#[tracing::instrument(skip_all, fields(orders = orders.len()), err)]
pub async fn reserve_many(
    conn: &mut PgConnection,
    orders: &[(Uuid, Vec<(String, i64)>)],
) -> Result<Vec<ReserveOutcome>, sqlx::Error> {
    let skus: Vec<&str> = orders
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(|(sku, _)| sku.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // `for no key update` is the lock the UPDATE itself takes. `for update` would also block the foreign-key
    // checks (KEY SHARE) of orders being created, which lock their skus in request order: a lock cycle with
    // API requests (seen under load: creations queued behind batches for seconds).
    let locked = sqlx::query!(
        r#"select sku, on_hand - reserved as "free!" from skus where sku = any($1) order by sku for no key update"#,
        &skus as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut free: HashMap<String, i64> = locked.into_iter().map(|row| (row.sku, row.free)).collect();
    let outcomes = decide(&mut free, orders);
    let (mut held_orders, mut held_skus, mut held_quantities) = (Vec::new(), Vec::new(), Vec::new());
    for ((order_id, lines), outcome) in orders.iter().zip(&outcomes) {
        if *outcome == ReserveOutcome::Reserved {
            for (sku, quantity) in lines {
                held_orders.push(*order_id);
                held_skus.push(sku.as_str());
                held_quantities.push(*quantity);
            }
        }
    }
    if !held_orders.is_empty() {
        const STATEMENT: &str = concat!(
            r#"with r as (
                   insert into reservations (order_id, sku, quantity, status)
                   select h.order_id, h.sku, h.quantity, 'RESERVED'
                   from unnest($1::uuid[], $2::text[], $3::bigint[]) as h(order_id, sku, quantity)
                   returning order_id, sku, quantity
               ),
               changes as (
                   select sku, $4::text as location, 0::bigint as on_hand_delta, quantity as reserved_delta,
                          $5::text as reason, order_id, null::uuid as adjustment_id, $6::text as actor
                   from r
               ),
               "#,
            crate::stock_change!(),
            r#"
               select 1"#
        );
        sqlx::query(STATEMENT)
            .bind(&held_orders)
            .bind(&held_skus)
            .bind(&held_quantities)
            .bind(ledger::DEFAULT_LOCATION)
            .bind(MovementReason::OrderReserve)
            .bind(ledger::SAGA_ACTOR)
            .execute(&mut *conn)
            .await?;
    }
    Ok(outcomes)
}

/// First come first served over the free units of each sku: an order takes its lines only if every one fits.
fn decide(free: &mut HashMap<String, i64>, orders: &[(Uuid, Vec<(String, i64)>)]) -> Vec<ReserveOutcome> {
    orders
        .iter()
        .map(|(_, lines)| {
            let mut wanted: HashMap<&str, i64> = HashMap::new();
            for (sku, quantity) in lines {
                *wanted.entry(sku.as_str()).or_default() += quantity;
            }
            let fits = wanted
                .iter()
                .all(|(sku, quantity)| free.get(*sku).is_some_and(|left| left >= quantity));
            if !fits {
                return ReserveOutcome::OutOfStock;
            }
            for (sku, quantity) in wanted {
                if let Some(left) = free.get_mut(sku) {
                    *left -= quantity;
                }
            }
            ReserveOutcome::Reserved
        })
        .collect()
}

/// Locks the skus the orders hold units of, in sorted order, before their reservations change: two transactions
/// changing overlapping skus then wait on each other in one order, never in a cycle. `for no key update` is the
/// lock the `update` itself takes (see `reserve_many`).
async fn lock_skus_held_by(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"select sku from skus
           where sku in (select sku from reservations where order_id = any($1) and status <> 'RELEASED')
           order by sku for no key update"#,
        order_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(())
}

/// Phase two for one order or many: their RESERVED units leave stock (`on_hand` and `reserved` both drop).
/// Idempotent: a COMMITTED reservation is left alone. Returns how many reservations it committed.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()), err)]
pub async fn commit_many(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    lock_skus_held_by(conn, order_ids).await?;
    const STATEMENT: &str = concat!(
        r#"with r as (
               update reservations set status = 'COMMITTED', updated_at = now()
               where order_id = any($1) and status = 'RESERVED'
               returning order_id, sku, quantity
           ),
           changes as (
               select sku, $2::text as location, -quantity as on_hand_delta, -quantity as reserved_delta,
                      $3::text as reason, order_id, null::uuid as adjustment_id, $4::text as actor
               from r
           ),
           "#,
        crate::stock_change!(),
        r#"
           select count(*) from changes"#
    );
    let committed: i64 = sqlx::query_scalar(STATEMENT)
        .bind(order_ids)
        .bind(ledger::DEFAULT_LOCATION)
        .bind(MovementReason::OrderCommit)
        .bind(ledger::SAGA_ACTOR)
        .fetch_one(&mut *conn)
        .await?;
    Ok(committed as u64)
}

/// Compensation for one order or many: gives back everything they hold. RESERVED units leave `reserved`;
/// COMMITTED units (taken from stock but never shipped) return to `on_hand`; the reservations become RELEASED.
/// The skus are locked in sorted order first. Idempotent (a RELEASED reservation is left alone). Returns how many
/// reservations it released.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()), err)]
pub async fn release_many(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    lock_skus_held_by(conn, order_ids).await?;
    // The reservations are read (and locked) before they change: `returning` would give their new status only.
    const STATEMENT: &str = concat!(
        r#"with held as (
               select order_id, sku, quantity, status from reservations
               where order_id = any($1) and status <> 'RELEASED'
               for update
           ),
           r as (
               update reservations set status = 'RELEASED', updated_at = now()
               from held where reservations.order_id = held.order_id and reservations.sku = held.sku
           ),
           changes as (
               select sku, $2::text as location,
                      case when status = 'COMMITTED' then quantity else 0 end as on_hand_delta,
                      case when status = 'RESERVED' then -quantity else 0 end as reserved_delta,
                      $3::text as reason, order_id, null::uuid as adjustment_id, $4::text as actor
               from held
           ),
           "#,
        crate::stock_change!(),
        r#"
           select count(*) from held"#
    );
    let released: i64 = sqlx::query_scalar(STATEMENT)
        .bind(order_ids)
        .bind(ledger::DEFAULT_LOCATION)
        .bind(MovementReason::OrderRelease)
        .bind(ledger::SAGA_ACTOR)
        .fetch_one(&mut *conn)
        .await?;
    Ok(released as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(&str, i64)]) -> (Uuid, Vec<(String, i64)>) {
        (
            Uuid::now_v7(),
            lines.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
        )
    }

    #[test]
    fn first_come_first_served_and_a_misfit_leaves_its_stock_to_later_orders() {
        let mut free = HashMap::from([("a".to_owned(), 3), ("b".to_owned(), 1)]);
        let orders = [
            order(&[("a", 2)]),
            order(&[("a", 1), ("b", 2)]), // b is short: takes nothing, not even its a
            order(&[("a", 1), ("b", 1)]),
            order(&[("a", 1)]), // a is gone
            order(&[("c", 1)]), // no such sku
        ];
        use ReserveOutcome::*;
        assert_eq!(
            decide(&mut free, &orders),
            vec![Reserved, OutOfStock, Reserved, OutOfStock, OutOfStock]
        );
        assert_eq!(free, HashMap::from([("a".to_owned(), 0), ("b".to_owned(), 0)]));
    }

    #[test]
    fn lines_of_one_sku_in_one_order_count_together() {
        let mut free = HashMap::from([("a".to_owned(), 3)]);
        let orders = [order(&[("a", 2), ("a", 2)]), order(&[("a", 3)])];
        assert_eq!(
            decide(&mut free, &orders),
            vec![ReserveOutcome::OutOfStock, ReserveOutcome::Reserved]
        );
    }
}
