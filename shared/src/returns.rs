//! Returns (issue 18): delivered units of an order that came back (`POST /v1/orders/{id}/returns`).
//!
//! A return is recorded whole in one transaction, under its Idempotency-Key and the order's lock: its lines (at
//! most what was delivered of each and not returned yet), the units restocked when `restock` (`order_return`
//! movements at the location each line goes back to: the one named, else the one its units left from), the
//! refund of their value that follows it unless the caller declines it (a refund by lines, PENDING, which the
//! refund step runs as any refund; units a refund by line already gave back are not refunded twice), and
//! `order.returned`. Without restock nothing moves: the units are written off, and the return records it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::flow::Step;
use crate::idempotency::{self, Answer, KeyError, Keyed, Made, Makes};
use crate::input::{self, FieldError};
use crate::inventory::{self, UnitLine};
use crate::money::Quantity;
use crate::order::{self, Move, OrderStatus, Transition};
use crate::queue::{
    NextJob,
    announce::{Announcer, begin_quiet},
};
use crate::refund::{self, Asked, Refund, RefundError, RefundReason};

/// A new return's answer status: recorded (its restock done, its refund accepted).
pub const CREATED: u16 = 201;

/// `POST /v1/orders/{id}/returns` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// The units that came back, per sku of the order (each sku once).
    pub lines: Vec<UnitLine>,
    /// Required: whether the units go back to stock (sellable) or are written off.
    pub restock: Option<bool>,
    /// Where restocked units go; by default where each line's units left from.
    pub location: Option<String>,
    /// Whether their value is refunded (default true); false declines the refund.
    pub refund: Option<bool>,
    /// The refund's reason (default `requested_by_customer`).
    pub reason: Option<String>,
    /// Free text for people (at most 500 characters).
    pub note: Option<String>,
}

/// A return request whose fields are all valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidReturn {
    /// (sku, quantity) in request order, each sku once.
    pub lines: Vec<(String, Quantity)>,
    pub restock: bool,
    pub location: Option<String>,
    pub refund: bool,
    pub reason: RefundReason,
    pub note: Option<String>,
}

impl ReturnRequest {
    /// Checks everything that needs no database.
    pub fn validate(&self) -> Result<ValidReturn, FieldError> {
        let lines = inventory::check_unit_lines("a return", &self.lines)?;
        let restock = self.restock.ok_or_else(|| {
            FieldError::new(
                "restock",
                "required: true (the units go back to stock) or false (written off)",
            )
        })?;
        if let Some(location) = &self.location {
            if !restock {
                return Err(FieldError::new(
                    "location",
                    "only restocked units go to a location: leave it out with \"restock\": false",
                ));
            }
            inventory::check_location_code("location", location)?;
        }
        let reason = match self.reason.as_deref() {
            None => RefundReason::RequestedByCustomer,
            Some(reason) => RefundReason::parse(reason).ok_or_else(|| {
                FieldError::new(
                    "reason",
                    format!(
                        "{reason:?} is not one of {}",
                        RefundReason::ALL.map(RefundReason::as_str).join(", ")
                    ),
                )
            })?,
        };
        Ok(ValidReturn {
            lines,
            restock,
            location: self.location.clone(),
            refund: self.refund.unwrap_or(true),
            reason,
            note: input::optional_text("note", self.note.as_deref(), 500)?,
        })
    }
}

/// A return request, checked, with what identifies it.
#[derive(Debug, Clone)]
pub struct Returning<'a> {
    pub order_id: Uuid,
    pub r#return: &'a ValidReturn,
    /// Its Idempotency-Key, whose it is and the request's fingerprint ([`fingerprint`]).
    pub keyed: Keyed<'a>,
}

/// What identifies a return request beyond its key: the order it names and its body.
pub fn fingerprint(order_id: Uuid, body: &Value) -> Vec<u8> {
    idempotency::fingerprint(&serde_json::json!({"return_order": order_id, "body": body}))
}

