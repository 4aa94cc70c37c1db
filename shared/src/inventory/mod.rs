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
use crate::order::Fulfilment;

pub mod adjustment;
pub mod allocation;
pub mod ledger;
pub mod locations;

use ledger::MovementReason;

/// Names of the CHECK constraints that guard 0 <= reserved <= on_hand, in all and at each location; the API maps
/// them to 409.
pub const RESERVED_LE_ON_HAND: &str = "inventory_reserved_le_on_hand";
pub const RESERVED_LE_ON_HAND_AT_LOCATION: &str = "inventory_reserved_le_on_hand_at_location";

/// A sku code: 1–64 characters of letters, digits, `.`, `_`, `-`, starting with a letter or digit. The same
/// rule is the table's `skus_sku_format` CHECK. `field` names where the code came from.
pub fn check_sku_code(field: &str, code: &str) -> Result<(), FieldError> {
    check_code(field, code, "sku")
}

/// Units of one sku of an order, as a request about them names them (a shipment, a refund by lines, a return)
/// and as a refund shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitLine {
    pub sku: String,
    pub quantity: i64,
}

/// The `lines` of a request about an order's units: at least one and at most `money::MAX_ORDER_LINES`, each sku a
/// valid code named once, each quantity in bounds; `what` names the request in the message. The lines as
/// (sku, quantity), in request order.
pub fn check_unit_lines(
    what: &str,
    lines: &[UnitLine],
) -> Result<Vec<(String, crate::money::Quantity)>, FieldError> {
    if lines.is_empty() {
        return Err(FieldError::new(
            "lines",
            format!("{what} needs at least one line"),
        ));
    }
    if lines.len() > crate::money::MAX_ORDER_LINES {
        return Err(FieldError::new(
            "lines",
            format!("at most {} lines", crate::money::MAX_ORDER_LINES),
        ));
    }
    let mut valid: Vec<(String, crate::money::Quantity)> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        check_sku_code(&format!("lines[{i}].sku"), &line.sku)?;
        if valid.iter().any(|(seen, _)| *seen == line.sku) {
            return Err(FieldError::new(
                format!("lines[{i}].sku"),
                format!("sku {:?} appears on more than one line", line.sku),
            ));
        }
        let quantity = crate::money::Quantity::parse(line.quantity)
            .map_err(|e| FieldError::new(format!("lines[{i}].quantity"), e))?;
        valid.push((line.sku.clone(), quantity));
    }
    Ok(valid)
}

/// A location code: the same form as a sku's (`locations_code_format`).
pub fn check_location_code(field: &str, code: &str) -> Result<(), FieldError> {
    check_code(field, code, "location")
}

