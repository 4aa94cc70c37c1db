//! The API's routes, one module per resource.

pub(crate) mod admin;
pub(crate) mod admin_webhooks;
pub(crate) mod customer_tokens;
pub(crate) mod dashboard;
pub(crate) mod dashboard_webhooks;
pub(crate) mod feed;
pub(crate) mod health;
pub(crate) mod locations;
pub(crate) mod orders;
pub(crate) mod provider_webhooks;
pub(crate) mod refunds;
pub(crate) mod returns;
pub(crate) mod shipments;
pub(crate) mod skus;
pub(crate) mod stock;

use axum::Router;
use axum::http::Uri;
use axum::routing::{get, post, put};

use crate::{AppState, caller};

/// Every route. Those under `/v1` need an API key (`crate::caller`); each handler also names the scope it needs.
pub fn router(state: AppState, metrics_here: bool) -> Router<AppState> {
    let v1 = Router::new()
        .route("/v1/skus/{sku}", put(skus::upsert).get(skus::get))
        .route("/v1/skus/{sku}/adjustments", post(stock::adjust))
        .route("/v1/skus/{sku}/transfers", post(stock::transfer))
        .route("/v1/skus/{sku}/movements", get(stock::movements))
        .route("/v1/locations", get(locations::list))
        .route("/v1/locations/{code}", put(locations::upsert))
        .route("/v1/orders", post(orders::create).get(orders::list))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/events", get(orders::events))
        .route(
            "/v1/orders/{id}/shipments",
            post(shipments::create).get(shipments::list),
        )
        .route(
            "/v1/orders/{id}/refunds",
            post(refunds::create).get(refunds::list),
        )
        .route(
            "/v1/orders/{id}/returns",
            post(returns::create).get(returns::list),
        )
        .route("/v1/events", get(feed::list))
        .route("/v1/customer_tokens", post(customer_tokens::mint))
        .route_layer(axum::middleware::from_fn_with_state(state, caller::require_key));
    let metrics = match metrics_here {
        true => Router::new().route("/metrics", get(health::metrics)),
        false => Router::new(),
    };
    let dashboard = Router::new()
        .route("/admin", get(dashboard::overview))
        .route("/admin/login", post(dashboard::login))
        .route("/admin/logout", post(dashboard::logout))
        .route("/admin/sagas/{id}", get(dashboard::saga))
        .route("/admin/sagas/{id}/{action}", post(dashboard::saga_action))
        .route("/admin/keys", get(dashboard::keys).post(dashboard::create_key))
        .route("/admin/keys/{id}/revoke", post(dashboard::revoke_key))
        .route(
            "/admin/webhooks",
            get(dashboard_webhooks::list).post(dashboard_webhooks::create),
        )
        .route("/admin/webhooks/{id}", get(dashboard_webhooks::endpoint))
        .route(
            "/admin/webhooks/{id}/replay",
            post(dashboard_webhooks::replay_range),
        )
        .route(
            "/admin/webhooks/{id}/{action}",
            post(dashboard_webhooks::set_enabled),
        )
        .route(
            "/admin/webhooks/deliveries/{id}",
            get(dashboard_webhooks::delivery),
        )
        .route(
            "/admin/webhooks/deliveries/{id}/replay",
            post(dashboard_webhooks::replay),
        )
        .layer(axum::middleware::map_response(crate::session::security_headers));
    // No key: the provider's signature is what authenticates it, over a body read whole before anything else.
    let provider = Router::new().route(
        "/v1/provider/webhooks",
        post(provider_webhooks::receive).layer(axum::extract::DefaultBodyLimit::max(
            orderflow_shared::provider_event::MAX_BODY_BYTES,
        )),
    );
    Router::new()
        .merge(v1)
        .merge(provider)
        .merge(metrics)
        .merge(dashboard)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/admin/v1/queues", get(admin::queues))
        .route("/admin/v1/sagas", get(admin::sagas))
        .route("/admin/v1/sagas/{id}", get(admin::saga))
        .route("/admin/v1/sagas/{id}/retry", post(admin::retry))
        .route("/admin/v1/sagas/{id}/compensate", post(admin::compensate))
        .route("/admin/v1/sagas/{id}/resolve", post(admin::resolve))
        .route("/admin/v1/keys", get(admin::keys).post(admin::create_key))
        .route("/admin/v1/keys/{id}/revoke", post(admin::revoke_key))
        .route("/admin/v1/stock/drift", get(admin::stock_drift))
        .route(
            "/admin/v1/webhook_endpoints",
            get(admin_webhooks::list).post(admin_webhooks::create),
        )
        .route(
            "/admin/v1/webhook_endpoints/{id}/deliveries",
            get(admin_webhooks::deliveries),
        )
        .route(
            "/admin/v1/webhook_endpoints/{id}/replay",
            post(admin_webhooks::replay_range),
        )
        .route(
            "/admin/v1/webhook_endpoints/{id}/{action}",
            post(admin_webhooks::set_enabled),
        )
        .route("/admin/v1/webhook_deliveries/{id}", get(admin_webhooks::delivery))
        .route(
            "/admin/v1/webhook_deliveries/{id}/replay",
            post(admin_webhooks::replay),
        )
        .fallback(|uri: Uri| async move {
            crate::ApiError::NotFound {
                what: "route",
                id: uri.path().to_owned(),
            }
        })
}

/// `/metrics` alone, without a key: what `ORDERFLOW_API_METRICS_ADDR` serves.
pub fn metrics_only() -> Router<AppState> {
    Router::new().route("/metrics", get(health::open_metrics))
}