/// A return's units of one order line, and the location they went back to (or came from, written off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: i64,
    pub location: String,
}

/// A return as recorded.
#[derive(Debug, Clone)]
pub struct Return {
    pub id: Uuid,
    pub order_id: Uuid,
    pub restock: bool,
    pub lines: Vec<ReturnLine>,
    /// The refund that follows it, if any.
    pub refund_id: Option<Uuid>,
    pub refund_declined: bool,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReturnError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("order {0} does not exist")]
    NotFound(Uuid),
    /// Nothing of the order was delivered (not shipped yet, or cancelled).
    #[error("order {0} {1}")]
    NotReturnable(Uuid, String),
    /// More units of a line than were delivered and not returned yet.
    #[error("{0}")]
    ExceedsDelivered(String),
    /// The refund that follows cannot be made (more than is refundable, the rest being released).
    #[error(transparent)]
    Refund(#[from] RefundError),
    #[error("failed to render the response: {0}")]
    Render(#[from] serde_json::Error),
    #[error(transparent)]
    Transition(#[from] order::TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records the return (or replays the answer of an earlier request with the key).
#[tracing::instrument(skip_all, fields(order_id = %request.order_id), err)]
pub async fn create(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Returning<'_>,
    respond: impl Fn(&Return, Option<&Refund>) -> Result<Value, serde_json::Error>,
) -> Result<Answer, ReturnError> {
    idempotency::at_most_twice(|| create_once(pool, announcer, request, &respond))
        .await
        .inspect(|answer| {
            if !answer.replayed {
                tracing::info!(order_id = %request.order_id, "return recorded");
            }
        })
}

async fn create_once(
    pool: &PgPool,
    announcer: &Announcer,
    request: &Returning<'_>,
    respond: &impl Fn(&Return, Option<&Refund>) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, ReturnError> {
    // Quiet: a job it queues is announced after the commit.
    let mut tx = begin_quiet(pool).await?;
    let outcome = create_in(&mut tx, request, respond).await;
    idempotency::end_keyed(tx, outcome, announcer, Step::Refund.queue()).await
}

/// Where each line's delivered units left from, the first location in allocation order when several.
async fn came_from(conn: &mut PgConnection, order_id: Uuid) -> Result<HashMap<i32, String>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select distinct on (l.line_no) l.line_no, x.location as "location!"
           from order_lines l
           join orders o on o.id = l.order_id
           join lateral (
               select sl.location from shipment_lines sl join shipments s on s.id = sl.shipment_id
               where o.fulfilment = 'shipment' and sl.order_id = l.order_id and sl.line_no = l.line_no
                 and s.status = 'DONE'
               union all
               select r.location from reservations r
               where o.fulfilment = 'auto' and r.order_id = l.order_id and r.sku = l.sku and r.status = 'COMMITTED'
           ) x on true
           join locations c on c.code = x.location
           where l.order_id = $1
           order by l.line_no, c.priority, x.location"#,
        order_id
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.line_no, r.location)).collect())
}

