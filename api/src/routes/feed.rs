//! `GET /v1/events`: the outbox as a feed, for consumers that poll instead of subscribing to NATS (and the same
//! CloudEvents the relay publishes).

use axum::Json;
use axum::extract::{Query, State};
use orderflow_shared::input;
use orderflow_shared::outbox::{self, CloudEvent, Cursor};
use serde::{Deserialize, Serialize};

use crate::caller::{Authorized, EventsRead};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FeedParams {
    /// The `next_cursor` of the previous page; from the beginning when absent.
    pub after: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventPage {
    /// CloudEvents 1.0, in feed order; per order in `data.sequence` order.
    pub events: Vec<CloudEvent>,
    /// Pass as `after` next time. It is the cursor you sent when there was nothing new, so a poller just keeps
    /// the last one it got.
    pub next_cursor: String,
}

/// Events after a cursor. Only events of transactions older than every transaction still running are served, so
/// nothing can later appear behind a cursor already handed out; an event shows up here a moment after its
/// transition commits.
#[utoipa::path(get, path = "/v1/events", operation_id = "list_events", params(FeedParams), security(("api_key" = ["events:read"])), responses(
    (status = 200, description = "A page of events", body = EventPage),
    (status = 422, description = "Invalid cursor or limit", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authorized<EventsRead>,
    Query(params): Query<FeedParams>,
) -> Result<Json<EventPage>, ApiError> {
    let after = match params.after.as_deref() {
        None | Some("") => Cursor::default(),
        Some(raw) => raw
            .parse::<Cursor>()
            .map_err(|message| ApiError::validation("after", format!("{raw:?} {message}")))?,
    };
    let limit = input::limit(params.limit.as_deref(), 100, 1000)?;
    let rows = outbox::feed(&state.pool, after, limit).await?;
    let next_cursor = rows.last().map_or(after, |e| e.cursor()).to_string();
    Ok(Json(EventPage {
        events: rows.iter().map(|e| e.to_cloud_event()).collect(),
        next_cursor,
    }))
}
