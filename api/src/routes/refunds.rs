//! `POST /v1/orders/{id}/refunds` (captured money given back, by amount or by lines, under an Idempotency-Key)
//! and `GET /v1/orders/{id}/refunds`. Each handler extracts, calls one domain function
//! (`orderflow_shared::refund`) and shapes the answer.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderflow_shared::idempotency::Keyed;
use orderflow_shared::refund::{self, RefundRequest, Refunding};

use crate::caller::{Authorized, OrdersRead, RefundsWrite};
use crate::extract::{JsonBody, OrderId, idempotency_key};
use crate::routes::orders::must_see;
use crate::views::{self, RefundList, RefundView};
use crate::{ApiError, AppState};

/// Refunds captured money of an order, by amount or by lines: 202 with the refund, PENDING; the worker asks the
/// provider for it under the refund's own key (DONE), or the provider refuses it (FAILED, nothing refunded). Never
/// more than is captured and not refunded yet, under concurrency too: the order's lock orders the requests. A
/// repeat of the key replays the first answer.
#[utoipa::path(post, path = "/v1/orders/{id}/refunds", operation_id = "create_refund", security(("api_key" = ["refunds:write"])), request_body = RefundRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 202, description = "Accepted: the refund, PENDING", body = RefundView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 404, description = "No such order", body = crate::error::Problem),
        (status = 409, description = "More than is captured and not refunded (`refund-exceeds-captured`); more units of a line than were delivered and not refunded (`refund-exceeds-delivered`); nothing captured yet, or cancelled (`order-not-refundable`); the rest of the order being released (`order-releasing`); or a request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field (both or neither of amount and lines, an unknown reason, a sku that is not a line of the order), or the key was used with another request", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn create(
    State(state): State<AppState>,
    authorized: Authorized<RefundsWrite>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    body: JsonBody<RefundRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let valid = body.parsed.validate()?;
    let caller = authorized.caller.idempotency_scope();
    let fingerprint = refund::fingerprint(id, &body.value);
    let request = Refunding {
        order_id: id,
        refund: &valid,
        keyed: Keyed {
            caller: &caller,
            key,
            fingerprint: &fingerprint,
        },
    };
    let answer = refund::create(&state.pool, &state.announcer, &request, |made| {
        serde_json::to_value(RefundView::from(made.clone()))
    })
    .await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
    Ok((status, Json(answer.body)).into_response())
}

/// The order's refunds, oldest first, with what was captured, refunded and is still refundable.
#[utoipa::path(get, path = "/v1/orders/{id}/refunds", operation_id = "list_refunds", security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "The order's refunds, oldest first, and its money", body = RefundList),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    OrderId(id): OrderId,
) -> Result<Json<RefundList>, ApiError> {
    must_see(&state, &authorized.caller, id).await?;
    views::refunds(&state.pool, id).await.map(Json)
}
