//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types by utoipa (which
//! collects the schemas the paths use). Paths are named by module, so each gets its module's tag.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{admin, feed, health, orders, skus};

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
        admin::queues,
        admin::sagas,
        admin::saga,
        admin::retry,
        admin::compensate,
        admin::resolve,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The admin API's bearer tokens, as an OpenAPI security scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
