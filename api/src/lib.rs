//! OrderFlow's HTTP API: a thin layer that validates requests, writes orders together with their first saga
//! job, and reads state back. All the saga's work happens in `orderflow-worker`.

mod auth;
mod error;
mod extract;
mod openapi;
mod routes;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::Request;
use orderflow_shared::settings::AdminSettings;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// What every handler shares: the pool and the admin settings. The API keeps no other state.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub admin: Arc<AdminSettings>,
}

/// The whole router, for `run` and for tests that want it without a socket.
pub fn router(pool: PgPool, admin: AdminSettings) -> Router {
    routes::router()
        .with_state(AppState {
            pool,
            admin: Arc::new(admin),
        })
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            tracing::info_span!("http", method = %request.method(), route, uri = %request.uri())
        }))
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    admin: AdminSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(pool, admin))
        .with_graceful_shutdown(shutdown)
        .await
}
