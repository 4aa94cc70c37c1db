//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types by utoipa (which
//! collects the schemas the paths use). Paths are named by module, so each gets its module's tag.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{admin, customer_tokens, feed, health, orders, skus};

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
        customer_tokens::mint,
        health::metrics,
        admin::queues,
        admin::sagas,
        admin::saga,
        admin::retry,
        admin::compensate,
        admin::resolve,
        admin::keys,
        admin::create_key,
        admin::revoke_key,
    ),
    modifiers(&BearerAuth, &KeyRefusals)
)]
pub struct ApiDoc;

/// The security schemes: `api_key` for `/v1` (`Authorization: Bearer ofk_…`, each operation listing the scopes
/// it needs) and `bearer` for the admin API's tokens.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ofk_ and 64 hex digits")
                    .description(Some("An API key; each operation lists the scopes it needs"))
                    .build(),
            ),
        );
    }
}

/// What every `/v1` operation may answer before its handler runs: 401 (no, an unknown or a revoked key), 403 (a
/// key without the operation's scope) and 429 (past the key's rate, with `Retry-After`).
struct KeyRefusals;

impl utoipa::Modify for KeyRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let refusal = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".into(),
                    refusal("No API key, or an unknown or revoked one").into(),
                );
                responses.insert(
                    "403".into(),
                    refusal("The key lacks the scope this operation needs").into(),
                );
                responses.insert(
                    "429".into(),
                    refusal("Past the key's rate; retry after `Retry-After` seconds").into(),
                );
            }
        }
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
