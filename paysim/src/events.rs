//! Events, as Stripe's: every change of an intent appends an event to the account's log (which changes announce
//! which event is `Intent::announcements`'s). An event is `{id: "evt_…", object: "event", type, created,
//! data: {object}, api_version, livemode: false, pending_webhooks, request}`, its `data.object` the intent (or,
//! for `charge.refunded`, its charge) as it was right after the change. `request` names no request: the
//! simulator does not keep request ids.
//!
//! `GET /v1/events` lists the log newest first, as Stripe's list does (`limit` 1–100, default 10;
//! `starting_after`; `type`, exact or with a trailing `*` such as `payment_intent.*`), and `GET /v1/events/{id}`
//! shows one: the "ask the provider" of a receiver that lost or doubts a webhook. The log keeps the newest
//! `SimConfig::event_retention` events (Stripe keeps 30 days).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sim;

/// The API version events say they are shaped by.
pub const API_VERSION: &str = "2024-06-20";

#[derive(Debug)]
pub(crate) struct Log {
    /// By position in the log, oldest first.
    events: BTreeMap<u64, Value>,
    positions: HashMap<String, u64>,
    next: u64,
    retention: usize,
    /// Whether an endpoint receives the events (their `pending_webhooks`).
    delivered: bool,
}

impl Log {
    pub(crate) fn new(retention: usize, delivered: bool) -> Self {
        Self {
            events: BTreeMap::new(),
            positions: HashMap::new(),
            next: 0,
            retention: retention.max(1),
            delivered,
        }
    }

    /// Appends an event of `kind` about `object`, dropping the oldest beyond the retention; answers the event.
    pub(crate) fn append(&mut self, kind: &str, object: Value) -> Value {
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let event = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": chrono::Utc::now().timestamp(),
            "type": kind,
            "livemode": false,
            "pending_webhooks": u8::from(self.delivered),
            "request": {"id": null, "idempotency_key": null},
            "data": {"object": object},
        });
        let position = self.next;
        self.next += 1;
        self.positions.insert(id, position);
        self.events.insert(position, event.clone());
        while self.events.len() > self.retention {
            if let Some((_, oldest)) = self.events.pop_first()
                && let Some(id) = oldest["id"].as_str()
            {
                self.positions.remove(id);
            }
        }
        event
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    starting_after: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn invalid(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": message}})),
    )
        .into_response()
}

fn matches(kind: &str, filter: Option<&str>) -> bool {
    match filter {
        None => true,
        Some(filter) => match filter.strip_suffix('*') {
            Some(prefix) => kind.starts_with(prefix),
            None => kind == filter,
        },
    }
}

/// `GET /v1/events`: the log, newest first.
pub async fn list(State(sim): State<Sim>, Query(params): Query<ListParams>) -> Response {
    let limit = match params.limit.as_deref().map(str::parse::<usize>) {
        None => 10,
        Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
        Some(_) => return invalid("limit must be an integer between 1 and 100."),
    };
    let ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    let log = &ledger.events;
    let before = match &params.starting_after {
        None => u64::MAX,
        Some(id) => match log.positions.get(id) {
            Some(position) => *position,
            None => return invalid(&format!("No such event: '{id}'")),
        },
    };
    let mut data: Vec<&Value> = log
        .events
        .range(..before)
        .rev()
        .map(|(_, event)| event)
        .filter(|event| matches(event["type"].as_str().unwrap_or_default(), params.kind.as_deref()))
        .take(limit + 1)
        .collect();
    let has_more = data.len() > limit;
    data.truncate(limit);
    Json(json!({"object": "list", "url": "/v1/events", "has_more": has_more, "data": data})).into_response()
}

/// `GET /v1/events/{id}`.
pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let ledger = sim.state.lock().unwrap_or_else(|p| p.into_inner());
    let log = &ledger.events;
    match log
        .positions
        .get(&id)
        .and_then(|position| log.events.get(position))
    {
        Some(event) => Json(event.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                  "message": format!("No such event: '{id}'")}}),
            ),
        )
            .into_response(),
    }
}
