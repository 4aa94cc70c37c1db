//! PaymentIntents, refunds and the ledger. Behaviour by payment method:
//! - `pm_card_visa`: succeeds.
//! - `pm_card_chargeDeclined`: declined (402 `card_error`, `card_declined`); the intent is recorded.
//! - `pm_sim_flaky`: the first two create requests (per idempotency key) fail with 503, then it succeeds.
//! - `pm_sim_lost_response`: the first create per key records the hold, then the connection is dropped.
//! - `pm_sim_slow`: answers after `SimConfig::slow_delay`.
//! - `pm_sim_reauth_declined`: succeeds for an order's first intent (`metadata[order_id]`) and declines every later
//!   one (402 `card_error`, `card_declined`, decline code `expired_card`): a card that lapsed between an order's
//!   authorization and its re-authorization.
//! - `pm_sim_requires_action`: the customer must authenticate (3-D Secure): the intent is `requires_action` until
//!   `POST /v1/sim/payment_intents/{id}/customer` with `action=complete` (authorized) or `action=abandon`
//!   (`requires_payment_method`, `payment_intent_authentication_failure`), the stand-in for the customer.
//!   Off-session (`off_session=true`) there is no customer to ask: declined, `authentication_required`.
//! - `pm_sim_processing`, `pm_sim_processing_fails`: a bank debit: the intent is `processing` and settles after
//!   `SimConfig::processing_delay`, authorized or failed (`requires_payment_method`, `insufficient_funds`), which
//!   only its events and a retrieve tell.
//!
//! Multicapture, as Stripe's: an intent created with `payment_method_options[card][request_multicapture]=
//! if_available` may be captured in parts (`final_capture=false`), each adding to `amount_received` while it stays
//! `requires_capture`; a final capture (the default) releases what is left. A hold not captured within
//! `SimConfig::hold_lifetime` is cancelled by the provider (`cancellation_reason: automatic`); what was captured
//! stays. `POST /v1/sim/payment_intents/{id}/lapse` ends a hold's lifetime now, as time passing would (Stripe's
//! test clocks advance time for the same purpose).
//!
//! Charges, as Stripe's: an authorized intent's `latest_charge` names its charge (`ch_…`, the intent's suffix),
//! which `GET /v1/charges/{id}` shows with `payment_method_details.card.capture_before`, when the hold lapses;
//! `expand[]=latest_charge` (on a create or a retrieve) puts the charge itself in the intent's answer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Sim;
use crate::idempotency::Claim;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Intent {
    id: String,
    object: &'static str,
    amount: i64,
    amount_capturable: i64,
    amount_received: i64,
    /// Not a PaymentIntent field at Stripe (it lives on the charge); kept here so the ledger shows net money.
    amount_refunded: i64,
    currency: String,
    status: String,
    capture_method: String,
    payment_method: String,
    metadata: BTreeMap<String, String>,
    created: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_payment_error: Option<Value>,
    payment_method_options: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation_reason: Option<String>,
    /// The charge of an authorized intent (`ch_…`); null before an authorization or after a decline.
    latest_charge: Option<String>,
    /// When the hold lapses (Unix seconds); not shown, as Stripe shows it on the charge.
    #[serde(skip)]
    hold_expires_at: i64,
    /// What the customer must do (`requires_action`), as Stripe says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_action: Option<Value>,
}

impl Intent {
    /// Whether it may be captured in parts.
    fn multicapture(&self) -> bool {
        self.payment_method_options["card"]["request_multicapture"] == "if_available"
    }

    /// The authorization goes through now: a hold (`requires_capture`, lapsing after `lifetime` seconds) or, with
    /// automatic capture, the money taken.
    fn authorize(&mut self, now: i64, lifetime: i64) {
        let manual = self.capture_method == "manual";
        self.status = if manual { "requires_capture" } else { "succeeded" }.to_owned();
        self.amount_capturable = if manual { self.amount } else { 0 };
        self.amount_received = if manual { 0 } else { self.amount };
        self.latest_charge = Some(self.id.replacen("pi_", "ch_", 1));
        self.hold_expires_at = now.saturating_add(lifetime);
        self.next_action = None;
    }

