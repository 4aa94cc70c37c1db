//! The payment provider's webhook events (`provider_events`): a transactional inbox, the mirror of the outbox.
//!
//! The API checks an event's signature (`crate::stripe_signature`), reads what OrderFlow needs of it
//! ([`Incoming::parse`]) and [`record`]s it: one row per event id, so a duplicate delivery writes nothing.
//! It answers as soon as that commits. An event that only confirms what a step recorded is applied as it is
//! recorded (it writes nothing, so it needs no lock). Worker processes [`apply_pending`] the others, each under
//! its order's row lock, the lock every saga step takes, so an event and a step never decide about one order at
//! once.
//!
//! **An event never moves money or an order by itself.** The provider's word on a payment is applied by the step
//! that owns it, under its fixed idempotency keys: the pay step records an authorization, ship and commit record
//! captures, refund records refunds. An event can only make that step come sooner:
//! - it wakes the order's pay step if its job is waiting (a retry's backoff after a lost answer). While the
//!   step is running (its answer not recorded, no job waiting) the event stays unapplied and is looked at again
//!   next round, so a wake-up cannot fall between the step's call and its retry being scheduled; after
//!   [`WAKE_WINDOW`] it is only recorded;
//! - it notes a hold the provider ended (`payment_intent.canceled` of an open authorization), so the reconciler's
//!   hold check reports it and the next shipment authorizes again (issue 18's lapsed hold).
//!
//! So whichever of the synchronous answer and the event comes first, the step does the work once. The other
//! changes nothing: a step that already recorded makes the event a confirmation, and an event that came first
//! finds no second writer to race, because its only writer is the step. Nothing can capture twice, and nothing
//! goes backwards: an event that arrives late or out of order changes nothing that was recorded. Medusa's double
//! capture (#13301) came from a webhook handler running the payment workflow beside the storefront's; here the
//! handler has no such workflow to run.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::flow::Step;
use crate::input::FieldError;

/// How long an event that would wake the pay step waits for it to be waiting, looked at again each round.
pub const WAKE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The largest webhook body the API reads: Stripe's events for a PaymentIntent are a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What applying an event did (`provider_events.effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The order's pay step was waiting; it runs now and asks the provider.
    WokePay,
    /// The provider ended the order's open hold; it is noted on the payment (`capture_before`).
    HoldEnded,
    /// Nothing to do: the steps recorded it already or will when they run (a confirmation).
    Recorded,
    /// The intent is not an order's of this deployment.
    NotOurs,
}

impl Effect {
    pub const ALL: [Effect; 4] = [Self::WokePay, Self::HoldEnded, Self::Recorded, Self::NotOurs];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WokePay => "woke_pay",
            Self::HoldEnded => "hold_ended",
            Self::Recorded => "recorded",
            Self::NotOurs => "not_ours",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == value)
    }

    /// Whether applying it writes nothing, so it needs no lock: a confirmation, or no order's.
    fn settles(self) -> bool {
        matches!(self, Self::Recorded | Self::NotOurs)
    }
}

/// A verified event, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: String,
    pub kind: String,
    pub object_id: String,
    pub payment_intent: Option<String>,
    /// The intent's `metadata.order_id`, if it carries one that is a UUID.
    pub order_id: Option<Uuid>,
    pub created: i64,
    pub payload: Value,
}

fn text(value: &Value, field: &str, max: usize) -> Result<String, FieldError> {
    let found = value
        .as_str()
        .ok_or_else(|| FieldError::new(field, "is missing or not a string"))?;
    if found.is_empty() || found.len() > max || !found.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} printable ASCII characters"),
        ));
    }
    Ok(found.to_owned())
}

impl Incoming {
    /// Reads an event's body (already verified): its id, type, `created`, `data.object`'s id, and the intent and
    /// order it concerns. A body that is not such an event is refused, naming the field.
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| FieldError::new("body", format!("is not JSON: {e}")))?;
        if payload["object"] != "event" {
            return Err(FieldError::new("object", "must be \"event\""));
        }
        let id = text(&payload["id"], "id", 255)?;
        let kind = text(&payload["type"], "type", 100)?;
        let created = payload["created"]
            .as_i64()
            .ok_or_else(|| FieldError::new("created", "is missing or not an integer"))?;
        let object = &payload["data"]["object"];
        let object_id = text(&object["id"], "data.object.id", 255)?;
        let payment_intent = match object["object"].as_str() {
            Some("payment_intent") => Some(object_id.clone()),
            _ => object["payment_intent"].as_str().map(str::to_owned),
        };
        let order_id = object["metadata"]["order_id"]
            .as_str()
            .and_then(|id| Uuid::parse_str(id).ok());
        Ok(Self {
            id,
            kind,
            object_id,
            payment_intent,
            order_id,
            created,
            payload,
        })
    }
}

