//! Relative changes of a sku's stock a client asks for (`stock_adjustments`): a delivery adds units, a breakage
//! takes them away. Unlike an absolute set, an adjustment cannot undo a change it did not see: it adds its delta
//! to whatever the stock is when it runs. Under an Idempotency-Key with order creation's semantics
//! ([`crate::idempotency`]): a repeat replays the first answer, another request with the key is refused (422), a
//! request while the first is in flight too (409); so a delivery retried after a lost answer is counted once.
//!
//! [`adjust`] does it in one transaction: the key's lock and record, the sku's row lock, the check against what is
//! reserved, the adjustment's row and its movement (the ledger's one statement), the key's record.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Change, SkuRow, StockVersion, ledger};
use crate::idempotency;
use crate::input::{self, FieldError};
use crate::money::MAX_STOCK;

/// An adjustment's answer status: created.
pub const CREATED: u16 = 201;

/// `POST /v1/skus/{sku}/adjustments` as clients send it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// Where the units are; the one location, `default`, when absent.
    pub location: Option<String>,
    /// Units to add to `on_hand` (negative: to take away); not zero.
    pub delta: i64,
    /// Why, for the ledger and whoever reads it: "delivery PO-1234", "damaged in transit".
    pub reason: String,
}

/// An adjustment request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAdjustment {
    pub location: String,
    pub delta: i64,
    pub reason: String,
}

impl AdjustmentRequest {
    pub fn validate(&self) -> Result<ValidAdjustment, FieldError> {
        let location = match self.location.as_deref() {
            None => ledger::DEFAULT_LOCATION.to_owned(),
            Some(location) if location == ledger::DEFAULT_LOCATION => location.to_owned(),
            Some(other) => {
                return Err(FieldError::new(
                    "location",
                    format!(
                        "{:?} is not a location (there is one: {:?})",
                        input::filter_text("location", other).unwrap_or_default(),
                        ledger::DEFAULT_LOCATION
                    ),
                ));
            }
        };
        if self.delta == 0 || self.delta.unsigned_abs() > MAX_STOCK.unsigned_abs() {
            return Err(FieldError::new(
                "delta",
                format!("must be a whole number from -{MAX_STOCK} to {MAX_STOCK}, not 0"),
            ));
        }
        Ok(ValidAdjustment {
            location,
            delta: self.delta,
            reason: input::required_text("reason", &self.reason)?,
        })
    }
}

/// An adjustment as made, with the sku's stock after it: what its answer is rendered from.
#[derive(Debug, Clone)]
pub struct Adjusted {
    pub id: Uuid,
    pub location: String,
    pub delta: i64,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    /// The sku after the adjustment.
    pub sku: SkuRow,
    pub version: StockVersion,
}

/// The answer to an adjustment request: a new adjustment's, or the stored one of a repeat.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// A repeat of an earlier request with the same key and body.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("no sku {0}")]
    NoSuchSku(String),
    /// `on_hand` would drop below the units orders hold (and so below zero, at worst).
    #[error(
        "on_hand {on_hand} {delta:+} would be {}, below the {reserved} units reserved by orders; nothing was written",
        on_hand + delta
    )]
    BelowReserved { on_hand: i64, reserved: i64, delta: i64 },
    /// `on_hand` would rise past the most a sku holds.
    #[error("on_hand {on_hand} {delta:+} would be {}, above {MAX_STOCK}; nothing was written", on_hand + delta)]
    AboveMaximum { on_hand: i64, delta: i64 },
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInFlight,
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
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
    match adjust_once(pool, request, &respond).await? {
        Some(answer) => Ok(answer),
        None => adjust_once(pool, request, &respond)
            .await?
            .ok_or(AdjustError::KeyInFlight),
    }
}

