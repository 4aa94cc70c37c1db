//! `/v1/orders`: create (the order, its first job and its Idempotency-Key record in one transaction), read,
//! list, cancel and the event history. Each handler extracts, calls one domain function
//! (`orderflow_shared::order`) and shapes the answer (`crate::views`).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_shared::idempotency;
use orderflow_shared::order::create::{self, Creation};
use orderflow_shared::order::request::CreateOrderRequest;
use orderflow_shared::order::{self, CancelRequest, ListQuery};
use orderflow_shared::telemetry::TraceId;
use uuid::Uuid;

use crate::admission::Admitted;
use crate::caller::{Authorized, Caller, OrdersRead, OrdersWrite};
use crate::extract::{JsonBody, OptionalJson, OrderId, idempotency_key};
use crate::views::{self, EventView, OrderList, OrderView};
use crate::{ApiError, AppState};

/// The response with `Location: /v1/orders/{id}`.
fn with_location(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/orders/{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Accepts an order: 202 with the order in CREATED; the saga runs in the worker.
#[utoipa::path(post, path = "/v1/orders", operation_id = "create_order", security(("api_key" = ["orders:write"])), request_body = CreateOrderRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 202, description = "Accepted; the saga has been queued", body = OrderView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 409, description = "A request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field, or the key was used with another body", body = crate::error::Problem),
        (status = 503, description = "The saga backlog is past the bound orders are admitted at (`overloaded`; nothing written: retry after `Retry-After` seconds with the same Idempotency-Key), or PostgreSQL is unreachable or the request ran past its time", body = crate::error::Problem),
    ))]
pub async fn create(
    State(state): State<AppState>,
    authorized: Authorized<OrdersWrite>,
    _admitted: Admitted,
    headers: HeaderMap,
    body: JsonBody<CreateOrderRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceId::from_traceparent)
        .unwrap_or_else(TraceId::random);
    let valid = body.parsed.validate()?;
    if !authorized.caller.sees(&valid.customer_id) {
        return Err(ApiError::Forbidden(format!(
            "a customer token creates orders for its own customer only, not for {:?}",
            valid.customer_id
        )));
    }
    let fingerprint = idempotency::fingerprint(&body.value);
    let caller = authorized.caller.idempotency_scope();
    let creation = Creation {
        order: &valid,
        caller: &caller,
        key,
        fingerprint: &fingerprint,
        trace,
    };
    let created = create::create(&state.pool, &state.announcer, &creation, |order| {
        serde_json::to_value(OrderView::created(order))
    })
    .await?;
    let status = StatusCode::from_u16(created.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = with_location((status, Json(created.body)).into_response(), created.order_id);
    if !created.replayed
        && let Ok(value) = HeaderValue::from_str(&trace.traceparent(rand::random()))
    {
        response.headers_mut().insert("traceparent", value);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/v1/orders/{id}", operation_id = "get_order", security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "The order", body = OrderView),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn get(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    OrderId(id): OrderId,
) -> Result<Json<OrderView>, ApiError> {
    let view = views::order(&state.pool, id).await?;
    if !authorized.caller.sees(&view.customer_id) {
        return Err(not_found(id));
    }
    Ok(Json(view))
}

/// What a customer token gets for another customer's order: the same 404 as for no order at all.
fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound {
        what: "order",
        id: id.to_string(),
    }
}

/// 404 unless the caller may see order `id` (a customer token: only its customer's). Costs a read only for a
/// customer token.
pub(crate) async fn must_see(state: &AppState, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    if caller.customer.is_none() {
        return Ok(());
    }
    match order::find(&state.pool, id).await? {
        Some(row) if caller.sees(&row.customer_id) => Ok(()),
        _ => Err(not_found(id)),
    }
}

#[utoipa::path(get, path = "/v1/orders", operation_id = "list_orders", params(ListQuery), security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "A page of orders, oldest first", body = OrderList),
    (status = 422, description = "Invalid parameter", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    Query(query): Query<ListQuery>,
) -> Result<Json<OrderList>, ApiError> {
    let mut filter = query.filter()?;
    // A customer token lists its customer's orders: another customer named in the filter finds none.
    if let Some(own) = authorized.caller.customer {
        if filter.customer_id.as_ref().is_some_and(|asked| *asked != own) {
            return Ok(Json(OrderList {
                orders: Vec::new(),
                next_cursor: None,
            }));
        }
        filter.customer_id = Some(own);
    }
    Ok(Json(views::orders(&state.pool, &filter).await?))
}

/// Starts cancellation: 202; compensations run in the worker. A partly shipped order (PARTIALLY_FULFILLED) releases
/// what did not ship instead and ends FULFILLED. Repeating it is harmless.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", operation_id = "cancel_order", security(("api_key" = ["orders:write"])), request_body(content = Option<CancelRequest>), responses(
    (status = 202, description = "Cancellation started (or already under way or done), or for a partly shipped order the release of what did not ship", body = OrderView),
    (status = 404, description = "No such order", body = crate::error::Problem),
    (status = 409, description = "The order is fulfilled (`order-fulfilled`), a shipment of it is on its way (`order-shipping`), or a refund of it (`order-refunding`)", body = crate::error::Problem),
))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    authorized: Authorized<OrdersWrite>,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> Result<Response, ApiError> {
    must_see(&state, &authorized.caller, id).await?;
    order::request_cancellation(&state.pool, id, &body.unwrap_or_default()).await?;
    let view = views::order(&state.pool, id).await?;
    Ok(with_location(
        (StatusCode::ACCEPTED, Json(view)).into_response(),
        id,
    ))
}

/// The order's transitions, oldest first.
#[utoipa::path(get, path = "/v1/orders/{id}/events", operation_id = "list_order_events", security(("api_key" = ["orders:read"])), responses(
    (status = 200, description = "The transitions in order", body = [EventView]),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn events(
    State(state): State<AppState>,
    authorized: Authorized<OrdersRead>,
    OrderId(id): OrderId,
) -> Result<Json<Vec<EventView>>, ApiError> {
    must_see(&state, &authorized.caller, id).await?;
    Ok(Json(views::events_of(&state.pool, id).await?))
}
