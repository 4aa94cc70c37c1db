//! `/v1/locations`: the stock locations (warehouses, stores) and their allocation order.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use orderflow_shared::inventory::locations::{Location, LocationRequest};
use orderflow_shared::inventory::{self, locations};
use serde::Serialize;

use crate::caller::{Authorized, CatalogRead, CatalogWrite};
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LocationList {
    /// In allocation order.
    pub locations: Vec<Location>,
}

#[utoipa::path(get, path = "/v1/locations", operation_id = "list_locations", security(("api_key" = ["catalog:read"])), responses(
    (status = 200, description = "Every location, in allocation order (lower priority first, then code)", body = LocationList),
))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Authorized<CatalogRead>,
) -> Result<Json<LocationList>, ApiError> {
    Ok(Json(LocationList {
        locations: locations::list(&state.pool).await?,
    }))
}

/// Creates a location (201) or sets its name and priority (200). A location is never deleted: its movements name
/// it for good.
#[utoipa::path(put, path = "/v1/locations/{code}", operation_id = "put_location", security(("api_key" = ["catalog:write"])), request_body = LocationRequest,
    responses(
        (status = 201, description = "Created", body = Location),
        (status = 200, description = "Updated", body = Location),
        (status = 400, description = "Malformed body", body = crate::error::Problem),
        (status = 422, description = "Invalid field or location code", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(code = %code))]
pub async fn upsert(
    State(state): State<AppState>,
    _caller: Authorized<CatalogWrite>,
    Path(code): Path<String>,
    body: JsonBody<LocationRequest>,
) -> Result<(StatusCode, Json<Location>), ApiError> {
    inventory::check_location_code("code", &code)?;
    let valid = body.parsed.validate()?;
    let (created, location) = locations::upsert(&state.pool, &code, &valid).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(location)))
}
