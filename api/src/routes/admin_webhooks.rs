//! The admin API's webhook endpoints (`/admin/v1/webhook_endpoints`): operators make endpoints (the secret is
//! shown once), enable and disable them, read their deliveries and each delivery's attempts, and replay one
//! delivery or an endpoint's events of a time range; viewers read. Each handler calls one function of
//! `orderflow_shared::webhooks`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use orderflow_shared::webhooks::delivery::{self, AttemptView, DeliveryView};
use orderflow_shared::webhooks::{self, Endpoint, EndpointView, NewEndpoint};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Admin;
use crate::extract::{JsonBody, OptionalJson};
use crate::{ApiError, AppState};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The signing secret (`whsec_…`), shown this once: verify deliveries with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
}

fn endpoint_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound {
        what: "webhook endpoint",
        id: id.to_owned(),
    })
}

/// Makes a webhook endpoint: every order event of its types from now on is delivered to it. The answer holds its
/// secret, shown this once.
#[utoipa::path(post, path = "/admin/v1/webhook_endpoints", operation_id = "admin_create_webhook_endpoint", request_body = NewEndpoint, security(("bearer" = [])), responses(
    (status = 201, description = "The endpoint, with its secret", body = CreatedEndpoint),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 422, description = "Invalid field (a URL that is not https, or http beyond this machine or where that is not allowed; a private or link-local address; an unknown event type)", body = crate::error::Problem),
))]
pub async fn create(
    State(state): State<AppState>,
    admin: Admin,
    body: JsonBody<NewEndpoint>,
) -> Result<(StatusCode, Json<CreatedEndpoint>), ApiError> {
    admin.must_operate("make a webhook endpoint")?;
    body.parsed.validate(state.webhook_allow_loopback)?;
    let server_secret = orderflow_shared::server_secret::load(&state.pool, webhooks::SERVER_SECRET).await?;
    let mut conn = state.pool.acquire().await?;
    let (endpoint, secret) = webhooks::create(&mut conn, &body.parsed, &admin.name, &server_secret).await?;
    Ok((StatusCode::CREATED, Json(CreatedEndpoint { endpoint, secret })))
}

#[utoipa::path(get, path = "/admin/v1/webhook_endpoints", operation_id = "admin_list_webhook_endpoints", security(("bearer" = [])), responses(
    (status = 200, description = "Every endpoint (never a secret), with its deliveries pending, delivered and dead", body = EndpointList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
))]
pub async fn list(State(state): State<AppState>, _admin: Admin) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList {
        endpoints: webhooks::list(&state.pool).await?,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableRequest {
    /// Why, for whoever looks next.
    pub reason: Option<String>,
}

/// Disables (`disable`) or enables (`enable`) an endpoint. Disabled, it gets no new events and its pending
/// deliveries wait; enabled again, they resume in order.
#[utoipa::path(post, path = "/admin/v1/webhook_endpoints/{id}/{action}", operation_id = "admin_set_webhook_endpoint", security(("bearer" = [])),
    params(("action" = String, Path, description = "`enable` or `disable`")),
    request_body(content = Option<DisableRequest>, description = "`disable`'s reason, optional"),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
        (status = 403, description = "A viewer token", body = crate::error::Problem),
        (status = 404, description = "No such endpoint or action", body = crate::error::Problem),
        (status = 422, description = "A reason that is not plain text", body = crate::error::Problem),
    ))]
