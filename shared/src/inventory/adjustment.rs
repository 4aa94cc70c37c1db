//! Relative changes of a sku's stock a client asks for (`stock_adjustments`): a delivery adds units at a location,
//! a breakage takes them away, a transfer moves them from one location to another (a pair of movements). Unlike
//! an absolute set, none can undo a change it did not see: each adds its deltas to whatever the stock is when it
//! runs. Under an Idempotency-Key with order creation's semantics
//! ([`crate::idempotency`]): a repeat replays the first answer, another request with the key is refused (422), a
//! request while the first is in flight too (409); so a delivery retried after a lost answer is counted once.
//!
//! [`adjust`] does either in one transaction: the key's lock and record, the sku's row lock, the check of each
//! location against what is reserved there, the record and its movements (the ledger's one statement), the key's
//! record.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Change, SkuStock, ledger};
use crate::db;
use crate::idempotency::{self, KeyError, Makes};
use crate::input::{self, FieldError};
use crate::money::MAX_STOCK;

/// An adjustment's answer status: created.
pub const CREATED: u16 = 201;

/// `POST /v1/skus/{sku}/adjustments` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// Where the units are; `default` when absent.
    pub location: Option<String>,
    /// Units to add to `on_hand` (negative: to take away); not zero.
    pub delta: i64,
    /// Why, for the ledger and whoever reads it: "delivery PO-1234", "damaged in transit".
    pub reason: String,
}

/// `POST /v1/skus/{sku}/transfers` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The location the units leave.
    pub from: String,
    /// The location they arrive at.
    pub to: String,
    /// Units moved, 1 or more.
    pub quantity: i64,
    /// Why: "rebalance for the weekend", "store replenishment".
    pub reason: String,
}

/// What a client asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Adjustment { location: String, delta: i64 },
    Transfer { from: String, to: String, quantity: i64 },
}

/// A request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAdjustment {
    pub kind: Kind,
    pub reason: String,
}

impl Kind {
    /// (location, change of its `on_hand`) for each location it touches.
    fn legs(&self) -> Vec<(&str, i64)> {
        match self {
            Self::Adjustment { location, delta } => vec![(location.as_str(), *delta)],
            Self::Transfer { from, to, quantity } => {
                vec![(from.as_str(), -quantity), (to.as_str(), *quantity)]
            }
        }
    }

    /// As `stock_adjustments` records it: (location, to_location, delta).
    fn record(&self) -> (&str, Option<&str>, i64) {
        match self {
            Self::Adjustment { location, delta } => (location, None, *delta),
            Self::Transfer { from, to, quantity } => (from, Some(to), *quantity),
        }
    }

    fn reason(&self) -> ledger::MovementReason {
        match self {
            Self::Adjustment { .. } => ledger::MovementReason::Adjustment,
            Self::Transfer { .. } => ledger::MovementReason::Transfer,
        }
    }
}

/// A location code as a client sent it in `field`.
fn location(field: &str, code: &str) -> Result<String, FieldError> {
    super::check_location_code(field, code)?;
    Ok(code.to_owned())
}

/// `value`, if it is a whole number of units 1..=MAX_STOCK (or its negative, where `signed`).
fn units(field: &str, value: i64, signed: bool) -> Result<i64, FieldError> {
    let fits = value != 0 && value.unsigned_abs() <= MAX_STOCK.unsigned_abs() && (signed || value > 0);
    match (fits, signed) {
        (true, _) => Ok(value),
        (false, true) => Err(FieldError::new(
            field,
            format!("must be a whole number from -{MAX_STOCK} to {MAX_STOCK}, not 0"),
        )),
        (false, false) => Err(FieldError::new(
            field,
            format!("must be a whole number from 1 to {MAX_STOCK}"),
        )),
    }
}

impl AdjustmentRequest {
    pub fn validate(&self) -> Result<ValidAdjustment, FieldError> {
        Ok(ValidAdjustment {
            kind: Kind::Adjustment {
                location: location(
                    "location",
                    self.location.as_deref().unwrap_or(ledger::DEFAULT_LOCATION),
                )?,
                delta: units("delta", self.delta, true)?,
            },
            reason: input::required_text("reason", &self.reason)?,
        })
    }
}

impl TransferRequest {
    pub fn validate(&self) -> Result<ValidAdjustment, FieldError> {
        let (from, to) = (location("from", &self.from)?, location("to", &self.to)?);
        if from == to {
            return Err(FieldError::new("to", "must be another location than from"));
        }
        Ok(ValidAdjustment {
            kind: Kind::Transfer {
                from,
                to,
                quantity: units("quantity", self.quantity, false)?,
            },
            reason: input::required_text("reason", &self.reason)?,
        })
    }
}

/// An adjustment or transfer as made, with the sku's stock after it: what its answer is rendered from.
#[derive(Debug, Clone)]
pub struct Adjusted {
    pub id: Uuid,
    pub kind: Kind,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The sku after it, in all and per location.
    pub stock: SkuStock,
}

