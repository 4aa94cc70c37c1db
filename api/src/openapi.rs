//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers and types by utoipa (which
//! collects the schemas the paths use). Paths are named by module, so each gets its module's tag.

use axum::Json;
use utoipa::OpenApi;

use crate::routes::{
    admin, admin_webhooks, customer_tokens, feed, health, locations, orders, provider_webhooks, refunds,
    returns, shipments, skus, stock,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "OrderFlow API", description = "Orders, stock and their saga."),
    paths(
        health::healthz,
        health::readyz,
        skus::upsert,
        skus::get,
        stock::adjust,
        stock::transfer,
        stock::movements,
        locations::list,
        locations::upsert,
        orders::create,
        orders::get,
        orders::list,
        orders::cancel,
        orders::events,
        shipments::create,
        shipments::list,
        refunds::create,
        refunds::list,
        returns::create,
        returns::list,
        feed::list,
        customer_tokens::mint,
        provider_webhooks::receive,
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
        admin::stock_drift,
        admin_webhooks::create,
        admin_webhooks::list,
        admin_webhooks::set_enabled,
        admin_webhooks::deliveries,
        admin_webhooks::delivery,
        admin_webhooks::replay,
        admin_webhooks::replay_range,
    ),
    modifiers(&BearerAuth, &KeyRefusals, &Contract)
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

/// A response whose body is an RFC 9457 problem (`application/problem+json`, schema `Problem`).
fn problem_response(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// What every `/v1` operation may answer before its handler runs: 401 (no, an unknown or a revoked key), 403 (a
/// key without the operation's scope) and 429 (past the key's rate, with `Retry-After`).
struct KeyRefusals;

impl utoipa::Modify for KeyRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            // The provider's webhooks authenticate by their signature, not a key.
            if !path.starts_with("/v1/") || path.starts_with("/v1/provider/") {
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
                    problem_response("No API key, or an unknown or revoked one").into(),
                );
                responses.insert(
                    "403".into(),
                    problem_response("The key lacks the scope this operation needs").into(),
                );
                responses.insert(
                    "429".into(),
                    problem_response("Past the key's rate; retry after `Retry-After` seconds").into(),
                );
            }
        }
    }
}

/// What every operation may answer besides its own outcomes, so that the document names every status and
/// content type the API really returns: each `{name}` of a path declared as a parameter (a UUID for `id`); each
/// error response's body as `application/problem+json` (RFC 9457); and the refusals that come before a handler
/// runs: a body's 400 (not JSON), 408 (stalled), 413 (too large), 415 (not labelled JSON) and 422 (a field); a
/// path or query parameter's 400 (not a UUID, given twice) and 422; 404 for a path naming what is not there;
/// 503 (PostgreSQL unreachable or past the API's timeouts, and for order creation past the saga backlog bound;
/// `Retry-After`); and `default`, any other problem.
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let in_path: Vec<String> = path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_owned)
                .collect();
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for name in &in_path {
                    if parameters
                        .iter()
                        .any(|p| p.name == *name && p.parameter_in == ParameterIn::Path)
                    {
                        continue;
                    }
                    let schema = match name.as_str() {
                        "id" => ObjectBuilder::new()
                            .schema_type(Type::String)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
                        _ => ObjectBuilder::new().schema_type(Type::String),
                    };
                    let parameter: Parameter = ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(schema))
                        .build();
                    parameters.push(parameter);
                }
                let has_body = operation.request_body.is_some();
                let has_query = parameters.iter().any(|p| p.parameter_in == ParameterIn::Query);
                let has_path = !in_path.is_empty();
                if parameters.is_empty() {
                    operation.parameters = None;
                }
                let responses = &mut operation.responses.responses;
                // Error bodies are problems, whatever the handler's annotation said.
                for (status, response) in responses.iter_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response
                        && !status.starts_with('2')
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response
                            .content
                            .insert("application/problem+json".to_owned(), content);
                    }
                }
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem_response(description).into());
                };
                if has_body {
                    add("400", "The body is not JSON");
                    add("408", "The body stopped arriving");
                    add("413", "The body is over 2 MB");
                    add("415", "The body is not labelled application/json");
                    add("422", "A field is missing, unknown or invalid; `field` names it");
                }
                if has_path || has_query {
                    add(
                        "400",
                        "A path id that is not a UUID, or a query parameter given twice",
                    );
                    add("422", "A parameter is invalid; `field` names it");
                }
                if has_path {
                    add("404", "Nothing with this id");
                }
                if !matches!(path.as_str(), "/healthz" | "/openapi.json") {
                    add(
                        "503",
                        "PostgreSQL is unreachable or the request ran past its time; see `Retry-After`",
                    );
                }
                add("default", "Any other error, as an RFC 9457 problem");
            }
        }
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
