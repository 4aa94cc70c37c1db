//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types by utoipa.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{self as r};

#[derive(OpenApi)]
#[openapi(
    info(title = "OrderFlow API", description = "Orders, stock and their saga."),
    paths(
        r::health_paths::healthz,
        r::health_paths::readyz,
        r::sku_paths::upsert,
        r::sku_paths::get,
        r::order_paths::create,
        r::order_paths::get,
        r::order_paths::list,
        r::order_paths::cancel,
        r::order_paths::events,
    ),
    components(schemas(
        crate::error::Problem,
        r::UpsertSkuRequest,
        r::SkuView,
        r::CreateOrderRequest,
        r::LineRequest,
        r::OrderView,
        r::PaymentView,
        r::OrderList,
        r::EventView,
    ))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