/// Records `event` once; answers whether it is new (a duplicate delivery writes nothing). Its order is the
/// object's `metadata.order_id` (the worker sets it on every intent; the simulator's charges carry their
/// intent's metadata). Without one, it is the order whose payment names the event's intent: a scan of
/// `payments`, which has no index on the intent (one would cost every authorization's update its HOT-ness),
/// taken only for such events.
#[tracing::instrument(skip_all, fields(event = %event.id), err)]
pub async fn record(conn: &mut PgConnection, event: &Incoming) -> Result<bool, sqlx::Error> {
    // An event that only confirms what a step recorded (or is no order's) is applied as it is recorded: no
    // worker needs to look at it again. Deciding that needs no lock, as it writes nothing.
    let settled = match event.order_id {
        Some(order) => {
            let seen = payments_of(&mut *conn, &[order], false).await?;
            let found = seen
                .get(&order)
                .map_or(Found::Nothing, |payment| Found::Order(payment.as_ref()));
            Some(decide(&event.kind, event.payment_intent.as_deref(), found)).filter(|e| e.settles())
        }
        None => None,
    };
    let inserted = sqlx::query(
        r#"insert into provider_events (id, type, object_id, payment_intent, order_id, payload, created,
                                        applied_at, effect)
           values ($1, $2, $3, $4,
                   coalesce($5, (select order_id from payments where provider_ref = $4 limit 1)), $6, $7,
                   case when $8::text is null then null else now() end, $8)
           on conflict (id) do nothing"#,
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(&event.object_id)
    .bind(&event.payment_intent)
    .bind(event.order_id)
    .bind(&event.payload)
    .bind(event.created)
    .bind(settled.map(Effect::as_str))
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// An unapplied event, as the apply reads it.
struct Pending {
    id: String,
    kind: String,
    payment_intent: Option<String>,
    order_id: Option<Uuid>,
    created: i64,
    /// Received within the [`WAKE_WINDOW`].
    fresh: bool,
}

/// The orders of `orders` that exist, each with its payment if it has one yet; with `lock`, only those this
/// transaction could lock as a step locks them (`for update skip locked`: one a step holds now is left out).
async fn payments_of(
    conn: &mut PgConnection,
    orders: &[Uuid],
    lock: bool,
) -> Result<HashMap<Uuid, Option<PaymentNow>>, sqlx::Error> {
    let query = match lock {
        true => {
            r#"with o as (select id from orders where id = any($1) order by id for update skip locked)
               select o.id, p.status, p.provider_ref from o left join payments p on p.order_id = o.id"#
        }
        false => {
            r#"select o.id, p.status, p.provider_ref
               from orders o left join payments p on p.order_id = o.id where o.id = any($1)"#
        }
    };
    let rows = sqlx::query(query).bind(orders).fetch_all(&mut *conn).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let payment = row.get::<Option<String>, _>("status").map(|status| PaymentNow {
                status,
                provider_ref: row.get("provider_ref"),
            });
            (row.get("id"), payment)
        })
        .collect())
}

/// What a step would find of the order's payment.
struct PaymentNow {
    status: String,
    provider_ref: Option<String>,
}

/// What an event's order is, as the apply finds it.
#[derive(Clone, Copy)]
enum Found<'a> {
    /// No order of ours.
    Nothing,
    /// The order, and its payment if the pay step has begun.
    Order(Option<&'a PaymentNow>),
}

