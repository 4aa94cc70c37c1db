//! `POST /v1/orders/{id}/returns` (delivered units came back: restocked or written off, their refund following,
//! under an Idempotency-Key) and `GET /v1/orders/{id}/returns`. Each handler extracts, calls one domain function
//! (`orderflow_shared::returns`) and shapes the answer.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderflow_shared::api_key::Scope;
use orderflow_shared::idempotency::Keyed;
use orderflow_shared::returns::{self, ReturnRequest, Returning};

use crate::caller::{Authorized, FulfilmentWrite, OrdersRead};
use crate::extract::{JsonBody, OrderId, idempotency_key};
use crate::routes::orders::must_see;
use crate::views::{self, RefundView, ReturnList, ReturnRecorded, ReturnView};
use crate::{ApiError, AppState};

/// Records units of an order that came back: 201 with the return, its units restocked (when `restock`) in the same
/// transaction, and the refund of their value accepted (PENDING; the worker refunds it) unless `refund` is false.
/// A return with its refund needs `refunds:write` too.
/// A repeat of the key replays the first answer.
#[utoipa::path(post, path = "/v1/orders/{id}/returns", operation_id = "create_return", security(("api_key" = ["fulfilment:write"]), ("api_key" = ["fulfilment:write", "refunds:write"])), request_body = ReturnRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 201, description = "Recorded: the return (`return`) and the refund that follows it (`refund`, PENDING, or null)", body = ReturnRecorded),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 403, description = "A return with its refund (`\"refund\": true`, the default) from a key without `refunds:write` (`insufficient-scope`)", body = crate::error::Problem),
        (status = 404, description = "No such order", body = crate::error::Problem),
        (status = 409, description = "More units of a line than were delivered and not returned (`return-exceeds-delivered`); nothing delivered yet, or cancelled (`order-not-returnable`); a refund past what is refundable (`refund-exceeds-captured`: send `\"refund\": false` to record the return without one); the rest of the order being released (`order-releasing`); or a request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field (no `restock`, an unknown location or reason, a sku that is not a line of the order), or the key was used with another request", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn create(
    State(state): State<AppState>,
    authorized: Authorized<FulfilmentWrite>,
    OrderId(id): OrderId,
    headers: HeaderMap,
    body: JsonBody<ReturnRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let valid = body.parsed.validate()?;
    // The refund that follows moves money: a warehouse's key (fulfilment:write alone) records returns with
    // `"refund": false`, and the refund is customer service's (refunds:write).
    if valid.refund {
        authorized.caller.require(Scope::RefundsWrite)?;
    }
    let caller = authorized.caller.idempotency_scope();
    let fingerprint = returns::fingerprint(id, &body.value);
    let request = Returning {
        order_id: id,
        r#return: &valid,
        keyed: Keyed {
            caller: &caller,
            key,
            fingerprint: &fingerprint,
        },
    };
    let answer = returns::create(&state.pool, &state.announcer, &request, |made, refund| {
        serde_json::to_value(ReturnRecorded {
            made: ReturnView::from(made.clone()),
            refund: refund.map(|r| RefundView::from(r.clone())),
        })
    })
    .await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::CREATED);
    Ok((status, Json(answer.body)).into_response())
}

/// The order's returns, oldest first, with their lines and the refunds that followed them.
#[utoipa::path(get, path = "/v1/orders/{id}/returns", operation_id = "list_returns", security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "The order's returns, oldest first", body = ReturnList),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    OrderId(id): OrderId,
) -> Result<Json<ReturnList>, ApiError> {
    must_see(&state, &authorized.caller, id).await?;
    views::returns(&state.pool, id).await.map(Json)
}
