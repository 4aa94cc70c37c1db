//! `POST /v1/orders/{id}/shipments` (the warehouse ships some of a shipment order's units, under an
//! Idempotency-Key) and `GET /v1/orders/{id}/shipments`. Each handler extracts, calls one domain function
//! (`orderflow_shared::shipment`) and shapes the answer.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderflow_shared::idempotency::Keyed;
use orderflow_shared::shipment::{self, ShipmentRequest, Shipping};

use crate::caller::{Authorized, FulfilmentWrite, OrdersRead};
use crate::extract::{JsonBody, OrderId, idempotency_key};
use crate::routes::orders::must_see;
use crate::views::{self, ShipmentList, ShipmentView};
use crate::{ApiError, AppState};

/// Ships units of a shipment order: 202 with the shipment, PENDING; the worker captures exactly their value from
/// the order's authorization and takes them out of stock (DONE), or the provider refuses the capture (FAILED,
/// nothing shipped). A repeat of the key replays the first answer.
#[utoipa::path(post, path = "/v1/orders/{id}/shipments", operation_id = "create_shipment", security(("api_key" = ["fulfilment:write"])), request_body = ShipmentRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 202, description = "Accepted: the shipment, PENDING", body = ShipmentView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 404, description = "No such order", body = crate::error::Problem),
        (status = 409, description = "More units of a line than are left to ship (`shipment-exceeds-order`); the order is not a shipment order, not paid yet or over (`order-not-shippable`); or a request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field (a sku that is not a line of the order), or the key was used with another request", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn create(
    State(state): State<AppState>,
    authorized: Authorized<FulfilmentWrite>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    body: JsonBody<ShipmentRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let valid = body.parsed.validate()?;
    let caller = authorized.caller.idempotency_scope();
    let fingerprint = shipment::fingerprint(id, &body.value);
    let request = Shipping {
        order_id: id,
        shipment: &valid,
        keyed: Keyed {
            caller: &caller,
            key,
            fingerprint: &fingerprint,
        },
    };
    let answer = shipment::create(&state.pool, &state.announcer, &request, |made| {
        serde_json::to_value(ShipmentView::from(made.clone()))
    })
    .await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
    Ok((status, Json(answer.body)).into_response())
}

/// The order's shipments, oldest first, with their lines and where each is.
#[utoipa::path(get, path = "/v1/orders/{id}/shipments", operation_id = "list_shipments", security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "The order's shipments, oldest first", body = ShipmentList),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    OrderId(id): OrderId,
) -> Result<Json<ShipmentList>, ApiError> {
    must_see(&state, &authorized.caller, id).await?;
    views::shipments(&state.pool, id).await.map(Json)
}