async fn create_in(
    tx: &mut PgConnection,
    request: &Returning<'_>,
    respond: &impl Fn(&Return, Option<&Refund>) -> Result<Value, serde_json::Error>,
) -> Result<Option<(Answer, bool)>, ReturnError> {
    let keyed = request.keyed;
    if let Some(replayed) = keyed
        .claim_or_replay::<ReturnError>(tx, Makes::Return, CREATED)
        .await?
    {
        return Ok(Some(replayed));
    }
    let asked = request.r#return;
    let id = request.order_id;
    let order = order::lock(&mut *tx, id)
        .await?
        .ok_or(ReturnError::NotFound(id))?;
    if !matches!(
        order.status,
        OrderStatus::PartiallyFulfilled | OrderStatus::Fulfilled
    ) {
        return Err(ReturnError::NotReturnable(
            id,
            format!("is {}: none of its units was delivered", order.status),
        ));
    }
    if let Some(location) = &asked.location {
        let exists: bool = sqlx::query_scalar!(
            r#"select exists (select 1 from locations where code = $1) as "exists!""#,
            location
        )
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            return Err(FieldError::new("location", format!("{location:?} is not a location")).into());
        }
    }
    let lines = refund::line_money(&mut *tx, id).await?;
    let from = came_from(&mut *tx, id).await?;
    let mut returned: Vec<(i32, ReturnLine)> = Vec::with_capacity(asked.lines.len());
    let mut to_refund: Vec<(String, Quantity)> = Vec::new();
    for (i, (sku, quantity)) in asked.lines.iter().enumerate() {
        let Some(line) = lines.iter().find(|l| l.sku == *sku) else {
            return Err(FieldError::new(
                format!("lines[{i}].sku"),
                format!("{sku:?} is not a line of order {id}"),
            )
            .into());
        };
        let left = line.delivered - line.returned;
        if quantity.get() > left {
            return Err(ReturnError::ExceedsDelivered(format!(
                "lines[{i}]: {} of {sku} returned; of the {} ordered {} were delivered and {} returned before, so at \
                 most {left}",
                quantity.get(),
                line.quantity,
                line.delivered,
                line.returned
            )));
        }
        let location = asked
            .location
            .clone()
            .or_else(|| from.get(&line.line_no).cloned())
            .unwrap_or_else(|| inventory::ledger::DEFAULT_LOCATION.to_owned());
        returned.push((
            line.line_no,
            ReturnLine {
                sku: sku.clone(),
                quantity: quantity.get(),
                location,
            },
        ));
        // A line's refunds by line are taken to cover the units that come back first: of the units returned so far
        // (with these), those no refund by line gave back yet are refunded. So a unit refunded by line and then
        // returned is not refunded twice, and a line's refunds never pass what came back of it by returns, nor what
        // was delivered. (Refunds by amount name no units: a return's refund fits what is refundable, or 409.)
        let unrefunded = (line.returned + quantity.get() - line.refunded).clamp(0, quantity.get());
        if let Ok(units) = Quantity::parse(unrefunded) {
            to_refund.push((sku.clone(), units));
        }
    }
    if asked.restock {
        let units: Vec<(&str, &str, i64)> = returned
            .iter()
            .map(|(_, l)| (l.sku.as_str(), l.location.as_str(), l.quantity))
            .collect();
        inventory::restock(&mut *tx, id, &units, keyed.caller).await?;
    }
    let refund = match asked.refund && !to_refund.is_empty() {
        true => Some(
            refund::write(
                &mut *tx,
                &order,
                &Asked::Lines(to_refund),
                // Read under the order's lock above; the restock since changes none of it.
                Some(&lines),
                asked.reason,
                asked.note.as_deref(),
            )
            .await?,
        ),
        false => None,
    };
    let recorded = sqlx::query!(
        r#"insert into returns (id, order_id, restock, refund_id, refund_declined, note)
           values ($1, $2, $3, $4, $5, $6)
           returning id, created_at"#,
        Uuid::now_v7(),
        id,
        asked.restock,
        refund.as_ref().map(|r| r.row.id),
        !asked.refund,
        asked.note.as_deref()
    )
    .fetch_one(&mut *tx)
    .await?;
    let (line_nos, rest): (Vec<i32>, Vec<&ReturnLine>) = returned.iter().map(|(n, l)| (*n, l)).unzip();
    let locations: Vec<&str> = rest.iter().map(|l| l.location.as_str()).collect();
    let quantities: Vec<i64> = rest.iter().map(|l| l.quantity).collect();
    sqlx::query!(
        r#"insert into return_lines (return_id, order_id, line_no, location, quantity)
           select $1, $2, l.line_no, l.location, l.quantity
           from unnest($3::integer[], $4::text[], $5::bigint[]) as l(line_no, location, quantity)"#,
        recorded.id,
        id,
        &line_nos,
        &locations as &[&str],
        &quantities
    )
    .execute(&mut *tx)
    .await?;
    // `order.returned`; the refund that follows runs now if no step runs, else after the one that does.
    let queue_refund = refund.is_some() && order.current_step.is_none();
    let moved = Move {
        transition: Some(Transition::Return),
        next: queue_refund.then(|| NextJob::first(Step::Refund)),
        keeps_step: true,
        progress: true,
        ..Move::new(&order)
    };
    order::advance(&mut *tx, &[moved]).await?;
    let made = Return {
        id: recorded.id,
        order_id: id,
        restock: asked.restock,
        lines: returned.into_iter().map(|(_, l)| l).collect(),
        refund_id: refund.as_ref().map(|r| r.row.id),
        refund_declined: !asked.refund,
        note: asked.note.clone(),
        created_at: recorded.created_at,
    };
    let body = respond(&made, refund.as_ref())?;
    keyed
        .record(tx, Made::Return(made.id), CREATED, body, queue_refund)
        .await
}

