//! Orders: creation (order, lines, idempotency record and the first saga job in one transaction), reads,
//! the cursor-paginated list, cancellation and the event history.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use orderflow_shared::events::{self, EventRow};
use orderflow_shared::jobs::{self, Step, StepJob};
use orderflow_shared::money::{self, Currency, Quantity};
use orderflow_shared::order::{
    self, CancelReason, NewOrder, OrderLineRow, OrderRow, OrderStatus, Transition,
};
use orderflow_shared::payment::{self, PaymentRow};
use orderflow_shared::telemetry::TraceId;
use orderflow_shared::{idempotency, inventory};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::extract::{JsonBody, OptionalJson, OrderId, limit_param};
use crate::routes::skus::validate_sku;
use crate::{ApiError, AppState};

const MAX_TEXT: usize = 255;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    pub customer_id: String,
    pub currency: String,
    pub lines: Vec<LineRequest>,
    /// The payment method the provider charges, e.g. `pm_card_visa`.
    pub payment_token: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub status: String,
    pub customer_id: String,
    pub currency: String,
    pub total: i64,
    pub lines: Vec<LineView>,
    pub payment: Option<PaymentView>,
    pub cancel_reason: Option<String>,
    /// The customer's own words when they cancelled, if any.
    pub cancel_note: Option<String>,
    /// The saga step the order is in or last finished.
    pub current_step: Option<String>,
    /// Until when the reserved stock is held if payment has not started (RESERVED orders); past it the order
    /// is cancelled with `reservation_expired`.
    pub reserved_until: Option<DateTime<Utc>>,
    /// The last error a saga step met, if any; for a NEEDS_ATTENTION order, why it is parked.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub status: String,
    pub provider_ref: Option<String>,
    pub amount: i64,
}

