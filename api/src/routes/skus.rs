//! `PUT /v1/skus/{sku}` and `GET /v1/skus/{sku}`: stock and price of one sku, with the version of its stock as
//! an `ETag`, which a `PUT` may be made conditional on (`If-Match`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_shared::input::FieldError;
use orderflow_shared::inventory::{self, Expected, SkuSet, StockVersion};
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

/// Creates a sku (201) or sets its stock and price (200). With `If-Match` (an `ETag` a read returned, or `*` for
/// any existing sku) the set happens only if the sku's stock is still at that version: a stock count that read
/// `on_hand` while an order committed its units would otherwise write the old figure back over the commit.
#[utoipa::path(put, path = "/v1/skus/{sku}", operation_id = "put_sku", security(("api_key" = ["catalog:write"])), request_body = UpsertSkuRequest,
    params(("If-Match" = Option<String>, Header, description = "The sku's ETag as read (\"123\"), several comma-separated, or *: set only if the stock is still at that version")),
    responses(
        (status = 201, description = "Created", body = SkuView, headers(("ETag" = String, description = "The version of the sku's stock"))),
        (status = 200, description = "Updated", body = SkuView, headers(("ETag" = String, description = "The version of the sku's stock"))),
        (status = 400, description = "If-Match is not a list of entity tags", body = crate::error::Problem),
        (status = 409, description = "on_hand below the reserved units", body = crate::error::Problem),
        (status = 412, description = "If-Match does not match: the stock moved since it was read, or there is no such sku; nothing written", body = crate::error::Problem),
        (status = 422, description = "Invalid field", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(sku = %sku))]
pub async fn upsert(
    State(state): State<AppState>,
    _caller: Authorized<CatalogWrite>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: JsonBody<UpsertSkuRequest>,
) -> Result<Response, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let expected = expected_version(&headers)?;
    let request = body.parsed;
    let on_hand = money::parse_stock(request.on_hand).map_err(|e| FieldError::new("on_hand", e))?;
    let price = money::parse_price(request.price).map_err(|e| FieldError::new("price", e))?;
    let currency = Currency::parse(&request.currency).map_err(|e| FieldError::new("currency", e))?;
    let mut conn = state.pool.acquire().await?;
    let set = inventory::upsert(&mut conn, &sku, on_hand, price, currency.as_str(), &expected).await?;
    let (status, row, version) = match set {
        SkuSet::Created(row, version) => (StatusCode::CREATED, row, version),
        SkuSet::Updated(row, version) => (StatusCode::OK, row, version),
        SkuSet::VersionMoved(Some(current)) => {
            return Err(ApiError::PreconditionFailed(format!(
                "the stock of {sku} moved since it was read: its version is now {}; nothing was written",
                etag(current)
            )));
        }
        SkuSet::VersionMoved(None) => {
            return Err(ApiError::PreconditionFailed(format!(
                "there is no sku {sku} for If-Match to match; nothing was written"
            )));
        }
    };
    Ok(with_etag(
        (status, Json(SkuView::new(row, version))).into_response(),
        version,
    ))
}

#[utoipa::path(get, path = "/v1/skus/{sku}", operation_id = "get_sku", security(("api_key" = ["catalog:read"])), responses(
    (status = 200, description = "The sku", body = SkuView, headers(("ETag" = String, description = "The version of the sku's stock: send it as If-Match to set the stock only if it has not moved"))),
    (status = 404, description = "No such sku", body = crate::error::Problem),
    (status = 422, description = "Not a sku code", body = crate::error::Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Authorized<CatalogRead>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    inventory::check_sku_code("sku", &sku)?;
    let (row, version) = inventory::find_versioned(&state.pool, &sku)
        .await?
        .ok_or(ApiError::NotFound { what: "sku", id: sku })?;
    Ok(with_etag(
        Json(SkuView::new(row, version)).into_response(),
        version,
    ))
}

/// A strong entity tag of a stock version: `"123"`.
fn etag(version: StockVersion) -> String {
    format!("\"{}\"", version.0)
}

fn with_etag(mut response: Response, version: StockVersion) -> Response {
    if let Ok(value) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// The version `If-Match` asks for (RFC 9110 §13.1.1): absent, any; `*`, an existing sku; else a comma-separated
/// list of strong entity tags (a weak one, `W/"…"`, never matches: the comparison is strong).
fn expected_version(headers: &HeaderMap) -> Result<Expected, ApiError> {
    let values: Vec<&HeaderValue> = headers.get_all(header::IF_MATCH).iter().collect();
    if values.is_empty() {
        return Ok(Expected::Any);
    }
    let bad =
        || ApiError::BadRequest("If-Match must be * or a list of entity tags such as \"123\"".to_owned());
    let mut versions = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| bad())?;
        for tag in text.split(',').map(str::trim) {
            if tag == "*" {
                return Ok(Expected::Exists);
            }
            if tag.starts_with("W/") {
                continue;
            }
            let inner = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .ok_or_else(bad)?;
            // A tag this API never made (not a number) matches no version.
            if let Ok(number) = inner.parse::<i64>() {
                versions.push(StockVersion(number));
            }
        }
    }
    Ok(Expected::OneOf(versions))
}
