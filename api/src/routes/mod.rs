//! The API's routes, one module per resource.

pub(crate) mod admin;
pub(crate) mod dashboard;
pub(crate) mod feed;
pub(crate) mod health;
pub(crate) mod orders;
pub(crate) mod skus;

use axum::Router;
use axum::http::Uri;
use axum::routing::{get, post, put};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/v1/skus/{sku}", put(skus::upsert).get(skus::get))
        .route("/v1/orders", post(orders::create).get(orders::list))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/events", get(orders::events))
        .route("/v1/events", get(feed::list))
        .route("/metrics", get(health::metrics))
        .route("/admin", get(dashboard::overview))
        .route("/admin/login", post(dashboard::login))
        .route("/admin/logout", post(dashboard::logout))
        .route("/admin/sagas/{id}", get(dashboard::saga))
        .route("/admin/sagas/{id}/{action}", post(dashboard::saga_action))
        .route("/admin/v1/queues", get(admin::queues))
        .route("/admin/v1/sagas", get(admin::sagas))
        .route("/admin/v1/sagas/{id}", get(admin::saga))
        .route("/admin/v1/sagas/{id}/retry", post(admin::retry))
        .route("/admin/v1/sagas/{id}/compensate", post(admin::compensate))
        .route("/admin/v1/sagas/{id}/resolve", post(admin::resolve))
        .fallback(|uri: Uri| async move {
            crate::ApiError::NotFound {
                what: "route",
                id: uri.path().to_owned(),
            }
        })
}
