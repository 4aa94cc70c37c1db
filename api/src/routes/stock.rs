//! A sku's stock changes: `POST /v1/skus/{sku}/adjustments` (a relative change at a location) and
//! `POST /v1/skus/{sku}/transfers` (units moved between two locations), each under an Idempotency-Key, and
//! `GET /v1/skus/{sku}/movements` (the ledger, a page at a time). Each handler extracts, calls one domain function
//! (`orderflow_shared::inventory`) and shapes the answer.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderflow_shared::input::{self, FieldError};
use orderflow_shared::inventory::adjustment::{
    self, Adjusting, AdjustmentRequest, TransferRequest, ValidAdjustment,
};
use orderflow_shared::inventory::{self, ledger};
use serde::Deserialize;
use serde_json::Value;

use crate::caller::{Authorized, CatalogRead, CatalogWrite};
use crate::extract::{JsonBody, idempotency_key};
use crate::views::{self, AdjustmentView, MovementList, TransferView};
use crate::{ApiError, AppState};

/// Adds `delta` units to the sku's `on_hand` at a location (takes them away if negative), whatever it is now: a
/// delivery or a breakage, which an absolute set could lose against an order committing meanwhile. 201 with the adjustment and
/// the stock after it; a repeat of the key replays that answer.
#[utoipa::path(post, path = "/v1/skus/{sku}/adjustments", operation_id = "adjust_stock", security(("api_key" = ["catalog:write"])), request_body = AdjustmentRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 201, description = "Adjusted; the body has the stock after it", body = AdjustmentView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 404, description = "No such sku", body = crate::error::Problem),
        (status = 409, description = "on_hand at the location would fall below the units reserved there (`stock-below-reserved`) or rise past 1,000,000,000 (`stock-above-maximum`), nothing written; or a request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field (a location that is not one), or the key was used with another request", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn adjust(
    State(state): State<AppState>,
    authorized: Authorized<CatalogWrite>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: JsonBody<AdjustmentRequest>,
) -> Result<Response, ApiError> {
    let valid = body.parsed.validate();
    change(state, authorized, sku, headers, &body.value, valid).await
}

/// Moves `quantity` units of the sku's `on_hand` from one location to another: a pair of movements in one
/// transaction. 201 with the transfer and the stock after it; a repeat of the key replays that answer.
#[utoipa::path(post, path = "/v1/skus/{sku}/transfers", operation_id = "transfer_stock", security(("api_key" = ["catalog:write"])), request_body = TransferRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 201, description = "Transferred; the body has the stock after it", body = TransferView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 404, description = "No such sku", body = crate::error::Problem),
        (status = 409, description = "`from` would keep fewer units than orders hold there (`stock-below-reserved`), or `to` would hold more than 1,000,000,000 (`stock-above-maximum`), nothing written; or a request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field (a location that is not one, from = to), or the key was used with another request", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn transfer(
    State(state): State<AppState>,
    authorized: Authorized<CatalogWrite>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: JsonBody<TransferRequest>,
) -> Result<Response, ApiError> {
    let valid = body.parsed.validate();
    change(state, authorized, sku, headers, &body.value, valid).await
}

/// An adjustment or a transfer, checked as `valid` says, made (or replayed) under its Idempotency-Key.
async fn change(
    state: AppState,
    authorized: Authorized<CatalogWrite>,
    sku: String,
    headers: HeaderMap,
    body: &Value,
    valid: Result<ValidAdjustment, FieldError>,
) -> Result<Response, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let key = idempotency_key(&headers)?;
    let valid = valid?;
    let caller = authorized.caller.idempotency_scope();
    let fingerprint = adjustment::fingerprint(&sku, body);
    let request = Adjusting {
        sku: &sku,
        adjustment: &valid,
        caller: &caller,
        key,
        fingerprint: &fingerprint,
    };
    let answer = adjustment::adjust(&state.pool, &request, views::adjusted).await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::CREATED);
    Ok((status, Json(answer.body)).into_response())
}

/// The query of a sku's movements.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct MovementQuery {
    /// 1–500, default 100.
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

/// The sku's stock movements, oldest first: every change of `on_hand` and `reserved`, with why, for which order
/// or adjustment, by whom. They add up to the sku's counts. Ids grow in the order the movements committed, so
/// paging on from a page's `next_cursor` later never skips one.
#[utoipa::path(get, path = "/v1/skus/{sku}/movements", operation_id = "list_stock_movements", params(MovementQuery), security(("api_key" = ["catalog:read"])), responses(
    (status = 200, description = "A page of movements, oldest first", body = MovementList),
    (status = 404, description = "No such sku", body = crate::error::Problem),
    (status = 422, description = "Invalid parameter or sku code", body = crate::error::Problem),
))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn movements(
    State(state): State<AppState>,
    _caller: Authorized<CatalogRead>,
    Path(sku): Path<String>,
    Query(query): Query<MovementQuery>,
) -> Result<Json<MovementList>, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let limit = input::limit(query.limit.as_deref(), 100, 500)?;
    let after = input::number_cursor(query.after.as_deref())?;
    let movements = ledger::movements(&state.pool, &sku, after, limit).await?;
    if movements.is_empty() && inventory::find(&state.pool, &sku).await?.is_none() {
        return Err(ApiError::NotFound { what: "sku", id: sku });
    }
    let next_cursor = (movements.len() as i64 == limit)
        .then(|| movements.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(Json(MovementList {
        movements,
        next_cursor,
    }))
}