fn check_code(field: &str, code: &str, what: &str) -> Result<(), FieldError> {
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
                "{code:?} is not a {what} code (1-64 letters, digits, '.', '_' or '-', starting alphanumeric)"
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
    /// How its orders are fulfilled: an order with any `shipment` sku waits in PAID for shipments.
    pub fulfilment: Fulfilment,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn find(executor: impl PgExecutor<'_>, sku: &str) -> Result<Option<SkuRow>, sqlx::Error> {
    Ok(find_stock(executor, sku).await?.map(|stock| stock.sku))
}

/// The version of a sku's stock, which its `ETag` carries: PostgreSQL's `xmin` of the sku's row, the id of the
/// transaction that last wrote it. Every change to the row (a reservation, a release, a commit, a set) makes a new
/// one, so a client that read a version can tell whether the stock moved since (optimistic concurrency as
/// Npgsql and EF Core do it on PostgreSQL: no column to maintain, no write on the steps' path). Every change of
/// the sku's stock at any location writes the row (its totals), so an order's reservation or release moves it
/// too, though a set never writes `reserved`: on a sku that sells all the time a conditional set may need a few
/// tries. Transaction ids are 32 bits and wrap around after about four billion transactions: a row left
/// unwritten for that long could show a version a client saw long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockVersion(pub i64);

/// A sku with its stock: the totals, their version, and each location's.
#[derive(Debug, Clone)]
pub struct SkuStock {
    pub sku: SkuRow,
    pub version: StockVersion,
    /// Each location that has held it, in allocation order.
    pub levels: Vec<Level>,
}

/// The sku with its stock, read in one statement (one snapshot: the totals are the sums of the levels shown, at
/// the version shown).
pub async fn find_stock(executor: impl PgExecutor<'_>, sku: &str) -> Result<Option<SkuStock>, sqlx::Error> {
    let found = sqlx::query!(
        r#"select s.sku, s.on_hand, s.reserved, s.price, s.currency, s.fulfilment as "fulfilment: Fulfilment",
                  s.created_at, s.updated_at,
                  s.xmin::text::bigint as "version!",
                  coalesce((select json_agg(json_build_object(
                                'location', l.location, 'on_hand', l.on_hand, 'reserved', l.reserved,
                                'available', l.on_hand - l.reserved) order by c.priority, c.code)
                            from stock_levels l join locations c on c.code = l.location
                            where l.sku = s.sku), '[]') as "levels!: sqlx::types::Json<Vec<Level>>"
           from skus s where s.sku = $1"#,
        sku
    )
    .fetch_optional(executor)
    .await?;
    Ok(found.map(|row| SkuStock {
        sku: SkuRow {
            sku: row.sku,
            on_hand: row.on_hand,
            reserved: row.reserved,
            price: row.price,
            currency: row.currency,
            fulfilment: row.fulfilment,
            created_at: row.created_at,
            updated_at: row.updated_at,
        },
        version: StockVersion(row.version),
        levels: row.levels.0,
    }))
}

/// What a set of a sku's stock and price came to.
#[derive(Debug)]
pub enum SkuSet {
    Created(SkuStock),
    Updated(SkuStock),
    /// The set was conditional on a version and the sku's stock is at another one (`None`: there is no such
    /// sku); nothing was written.
    VersionMoved(Option<StockVersion>),
    /// The location named is not one; nothing was written.
    NoSuchLocation,
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

/// An absolute set of a sku's stock at a location, and of its price.
#[derive(Debug, Clone)]
pub struct StockSet<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub on_hand: i64,
    pub price: i64,
    pub currency: &'a str,
    /// The sku's fulfilment mode; `None` keeps the current one (a new sku's is `auto`).
    pub fulfilment: Option<Fulfilment>,
    /// The version the set is conditional on.
    pub expected: &'a Expected,
    /// Who asks (the ledger's `actor`).
    pub actor: &'a str,
}

/// Creates the sku or sets its stock at the location and its price, if its stock is at the `expected` version.
/// The stock arrives as a movement like any other (`stock_count`, the difference from the location's count
/// before): a new sku is made with none first. Lowering `on_hand` below what is reserved there fails on
/// [`RESERVED_LE_ON_HAND_AT_LOCATION`].
pub async fn upsert(conn: &mut PgConnection, set: &StockSet<'_>) -> Result<SkuSet, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let outcome = upsert_in(&mut tx, set).await;
    // A refusal (a version moved, no such location: a sku made for it included) rolls back before the answer.
    let made = matches!(outcome, Ok(SkuSet::Created(_) | SkuSet::Updated(_)));
    crate::db::finish(tx, outcome, made).await
}

/// [`upsert`]'s work inside its transaction, which it leaves to its caller to end.
async fn upsert_in(tx: &mut PgConnection, set: &StockSet<'_>) -> Result<SkuSet, sqlx::Error> {
    let created = *set.expected == Expected::Any
        && sqlx::query!(
            r#"insert into skus (sku, on_hand, price, currency, fulfilment)
               values ($1, 0, $2, $3, coalesce($4, 'auto')) on conflict (sku) do nothing"#,
            set.sku,
            set.price,
            set.currency,
            set.fulfilment.map(Fulfilment::as_str)
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
    // Lock the row, compare, write: the version a refusal names is the one the row is at while it is locked.
    let current = sqlx::query_scalar!(
        r#"select xmin::text::bigint as "version!" from skus where sku = $1 for no key update"#,
        set.sku
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current.map(StockVersion) else {
        return Ok(SkuSet::VersionMoved(None));
    };
    if !created && !set.expected.admits(current) {
        return Ok(SkuSet::VersionMoved(Some(current)));
    }
    let Some(counted) = level_at(&mut *tx, set.sku, set.location).await? else {
        return Ok(SkuSet::NoSuchLocation);
    };
    if !created {
        sqlx::query!(
            "update skus set price = $2, currency = $3, fulfilment = coalesce($4, fulfilment) where sku = $1",
            set.sku,
            set.price,
            set.currency,
            set.fulfilment.map(Fulfilment::as_str)
        )
        .execute(&mut *tx)
        .await?;
    }
    let change = Change {
        sku: set.sku,
        legs: vec![(set.location, set.on_hand - counted.on_hand)],
        reason: MovementReason::StockCount,
        adjustment_id: None,
        actor: set.actor,
    };
    change.apply(tx).await?;
    let stock = find_stock(&mut *tx, set.sku)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(match created {
        true => SkuSet::Created(stock),
        false => SkuSet::Updated(stock),
    })
}

/// A location's counts of the sku (none there yet: zero); `None` if there is no such location. Read after the
/// sku's lock, in a statement of its own, so they are the counts every later change starts from.
async fn level_at(conn: &mut PgConnection, sku: &str, location: &str) -> Result<Option<Counts>, sqlx::Error> {
    sqlx::query_as!(
        Counts,
        r#"select coalesce(l.on_hand, 0) as "on_hand!", coalesce(l.reserved, 0) as "reserved!"
           from locations c left join stock_levels l on l.location = c.code and l.sku = $1
           where c.code = $2"#,
        sku,
        location
    )
    .fetch_optional(conn)
    .await
}

/// A location's counts of a sku.
struct Counts {
    on_hand: i64,
    reserved: i64,
}

/// A change of one sku's `on_hand` a client asked for, at one location or two: a count's difference, an
/// adjustment, a transfer.
struct Change<'a> {
    sku: &'a str,
    /// (location, change of its `on_hand`).
    legs: Vec<(&'a str, i64)>,
    reason: MovementReason,
    adjustment_id: Option<Uuid>,
    actor: &'a str,
}

impl Change<'_> {
    /// Applies it with its movements (through [`stock_change!`]). The caller holds the sku's row lock.
    async fn apply(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        const STATEMENT: &str = concat!(
            r#"with changes as (
                   select $1::text as sku, leg.location, leg.on_hand_delta, 0::bigint as reserved_delta,
                          $4::text as reason, null::uuid as order_id, $5::uuid as adjustment_id, $6::text as actor
                   from unnest($2::text[], $3::bigint[]) as leg(location, on_hand_delta)
               ),
               "#,
            crate::stock_change!(),
            r#"
               select 1"#
        );
        let (locations, deltas): (Vec<&str>, Vec<i64>) = self.legs.iter().copied().unzip();
        // A location the sku has never been at gets its row first, empty, for the change to add to.
        sqlx::query!(
            r#"insert into stock_levels (sku, location) select $1, location from unnest($2::text[]) as location
               on conflict (sku, location) do nothing"#,
            self.sku,
            &locations as &[&str]
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query(STATEMENT)
            .bind(self.sku)
            .bind(&locations)
            .bind(&deltas)
            .bind(self.reason)
            .bind(self.adjustment_id)
            .bind(self.actor)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// A sku's stock at one location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Level {
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// on_hand − reserved: what new orders can still take from here.
    pub available: i64,
}

/// Where a reservation's units are: held (RESERVED), taken out of stock (COMMITTED) or given back (RELEASED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Reserved,
    Committed,
    Released,
}

impl ReservationStatus {
    pub const ALL: [Self; 3] = [Self::Reserved, Self::Committed, Self::Released];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

stored_as_text!(ReservationStatus);

/// An order's units of a sku at one location: the allocation the reserve step made, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: Uuid,
    pub sku: String,
    pub location: String,
    pub quantity: i64,
    /// Of them, shipped by shipments, and given back when the rest of the order was cancelled.
    pub shipped: i64,
    pub cancelled: i64,
    pub status: ReservationStatus,
}

/// The reservations of the orders `ids`, by order, sku and location.
pub async fn reservations_of(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<Reservation>, sqlx::Error> {
    sqlx::query_as!(
        Reservation,
        r#"select order_id, sku, location, quantity, shipped, cancelled, status as "status: _" from reservations
           where order_id = any($1) order by order_id, sku, location"#,
        ids
    )
    .fetch_all(executor)
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved,
    /// At least one line could not be held; nothing is held.
    OutOfStock,
}

/// Reserves the lines of one order or many in the caller's transaction, each order all or nothing, first come
/// first served in the order given (an order that does not fit leaves its stock to the orders after it), each
/// line from the locations [`allocation`]'s policy picks. It locks every sku the orders name, in sorted order,
/// reads their locations' free units, decides, then writes every hold (one reservation per order, sku and
/// location) in one statement; the CHECK constraints still stand behind it. A sku that does not exist is out of
/// stock.
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
    sqlx::query!(
        "select sku from skus where sku = any($1) order by sku for no key update",
        &skus as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    // A statement of its own, after the locks: its snapshot sees every change committed before they were won (in
    // one statement with them, a row of another table than the one locked would be read as it was before).
    let levels = sqlx::query!(
        r#"select l.sku, l.location, l.on_hand - l.reserved as "units!", c.priority
           from stock_levels l join locations c on c.code = l.location
           where l.sku = any($1)"#,
        &skus as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut stock: HashMap<String, Vec<allocation::Free>> = HashMap::new();
    for level in levels {
        stock.entry(level.sku).or_default().push(allocation::Free {
            location: level.location,
            priority: level.priority,
            units: level.units,
        });
    }
    let decided = allocation::allocate(&mut stock, orders);
    let (mut held_orders, mut held_skus, mut held_locations, mut held_quantities) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((order_id, _), holds) in orders.iter().zip(&decided) {
        for hold in holds.iter().flatten() {
            held_orders.push(*order_id);
            held_skus.push(hold.sku.as_str());
            held_locations.push(hold.location.as_str());
            held_quantities.push(hold.quantity);
        }
    }
    if !held_orders.is_empty() {
        const STATEMENT: &str = concat!(
            r#"with r as (
                   insert into reservations (order_id, sku, location, quantity, status)
                   select h.order_id, h.sku, h.location, h.quantity, 'RESERVED'
                   from unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) as h(order_id, sku, location, quantity)
                   returning order_id, sku, location, quantity
               ),
               changes as (
                   select sku, location, 0::bigint as on_hand_delta, quantity as reserved_delta,
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
            .bind(&held_locations)
            .bind(&held_quantities)
            .bind(MovementReason::OrderReserve)
            .bind(ledger::SAGA_ACTOR)
            .execute(&mut *conn)
            .await?;
    }
    Ok(decided
        .iter()
        .map(|holds| match holds {
            Some(_) => ReserveOutcome::Reserved,
            None => ReserveOutcome::OutOfStock,
        })
        .collect())
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
               returning order_id, sku, location, quantity
           ),
           changes as (
               select sku, location, -quantity as on_hand_delta, -quantity as reserved_delta,
                      $2::text as reason, order_id, null::uuid as adjustment_id, $3::text as actor
               from r
           ),
           "#,
        crate::stock_change!(),
        r#"
           select count(*) from changes"#
    );
    change_held_stock(conn, STATEMENT, order_ids, MovementReason::OrderCommit).await
}

/// Compensation for one order or many: gives back everything they hold. RESERVED units leave `reserved`;
/// COMMITTED units (taken from stock but never shipped) return to `on_hand`; the reservations become RELEASED.
/// Units a shipment took (`shipped`) left the warehouse and are never given back; units a cancel of the rest gave
/// back (`cancelled`) are not given back twice.
/// The skus are locked in sorted order first. Idempotent (a RELEASED reservation is left alone). Returns how many
/// reservations it released.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()), err)]
pub async fn release_many(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    lock_skus_held_by(conn, order_ids).await?;
    // The reservations are read (and locked) before they change: `returning` would give their new status only.
    const STATEMENT: &str = concat!(
        r#"with held as (
               select order_id, sku, location, quantity - shipped - cancelled as units, status from reservations
               where order_id = any($1) and status <> 'RELEASED'
               for update
           ),
           r as (
               update reservations set status = 'RELEASED', updated_at = now()
               from held
               where reservations.order_id = held.order_id and reservations.sku = held.sku
                 and reservations.location = held.location
           ),
           changes as (
               select sku, location,
                      case when status = 'COMMITTED' then units else 0 end as on_hand_delta,
                      case when status = 'RESERVED' then -units else 0 end as reserved_delta,
                      $2::text as reason, order_id, null::uuid as adjustment_id, $3::text as actor
               from held
           ),
           "#,
        crate::stock_change!(),
        r#"
           select count(*) from held"#
    );
    change_held_stock(conn, STATEMENT, order_ids, MovementReason::OrderRelease).await
}

/// Cancelling the rest of a shipment order: the units its reservations still hold (not shipped) leave `reserved`
/// (`order_release` movements) and are counted `cancelled`; each row ends COMMITTED if some of it shipped, else
/// RELEASED. Shipped units stay shipped. The skus are locked in sorted order first. Idempotent (only RESERVED rows change). Returns how many
/// reservations it changed.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()), err)]
pub async fn release_rest(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    lock_skus_held_by(conn, order_ids).await?;
    const STATEMENT: &str = concat!(
        r#"with r as (
               update reservations
               set status = case when shipped > 0 then 'COMMITTED' else 'RELEASED' end,
                   cancelled = quantity - shipped - cancelled, updated_at = now()
               where order_id = any($1) and status = 'RESERVED'
               returning order_id, sku, location, cancelled as held
           ),
           changes as (
               select sku, location, 0::bigint as on_hand_delta, -held as reserved_delta,
                      $2::text as reason, order_id, null::uuid as adjustment_id, $3::text as actor
               from r
           ),
           "#,
        crate::stock_change!(),
        r#"
           select count(*) from r"#
    );
    change_held_stock(conn, STATEMENT, order_ids, MovementReason::OrderRelease).await
}