impl OrderView {
    pub(crate) fn new(row: OrderRow, lines: Vec<OrderLineRow>, payment: Option<PaymentRow>) -> Self {
        Self {
            id: row.id,
            status: row.status,
            customer_id: row.customer_id,
            currency: row.currency,
            total: row.total,
            lines: lines
                .into_iter()
                .map(|l| LineView {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            payment: payment.map(|p| PaymentView {
                status: p.status,
                provider_ref: p.provider_ref,
                amount: p.amount,
            }),
            cancel_reason: row.cancel_reason,
            cancel_note: row.cancel_note,
            current_step: row.current_step,
            reserved_until: row.reserved_until,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The response with `Location: /v1/orders/{id}`.
fn with_location(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/orders/{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".to_owned()))?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Idempotency-Key header must be visible ASCII".to_owned()))?;
    if key.is_empty() || key.len() > MAX_TEXT {
        return Err(ApiError::BadRequest(
            "the Idempotency-Key header must be 1 to 255 characters".to_owned(),
        ));
    }
    Ok(key.to_owned())
}

fn required_text(field: &str, value: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if trimmed.chars().count() > MAX_TEXT {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// Checks everything that needs no database: field formats, quantity bounds, duplicate and empty lines.
fn validate(request: &CreateOrderRequest) -> Result<(Currency, Vec<(String, Quantity)>), ApiError> {
    let currency = Currency::parse(&request.currency).map_err(|e| ApiError::validation("currency", e))?;
    if request.lines.is_empty() {
        return Err(ApiError::validation("lines", "an order needs at least one line"));
    }
    if request.lines.len() > money::MAX_ORDER_LINES {
        return Err(ApiError::validation(
            "lines",
            format!("at most {} lines", money::MAX_ORDER_LINES),
        ));
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(request.lines.len());
    for (i, line) in request.lines.iter().enumerate() {
        validate_sku(&format!("lines[{i}].sku"), &line.sku)?;
        if !seen.insert(line.sku.as_str()) {
            return Err(ApiError::validation(
                format!("lines[{i}].sku"),
                format!(
                    "sku {:?} appears on more than one line; put the whole quantity on one",
                    line.sku
                ),
            ));
        }
        let quantity = Quantity::parse(line.quantity)
            .map_err(|e| ApiError::validation(format!("lines[{i}].quantity"), e))?;
        lines.push((line.sku.clone(), quantity));
    }
    Ok((currency, lines))
}

/// Accepts an order: 202 with the order in CREATED; the saga runs in the worker.
#[utoipa::path(post, path = "/v1/orders", request_body = CreateOrderRequest,
    params(("Idempotency-Key" = String, Header, description = "1–255 characters; a repeat replays the first response")),
    responses(
        (status = 202, description = "Accepted; the saga has been queued", body = OrderView),
        (status = 400, description = "Malformed body or missing Idempotency-Key", body = crate::error::Problem),
        (status = 409, description = "A request with this key is in flight", body = crate::error::Problem),
        (status = 422, description = "Invalid field, or the key was used with another body", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(order_id, trace_id))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateOrderRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceId::from_traceparent)
        .unwrap_or_else(TraceId::random);
    tracing::Span::current().record("trace_id", tracing::field::display(trace));
    let request = body.parsed;
    let customer_id = required_text("customer_id", &request.customer_id)?;
    let payment_token = required_text("payment_token", &request.payment_token)?;
    let (currency, lines) = validate(&request)?;
    let fingerprint = idempotency::fingerprint(&body.value);
    let creation = Creation {
        key: &key,
        fingerprint: &fingerprint,
        customer_id,
        payment_token,
        currency,
        lines,
        trace,
    };
    // A request that committed the same key just as this one took the key's lock is not seen by the first
    // read (see `idempotency`); this one's insert then fails on the key, and the second pass replays it.
    let outcome = match create_once(&state, &creation).await {
        Err(CreateError::KeyTaken) => create_once(&state, &creation).await,
        other => other,
    };
    let created = match outcome {
        Ok(created) => created,
        Err(CreateError::Api(error)) => return Err(error),
        // Taken again on the second pass: only a request still in flight could have.
        Err(CreateError::KeyTaken) => return Err(ApiError::IdempotencyKeyInFlight),
    };
    let mut response = with_location(
        (created.status, Json(created.body)).into_response(),
        created.order_id,
    );
    if !created.replayed
        && let Ok(value) = HeaderValue::from_str(&trace.traceparent(rand::random()))
    {
        response.headers_mut().insert("traceparent", value);
    }
    Ok(response)
}

/// The response to a create request: a new order's, or the stored one of a repeat.
struct Created {
    status: StatusCode,
    body: Value,
    order_id: Uuid,
    replayed: bool,
}

/// A validated create request.
struct Creation<'a> {
    key: &'a str,
    fingerprint: &'a [u8],
    customer_id: String,
    payment_token: String,
    currency: Currency,
    lines: Vec<(String, Quantity)>,
    trace: TraceId,
}

enum CreateError {
    Api(ApiError),
    /// Another request committed this Idempotency-Key after this one's first read.
    KeyTaken,
}

impl<E: Into<ApiError>> From<E> for CreateError {
    fn from(error: E) -> Self {
        Self::Api(error.into())
    }
}

/// One pass of order creation in one transaction, three statements: the key's lock with what creation reads
/// (`order::admit`), the order with everything it writes (`order::insert`), commit. Returns the response, the
/// stored one for a repeat.
async fn create_once(state: &AppState, request: &Creation<'_>) -> Result<Created, CreateError> {
    let mut tx = state.pool.begin().await?;
    let sku_codes: Vec<&str> = request.lines.iter().map(|(sku, _)| sku.as_str()).collect();
    let admission = order::admit(&mut tx, request.key, &sku_codes).await?;
    if !admission.key_held {
        return Err(ApiError::IdempotencyKeyInFlight.into());
    }
    #[cfg(feature = "failpoints")]
    hold_key_failpoint(request.key).await;
    if let Some(stored) = admission.stored {
        if stored.request_hash != request.fingerprint {
            return Err(ApiError::IdempotencyKeyReused.into());
        }
        let status = u16::try_from(stored.response_status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::ACCEPTED);
        return Ok(Created {
            status,
            body: stored.response_body,
            order_id: stored.order_id,
            replayed: true,
        });
    }

    let catalogue: HashMap<&str, &inventory::SkuRow> =
        admission.skus.iter().map(|s| (s.sku.as_str(), s)).collect();
    let currency = &request.currency;
    let mut priced = Vec::with_capacity(request.lines.len());
    for (i, (sku, quantity)) in request.lines.iter().enumerate() {
        let row = catalogue
            .get(sku.as_str())
            .ok_or_else(|| ApiError::validation(format!("lines[{i}].sku"), format!("unknown sku {sku:?}")))?;
        if row.currency != currency.as_str() {
            return Err(ApiError::validation(
                format!("lines[{i}].sku"),
                format!(
                    "sku {sku:?} is priced in {}, the order is in {currency}",
                    row.currency
                ),
            )
            .into());
        }
        priced.push((sku.clone(), *quantity, row.price));
    }
    let total = money::order_total(priced.iter().map(|(_, q, p)| (*q, *p)))
        .map_err(|e| ApiError::validation("lines", e))?;

    let new_order = NewOrder {
        id: Uuid::now_v7(),
        customer_id: request.customer_id.clone(),
        currency: currency.to_string(),
        total,
        payment_token: request.payment_token.clone(),
        trace_id: Some(request.trace.to_string()),
        lines: priced.into_iter().map(|(sku, q, p)| (sku, q.get(), p)).collect(),
        job_id: jobs::new_job_id(),
        created_at: admission.now,
    };
    tracing::Span::current().record("order_id", tracing::field::display(new_order.id));
    // The response is known before the insert (the rows as they will be written), so the idempotency record
    // goes in the same statement as the order, its lines, its event and its first job (reserve).
    let view = OrderView::new(new_order.row(), new_order.line_rows(), None);
    let body = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.into()))?;
    let record = idempotency::NewRecord {
        key: request.key,
        request_hash: request.fingerprint,
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: &body,
    };
    match order::insert(&mut tx, &new_order, &record).await {
        Err(error) if idempotency::is_key_taken(&error) => return Err(CreateError::KeyTaken),
        other => other?,
    }
    tx.commit().await?;
    tracing::info!(order_id = %view.id, total = view.total, "order accepted");
    Ok(Created {
        status: StatusCode::ACCEPTED,
        body,
        order_id: view.id,
        replayed: false,
    })
}

/// Failpoint `api.create_order.after_lock`: configured as `return(<key>)`, a create with that Idempotency-Key
/// holds the key's lock for a second, so a test can send the same key while the first is in flight.
#[cfg(feature = "failpoints")]
async fn hold_key_failpoint(key: &str) {
    if fail::eval("api.create_order.after_lock", |arg| arg)
        .flatten()
        .as_deref()
        == Some(key)
    {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub(crate) async fn load_view(executor: &sqlx::PgPool, id: Uuid) -> Result<OrderView, ApiError> {
    let row = order::find(executor, id).await?.ok_or(ApiError::NotFound {
        what: "order",
        id: id.to_string(),
    })?;
    let lines = order::lines(executor, id).await?;
    let payment = payment::find(executor, id).await?;
    Ok(OrderView::new(row, lines, payment))
}

#[utoipa::path(get, path = "/v1/orders/{id}", responses(
    (status = 200, description = "The order", body = OrderView),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn get(State(state): State<AppState>, OrderId(id): OrderId) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(load_view(&state.pool, id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListParams {
    /// Only orders in this status (upper case).
    pub status: Option<String>,
    pub customer_id: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/orders", params(ListParams), responses(
    (status = 200, description = "A page of orders, oldest first", body = OrderList),
    (status = 400, description = "Invalid parameter", body = crate::error::Problem),
))]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<OrderList>, ApiError> {
    let status = params
        .status
        .as_deref()
        .map(|s| {
            OrderStatus::parse(s).ok_or_else(|| {
                let known: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::validation("status", format!("{s:?} is not one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let limit = limit_param(params.limit.as_deref(), 20, 100)?;
    let after = params
        .after
        .as_deref()
        .map(|raw| {
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::validation("after", format!("{raw:?} is not a cursor")))
        })
        .transpose()?;
    let filter = order::ListFilter {
        status,
        customer_id: params.customer_id,
        after,
        limit,
    };
    let rows = order::list(&state.pool, &filter).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut lines: HashMap<Uuid, Vec<OrderLineRow>> = HashMap::new();
    for line in order::lines_of(&state.pool, &ids).await? {
        lines.entry(line.order_id).or_default().push(line);
    }
    let mut payments: HashMap<Uuid, PaymentRow> = payment::find_many(&state.pool, &ids)
        .await?
        .into_iter()
        .map(|p| (p.order_id, p))
        .collect();
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let orders = rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            OrderView::new(row, lines.remove(&id).unwrap_or_default(), payments.remove(&id))
        })
        .collect();
    Ok(Json(OrderList { orders, next_cursor }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Free text kept with the order (at most 500 characters).
    pub reason: Option<String>,
}

/// Starts cancellation: 202; compensations run in the worker. Repeating it is harmless.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", request_body(content = Option<CancelRequest>), responses(
    (status = 202, description = "Cancellation started (or already under way or done)", body = OrderView),
    (status = 404, description = "No such order", body = crate::error::Problem),
    (status = 409, description = "The order is fulfilled", body = crate::error::Problem),
))]
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> Result<Response, ApiError> {
    let note = body
        .and_then(|b| b.reason)
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > 500) {
        return Err(ApiError::validation("reason", "must be at most 500 characters"));
    }
    let mut tx = state.pool.begin().await?;
    let row = order::lock(&mut tx, id).await?.ok_or(ApiError::NotFound {
        what: "order",
        id: id.to_string(),
    })?;
    match row.status() {
        OrderStatus::Cancelling | OrderStatus::Cancelled | OrderStatus::NeedsAttention => {}
        OrderStatus::Fulfilled => {
            return Err(ApiError::Conflict {
                slug: "order-fulfilled",
                detail: format!("order {id} is FULFILLED and can no longer be cancelled"),
            });
        }
        OrderStatus::Created | OrderStatus::Reserved | OrderStatus::Paid => {
            order::transition(
                &mut tx,
                &row,
                Transition::StartCancel(CancelReason::CustomerRequest),
                Some(Step::ReleaseInventory.name()),
                note.as_deref(),
            )
            .await?;
            jobs::enqueue(
                &mut tx,
                Step::ReleaseInventory,
                StepJob {
                    order_id: id,
                    attempt: 1,
                    trace: None,
                },
                None,
            )
            .await?;
        }
    }
    tx.commit().await?;
    let view = load_view(&state.pool, id).await?;
    Ok(with_location(
        (StatusCode::ACCEPTED, Json(view)).into_response(),
        id,
    ))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub event_id: Uuid,
    pub sequence: i32,
    #[serde(rename = "type")]
    pub event_type: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            event_id: e.event_id,
            sequence: e.sequence,
            event_type: e.event_type,
            from: e.from_status,
            to: e.to_status,
            reason: e.reason,
            at: e.created_at,
        }
    }
}

/// The order's transitions, oldest first.
#[utoipa::path(get, path = "/v1/orders/{id}/events", responses(
    (status = 200, description = "The transitions in order", body = [EventView]),
    (status = 404, description = "No such order", body = crate::error::Problem),
))]
pub async fn events(
    State(state): State<AppState>,
    OrderId(id): OrderId,
) -> Result<Json<Vec<EventView>>, ApiError> {
    if order::find(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound {
            what: "order",
            id: id.to_string(),
        });
    }
    let events = events::for_order(&state.pool, id).await?;
    Ok(Json(events.into_iter().map(EventView::from).collect()))
}