    /// The authorization fails with `code` (a failed authentication, a bank debit refused).
    fn fail(&mut self, code: &str, message: &str) {
        self.status = "requires_payment_method".to_owned();
        self.next_action = None;
        self.last_payment_error = Some(json!({"type": "card_error", "code": code, "message": message}));
    }

    /// Whether its hold's lifetime has ended by `now` and it has not lapsed yet.
    fn lapses_by(&self, now: i64) -> bool {
        self.status == "requires_capture" && now >= self.hold_expires_at
    }

    /// Cancels a hold past its lifetime, as the provider would have by now.
    fn lapse(&mut self, now: i64) {
        if self.lapses_by(now) {
            self.status = if self.amount_received > 0 {
                "succeeded"
            } else {
                "canceled"
            }
            .to_owned();
            self.amount_capturable = 0;
            if self.amount_received == 0 {
                self.cancellation_reason = Some("automatic".to_owned());
            }
        }
    }
}

impl Intent {
    /// The events that announce this intent's change from `before` (`None`: it was just made), with the object
    /// each shows, as Stripe sends them:
    /// - `payment_intent.amount_capturable_updated` when it is authorized, or a partial capture leaves less to
    ///   capture (the manual-capture "authorized" signal);
    /// - `payment_intent.succeeded`, `payment_intent.payment_failed` (a decline), `payment_intent.canceled`
    ///   (a void, or the hold's lapse), `payment_intent.requires_action`, `payment_intent.processing` when it
    ///   comes to that status;
    /// - `charge.refunded` (its charge) when a refund adds to what it gave back.
    fn announcements(&self, before: Option<&Intent>) -> Vec<(&'static str, Value)> {
        let entered = before.is_none_or(|before| before.status != self.status);
        let mut events = Vec::new();
        let kind = match self.status.as_str() {
            "requires_capture"
                if entered || before.is_some_and(|b| b.amount_capturable != self.amount_capturable) =>
            {
                Some("payment_intent.amount_capturable_updated")
            }
            "succeeded" if entered => Some("payment_intent.succeeded"),
            "canceled" if entered => Some("payment_intent.canceled"),
            "requires_payment_method" if entered && self.last_payment_error.is_some() => {
                Some("payment_intent.payment_failed")
            }
            "requires_action" if entered => Some("payment_intent.requires_action"),
            "processing" if entered => Some("payment_intent.processing"),
            _ => None,
        };
        events.extend(kind.map(|kind| (kind, intent_json(self))));
        if before.map_or(0, |before| before.amount_refunded) < self.amount_refunded
            && let Some(charge) = charge_json(self)
        {
            events.push(("charge.refunded", charge));
        }
        events
    }
}

#[derive(Debug)]
pub(crate) struct Ledger {
    intents: HashMap<String, Intent>,
    /// Creation order, for the ledger listing.
    order: Vec<String>,
    /// Holds by when they lapse, soonest first (an entry may be stale: the intent was captured or voided).
    expiries: BinaryHeap<Reverse<(i64, String)>>,
    /// Bank debits by when they settle (Unix milliseconds), soonest first, and whether they succeed.
    settlements: BinaryHeap<Reverse<(i64, String, bool)>>,
    pub(crate) events: crate::events::Log,
}

impl Ledger {
    pub(crate) fn new(events: crate::events::Log) -> Self {
        Self {
            intents: HashMap::new(),
            order: Vec::new(),
            expiries: BinaryHeap::new(),
            settlements: BinaryHeap::new(),
            events,
        }
    }

    /// Appends to the log the events of intent `id`'s change from `before`; answers them for delivery.
    fn announce(&mut self, id: &str, before: Option<&Intent>) -> Vec<Value> {
        let Some(after) = self.intents.get(id) else {
            return Vec::new();
        };
        let announcements = after.announcements(before);
        announcements
            .into_iter()
            .map(|(kind, object)| self.events.append(kind, object))
            .collect()
    }

    /// Lapses intent `id` if its hold's lifetime has ended by `now`; answers the events that announce it.
    fn lapse(&mut self, id: &str, now: i64) -> Vec<Value> {
        let Some(intent) = self.intents.get_mut(id) else {
            return Vec::new();
        };
        if !intent.lapses_by(now) {
            return Vec::new();
        }
        let before = intent.clone();
        intent.lapse(now);
        self.announce(id, Some(&before))
    }

