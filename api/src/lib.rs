//! OrderFlow's HTTP API: a thin layer that validates requests, writes orders together with their first saga
//! job, and reads state back. All the saga's work happens in `orderflow-worker`.

mod error;
mod extract;
mod openapi;
mod routes;

use std::future::Future;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::Request;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// What every handler shares. The pool is the only state: the API keeps nothing in memory.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

/// The whole router, for `run` and for tests that want it without a socket.
pub fn router(pool: PgPool) -> Router {
    routes::router()
        .with_state(AppState { pool })
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown)
        .await
}
