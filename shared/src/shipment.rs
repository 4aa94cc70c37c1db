//! Shipments (issue 18): the warehouse reports that it ships some units of a shipment order
//! (`POST /v1/orders/{id}/shipments`), and the ship step captures exactly their value from the order's
//! multicapture authorization and takes them out of stock.
//!
//! A shipment is PENDING when it is accepted ([`create`]: under its Idempotency-Key, with the order's lock, its
//! units allocated to the locations their reservation holds, the requested location first), CAPTURING once the
//! ship step has fixed its capture's parameters ([`begin_captures`]: `final_capture` when nothing else is left to
//! ship or being shipped), then DONE ([`complete`]: its units leave stock in the same transaction that records the
//! capture, so no unit ever ships without its capture on record, and a capture repeated after a crash is a replay
//! under the shipment's key, never a second one) or FAILED ([`fail`]: the provider refused the capture for good;
//! nothing shipped and the units stay reserved). Shipments of one order run one at a time, oldest first.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::flow::Step;
use crate::idempotency::{self, Answer, KeyError, Keyed, Made, Makes};
use crate::input::{self, FieldError};
use crate::inventory::{self, UnitLine, ledger};
use crate::money::Quantity;
use crate::order::{self, Fulfilment, Move, OrderStatus};
use crate::queue::announce::{Announcer, begin_quiet};

/// A new shipment's answer status: accepted, the capture runs in the worker.
pub const ACCEPTED: u16 = 202;

/// Where a shipment is. Persisted as the upper-case strings of [`ShipmentStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    /// Accepted; the ship step has not started on it.
    Pending,
    /// Its capture is asked for (its parameters fixed); its units are still reserved.
    Capturing,
    /// Captured, and its units left stock.
    Done,
    /// The provider refused its capture for good: nothing shipped, nothing captured.
    Failed,
}

impl ShipmentStatus {
    pub const ALL: [ShipmentStatus; 4] = [Self::Pending, Self::Capturing, Self::Done, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Capturing => "CAPTURING",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

stored_as_text!(ShipmentStatus);

/// A shipment as stored.
#[derive(Debug, Clone)]
pub struct ShipmentRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: ShipmentStatus,
    /// Its units at the lines' prices: what its capture takes.
    pub amount: i64,
    /// Whether its capture is the last (it releases whatever the hold has left); fixed when it is CAPTURING.
    pub final_capture: Option<bool>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
    pub provider_ref: Option<String>,
    pub failure: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A shipment's units of one order line at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShipmentLine {
    pub sku: String,
    pub quantity: i64,
    /// Where they ship from: a location the line's reservation holds units at.
    pub location: String,
}

/// The idempotency key of a shipment's capture from the order's authorization number `authorization`: derived
/// from both, so every retry, every worker and the reconciler send the same one and the provider captures its part
/// at most once; a capture from a re-authorization (after the first hold lapsed) is another request, with a key of
/// its own.
pub fn capture_key(shipment_id: Uuid, authorization: i32) -> String {
    match authorization {
        1 => format!("orderflow-ship-{shipment_id}-capture"),
        n => format!("orderflow-ship-{shipment_id}-capture-{n}"),
    }
}

/// `POST /v1/orders/{id}/shipments` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentRequest {
    /// The units shipped, per sku of the order (each sku once).
    pub lines: Vec<UnitLine>,
    /// The location they ship from, if they are held there; others that hold them follow in allocation order.
    pub location: Option<String>,
    /// Free text, at most 255 characters.
    pub carrier: Option<String>,
    /// Free text, at most 255 characters.
    pub tracking: Option<String>,
}

/// A shipment request whose fields are all valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidShipment {
    /// (sku, quantity) in request order, each sku once.
    pub lines: Vec<(String, Quantity)>,
    pub location: Option<String>,
    pub carrier: Option<String>,
    pub tracking: Option<String>,
}

impl ShipmentRequest {
    /// Checks everything that needs no database: at least one line and at most `money::MAX_ORDER_LINES`, each
    /// sku a valid code named once, each quantity in bounds, the location a valid code, the texts plain.
    pub fn validate(&self) -> Result<ValidShipment, FieldError> {
        let lines = inventory::check_unit_lines("a shipment", &self.lines)?;
        if let Some(location) = &self.location {
            inventory::check_location_code("location", location)?;
        }
        Ok(ValidShipment {
            lines,
            location: self.location.clone(),
            carrier: input::optional_text("carrier", self.carrier.as_deref(), 255)?,
            tracking: input::optional_text("tracking", self.tracking.as_deref(), 255)?,
        })
    }
}

