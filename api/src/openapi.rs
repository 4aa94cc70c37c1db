//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types by utoipa (which
//! collects the schemas the paths use). Paths are named by module, so each gets its module's tag.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{feed, health, orders, skus};

#[derive(OpenApi)]
#[openapi(
    info(title = "OrderFlow API", description = "Orders, stock and their saga."),
    paths(
        health::healthz,
        health::readyz,
        skus::upsert,
        skus::get,
        orders::create,
        orders::get,
        orders::list,
        orders::cancel,
        orders::events,
        feed::list,
        health::metrics,
    )
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