/// The answer to an adjustment request: a new adjustment's, or the stored one of a repeat.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The adjustment made, or the one a repeat replays.
    pub id: Uuid,
    pub status: u16,
    pub body: Value,
    /// A repeat of an earlier request with the same key and body.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("no sku {0}")]
    NoSuchSku(String),
    /// A location the request names is not one; `field` names where.
    #[error("{0}")]
    NoSuchLocation(FieldError),
    /// `on_hand` at a location would drop below the units orders hold there (and so below zero, at worst).
    #[error(
        "on_hand {on_hand} at {location} {delta:+} would be {}, below the {reserved} units reserved there by orders; nothing was written",
        on_hand + delta
    )]
    BelowReserved {
        location: String,
        on_hand: i64,
        reserved: i64,
        delta: i64,
    },
    /// `on_hand` at a location would rise past the most it holds.
    #[error("on_hand {on_hand} at {location} {delta:+} would be {}, above {MAX_STOCK}; nothing was written", on_hand + delta)]
    AboveMaximum {
        location: String,
        on_hand: i64,
        delta: i64,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("failed to render the response: {0}")]
    Render(#[from] serde_json::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An adjustment request, checked, with what identifies it.
#[derive(Debug, Clone)]
pub struct Adjusting<'a> {
    pub sku: &'a str,
    pub adjustment: &'a ValidAdjustment,
    /// Who asks: whose Idempotency-Keys they are, and the movement's actor.
    pub caller: &'a str,
    pub key: &'a str,
    /// The request's fingerprint: its sku and body ([`fingerprint`]).
    pub fingerprint: &'a [u8],
}

/// What identifies an adjustment request beyond its key: the sku it names and its body.
pub fn fingerprint(sku: &str, body: &Value) -> Vec<u8> {
    idempotency::fingerprint(&serde_json::json!({"adjust_sku": sku, "body": body}))
}

/// Makes the adjustment (or replays the answer of an earlier request with the key). `respond` renders the
/// answer's body, which is stored with the key so a repeat gets exactly the first answer.
#[tracing::instrument(skip_all, fields(sku = %request.sku), err)]
pub async fn adjust(
    pool: &PgPool,
    request: &Adjusting<'_>,
    respond: impl Fn(&Adjusted) -> Result<Value, serde_json::Error>,
) -> Result<Answer, AdjustError> {
    // As order creation: a request that committed the key just as this one took its lock is not seen by the
    // first read; this one's record then fails on the key, and the second pass replays it.
    idempotency::at_most_twice(|| adjust_once(pool, request, &respond)).await
}

