//! `PUT /v1/skus/{sku}` and `GET /v1/skus/{sku}`: stock and price of one sku.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use orderflow_shared::input::FieldError;
use orderflow_shared::inventory;
use orderflow_shared::money::{self, Currency};
use serde::Deserialize;

use crate::caller::{Authorized, CatalogRead, CatalogWrite};
use crate::extract::JsonBody;
use crate::views::SkuView;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertSkuRequest {
    /// Units in the warehouse.
    pub on_hand: i64,
    /// Unit price in minor units (cents).
    pub price: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Creates a sku (201) or sets its stock and price (200).
#[utoipa::path(put, path = "/v1/skus/{sku}", operation_id = "put_sku", security(("api_key" = ["catalog:write"])), request_body = UpsertSkuRequest, responses(
    (status = 201, description = "Created", body = SkuView),
    (status = 200, description = "Updated", body = SkuView),
    (status = 409, description = "on_hand below the reserved units", body = crate::error::Problem),
    (status = 422, description = "Invalid field", body = crate::error::Problem),
))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn upsert(
    State(state): State<AppState>,
    _caller: Authorized<CatalogWrite>,
    Path(sku): Path<String>,
    body: JsonBody<UpsertSkuRequest>,
) -> Result<(StatusCode, Json<SkuView>), ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let request = body.parsed;
    let on_hand = money::parse_stock(request.on_hand).map_err(|e| FieldError::new("on_hand", e))?;
    let price = money::parse_price(request.price).map_err(|e| FieldError::new("price", e))?;
    let currency = Currency::parse(&request.currency).map_err(|e| FieldError::new("currency", e))?;
    let (row, created) = inventory::upsert(&state.pool, &sku, on_hand, price, currency.as_str()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row.into())))
}

#[utoipa::path(get, path = "/v1/skus/{sku}", operation_id = "get_sku", security(("api_key" = ["catalog:read"])), responses(
    (status = 200, description = "The sku", body = SkuView),
    (status = 404, description = "No such sku", body = crate::error::Problem),
    (status = 422, description = "Not a sku code", body = crate::error::Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Authorized<CatalogRead>,
    Path(sku): Path<String>,
) -> Result<Json<SkuView>, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let row = inventory::find(&state.pool, &sku)
        .await?
        .ok_or(ApiError::NotFound { what: "sku", id: sku })?;
    Ok(Json(row.into()))
}
