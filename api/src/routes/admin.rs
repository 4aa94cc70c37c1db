//! The admin API under `/admin/v1`: queues, sagas (stuck or not) and one saga's whole story, for viewers; and
//! for operators the actions retry, compensate and resolve (`orderflow_shared::operator`), each recorded with
//! who and when; API keys: viewers list them, operators create and revoke them; and the stock ledger's drift.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use orderflow_shared::admin::{self, SagaQuery};
use orderflow_shared::api_key::{self, ApiKey, CreatedKey, NewKeyRequest};
use orderflow_shared::input;
use orderflow_shared::inventory::ledger;
use orderflow_shared::operator::{self, Action};
use orderflow_shared::queue::views as queue_views;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Admin;
use crate::extract::{JsonBody, OptionalJson, OrderId};
use crate::views::{self, ActionResult, QueueList, SagaDetail, SagaList};
use crate::{ApiError, AppState};

#[utoipa::path(get, path = "/admin/v1/queues", operation_id = "admin_list_queues", security(("bearer" = [])), responses(
    (status = 200, description = "Per queue: pending, scheduled, running, failed and dead jobs, oldest pending age; admission control: its bound, the saga backlog, refusals", body = QueueList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
))]
pub async fn queues(State(state): State<AppState>, _admin: Admin) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(QueueList {
        queues: queue_views::queue_stats(&state.pool).await?,
        admission: state.admission.view(),
    }))
}

#[utoipa::path(get, path = "/admin/v1/sagas", operation_id = "admin_list_sagas", params(SagaQuery), security(("bearer" = [])), responses(
    (status = 200, description = "Sagas oldest first", body = SagaList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 422, description = "A parameter is invalid; `field` names it", body = crate::error::Problem),
))]
pub async fn sagas(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<SagaQuery>,
) -> Result<Json<SagaList>, ApiError> {
    let filter = query.filter(state.admin.stuck_after)?;
    let sagas = admin::sagas(&mut *state.pool.acquire().await?, &filter).await?;
    let next_cursor = (sagas.len() as i64 == filter.limit)
        .then(|| sagas.last().map(|s| s.id.to_string()))
        .flatten();
    Ok(Json(SagaList { sagas, next_cursor }))
}

#[utoipa::path(get, path = "/admin/v1/sagas/{id}", operation_id = "admin_get_saga", security(("bearer" = [])), responses(
    (status = 200, description = "The saga: order, steps with attempts, timings, errors and workers, jobs, events, operator actions", body = SagaDetail),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 404, description = "No such saga", body = crate::error::Problem),
))]
pub async fn saga(
    State(state): State<AppState>,
    _admin: Admin,
    OrderId(id): OrderId,
) -> Result<Json<SagaDetail>, ApiError> {
    Ok(Json(views::saga(&state.pool, id, state.admin.stuck_after).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ActionRequest {
    /// Why, for the record (at most 500 characters).
    pub note: Option<String>,
}

async fn act(
    state: AppState,
    admin: Admin,
    id: uuid::Uuid,
    action: Action,
    body: Option<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    let note = input::optional_text("note", body.and_then(|b| b.note).as_deref(), 500)?;
    let outcome = operator::act(&state.pool, id, action, &admin.operator(), note.as_deref()).await?;
    Ok(Json(ActionResult {
        action: action.as_str().to_owned(),
        actor: admin.name,
        outcome,
        order: views::order(&state.pool, id).await?,
    }))
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/retry", operation_id = "admin_retry_saga", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "The current step (or a parked saga's compensation) queued to run now", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "Nothing to retry, or the step is running now", body = crate::error::Problem),
))]
pub async fn retry(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act(state, admin, id, Action::Retry, body).await
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/compensate", operation_id = "admin_compensate_saga", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "CANCELLING with reason operator_request; compensations queued", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "The saga is already cancelling or over", body = crate::error::Problem),
))]
pub async fn compensate(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act(state, admin, id, Action::Compensate, body).await
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/resolve", operation_id = "admin_resolve_saga", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "A NEEDS_ATTENTION saga closed as CANCELLED after manual repair", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "The saga does not need attention", body = crate::error::Problem),
))]
pub async fn resolve(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act(state, admin, id, Action::Resolve, body).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Newest first, revoked keys too.
    pub keys: Vec<ApiKey>,
}

#[utoipa::path(get, path = "/admin/v1/keys", operation_id = "admin_list_keys", security(("bearer" = [])), responses(
    (status = 200, description = "Every API key (never a secret)", body = KeyList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
))]
pub async fn keys(State(state): State<AppState>, _admin: Admin) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        keys: api_key::list(&state.pool).await?,
    }))
}

/// Creates an API key: the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/admin/v1/keys", operation_id = "admin_create_key", request_body = NewKeyRequest, security(("bearer" = [])), responses(
    (status = 201, description = "The key, with its secret", body = CreatedKey),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 422, description = "Invalid field; `field` names it", body = crate::error::Problem),
))]
pub async fn create_key(
    State(state): State<AppState>,
    admin: Admin,
    body: JsonBody<NewKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    admin.must_operate("create an API key")?;
    let mut conn = state.pool.acquire().await?;
    let created = api_key::create(
        &mut conn,
        &body.parsed,
        state.key_settings.default_rate,
        &admin.name,
        admin.role,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes an API key: within `ORDERFLOW_API_KEY_CACHE_SECS` every API process refuses it. Repeating it is
/// harmless.
#[utoipa::path(post, path = "/admin/v1/keys/{id}/revoke", operation_id = "admin_revoke_key", security(("bearer" = [])), responses(
    (status = 200, description = "The key, revoked", body = ApiKey),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 404, description = "No such key", body = crate::error::Problem),
))]
pub async fn revoke_key(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    admin.must_operate("revoke an API key")?;
    let not_found = || ApiError::NotFound {
        what: "key",
        id: id.clone(),
    };
    let key_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let key = api_key::revoke(&state.pool, key_id, &admin.name, admin.role)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(key))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StockDrift {
    /// When the ledger was read against the counts.
    pub checked_at: chrono::DateTime<chrono::Utc>,
    /// Every sku and location whose `on_hand` or `reserved` is not the sum of its movements; empty when the
    /// ledger adds up (the one healthy answer).
    pub drift: Vec<ledger::Drift>,
}

/// The stock ledger read against the skus' counts now, as the reconciler checks it every
/// `ORDERFLOW_LEDGER_CHECK_INTERVAL_SECS`. It reads the whole ledger.
#[utoipa::path(get, path = "/admin/v1/stock/drift", operation_id = "admin_stock_drift", security(("bearer" = [])), responses(
    (status = 200, description = "Skus and locations whose counts the ledger does not add up to (none when healthy)", body = StockDrift),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
))]
pub async fn stock_drift(State(state): State<AppState>, _admin: Admin) -> Result<Json<StockDrift>, ApiError> {
    Ok(Json(StockDrift {
        checked_at: chrono::Utc::now(),
        drift: ledger::drift(&state.pool).await?,
    }))
}