/// A shipment request, checked, with what identifies it.
#[derive(Debug, Clone)]
pub struct Shipping<'a> {
    pub order_id: Uuid,
    pub shipment: &'a ValidShipment,
    /// Its Idempotency-Key, whose it is and the request's fingerprint ([`fingerprint`]).
    pub keyed: Keyed<'a>,
}

/// What identifies a shipment request beyond its key: the order it names and its body.
pub fn fingerprint(order_id: Uuid, body: &Value) -> Vec<u8> {
    idempotency::fingerprint(&serde_json::json!({"ship_order": order_id, "body": body}))
}

/// A shipment as made, for the answer.
#[derive(Debug, Clone)]
pub struct Shipment {
    pub row: ShipmentRow,
    pub lines: Vec<ShipmentLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    /// The order cannot ship (not a shipment order, not paid yet, or over).
    #[error("order {0} {1}")]
    NotShippable(Uuid, String),
    /// More units than are left to ship of a line.
    #[error("{0}")]
    TooMany(String),
    #[error("failed to render the response: {0}")]
    Render(#[from] serde_json::Error),
    /// Queueing the ship step failed.
    #[error(transparent)]
    Transition(#[from] order::TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Accepts the shipment (or replays the answer of an earlier request with the key). `respond` renders the
/// answer's body, stored with the key so a repeat gets exactly the first answer.
#[tracing::instrument(skip_all, fields(order_id = %request.order_id), err)]
pub async fn create(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Shipping<'_>,
    respond: impl Fn(&Shipment) -> Result<Value, serde_json::Error>,
) -> Result<Answer, ShipError> {
    idempotency::at_most_twice(|| create_once(pool, announcer, request, &respond))
        .await
        .inspect(|answer| {
            if !answer.replayed {
                tracing::info!(order_id = %request.order_id, "shipment accepted");
            }
        })
}

async fn create_once(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Shipping<'_>,
    respond: &impl Fn(&Shipment) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, ShipError> {
    // Quiet: a job it queues is announced after the commit.
    let mut tx = begin_quiet(pool).await?;
    let outcome = create_in(&mut tx, request, respond).await;
    idempotency::end_keyed(tx, outcome, announcer, Step::Ship.queue()).await
}

/// [`create_once`]'s work inside its transaction, which it leaves to its caller to end; with the answer, whether
/// it queued a ship job.
async fn create_in(
    tx: &mut PgConnection,
    request: &Shipping<'_>,
    respond: &impl Fn(&Shipment) -> Result<Value, serde_json::Error>,
) -> Result<Option<(Answer, bool)>, ShipError> {
    let keyed = request.keyed;
    if let Some(replayed) = keyed
        .claim_or_replay::<ShipError>(tx, Makes::Shipment, ACCEPTED)
        .await?
    {
        return Ok(Some(replayed));
    }
    let id = request.order_id;
    let order = order::lock(&mut *tx, id).await?.ok_or(ShipError::NotFound(id))?;
    if order.fulfilment != Fulfilment::Shipment {
        return Err(ShipError::NotShippable(
            id,
            "is fulfilled automatically (none of its skus is a shipment sku): there is nothing to ship"
                .to_owned(),
        ));
    }
    if order.current_step == Some(Step::ReleaseRest) {
        return Err(ShipError::NotShippable(
            id,
            "was cancelled: what is left of it is being released".to_owned(),
        ));
    }
    match order.status {
        OrderStatus::Paid | OrderStatus::PartiallyFulfilled => {}
        OrderStatus::Created | OrderStatus::Reserved => {
            return Err(ShipError::NotShippable(
                id,
                format!("is {}: its payment is not authorized yet", order.status),
            ));
        }
        status => {
            return Err(ShipError::NotShippable(
                id,
                format!("is {status}: nothing can ship"),
            ));
        }
    }
    let lines = order::lines(&mut *tx, id).await?;
    let mut open = open_units(&mut *tx, id).await?;
    let mut shipped: Vec<(i32, ShipmentLine)> = Vec::new();
    let mut amount = 0_i64;
    for (i, (sku, quantity)) in request.shipment.lines.iter().enumerate() {
        let Some(line) = lines.iter().find(|l| l.sku == *sku) else {
            return Err(FieldError::new(
                format!("lines[{i}].sku"),
                format!("{sku:?} is not a line of order {id}"),
            )
            .into());
        };
        let wanted = quantity.get();
        let mut at = open.remove(sku.as_str()).unwrap_or_default();
        let left: i64 = at.iter().map(|o| o.units).sum();
        if wanted > left {
            return Err(ShipError::TooMany(format!(
                "lines[{i}]: {wanted} of {sku} asked to ship, {left} left to ship of the {} ordered (the rest shipped, \
                 being shipped or not held)",
                line.quantity
            )));
        }
        // The location asked for first, then allocation order.
        at.sort_by_key(|o| {
            (
                Some(&o.location) != request.shipment.location.as_ref(),
                o.priority,
                o.location.clone(),
            )
        });
        let mut rest = wanted;
        for o in at.into_iter().filter(|o| o.units > 0) {
            let take = rest.min(o.units);
            shipped.push((
                line.line_no,
                ShipmentLine {
                    sku: sku.clone(),
                    quantity: take,
                    location: o.location,
                },
            ));
            rest -= take;
            if rest == 0 {
                break;
            }
        }
        amount += wanted * line.unit_price;
    }
    let row = sqlx::query_as!(
        ShipmentRow,
        r#"insert into shipments (id, order_id, status, amount, carrier, tracking)
           values ($1, $2, 'PENDING', $3, $4, $5)
           returning id, order_id, status as "status: _", amount, final_capture, carrier, tracking, provider_ref,
                     failure, created_at, updated_at"#,
        Uuid::now_v7(),
        id,
        amount,
        request.shipment.carrier.as_deref(),
        request.shipment.tracking.as_deref()
    )
    .fetch_one(&mut *tx)
    .await?;
    let (line_nos, units): (Vec<i32>, Vec<&ShipmentLine>) = shipped.iter().map(|(n, l)| (*n, l)).unzip();
    let skus: Vec<&str> = units.iter().map(|l| l.sku.as_str()).collect();
    let locations: Vec<&str> = units.iter().map(|l| l.location.as_str()).collect();
    let quantities: Vec<i64> = units.iter().map(|l| l.quantity).collect();
    sqlx::query!(
        r#"insert into shipment_lines (shipment_id, order_id, line_no, sku, location, quantity)
           select $1, $2, l.line_no, l.sku, l.location, l.quantity
           from unnest($3::integer[], $4::text[], $5::text[], $6::bigint[]) as l(line_no, sku, location, quantity)"#,
        row.id,
        id,
        &line_nos,
        &skus as &[&str],
        &locations as &[&str],
        &quantities
    )
    .execute(&mut *tx)
    .await?;
    // The order's ship step runs its shipments one after another: a new one is queued only when none runs.
    let queue_ship = order.current_step.is_none();
    if queue_ship {
        order::advance(&mut *tx, &[Move::client_asked(&order, Step::Ship)]).await?;
    }
    let shipment = Shipment {
        row,
        lines: shipped.into_iter().map(|(_, l)| l).collect(),
    };
    let body = respond(&shipment)?;
    keyed
        .record(tx, Made::Shipment(shipment.row.id), ACCEPTED, body, queue_ship)
        .await
}

/// Units of a reservation row still to ship: held there and not in a shipment on its way.
struct Open {
    location: String,
    priority: i32,
    units: i64,
}

/// Per sku of the order, the units still open at each location its reservation holds (held, minus those in
/// PENDING or CAPTURING shipments). Read under the order's lock, which every shipment of it takes.
async fn open_units(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<HashMap<String, Vec<Open>>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select r.sku, r.location, c.priority,
                  r.quantity - r.shipped - r.cancelled - coalesce((
                      select sum(l.quantity) from shipment_lines l join shipments s on s.id = l.shipment_id
                      where s.order_id = r.order_id and s.status in ('PENDING', 'CAPTURING')
                        and l.sku = r.sku and l.location = r.location), 0)::bigint as "units!"
           from reservations r join locations c on c.code = r.location
           where r.order_id = $1 and r.status = 'RESERVED'"#,
        order_id
    )
    .fetch_all(conn)
    .await?;
    let mut open: HashMap<String, Vec<Open>> = HashMap::new();
    for row in rows {
        open.entry(row.sku).or_default().push(Open {
            location: row.location,
            priority: row.priority,
            units: row.units,
        });
    }
    Ok(open)
}

/// Whether the order has a shipment on its way (PENDING or CAPTURING): a cancellation waits for it to end.
pub async fn in_flight(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from shipments where order_id = $1 and status in ('PENDING', 'CAPTURING'))
           as "in_flight!""#,
        order_id
    )
    .fetch_one(executor)
    .await
}

/// The order's shipments, oldest first, with their lines.
pub async fn of_order(executor: &PgPool, order_id: Uuid) -> Result<Vec<Shipment>, sqlx::Error> {
    let rows = sqlx::query_as!(
        ShipmentRow,
        r#"select id, order_id, status as "status: _", amount, final_capture, carrier, tracking, provider_ref,
                  failure, created_at, updated_at
           from shipments where order_id = $1 order by id"#,
        order_id
    )
    .fetch_all(executor)
    .await?;
    let lines = sqlx::query!(
        r#"select l.shipment_id, l.sku, l.quantity, l.location
           from shipment_lines l join shipments s on s.id = l.shipment_id
           where s.order_id = $1 order by l.shipment_id, l.line_no, l.location"#,
        order_id
    )
    .fetch_all(executor)
    .await?;
    let mut by_shipment: HashMap<Uuid, Vec<ShipmentLine>> = HashMap::new();
    for line in lines {
        by_shipment
            .entry(line.shipment_id)
            .or_default()
            .push(ShipmentLine {
                sku: line.sku,
                quantity: line.quantity,
                location: line.location,
            });
    }
    Ok(rows
        .into_iter()
        .map(|row| Shipment {
            lines: by_shipment.remove(&row.id).unwrap_or_default(),
            row,
        })
        .collect())
}

/// The shipment each of the orders' ship step works on: the one CAPTURING if there is one (a capture asked for
/// is finished before another starts), else its oldest PENDING one (ids are UUIDv7: across API processes, oldest
/// up to their clocks' skew).
pub async fn current_of(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<Vec<ShipmentRow>, sqlx::Error> {
    sqlx::query_as!(
        ShipmentRow,
        r#"select distinct on (order_id)
                  id, order_id, status as "status: _", amount, final_capture, carrier, tracking, provider_ref,
                  failure, created_at, updated_at
           from shipments where order_id = any($1) and status in ('PENDING', 'CAPTURING')
           order by order_id, status = 'CAPTURING' desc, id"#,
        order_ids
    )
    .fetch_all(conn)
    .await
}

/// Fixes the capture of the PENDING ones of `ids` and makes them CAPTURING: final when nothing else of the order
/// is left to ship or on its way. Returns the shipments `ids` as they are now. The caller holds their orders'
/// locks, which every new shipment takes too.
pub async fn begin_captures(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<ShipmentRow>, sqlx::Error> {
    sqlx::query!(
        r#"update shipments s
           set status = 'CAPTURING', updated_at = now(),
               final_capture =
                   not exists (select 1 from shipments o
                               where o.order_id = s.order_id and o.id <> s.id and o.status in ('PENDING', 'CAPTURING'))
                   and (select coalesce(sum(r.quantity - r.shipped - r.cancelled), 0) from reservations r
                        where r.order_id = s.order_id and r.status = 'RESERVED')
                       = (select sum(l.quantity) from shipment_lines l where l.shipment_id = s.id)
           where s.id = any($1) and s.status = 'PENDING'"#,
        ids
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_as!(
        ShipmentRow,
        r#"select id, order_id, status as "status: _", amount, final_capture, carrier, tracking, provider_ref,
                  failure, created_at, updated_at
           from shipments where id = any($1)"#,
        ids
    )
    .fetch_all(conn)
    .await
}

/// Records the captures of CAPTURING shipments (`(shipment, the intent captured from)`): each one's units leave
/// stock from the locations its lines name (`order_commit` movements through the ledger's one statement, for the
/// units of reservation rows still held: the rows count them as shipped and are COMMITTED once all theirs
/// shipped) and it becomes DONE. The skus are locked in sorted order first. A shipment no longer CAPTURING
/// (recorded already) is left alone. Returns the shipments it recorded.
#[tracing::instrument(skip_all, fields(shipments = shipments.len()), err)]
pub async fn complete(conn: &mut PgConnection, shipments: &[(Uuid, &str)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = shipments.iter().map(|(id, _)| *id).collect();
    let refs: Vec<&str> = shipments.iter().map(|(_, r)| *r).collect();
    sqlx::query!(
        r#"select sku from skus
           where sku in (select l.sku from shipment_lines l join shipments s on s.id = l.shipment_id
                         where s.id = any($1) and s.status = 'CAPTURING')
           order by sku for no key update"#,
        &ids
    )
    .fetch_all(&mut *conn)
    .await?;
    const STATEMENT: &str = concat!(
        r#"with done as (
               update shipments s set status = 'DONE', provider_ref = d.provider_ref, updated_at = now()
               from unnest($1::uuid[], $4::text[]) as d(id, provider_ref)
               where s.id = d.id and s.status = 'CAPTURING'
               returning s.id, s.order_id
           ),
           units as (
               select done.order_id, l.sku, l.location, sum(l.quantity)::bigint as quantity
               from done join shipment_lines l on l.shipment_id = done.id
               group by done.order_id, l.sku, l.location
           ),
           r as (
               update reservations
               set shipped = reservations.shipped + units.quantity,
                   status = case when reservations.shipped + units.quantity + reservations.cancelled
                                      = reservations.quantity
                                 then 'COMMITTED' else 'RESERVED' end,
                   updated_at = now()
               from units
               where reservations.order_id = units.order_id and reservations.sku = units.sku
                 and reservations.location = units.location and reservations.status = 'RESERVED'
               returning reservations.order_id, reservations.sku, reservations.location, units.quantity
           ),
           changes as (
               select sku, location, -quantity as on_hand_delta, -quantity as reserved_delta,
                      $2::text as reason, order_id, null::uuid as adjustment_id, $3::text as actor
               from r
           ),
           "#,
        crate::stock_change!(),
        r#"
           select id from done"#
    );
    sqlx::query_scalar(STATEMENT)
        .bind(&ids)
        .bind(ledger::MovementReason::OrderCommit)
        .bind(ledger::SAGA_ACTOR)
        .bind(&refs)
        .fetch_all(&mut *conn)
        .await
}

/// Fails CAPTURING shipments whose capture the provider refused (`(shipment, why)`); returns those it failed.
/// Nothing of them shipped: their units stay reserved.
pub async fn fail(conn: &mut PgConnection, refused: &[(Uuid, &str)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = refused.iter().map(|(id, _)| *id).collect();
    let reasons: Vec<&str> = refused.iter().map(|(_, why)| *why).collect();
    sqlx::query_scalar!(
        r#"update shipments s set status = 'FAILED', failure = f.failure, updated_at = now()
           from unnest($1::uuid[], $2::text[]) as f(id, failure)
           where s.id = f.id and s.status = 'CAPTURING'
           returning s.id"#,
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

    fn request(lines: Vec<(&str, i64)>) -> ShipmentRequest {
        ShipmentRequest {
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| UnitLine {
                    sku: sku.to_owned(),
                    quantity,
                })
                .collect(),
            location: None,
            carrier: Some(" DHL ".to_owned()),
            tracking: None,
        }
    }

    #[test]
    fn a_shipment_request_is_checked_field_by_field() {
        let valid = request(vec![("A", 2), ("B", 1)]).validate().unwrap();
        assert_eq!(valid.lines.len(), 2);
        assert_eq!(valid.carrier.as_deref(), Some("DHL"));
        let field = |r: ShipmentRequest| r.validate().unwrap_err().field;
        assert_eq!(field(request(vec![])), "lines");
        assert_eq!(field(request(vec![("A", 0)])), "lines[0].quantity");
        assert_eq!(field(request(vec![("A", 1), ("A", 1)])), "lines[1].sku");
        assert_eq!(field(request(vec![("bad sku", 1)])), "lines[0].sku");
        let mut located = request(vec![("A", 1)]);
        located.location = Some("no such/place".to_owned());
        assert_eq!(field(located), "location");
        let mut long = request(vec![("A", 1)]);
        long.tracking = Some("x".repeat(256));
        assert_eq!(field(long), "tracking");
    }

    #[test]
    fn shipment_statuses_round_trip() {
        for status in ShipmentStatus::ALL {
            assert_eq!(ShipmentStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ShipmentStatus::parse("done"), None);
    }
}