pub async fn set_enabled(
    State(state): State<AppState>,
    admin: Admin,
    Path((id, action)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<DisableRequest>,
) -> Result<Json<Endpoint>, ApiError> {
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return Err(ApiError::NotFound {
                what: "action",
                id: action,
            });
        }
    };
    admin.must_operate("enable or disable a webhook endpoint")?;
    let reason = body.and_then(|b| b.reason);
    if let Some(reason) = &reason {
        orderflow_shared::input::check_plain("reason", reason)?;
    }
    let endpoint_id = endpoint_id(&id)?;
    let reason = reason.map(|r| format!("{}: {r}", admin.name));
    webhooks::set_enabled(&state.pool, endpoint_id, enabled, reason.as_deref())
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound {
            what: "webhook endpoint",
            id,
        })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeliveryQuery {
    /// PENDING, DELIVERED or DEAD.
    pub status: Option<String>,
    /// 1–500, default 100.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

#[utoipa::path(get, path = "/admin/v1/webhook_endpoints/{id}/deliveries", operation_id = "admin_list_webhook_deliveries", security(("bearer" = [])), params(DeliveryQuery), responses(
    (status = 200, description = "The endpoint's deliveries, newest first: status, attempts, the last status code, latency and error", body = DeliveryList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 404, description = "No such endpoint", body = crate::error::Problem),
    (status = 422, description = "An unknown status or a limit out of range", body = crate::error::Problem),
))]
pub async fn deliveries(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let endpoint_id = endpoint_id(&id)?;
    if let Some(status) = &query.status
        && !matches!(status.as_str(), "PENDING" | "DELIVERED" | "DEAD")
    {
        return Err(ApiError::validation(
            "status",
            "must be PENDING, DELIVERED or DEAD",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be 1 to 500"));
    }
    if webhooks::find(&state.pool, endpoint_id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "webhook endpoint",
            id,
        });
    }
    Ok(Json(DeliveryList {
        deliveries: delivery::list(&state.pool, endpoint_id, query.status.as_deref(), limit).await?,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    /// Every attempt, oldest first: when, the status code, latency, the answer's first 1 KB or the error.
    pub attempts: Vec<AttemptView>,
}

fn delivery_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound {
        what: "webhook delivery",
        id: id.to_owned(),
    })
}

#[utoipa::path(get, path = "/admin/v1/webhook_deliveries/{id}", operation_id = "admin_get_webhook_delivery", security(("bearer" = [])), responses(
    (status = 200, description = "The delivery and its log of attempts", body = DeliveryDetail),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 404, description = "No such delivery", body = crate::error::Problem),
))]
pub async fn delivery(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let (delivery, attempts) =
        delivery::find(&mut conn, delivery_id(&id)?)
            .await?
            .ok_or(ApiError::NotFound {
                what: "webhook delivery",
                id,
            })?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

/// Sends a delivery again, as a new round of retries, with the same `webhook-id` (a receiver's dedupe holds).
#[utoipa::path(post, path = "/admin/v1/webhook_deliveries/{id}/replay", operation_id = "admin_replay_webhook_delivery", security(("bearer" = [])), responses(
    (status = 200, description = "The delivery, PENDING again", body = DeliveryView),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 404, description = "No such delivery", body = crate::error::Problem),
))]
pub async fn replay(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    admin.must_operate("replay a webhook delivery")?;
    delivery::replay(&state.pool, delivery_id(&id)?)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound {
            what: "webhook delivery",
            id,
        })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRange {
    /// From this time (RFC 3339), included.
    pub from: DateTime<Utc>,
    /// To this time, excluded; at most 31 days after `from`.
    pub to: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Deliveries now on their way.
    pub deliveries: u64,
}

/// Sends the endpoint every event of its types made in `[from, to)` again (the same `webhook-id`s), including
/// those it never had: made before it existed or while it was disabled.
#[utoipa::path(post, path = "/admin/v1/webhook_endpoints/{id}/replay", operation_id = "admin_replay_webhook_endpoint", request_body = ReplayRange, security(("bearer" = [])), responses(
    (status = 200, description = "How many deliveries are on their way", body = Replayed),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 404, description = "No such endpoint", body = crate::error::Problem),
    (status = 422, description = "`to` not after `from`, or more than 31 days after it", body = crate::error::Problem),
))]
pub async fn replay_range(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: JsonBody<ReplayRange>,
) -> Result<Json<Replayed>, ApiError> {
    admin.must_operate("replay a webhook endpoint's events")?;
    let range = &body.parsed;
    if range.to <= range.from || range.to - range.from > chrono::Duration::days(31) {
        return Err(ApiError::validation(
            "to",
            "must be after `from`, by at most 31 days",
        ));
    }
    let endpoint_id = endpoint_id(&id)?;
    if webhooks::find(&state.pool, endpoint_id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "webhook endpoint",
            id,
        });
    }
    let mut conn = state.pool.acquire().await?;
    let deliveries = delivery::replay_range(&mut conn, endpoint_id, range.from, range.to).await?;
    Ok(Json(Replayed { deliveries }))
}