/// The order's returns, oldest first, with their lines.
pub async fn of_order(pool: &PgPool, order_id: Uuid) -> Result<Vec<Return>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select id, order_id, restock, refund_id, refund_declined, note, created_at
           from returns where order_id = $1 order by id"#,
        order_id
    )
    .fetch_all(pool)
    .await?;
    let lines = sqlx::query!(
        r#"select tl.return_id, l.sku, tl.quantity, tl.location
           from return_lines tl join order_lines l on l.order_id = tl.order_id and l.line_no = tl.line_no
           where tl.order_id = $1 order by tl.return_id, tl.line_no"#,
        order_id
    )
    .fetch_all(pool)
    .await?;
    let mut by_return: HashMap<Uuid, Vec<ReturnLine>> = HashMap::new();
    for line in lines {
        by_return.entry(line.return_id).or_default().push(ReturnLine {
            sku: line.sku,
            quantity: line.quantity,
            location: line.location,
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| Return {
            lines: by_return.remove(&r.id).unwrap_or_default(),
            id: r.id,
            order_id: r.order_id,
            restock: r.restock,
            refund_id: r.refund_id,
            refund_declined: r.refund_declined,
            note: r.note,
            created_at: r.created_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(lines: Vec<(&str, i64)>) -> ReturnRequest {
        ReturnRequest {
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| UnitLine {
                    sku: sku.to_owned(),
                    quantity,
                })
                .collect(),
            restock: Some(true),
            location: None,
            refund: None,
            reason: None,
            note: None,
        }
    }

    #[test]
    fn a_return_request_is_checked_field_by_field_and_refunds_by_default() {
        let valid = request(vec![("A", 1)]).validate().unwrap();
        assert!(valid.restock && valid.refund);
        assert_eq!(valid.reason, RefundReason::RequestedByCustomer);
        let field = |r: ReturnRequest| r.validate().unwrap_err().field;
        assert_eq!(field(request(vec![])), "lines");
        assert_eq!(field(request(vec![("A", 0)])), "lines[0].quantity");
        assert_eq!(field(request(vec![("A", 1), ("A", 1)])), "lines[1].sku");
        assert_eq!(
            field(ReturnRequest {
                restock: None,
                ..request(vec![("A", 1)])
            }),
            "restock"
        );
        assert_eq!(
            field(ReturnRequest {
                location: Some("no where".to_owned()),
                ..request(vec![("A", 1)])
            }),
            "location"
        );
        assert_eq!(
            field(ReturnRequest {
                reason: Some("broken".to_owned()),
                ..request(vec![("A", 1)])
            }),
            "reason"
        );
        assert_eq!(
            field(ReturnRequest {
                restock: Some(false),
                location: Some("store-1".to_owned()),
                ..request(vec![("A", 1)])
            }),
            "location",
            "written-off units go nowhere"
        );
        let declined = ReturnRequest {
            refund: Some(false),
            ..request(vec![("A", 1)])
        };
        assert!(!declined.validate().unwrap().refund);
    }
}