async fn adjust_once(
    pool: &PgPool,
    request: &Adjusting<'_>,
    respond: &impl Fn(&Adjusted) -> Result<Value, serde_json::Error>,
) -> Result<Option<Answer>, AdjustError> {
    let mut tx = pool.begin().await?;
    let claim = idempotency::claim(&mut tx, request.caller, request.key).await?;
    if !claim.held {
        return Err(AdjustError::KeyInFlight);
    }
    if let Some(stored) = claim.stored {
        if stored.adjustment_id.is_none() || stored.request_hash != request.fingerprint {
            return Err(AdjustError::KeyReused);
        }
        return Ok(Some(Answer {
            status: u16::try_from(stored.response_status).unwrap_or(CREATED),
            body: stored.response_body,
            replayed: true,
        }));
    }
    let adjustment = request.adjustment;
    let stock = lock(&mut tx, request.sku).await?;
    let after = stock.on_hand + adjustment.delta;
    if after < stock.reserved {
        return Err(AdjustError::BelowReserved {
            on_hand: stock.on_hand,
            reserved: stock.reserved,
            delta: adjustment.delta,
        });
    }
    if after > MAX_STOCK {
        return Err(AdjustError::AboveMaximum {
            on_hand: stock.on_hand,
            delta: adjustment.delta,
        });
    }
    let id = Uuid::now_v7();
    let created_at = sqlx::query_scalar!(
        r#"insert into stock_adjustments (id, sku, location, delta, reason, actor)
           values ($1, $2, $3, $4, $5, $6)
           returning created_at"#,
        id,
        request.sku,
        adjustment.location,
        adjustment.delta,
        adjustment.reason,
        request.caller
    )
    .fetch_one(&mut *tx)
    .await?;
    let change = Change {
        sku: request.sku,
        on_hand_delta: adjustment.delta,
        reason: ledger::MovementReason::Adjustment,
        adjustment_id: Some(id),
        actor: request.caller,
    };
    let (sku, version) = change.apply(&mut tx).await?;
    let body = respond(&Adjusted {
        id,
        location: adjustment.location.clone(),
        delta: adjustment.delta,
        reason: adjustment.reason.clone(),
        created_at,
        sku,
        version,
    })?;
    let recorded = idempotency::record_adjustment(
        &mut *tx,
        request.caller,
        request.key,
        request.fingerprint,
        id,
        CREATED,
        &body,
    )
    .await;
    match recorded {
        Err(error) if idempotency::is_key_taken(&error) => return Ok(None),
        other => other?,
    }
    tx.commit().await?;
    tracing::info!(sku = request.sku, delta = adjustment.delta, %id, "stock adjusted");
    Ok(Some(Answer {
        status: CREATED,
        body,
        replayed: false,
    }))
}

/// The sku's counts, its row locked for the rest of the transaction.
struct Stock {
    on_hand: i64,
    reserved: i64,
}

async fn lock(conn: &mut PgConnection, sku: &str) -> Result<Stock, AdjustError> {
    sqlx::query_as!(
        Stock,
        "select on_hand, reserved from skus where sku = $1 for no key update",
        sku
    )
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| AdjustError::NoSuchSku(sku.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(location: Option<&str>, delta: i64, reason: &str) -> AdjustmentRequest {
        AdjustmentRequest {
            location: location.map(str::to_owned),
            delta,
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn a_delivery_is_checked_and_lands_at_the_default_location() {
        assert_eq!(
            request(None, 5, " delivery PO-1 ").validate(),
            Ok(ValidAdjustment {
                location: "default".to_owned(),
                delta: 5,
                reason: "delivery PO-1".to_owned(),
            })
        );
        assert_eq!(
            request(Some("default"), -2, "broken").validate().map(|v| v.delta),
            Ok(-2)
        );
    }

    #[test]
    fn each_wrong_field_is_named() {
        let field = |r: AdjustmentRequest| r.validate().map_err(|e| e.field);
        assert_eq!(field(request(None, 0, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, MAX_STOCK + 1, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, i64::MIN, "x")), Err("delta".to_owned()));
        assert_eq!(field(request(None, 1, "  ")), Err("reason".to_owned()));
        assert_eq!(field(request(Some("paris"), 1, "x")), Err("location".to_owned()));
    }

    #[test]
    fn the_same_body_for_another_sku_is_another_request() {
        let body = serde_json::json!({"delta": 5, "reason": "delivery"});
        assert_ne!(fingerprint("a", &body), fingerprint("b", &body));
        assert_eq!(fingerprint("a", &body), fingerprint("a", &body));
    }
}