/// Decides what an event does to an order in the state its payment is in (a pure rule, tested below).
fn decide(kind: &str, payment_intent: Option<&str>, found: Found<'_>) -> Effect {
    let payment = match found {
        Found::Nothing => return Effect::NotOurs,
        // No payment yet: the pay step has not begun, and it will ask the provider itself.
        Found::Order(None) => return Effect::Recorded,
        Found::Order(Some(payment)) => payment,
    };
    // An event of another of the order's intents (a lapsed one, replaced) says nothing about the current one.
    let current = match (&payment.provider_ref, payment_intent) {
        (Some(ours), Some(theirs)) => ours == theirs,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if !current {
        return Effect::Recorded;
    }
    match (kind, payment.status.as_str()) {
        // A verdict: the pay step, still without one, asks the provider now.
        (
            "payment_intent.amount_capturable_updated"
            | "payment_intent.succeeded"
            | "payment_intent.payment_failed"
            | "payment_intent.canceled",
            "PENDING" | "REQUIRES_ACTION" | "PROCESSING",
        ) => Effect::WokePay,
        // No verdict, but an answer the step has not recorded (it was lost): the step asks again and waits.
        ("payment_intent.requires_action" | "payment_intent.processing", "PENDING") => Effect::WokePay,
        ("payment_intent.canceled", "AUTHORIZED" | "PARTIALLY_CAPTURED") => Effect::HoldEnded,
        _ => Effect::Recorded,
    }
}

/// Applies up to `limit` unapplied events, oldest first, in one transaction: a confirmation at once, one that
/// acts under its order's row lock, taken with `skip locked` so that an order a step holds now keeps its events
/// for the next round (and other workers take other events). Answers what each applied event did.
#[tracing::instrument(skip_all, err)]
pub async fn apply_pending(pool: &PgPool, limit: i64) -> Result<Vec<(String, Effect)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let pending: Vec<Pending> = sqlx::query(
        r#"select id, type, payment_intent, order_id, created,
                  received_at > now() - make_interval(secs => $2) as fresh
           from provider_events
           where applied_at is null and look_at <= now() order by look_at limit $1 for update skip locked"#,
    )
    .bind(limit)
    .bind(WAKE_WINDOW.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| Pending {
        id: row.get("id"),
        kind: row.get("type"),
        payment_intent: row.get("payment_intent"),
        order_id: row.get("order_id"),
        created: row.get("created"),
        fresh: row.get("fresh"),
    })
    .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let orders: Vec<Uuid> = pending.iter().filter_map(|e| e.order_id).collect();
    // First without locks: most events confirm what a step recorded, which writes nothing and needs no lock.
    let seen = payments_of(&mut tx, &orders, false).await?;
    let mut applied: Vec<(String, Effect)> = Vec::new();
    let mut acting: Vec<&Pending> = Vec::new();
    for event in &pending {
        let found = match event.order_id.and_then(|order| seen.get(&order)) {
            Some(payment) => Found::Order(payment.as_ref()),
            None => Found::Nothing,
        };
        match decide(&event.kind, event.payment_intent.as_deref(), found) {
            effect if effect.settles() => applied.push((event.id.clone(), effect)),
            _ => acting.push(event),
        }
    }
    // The rest under their orders' locks, as a step takes them, deciding again on what the lock shows.
    let acting_orders: Vec<Uuid> = acting.iter().filter_map(|e| e.order_id).collect();
    let locked = match acting_orders.is_empty() {
        true => HashMap::new(),
        false => payments_of(&mut tx, &acting_orders, true).await?,
    };
    // Skipped for now: looked at again a second later, behind newer events.
    let mut later: Vec<&str> = Vec::new();
    for event in acting {
        let found = match event.order_id.map(|order| locked.get(&order)) {
            Some(Some(payment)) => Found::Order(payment.as_ref()),
            // A step holds the order now: its events wait for the next round.
            Some(None) => {
                later.push(event.id.as_str());
                continue;
            }
            None => Found::Nothing,
        };
        let mut effect = decide(&event.kind, event.payment_intent.as_deref(), found);
        match (effect, event.order_id) {
            (Effect::WokePay, Some(order)) => {
                let woken = crate::queue::wake(&mut tx, order, Step::Pay).await?;
                // Not woken: the pay step runs now. Look again next round, when it recorded or waits.
                match (woken, event.fresh) {
                    (true, _) => {}
                    (false, true) => {
                        later.push(event.id.as_str());
                        continue;
                    }
                    (false, false) => effect = Effect::Recorded,
                }
            }
            (Effect::HoldEnded, Some(order)) => {
                let at: DateTime<Utc> = Utc
                    .timestamp_opt(event.created, 0)
                    .single()
                    .unwrap_or_else(Utc::now);
                crate::payment::hold_ended(&mut *tx, order, at).await?;
            }
            _ => {}
        }
        applied.push((event.id.clone(), effect));
    }
    if !later.is_empty() {
        sqlx::query("update provider_events set look_at = now() + interval '1 second' where id = any($1)")
            .bind(&later)
            .execute(&mut *tx)
            .await?;
    }
    let ids: Vec<&str> = applied.iter().map(|(id, _)| id.as_str()).collect();
    let effects: Vec<&str> = applied.iter().map(|(_, effect)| effect.as_str()).collect();
    sqlx::query(
        r#"update provider_events e set applied_at = now(), effect = a.effect
           from unnest($1::text[], $2::text[]) as a(id, effect) where e.id = a.id"#,
    )
    .bind(&ids)
    .bind(&effects)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// What `kind` about `intent` does to an order whose payment is `status`, on intent `provider_ref`.
    fn with(kind: &str, intent: Option<&str>, status: &str, provider_ref: Option<&str>) -> Effect {
        let payment = PaymentNow {
            status: status.to_owned(),
            provider_ref: provider_ref.map(str::to_owned),
        };
        decide(kind, intent, Found::Order(Some(&payment)))
    }

    #[test]
    fn an_event_wakes_the_pay_step_only_while_its_answer_is_not_recorded() {
        let authorized = "payment_intent.amount_capturable_updated";
        assert_eq!(with(authorized, Some("pi_1"), "PENDING", None), Effect::WokePay);
        for waiting in ["REQUIRES_ACTION", "PROCESSING"] {
            assert_eq!(
                with(authorized, Some("pi_1"), waiting, Some("pi_1")),
                Effect::WokePay
            );
            assert_eq!(
                with(
                    "payment_intent.payment_failed",
                    Some("pi_1"),
                    waiting,
                    Some("pi_1")
                ),
                Effect::WokePay
            );
            assert_eq!(
                with(
                    "payment_intent.requires_action",
                    Some("pi_1"),
                    waiting,
                    Some("pi_1")
                ),
                Effect::Recorded,
                "still no verdict: nothing to wake for"
            );
        }
        assert_eq!(
            with("payment_intent.processing", Some("pi_1"), "PENDING", None),
            Effect::WokePay
        );
        assert_eq!(
            with(authorized, Some("pi_1"), "AUTHORIZED", Some("pi_1")),
            Effect::Recorded,
            "the answer came first: a confirmation"
        );
        assert_eq!(
            with(
                "payment_intent.payment_failed",
                Some("pi_1"),
                "DECLINED",
                Some("pi_1")
            ),
            Effect::Recorded
        );
        assert_eq!(
            with("charge.refunded", Some("pi_1"), "CAPTURED", Some("pi_1")),
            Effect::Recorded,
            "money events only confirm what the steps recorded"
        );
    }

    #[test]
    fn a_cancellation_of_the_open_hold_is_noted_and_of_another_intent_is_not() {
        let canceled = "payment_intent.canceled";
        for open in ["AUTHORIZED", "PARTIALLY_CAPTURED"] {
            assert_eq!(
                with(canceled, Some("pi_1"), open, Some("pi_1")),
                Effect::HoldEnded
            );
        }
        assert_eq!(
            with(canceled, Some("pi_old"), "AUTHORIZED", Some("pi_new")),
            Effect::Recorded,
            "the lapse of a replaced hold says nothing about the new one"
        );
        for closed in ["VOIDED", "CAPTURED", "REFUNDED"] {
            assert_eq!(
                with(canceled, Some("pi_1"), closed, Some("pi_1")),
                Effect::Recorded
            );
        }
        assert_eq!(decide(canceled, Some("pi_1"), Found::Nothing), Effect::NotOurs);
        assert_eq!(
            decide(canceled, Some("pi_1"), Found::Order(None)),
            Effect::Recorded
        );
    }

    #[test]
    fn effects_round_trip() {
        for effect in Effect::ALL {
            assert_eq!(Effect::parse(effect.as_str()), Some(effect));
        }
    }

    #[test]
    fn a_body_that_is_not_an_event_names_the_field() {
        let field = |body: &str| Incoming::parse(body.as_bytes()).unwrap_err().field;
        assert_eq!(field("nope"), "body");
        assert_eq!(field(r#"{"object":"charge"}"#), "object");
        assert_eq!(
            field(r#"{"object":"event","type":"x","created":1,"data":{"object":{"id":"pi"}}}"#),
            "id"
        );
        assert_eq!(
            field(
                r#"{"object":"event","id":"evt_1","type":"x","created":"1","data":{"object":{"id":"pi"}}}"#
            ),
            "created"
        );
        assert_eq!(
            field(r#"{"object":"event","id":"evt_1","type":"x","created":1,"data":{}}"#),
            "data.object.id"
        );
        assert_eq!(
            field(r#"{"object":"event","id":"evt 1","type":"x","created":1,"data":{"object":{"id":"pi"}}}"#),
            "id"
        );
    }

    #[test]
    fn an_event_names_its_intent_and_order() {
        let order = Uuid::new_v4();
        let intent = Incoming::parse(
            format!(
                r#"{{"object":"event","id":"evt_1","type":"payment_intent.succeeded","created":5,
                    "data":{{"object":{{"id":"pi_1","object":"payment_intent","metadata":{{"order_id":"{order}"}}}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            (intent.payment_intent.as_deref(), intent.order_id, intent.created),
            (Some("pi_1"), Some(order), 5)
        );
        let charge = Incoming::parse(
            br#"{"object":"event","id":"evt_2","type":"charge.refunded","created":5,
                 "data":{"object":{"id":"ch_1","object":"charge","payment_intent":"pi_1"}}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                charge.object_id.as_str(),
                charge.payment_intent.as_deref(),
                charge.order_id
            ),
            ("ch_1", Some("pi_1"), None)
        );
    }
}