/// Runs `statement` (commit's or release's: `$1` the orders, `$2` the movements' reason, `$3` their actor,
/// answering how many reservations it changed) on the orders' reservations.
async fn change_held_stock(
    conn: &mut PgConnection,
    statement: &'static str,
    order_ids: &[Uuid],
    reason: MovementReason,
) -> Result<u64, sqlx::Error> {
    let changed: i64 = sqlx::query_scalar(statement)
        .bind(order_ids)
        .bind(reason)
        .bind(ledger::SAGA_ACTOR)
        .fetch_one(&mut *conn)
        .await?;
    Ok(changed as u64)
}

/// A return's units going back to stock: `on_hand` up by each `(sku, location, quantity)` (`order_return`
/// movements naming the order, by `actor`). The skus are locked in sorted order first; a location the sku has
/// never been at gets its row, empty, for the units to add to.
#[tracing::instrument(skip_all, fields(%order_id, units = units.len()), err)]
pub async fn restock(
    conn: &mut PgConnection,
    order_id: Uuid,
    units: &[(&str, &str, i64)],
    actor: &str,
) -> Result<(), sqlx::Error> {
    let mut skus: Vec<&str> = units.iter().map(|(sku, _, _)| *sku).collect();
    skus.sort_unstable();
    skus.dedup();
    sqlx::query!(
        "select sku from skus where sku = any($1) order by sku for no key update",
        &skus as &[&str]
    )
    .fetch_all(&mut *conn)
    .await?;
    let (skus, locations, quantities): (Vec<&str>, Vec<&str>, Vec<i64>) = units.iter().fold(
        (Vec::new(), Vec::new(), Vec::new()),
        |mut all, (sku, location, quantity)| {
            all.0.push(*sku);
            all.1.push(*location);
            all.2.push(*quantity);
            all
        },
    );
    sqlx::query!(
        r#"insert into stock_levels (sku, location)
           select sku, location from unnest($1::text[], $2::text[]) as u(sku, location)
           on conflict (sku, location) do nothing"#,
        &skus as &[&str],
        &locations as &[&str]
    )
    .execute(&mut *conn)
    .await?;
    const STATEMENT: &str = concat!(
        r#"with changes as (
               select u.sku, u.location, u.quantity as on_hand_delta, 0::bigint as reserved_delta,
                      $4::text as reason, $5::uuid as order_id, null::uuid as adjustment_id, $6::text as actor
               from unnest($1::text[], $2::text[], $3::bigint[]) as u(sku, location, quantity)
           ),
           "#,
        crate::stock_change!(),
        r#"
           select 1"#
    );
    sqlx::query(STATEMENT)
        .bind(&skus)
        .bind(&locations)
        .bind(&quantities)
        .bind(MovementReason::OrderReturn)
        .bind(order_id)
        .bind(actor)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
