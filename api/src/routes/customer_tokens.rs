//! `/v1/customer_tokens`: a key with `orders:write` mints a short-lived token for one customer, for the
//! customer's browser or app to call OrderFlow with (`orderflow_shared::customer_token`). Nothing is stored.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_shared::api_key::Scope;
use orderflow_shared::customer_token::MintRequest;
use serde::Serialize;

use crate::caller::{Authorized, OrdersWrite};
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

/// A customer token, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerToken {
    /// `oft_…`: send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub customer_id: String,
    pub expires_at: DateTime<Utc>,
}

/// Mints a customer token: 201. It may create orders for its customer, read and cancel that customer's orders,
/// and read the catalogue if the minting key may; it ends at `expires_at` or when the minting key is revoked.
#[utoipa::path(post, path = "/v1/customer_tokens", operation_id = "create_customer_token", security(("api_key" = ["orders:write"])),
    request_body = MintRequest,
    responses(
        (status = 201, description = "The token (not stored: shown this once)", body = CustomerToken),
        (status = 403, description = "A customer token cannot mint tokens", body = crate::error::Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Invalid customer_id or ttl_seconds", body = crate::error::Problem,
            content_type = "application/problem+json"),
    ))]
pub async fn mint(
    State(state): State<AppState>,
    authorized: Authorized<OrdersWrite>,
    body: JsonBody<MintRequest>,
) -> Result<Response, ApiError> {
    let caller = authorized.caller;
    if caller.customer.is_some() {
        return Err(ApiError::TokenCannot(Scope::OrdersWrite));
    }
    let (customer, ttl) = body.parsed.validate()?;
    let (token, claims) = state.signer.mint(caller.key.id, &customer, ttl, Utc::now());
    let mut response = (
        StatusCode::CREATED,
        Json(CustomerToken {
            token,
            customer_id: customer,
            expires_at: claims.expires_at(),
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
