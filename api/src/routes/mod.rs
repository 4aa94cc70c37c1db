//! The API's routes, one module per resource.

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
        .fallback(|uri: Uri| async move {
            crate::ApiError::NotFound {
                what: "route",
                id: uri.path().to_owned(),
            }
        })
}