    /// Settles every bank debit due by `now_ms` (Unix milliseconds): authorized, or failed.
    fn settle_due(&mut self, now_ms: i64, lifetime: i64) -> Vec<Value> {
        let mut events = Vec::new();
        while self
            .settlements
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now_ms)
        {
            let Some(Reverse((_, id, succeeds))) = self.settlements.pop() else {
                break;
            };
            let Some(intent) = self.intents.get_mut(&id) else {
                continue;
            };
            if intent.status != "processing" {
                continue;
            }
            let before = intent.clone();
            if succeeds {
                intent.authorize(now_ms / 1_000, lifetime);
                if intent.status == "requires_capture" {
                    let entry = Reverse((intent.hold_expires_at, id.clone()));
                    self.expiries.push(entry);
                }
            } else {
                intent.fail("insufficient_funds", "The bank debit failed: insufficient funds.");
            }
            events.extend(self.announce(&id, Some(&before)));
        }
        events
    }

    /// Lapses every hold whose lifetime has ended by `now`, as the provider does on its own clock.
    fn lapse_due(&mut self, now: i64) -> Vec<Value> {
        let mut events = Vec::new();
        while self.expiries.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            if let Some(Reverse((_, id))) = self.expiries.pop() {
                events.extend(self.lapse(&id, now));
            }
        }
        events
    }
}

/// The provider's own clock, four times a second: holds lapse as their lifetimes end and bank debits settle,
/// so that what nobody asks about is still announced when its time comes. Runs as long as the simulator serves.
pub(crate) async fn keep_time(sim: Sim) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now();
        let events = {
            let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut events = ledger.settle_due(now.timestamp_millis(), lifetime(&sim));
            events.extend(ledger.lapse_due(now.timestamp()));
            events
        };
        sim.webhooks.send(events);
    }
}

/// A hold's lifetime in seconds.
fn lifetime(sim: &Sim) -> i64 {
    i64::try_from(sim.config.hold_lifetime.as_secs()).unwrap_or(i64::MAX / 2)
}

/// What a simulated endpoint did. Only executed requests are stored under their idempotency key.
enum Outcome {
    Executed {
        status: StatusCode,
        body: Value,
        drop_connection: bool,
        /// The events its change made, delivered before or after the answer.
        events: Vec<Value>,
    },
    NotExecuted {
        status: StatusCode,
        body: Value,
    },
}

impl Outcome {
    /// 200 with `body`: the usual answer of an executed request.
    fn ok(body: Value) -> Self {
        Self::Executed {
            status: StatusCode::OK,
            body,
            drop_connection: false,
            events: Vec::new(),
        }
    }

    /// The same outcome, announced by `events`. An outcome that did not execute changed nothing to announce.
    fn announced_by(self, announced: Vec<Value>) -> Self {
        match self {
            Self::Executed {
                status,
                body,
                drop_connection,
                events: _,
            } => Self::Executed {
                status,
                body,
                drop_connection,
                events: announced,
            },
            Self::NotExecuted { .. } => {
                debug_assert!(
                    announced.is_empty(),
                    "a request that did not execute changed something"
                );
                self
            }
        }
    }
}

fn stripe_error(kind: &str, code: &str, message: &str) -> Value {
    json!({"error": {"type": kind, "code": code, "message": message}})
}

fn stripe_response(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (status, Json(stripe_error(kind, code, message))).into_response()
}

/// The largest amount one PaymentIntent may have, as Stripe's API has it.
pub const MAX_AMOUNT: i64 = 99_999_999;

fn invalid(code: &str, message: &str) -> Outcome {
    Outcome::NotExecuted {
        status: StatusCode::BAD_REQUEST,
        body: stripe_error("invalid_request_error", code, message),
    }
}

fn unavailable() -> Outcome {
    Outcome::NotExecuted {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: stripe_error(
            "api_error",
            "service_unavailable",
            "The provider is temporarily unavailable.",
        ),
    }
}

type Params = Vec<(String, String)>;

