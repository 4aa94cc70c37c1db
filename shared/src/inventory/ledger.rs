//! The stock ledger (`stock_movements`): every change of a sku's `on_hand` or `reserved` is a movement, appended by
//! the statement that makes the change, and the movements always add up to the skus' counts.
//!
//! [`stock_change!`] is the one piece of SQL that changes stock: it appends the movements a statement describes
//! and applies their sums to the skus, so a count never moves without its movement, nor a movement without its
//! count. Every stock-changing statement of [`crate::inventory`] (a reservation, a commit, a release, a set, an
//! adjustment, a transfer) is its `changes` followed by it. Movements are never updated or deleted (a trigger refuses it);
//! [`drift`] reads the ledger against the counts, for the reconciler's check, its metric and the admin view.
//!
//! Stock is held per location (`stock_levels`); a sku's `on_hand` and `reserved` (on `skus`) are the sums over
//! its locations, written by the same statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

/// The location the migrations made: where stock is when a client names none.
pub const DEFAULT_LOCATION: &str = "default";

/// The `location` of a [`Drift`] that compares a sku's totals (on `skus`) with the sums over its locations.
pub const ALL_LOCATIONS: &str = "*";

/// Who moves stock for an order's saga (the `actor` of its movements); an API caller is `key:<id>`.
pub const SAGA_ACTOR: &str = "saga";

/// Why stock moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovementReason {
    /// The stock as it stood when the ledger began (the migration that made it).
    OpeningBalance,
    /// An absolute set of `on_hand` (`PUT /v1/skus/{sku}`): a count; the movement is the difference.
    StockCount,
    /// A relative change a client asked for (`POST /v1/skus/{sku}/adjustments`).
    Adjustment,
    /// Units moved between two locations (`POST /v1/skus/{sku}/transfers`): a pair of movements.
    Transfer,
    /// An order's units held (`reserved` up).
    OrderReserve,
    /// An order's held units taken out of stock (`on_hand` and `reserved` down).
    OrderCommit,
    /// An order's units given back (`reserved` down, or `on_hand` up for committed units).
    OrderRelease,
    /// An order's delivered units that came back and were restocked (`on_hand` up).
    OrderReturn,
}