async fn adjust_once(
    pool: &PgPool,
    request: &Adjusting<'_>,
    respond: &impl Fn(&Adjusted) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, AdjustError> {
    let mut tx = pool.begin().await?;
    let outcome = adjust_in(&mut tx, request, respond).await;
    // A new adjustment commits; a replay, a refusal or a lost race lets go of the key and the sku before the
    // answer goes.
    let new = matches!(&outcome, Ok(Some(answer)) if !answer.replayed);
    let answer = db::finish(tx, outcome, new).await?;
    if let Some(answer) = answer.as_ref().filter(|_| new) {
        tracing::info!(sku = request.sku, kind = ?request.adjustment.kind, id = %answer.id, "stock adjusted");
    }
    Ok(answer)
}

/// [`adjust_once`]'s work inside its transaction, which it leaves to its caller to end.
async fn adjust_in(
    tx: &mut PgConnection,
    request: &Adjusting<'_>,
    respond: &impl Fn(&Adjusted) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, AdjustError> {
    let claim = idempotency::claim(tx, request.caller, request.key).await?;
    if !claim.held {
        return Err(KeyError::InFlight.into());
    }
    if let Some(stored) = claim.stored {
        let stored = stored.replay(Makes::Adjustment, request.fingerprint)?;
        return Ok(Some(Answer {
            id: stored.adjustment_id.ok_or(KeyError::Reused)?,
            status: u16::try_from(stored.response_status).unwrap_or(CREATED),
            body: stored.response_body,
            replayed: true,
        }));
    }
    let adjustment = request.adjustment;
    lock(tx, request.sku).await?;
    let legs = adjustment.kind.legs();
    // Every location first: a location that is not one is the request's fault whatever the stock.
    let mut levels = Vec::with_capacity(legs.len());
    for (field, (location, _)) in fields(&adjustment.kind).into_iter().zip(&legs) {
        let Some(level) = super::level_at(&mut *tx, request.sku, location).await? else {
            return Err(AdjustError::NoSuchLocation(FieldError::new(
                field,
                format!("{location:?} is not a location"),
            )));
        };
        levels.push(level);
    }
    for ((location, delta), level) in legs.iter().zip(levels) {
        let after = level.on_hand + delta;
        if after < level.reserved {
            return Err(AdjustError::BelowReserved {
                location: (*location).to_owned(),
                on_hand: level.on_hand,
                reserved: level.reserved,
                delta: *delta,
            });
        }
        if after > MAX_STOCK {
            return Err(AdjustError::AboveMaximum {
                location: (*location).to_owned(),
                on_hand: level.on_hand,
                delta: *delta,
            });
        }
    }
    let id = Uuid::now_v7();
    let (location, to_location, delta) = adjustment.kind.record();
    let created_at = sqlx::query_scalar!(
        r#"insert into stock_adjustments (id, sku, location, to_location, delta, reason, actor)
           values ($1, $2, $3, $4, $5, $6, $7)
           returning created_at"#,
        id,
        request.sku,
        location,
        to_location,
        delta,
        adjustment.reason,
        request.caller
    )
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        sku: request.sku,
        legs,
        reason: adjustment.kind.reason(),
        adjustment_id: Some(id),
        actor: request.caller,
    };
    change.apply(tx).await?;
    let stock = super::find_stock(&mut *tx, request.sku)
        .await?
        .ok_or_else(|| AdjustError::NoSuchSku(request.sku.to_owned()))?;
    let body = respond(&Adjusted {
        id,
        kind: adjustment.kind.clone(),
        reason: adjustment.reason.clone(),
        created_at,
        stock,
    })?;
    let recorded = idempotency::record_made(
        &mut *tx,
        request.caller,
        request.key,
        request.fingerprint,
        idempotency::Made::Adjustment(id),
        CREATED,
        &body,
    )
    .await;
    match recorded {
        Err(error) if idempotency::is_key_taken(&error) => return Ok(None),
        other => other?,
    }
    Ok(Some(Answer {
        id,
        status: CREATED,
        body,
        replayed: false,
    }))
}

/// Which request field names each leg's location.
fn fields(kind: &Kind) -> [&'static str; 2] {
    match kind {
        Kind::Adjustment { .. } => ["location", "location"],
        Kind::Transfer { .. } => ["from", "to"],
    }
}

/// Locks the sku's row for the rest of the transaction: every change of its stock takes it first.
async fn lock(conn: &mut PgConnection, sku: &str) -> Result<(), AdjustError> {
    sqlx::query_scalar!("select 1 as one from skus where sku = $1 for no key update", sku)
        .fetch_optional(conn)
        .await?
        .map(|_| ())
        .ok_or_else(|| AdjustError::NoSuchSku(sku.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(location: Option<&str>, delta: i64, reason: &str) -> AdjustmentRequest {
        AdjustmentRequest {
            location: location.map(str::to_owned),
            delta,
            reason: reason.to_owned(),
        }
    }

    fn transfer(from: &str, to: &str, quantity: i64) -> TransferRequest {
        TransferRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            quantity,
            reason: "rebalance".to_owned(),
        }
    }

    #[test]
    fn a_delivery_is_checked_and_lands_at_the_default_location_unless_it_names_one() {
        assert_eq!(
            request(None, 5, " delivery PO-1 ").validate(),
            Ok(ValidAdjustment {
                kind: Kind::Adjustment {
                    location: "default".to_owned(),
                    delta: 5,
                },
                reason: "delivery PO-1".to_owned(),
            })
        );
        assert_eq!(
            request(Some("paris"), -2, "broken")
                .validate()
                .map(|v| v.kind.legs().len()),
            Ok(1)
        );
    }

    #[test]
    fn a_transfer_is_two_legs_that_cancel_out() {
        let valid = transfer("east", "west", 3).validate().unwrap();
        assert_eq!(valid.kind.legs(), vec![("east", -3), ("west", 3)]);
        assert_eq!(valid.kind.record(), ("east", Some("west"), 3));
        assert_eq!(valid.kind.reason(), ledger::MovementReason::Transfer);
    }

    #[test]
    fn each_wrong_field_is_named() {
        let field = |r: AdjustmentRequest| r.validate().map_err(|e| e.field);
        assert_eq!(field(request(None, 0, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, MAX_STOCK + 1, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, i64::MIN, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, 1, "  ")), Err("reason".to_owned()));
        assert_eq!(
            field(request(Some("no place!"), 1, "x")),
            Err("location".to_owned())
        );
        let field = |r: TransferRequest| r.validate().map_err(|e| e.field);
        assert_eq!(field(transfer("a", "a", 1)), Err("to".to_owned()));
        assert_eq!(field(transfer("a", "b", 0)), Err("quantity".to_owned()));
        assert_eq!(field(transfer("a", "b", -1)), Err("quantity".to_owned()));
        assert_eq!(field(transfer("", "b", 1)), Err("from".to_owned()));
    }

    #[test]
    fn the_same_body_for_another_sku_is_another_request() {
        let body = serde_json::json!({"delta": 5, "reason": "delivery"});
        assert_ne!(fingerprint("a", &body), fingerprint("b", &body));
        assert_eq!(fingerprint("a", &body), fingerprint("a", &body));
    }
}