/// Parses the form body of `POST {path}` and runs `op` on it under Stripe's idempotency rules and the configured
/// random faults. `op` gets the simulator, the parameters and which attempt this is for its key (or, without a
/// key, for its parameters). Like a real provider, a request that started executing runs to the end and stores
/// its result even if the client hangs up meanwhile, so a retry with the same key replays it.
async fn idempotent<F, Fut>(sim: Sim, headers: &HeaderMap, path: String, body: &Bytes, op: F) -> Response
where
    F: FnOnce(Sim, Params, u32) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let params: Params = match serde_urlencoded::from_bytes(body) {
        Ok(params) => params,
        Err(e) => {
            let message = format!("Invalid form body: {e}");
            return stripe_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_invalid",
                &message,
            );
        }
    };
    let fingerprint = fingerprint(&path, &params);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (attempt, claim) = {
        let mut keys = sim.keys.lock().unwrap_or_else(|p| p.into_inner());
        let counter = key
            .clone()
            .unwrap_or_else(|| format!("fingerprint:{fingerprint}"));
        let attempt = keys.count(&counter);
        (attempt, key.as_deref().map(|k| keys.claim(k, &fingerprint)))
    };
    match claim {
        Some(Claim::Replay { status, body }) => return (status, Json(body)).into_response(),
        Some(Claim::InFlight) => {
            return stripe_response(
                StatusCode::CONFLICT,
                "idempotency_error",
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key.",
            );
        }
        Some(Claim::Mismatch) => {
            return stripe_response(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "idempotency_key_reused",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            );
        }
        Some(Claim::Run) | None => {}
    }
    let fault = sim.config.fault_rate > 0.0 && rand::random::<f64>() < sim.config.fault_rate;
    let execution = if fault {
        None
    } else {
        Some(op(sim.clone(), params, attempt))
    };
    let settled = tokio::spawn(async move {
        let mut outcome = match execution {
            Some(execution) => execution.await,
            None => unavailable(),
        };
        let events = {
            let mut keys = sim.keys.lock().unwrap_or_else(|p| p.into_inner());
            match &mut outcome {
                Outcome::NotExecuted { .. } => {
                    if let Some(key) = &key {
                        keys.release(key);
                    }
                    Vec::new()
                }
                Outcome::Executed {
                    status, body, events, ..
                } => {
                    if let Some(key) = &key {
                        keys.store(key, &fingerprint, *status, body.clone());
                    }
                    std::mem::take(events)
                }
            }
        };
        sim.webhooks.send_for_request(events).await;
        outcome
    })
    .await;
    match settled {
        Ok(Outcome::NotExecuted { status, body }) => (status, Json(body)).into_response(),
        Ok(Outcome::Executed {
            status,
            body,
            drop_connection,
            ..
        }) => {
            if drop_connection {
                tracing::info!("dropping the connection instead of answering (simulated lost response)");
                return lost_response();
            }
            (status, Json(body)).into_response()
        }
        Err(panic) => {
            tracing::error!(%panic, "request handler panicked");
            stripe_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "internal",
                "The simulator failed to handle the request.",
            )
        }
    }
}

/// A response whose body fails at once: hyper aborts the connection, so the client sees it cut before any
/// usable answer.
fn lost_response() -> Response {
    let body = Body::from_stream(futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated loss",
        ))
    }));
    Response::new(body)
}