impl MovementReason {
    pub const ALL: [Self; 8] = [
        Self::OpeningBalance,
        Self::StockCount,
        Self::Adjustment,
        Self::Transfer,
        Self::OrderReserve,
        Self::OrderCommit,
        Self::OrderRelease,
        Self::OrderReturn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpeningBalance => "opening_balance",
            Self::StockCount => "stock_count",
            Self::Adjustment => "adjustment",
            Self::Transfer => "transfer",
            Self::OrderReserve => "order_reserve",
            Self::OrderCommit => "order_commit",
            Self::OrderRelease => "order_release",
            Self::OrderReturn => "order_return",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

stored_as_text!(MovementReason);

/// The one piece of SQL that changes stock. It follows a CTE `changes` with the columns (`sku text, location
/// text, on_hand_delta bigint, reserved_delta bigint, reason text, order_id uuid, adjustment_id uuid, actor
/// text`), one row per movement, and adds three: `movements` appends every row that moves something to the
/// ledger, `levels` adds each location's sums to its stock, `applied` adds each sku's sums to its totals and returns the skus as changed (`sku, on_hand, reserved,
/// price, currency, created_at, updated_at, version`). The statement including it ends with its own `select`.
///
/// Every (sku, location) of `changes` must have its `stock_levels` row: an order's do (reservations are made where
/// stock is), a client's change makes it first ([`crate::inventory`]'s `Change`). (An upsert here would be checked
/// against its proposed new row, which a reservation's deltas alone never satisfy.) The drift check would see a
/// row missed.
///
/// The caller must have locked the skus (`for no key update`) before: their movements' ids are then drawn in
/// the order their changes commit (see the migration), and the sums are applied to the counts the caller
/// decided on. The CHECK constraints stand behind every change: nothing reserved beyond what is on hand, at each
/// location (`inventory_reserved_le_on_hand_at_location`) and in all (`inventory_reserved_le_on_hand`).
/// Statements that include it use `concat!`, so they are not `query!` macros (sqlx's take one string literal).
#[macro_export]
macro_rules! stock_change {
    () => {
        r#"movements as (
               insert into stock_movements (sku, location, on_hand_delta, reserved_delta, reason, order_id,
                                            adjustment_id, actor)
               select sku, location, on_hand_delta, reserved_delta, reason, order_id, adjustment_id, actor
               from changes
               where on_hand_delta <> 0 or reserved_delta <> 0
           ),
           levels as (
               update stock_levels set on_hand = stock_levels.on_hand + d.on_hand,
                                       reserved = stock_levels.reserved + d.reserved, updated_at = now()
               from (select sku, location, sum(on_hand_delta)::bigint as on_hand,
                            sum(reserved_delta)::bigint as reserved
                     from changes group by sku, location) as d
               where stock_levels.sku = d.sku and stock_levels.location = d.location
           ),
           applied as (
               update skus set on_hand = skus.on_hand + d.on_hand, reserved = skus.reserved + d.reserved,
                               updated_at = now()
               from (select sku, sum(on_hand_delta)::bigint as on_hand, sum(reserved_delta)::bigint as reserved
                     from changes group by sku) as d
               where skus.sku = d.sku
               returning skus.sku, skus.on_hand, skus.reserved, skus.price, skus.currency, skus.created_at,
                         skus.updated_at, skus.xmin::text::bigint as version
           )"#
    };
}

/// One movement as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Movement {
    /// Increasing per sku in the order the movements committed: the cursor of the sku's movements.
    pub id: i64,
    pub sku: String,
    pub location: String,
    /// Change of `on_hand`.
    pub on_hand_delta: i64,
    /// Change of `reserved`.
    pub reserved_delta: i64,
    pub reason: MovementReason,
    /// The order whose saga moved the stock (reasons `order_*`).
    pub order_id: Option<Uuid>,
    /// The adjustment or transfer (reasons `adjustment`, `transfer`).
    pub adjustment_id: Option<Uuid>,
    /// Who: `saga` for an order's steps, `key:<id>` for an API key, `migration` for the opening balance.
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

/// A page of a sku's movements, oldest first, after the movement `after` (a previous page's last id).
pub async fn movements(
    executor: impl PgExecutor<'_>,
    sku: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Movement>, sqlx::Error> {
    sqlx::query_as!(
        Movement,
        r#"select id, sku, location, on_hand_delta, reserved_delta, reason as "reason: _", order_id, adjustment_id,
                  actor, created_at
           from stock_movements
           where sku = $1 and id > coalesce($2::bigint, 0)
           order by id
           limit $3"#,
        sku,
        after,
        limit
    )
    .fetch_all(executor)
    .await
}

/// A sku and location whose counts and ledger disagree, or a sku whose totals are not the sums over its
/// locations (`location` [`ALL_LOCATIONS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Drift {
    pub sku: String,
    pub location: String,
    /// The counts as the location's stock has them (for `*`, the sku's totals).
    pub on_hand: i64,
    pub reserved: i64,
    /// The sums of its movements (for `*`, the sums over the sku's locations).
    pub ledger_on_hand: i64,
    pub ledger_reserved: i64,
}

/// Every sku and location whose counts are not the sums of its movements, and every sku whose totals are not the
/// sums over its locations; empty when the ledger adds up. One statement, so the counts and the movements are
/// read in one snapshot: a change commits all of them or none, and none is seen half done. It reads the whole
/// ledger (a scan of the table), so it runs seldom (`WorkerSettings::ledger_check_interval`) and on an
/// operator's request.
pub async fn drift(executor: impl PgExecutor<'_>) -> Result<Vec<Drift>, sqlx::Error> {
    sqlx::query_as!(
        Drift,
        r#"with ledger as (
               select sku, location, sum(on_hand_delta)::bigint as on_hand, sum(reserved_delta)::bigint as reserved
               from stock_movements group by sku, location
           ),
           per_location as (
               select coalesce(c.sku, l.sku) as sku, coalesce(c.location, l.location) as location,
                      coalesce(c.on_hand, 0) as on_hand, coalesce(c.reserved, 0) as reserved,
                      coalesce(l.on_hand, 0) as ledger_on_hand, coalesce(l.reserved, 0) as ledger_reserved
               from stock_levels c full join ledger l on l.sku = c.sku and l.location = c.location
           ),
           sums as (
               select sku, sum(on_hand)::bigint as on_hand, sum(reserved)::bigint as reserved
               from stock_levels group by sku
           ),
           totals as (
               select coalesce(s.sku, t.sku) as sku, $1::text as location,
                      coalesce(s.on_hand, 0) as on_hand, coalesce(s.reserved, 0) as reserved,
                      coalesce(t.on_hand, 0) as ledger_on_hand, coalesce(t.reserved, 0) as ledger_reserved
               from skus s full join sums t on t.sku = s.sku
           )
           select sku as "sku!", location as "location!", on_hand as "on_hand!", reserved as "reserved!",
                  ledger_on_hand as "ledger_on_hand!", ledger_reserved as "ledger_reserved!"
           from (select * from per_location union all select * from totals) as d
           where on_hand <> ledger_on_hand or reserved <> ledger_reserved
           order by 1, 2"#,
        ALL_LOCATIONS
    )
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_from_its_name() {
        for reason in MovementReason::ALL {
            assert_eq!(MovementReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(MovementReason::parse("theft"), None);
    }
}