fn fingerprint(path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    sorted.sort();
    format!("POST {path}?{}", sorted.join("&"))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn intent_json(intent: &Intent) -> Value {
    serde_json::to_value(intent).unwrap_or(Value::Null)
}

/// The intent's charge, as Stripe's Charge object shows it (the fields the simulator keeps).
fn charge_json(intent: &Intent) -> Option<Value> {
    let id = intent.latest_charge.as_ref()?;
    Some(json!({
        "id": id,
        "object": "charge",
        "amount": intent.amount,
        "amount_captured": intent.amount_received,
        "amount_refunded": intent.amount_refunded,
        "captured": intent.amount_received > 0,
        "currency": intent.currency,
        "payment_intent": intent.id,
        "metadata": intent.metadata,
        "status": "succeeded",
        "payment_method_details": {"type": "card", "card": {"capture_before": intent.hold_expires_at}},
    }))
}

/// The intent's answer, with its charge in place of the charge's id when `expand[]=latest_charge` was asked.
fn intent_json_expanded(intent: &Intent, params: &[(String, String)]) -> Value {
    let mut body = intent_json(intent);
    let expanded = params
        .iter()
        .any(|(k, v)| (k == "expand[]" || k.starts_with("expand[")) && v == "latest_charge");
    if expanded && let Some(charge) = charge_json(intent) {
        body["latest_charge"] = charge;
    }
    body
}

/// `POST /v1/payment_intents` (amount, currency, payment_method, capture_method, confirm, metadata[…]).
pub async fn create(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/payment_intents".to_owned();
    idempotent(sim, &headers, path, &body, |sim, params, attempt| async move {
        create_intent(&sim, &params, attempt).await
    })
    .await
}

async fn create_intent(sim: &Sim, params: &[(String, String)], attempt: u32) -> Outcome {
    let Some(amount) = param(params, "amount")
        .and_then(|a| a.parse::<i64>().ok())
        .filter(|a| *a > 0)
    else {
        return invalid(
            "parameter_invalid_integer",
            "amount must be a positive integer (minor units).",
        );
    };
    // Stripe's limit: eight digits of minor units (999,999.99 in a two-decimal currency).
    if amount > MAX_AMOUNT {
        return invalid(
            "amount_too_large",
            "Amount must be no more than 99999999 (minor units).",
        );
    }
    let Some(currency) = param(params, "currency").filter(|c| c.len() == 3) else {
        return invalid(
            "parameter_missing",
            "currency is required (three-letter ISO code).",
        );
    };
    let Some(method) = param(params, "payment_method") else {
        return invalid("parameter_missing", "payment_method is required.");
    };
    let capture_method = param(params, "capture_method").unwrap_or("automatic");
    if !matches!(capture_method, "automatic" | "manual") {
        return invalid("parameter_invalid", "capture_method must be automatic or manual.");
    }
    let multicapture = match param(params, "payment_method_options[card][request_multicapture]") {
        None | Some("never") => false,
        Some("if_available") => true,
        Some(_) => {
            return invalid(
                "parameter_invalid",
                "payment_method_options[card][request_multicapture] must be if_available or never.",
            );
        }
    };
    let confirm = param(params, "confirm") == Some("true");
    let off_session = param(params, "off_session") == Some("true");
    // What an asynchronous method waits for once confirmed: the customer, or the bank.
    let waits = match method {
        "pm_sim_requires_action" if !off_session => Some("requires_action"),
        "pm_sim_processing" | "pm_sim_processing_fails" => Some("processing"),
        _ => None,
    };
    let declined = match method {
        "pm_card_visa" | "pm_sim_lost_response" | "pm_sim_processing" | "pm_sim_processing_fails" => false,
        // Off-session there is no customer to authenticate: Stripe declines.
        "pm_sim_requires_action" => off_session,
        "pm_sim_reauth_declined" => {
            let order = param(params, "metadata[order_id]");
            let ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
            order.is_some_and(|order| {
                ledger
                    .intents
                    .values()
                    .any(|i| i.metadata.get("order_id").map(String::as_str) == Some(order))
            })
        }
        "pm_card_chargeDeclined" => true,
        "pm_sim_flaky" if attempt <= 2 => return unavailable(),
        "pm_sim_flaky" => false,
        "pm_sim_slow" => {
            tokio::time::sleep(sim.config.slow_delay).await;
            false
        }
        other => return invalid("resource_missing", &format!("No such PaymentMethod: '{other}'")),
    };
    let metadata: BTreeMap<String, String> = params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")?
                .strip_suffix(']')
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect();
    let status = match (confirm, declined, waits, capture_method) {
        (false, _, _, _) => "requires_confirmation",
        (true, true, _, _) => "requires_payment_method",
        (true, false, Some(waits), _) => waits,
        (true, false, None, "manual") => "requires_capture",
        (true, false, None, _) => "succeeded",
    };
    let decline_code = match method {
        "pm_sim_reauth_declined" => "expired_card",
        "pm_sim_requires_action" => "authentication_required",
        _ => "generic_decline",
    };
    let decline = declined.then(|| {
        json!({"type": "card_error", "code": "card_declined", "decline_code": decline_code,
               "message": "Your card was declined."})
    });
    let intent = Intent {
        id: format!("pi_{}", uuid::Uuid::new_v4().simple()),
        object: "payment_intent",
        amount,
        amount_capturable: if status == "requires_capture" { amount } else { 0 },
        amount_received: if status == "succeeded" { amount } else { 0 },
        amount_refunded: 0,
        currency: currency.to_ascii_lowercase(),
        status: status.to_owned(),
        capture_method: capture_method.to_owned(),
        payment_method: method.to_owned(),
        metadata,
        created: chrono::Utc::now().timestamp(),
        last_payment_error: decline.clone(),
        payment_method_options: json!({"card": {"request_multicapture": if multicapture { "if_available" } else { "never" }}}),
        cancellation_reason: None,
        latest_charge: None,
        hold_expires_at: chrono::Utc::now().timestamp() + lifetime(sim),
        next_action: (status == "requires_action").then(|| json!({"type": "use_stripe_sdk"})),
    };
    let intent = Intent {
        latest_charge: matches!(status, "requires_capture" | "succeeded")
            .then(|| intent.id.replacen("pi_", "ch_", 1)),
        ..intent
    };
    let body = intent_json_expanded(&intent, params);
    let events = {
        let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = intent.id.clone();
        if intent.status == "requires_capture" {
            ledger
                .expiries
                .push(Reverse((intent.hold_expires_at, id.clone())));
        }
        if intent.status == "processing" {
            let delay = i64::try_from(sim.config.processing_delay.as_millis()).unwrap_or(i64::MAX / 2);
            let at = chrono::Utc::now().timestamp_millis().saturating_add(delay);
            ledger
                .settlements
                .push(Reverse((at, id.clone(), method == "pm_sim_processing")));
        }
        ledger.order.push(id.clone());
        ledger.intents.insert(id.clone(), intent);
        ledger.announce(&id, None)
    };
    let drop_connection = (method == "pm_sim_lost_response" && attempt == 1)
        || (sim.config.lost_response_rate > 0.0 && rand::random::<f64>() < sim.config.lost_response_rate);
    match decline {
        Some(mut error) => {
            error["payment_intent"] = body;
            Outcome::Executed {
                status: StatusCode::PAYMENT_REQUIRED,
                body: json!({"error": error}),
                drop_connection,
                events,
            }
        }
        None => Outcome::Executed {
            status: StatusCode::OK,
            body,
            drop_connection,
            events,
        },
    }
}

fn no_such_intent(id: &str) -> (StatusCode, Value) {
    let message = format!("No such payment_intent: '{id}'");
    (
        StatusCode::NOT_FOUND,
        stripe_error("invalid_request_error", "resource_missing", &message),
    )
}

/// Runs `f` on the intent `id` under the ledger's lock, after lapsing it if its time has come (that lapse's events
/// go out at once; `f`'s go with its outcome). A missing intent is a 404 that executed nothing.
fn with_intent(sim: &Sim, id: &str, f: impl FnOnce(&mut Intent) -> Outcome) -> Outcome {
    let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    sim.webhooks
        .send(ledger.lapse(id, chrono::Utc::now().timestamp()));
    let Some(intent) = ledger.intents.get_mut(id) else {
        let (status, body) = no_such_intent(id);
        return Outcome::NotExecuted { status, body };
    };
    let before = intent.clone();
    let outcome = f(intent);
    let events = ledger.announce(id, Some(&before));
    outcome.announced_by(events)
}

fn unexpected_state(intent: &Intent, action: &str) -> Outcome {
    Outcome::Executed {
        status: StatusCode::BAD_REQUEST,
        body: json!({"error": {
            "type": "invalid_request_error",
            "code": "payment_intent_unexpected_state",
            "message": format!("You cannot {action} this PaymentIntent because it has a status of {}.", intent.status),
            "payment_intent": intent_json(intent),
        }}),
        drop_connection: false,
        events: Vec::new(),
    }
}

/// `GET /v1/payment_intents/{id}` (`expand[]=latest_charge` optional).
pub async fn retrieve(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    sim.webhooks
        .send(ledger.lapse(&id, chrono::Utc::now().timestamp()));
    match ledger.intents.get(&id) {
        Some(intent) => Json(intent_json_expanded(intent, &params)).into_response(),
        None => {
            let (status, body) = no_such_intent(&id);
            (status, Json(body)).into_response()
        }
    }
}

/// `GET /v1/charges/{id}`: an authorized intent's charge, with when its hold lapses
/// (`payment_method_details.card.capture_before`).
pub async fn retrieve_charge(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    let found = ledger
        .intents
        .values()
        .find(|intent| intent.latest_charge.as_deref() == Some(id.as_str()))
        .map(|intent| intent.id.clone());
    match found {
        Some(intent) => {
            sim.webhooks
                .send(ledger.lapse(&intent, chrono::Utc::now().timestamp()));
            Json(ledger.intents.get(&intent).and_then(charge_json)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(stripe_error(
                "invalid_request_error",
                "resource_missing",
                &format!("No such charge: '{id}'"),
            )),
        )
            .into_response(),
    }
}

/// `POST /v1/payment_intents/{id}/capture` (amount_to_capture optional).
pub async fn capture(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/capture");
    idempotent(sim, &headers, path, &body, |sim, params, _| async move {
        with_intent(&sim, &id, |intent| {
            if intent.status != "requires_capture" {
                return unexpected_state(intent, "capture");
            }
            let amount = match param(&params, "amount_to_capture").map(str::parse::<i64>) {
                None => intent.amount_capturable,
                Some(Ok(a)) if a > 0 && a <= intent.amount_capturable => a,
                Some(_) => {
                    return invalid(
                        "parameter_invalid_integer",
                        "amount_to_capture exceeds the capturable amount.",
                    );
                }
            };
            let last = match param(&params, "final_capture") {
                None | Some("true") => true,
                Some("false") if intent.multicapture() => false,
                Some("false") => {
                    return invalid(
                        "parameter_invalid",
                        "final_capture=false needs payment_method_options[card][request_multicapture]=if_available.",
                    );
                }
                Some(_) => return invalid("parameter_invalid", "final_capture must be true or false."),
            };
            intent.amount_received += amount;
            intent.amount_capturable -= amount;
            if last || intent.amount_capturable == 0 {
                // A final capture releases what is left of the hold.
                intent.amount_capturable = 0;
                intent.status = "succeeded".to_owned();
            }
            Outcome::ok(intent_json(intent))
        })
    })
    .await
}

/// `POST /v1/payment_intents/{id}/cancel`: voids an uncaptured intent. A multicapture intent captured in part
/// keeps what it captured: the rest of its hold is released and it ends `succeeded`, as when such a hold lapses
/// (its captured money stays refundable).
pub async fn cancel(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/payment_intents/{id}/cancel");
    idempotent(sim, &headers, path, &body, |sim, _, _| async move {
        with_intent(&sim, &id, |intent| {
            // As Stripe: a bank debit on its way cannot be cancelled.
            if matches!(intent.status.as_str(), "succeeded" | "canceled" | "processing") {
                return unexpected_state(intent, "cancel");
            }
            intent.amount_capturable = 0;
            intent.status = match intent.amount_received {
                0 => "canceled",
                _ => "succeeded",
            }
            .to_owned();
            Outcome::ok(intent_json(intent))
        })
    })
    .await
}

/// `POST /v1/refunds` (payment_intent, amount and reason optional): refunds captured money, of a `succeeded`
/// intent or of a multicapture intent still `requires_capture` after a partial capture, at most what it received
/// and has not refunded yet.
pub async fn refund(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let path = "/v1/refunds".to_owned();
    idempotent(sim, &headers, path, &body, |sim, params, _| async move {
        let Some(id) = param(&params, "payment_intent") else {
            return invalid("parameter_missing", "payment_intent is required.");
        };
        with_intent(&sim, id, |intent| {
            let captured_in_part = intent.status == "requires_capture" && intent.amount_received > 0;
            if intent.status != "succeeded" && !captured_in_part {
                return unexpected_state(intent, "refund");
            }
            let reason = param(&params, "reason");
            if reason.is_some_and(|r| !matches!(r, "duplicate" | "fraudulent" | "requested_by_customer")) {
                return invalid(
                    "parameter_invalid_string",
                    "reason must be one of duplicate, fraudulent, requested_by_customer.",
                );
            }
            let refundable = intent.amount_received - intent.amount_refunded;
            let amount = match param(&params, "amount").map(str::parse::<i64>) {
                None => refundable,
                Some(Ok(a)) if a > 0 && a <= refundable => a,
                Some(_) => {
                    return invalid(
                        "parameter_invalid_integer",
                        "amount exceeds the refundable amount.",
                    );
                }
            };
            if amount == 0 {
                return Outcome::Executed {
                    status: StatusCode::BAD_REQUEST,
                    body: stripe_error(
                        "invalid_request_error",
                        "charge_already_refunded",
                        "This charge has already been refunded.",
                    ),
                    drop_connection: false,
                    events: Vec::new(),
                };
            }
            intent.amount_refunded += amount;
            Outcome::ok(
                json!({"id": format!("re_{}", uuid::Uuid::new_v4().simple()), "object": "refund",
                               "amount": amount, "currency": intent.currency, "payment_intent": intent.id,
                               "reason": reason, "status": "succeeded"}),
            )
        })
    })
    .await
}

/// `POST /v1/sim/payment_intents/{id}/lapse`: the hold's lifetime ends now, so the intent lapses as the provider's
/// own expiry would have lapsed it (`canceled`, or `succeeded` keeping what was captured). Answers the intent.
pub async fn lapse(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    let now = chrono::Utc::now().timestamp();
    match ledger.intents.get_mut(&id) {
        Some(intent) => {
            intent.hold_expires_at = intent.hold_expires_at.min(now);
            sim.webhooks.send(ledger.lapse(&id, now));
            Json(ledger.intents.get(&id).map(intent_json)).into_response()
        }
        None => {
            let (status, body) = no_such_intent(&id);
            (status, Json(body)).into_response()
        }
    }
}

/// What the customer does at `POST /v1/sim/payment_intents/{id}/customer`.
#[derive(Debug, serde::Deserialize)]
pub struct CustomerAction {
    action: String,
}

/// `POST /v1/sim/payment_intents/{id}/customer` (`action=complete` or `action=abandon`): the customer completes or
/// abandons the authentication a `requires_action` intent waits for, as they would in their bank's window.
/// Answers the intent.
pub async fn customer(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<CustomerAction>,
) -> Response {
    let outcome = with_intent(&sim, &id, |intent| {
        if intent.status != "requires_action" {
            return unexpected_state(intent, "act on");
        }
        match form.action.as_str() {
            "complete" => intent.authorize(chrono::Utc::now().timestamp(), lifetime(&sim)),
            "abandon" => intent.fail(
                "payment_intent_authentication_failure",
                "The customer did not complete the authentication.",
            ),
            _ => return invalid("parameter_invalid", "action must be complete or abandon."),
        }
        Outcome::ok(intent_json(intent))
    });
    let (status, body, events) = match outcome {
        Outcome::Executed {
            status, body, events, ..
        } => (status, body, events),
        Outcome::NotExecuted { status, body } => (status, body, Vec::new()),
    };
    if status == StatusCode::OK {
        let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(intent) = ledger.intents.get(&id)
            && intent.status == "requires_capture"
        {
            let entry = Reverse((intent.hold_expires_at, id.clone()));
            ledger.expiries.push(entry);
        }
    }
    sim.webhooks.send(events);
    (status, Json(body)).into_response()
}

/// `GET /v1/sim/ledger`: every intent in creation order, with the money it holds, took and gave back.
pub async fn ledger(State(sim): State<Sim>) -> Json<Value> {
    let mut ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    sim.webhooks
        .send(ledger.lapse_due(chrono::Utc::now().timestamp()));
    let intents: Vec<Value> = ledger
        .order
        .iter()
        .filter_map(|id| ledger.intents.get(id))
        .map(intent_json)
        .collect();
    Json(json!({"intents": intents}))
}
