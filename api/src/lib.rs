//! OrderFlow's HTTP API: a thin layer that validates requests, writes orders together with their first saga
//! job, and reads state back. All the saga's work happens in `orderflow-worker`; every rule is in
//! `orderflow-shared`.
//!
//! # Layout
//! - `routes/`: one module per resource (`orders`, `skus`, `feed`, `health`, `admin`, `dashboard`); each handler
//!   extracts its input, calls one domain function of `orderflow-shared` and shapes the answer. No route module
//!   imports another.
//! - `views.rs`: the JSON shapes the API answers with and the reads that assemble them; `pages.rs` with
//!   `api/templates/`: the dashboard's HTML (askama, escaping by default).
//! - `error.rs`: `ApiError`, the one mapping of every failure to an HTTP status and an RFC 9457 problem.
//! - `extract.rs`: extractors whose rejections are problems naming the field; `auth.rs`: admin tokens and the
//!   dashboard's session cookie; `caller.rs`: API keys, scopes and rate limits on `/v1`; `admission.rs`: the
//!   saga backlog reading order creation is admitted by; `openapi.rs`: the generated OpenAPI document.
//! - `serve.rs`: the accept loop (header-read timeout, connection cap, graceful shutdown).
//! - here: the router with its layers (a handler runs detached from its client; request and body timeouts;
//!   every refusal a problem; latency by route) and `run`.

mod admission;
mod auth;
mod caller;
mod error;
mod extract;
mod openapi;
mod pages;
mod routes;
mod serve;
mod session;
mod views;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::StatusCode;
use axum::http::{Method, Request};
use axum::response::IntoResponse;
use orderflow_shared::customer_token::Signer;
use orderflow_shared::queue::announce::Announcer;
use orderflow_shared::settings::{AdminSettings, ApiSettings, KeySettings, ServerLimits};
use sqlx::PgPool;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use error::ApiError;

/// What every handler shares: the pool, the settings, the API keys seen lately (with their rate-limit buckets),
/// the customer tokens' signer and the last saga backlog reading. The API keeps no other state.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub admin: Arc<AdminSettings>,
    pub key_settings: Arc<KeySettings>,
    pub keys: Arc<caller::KeyCache>,
    /// Signs and verifies customer tokens (the `customer_tokens` server secret).
    pub signer: Arc<Signer>,
    /// The dashboard's CSRF key and failed sign-ins.
    pub dashboard: Arc<session::Guard>,
    /// The last saga backlog reading, which order creation is admitted by.
    pub admission: Arc<admission::Gate>,
    /// Wakes the first step's workers after a new order's commit.
    pub announcer: Announcer,
    /// How the payment provider's webhooks are checked.
    pub provider_webhooks: Arc<orderflow_shared::settings::ProviderWebhookSettings>,
    /// Whether merchants' webhook endpoints may be on this machine.
    pub webhook_allow_loopback: bool,
}

impl AppState {
    pub fn new(pool: PgPool, settings: &ApiSettings, signer: Signer, dashboard: session::Guard) -> Self {
        Self {
            admin: Arc::new(settings.admin.clone()),
            keys: Arc::new(caller::KeyCache::new(settings.keys.cache_ttl)),
            key_settings: Arc::new(settings.keys.clone()),
            signer: Arc::new(signer),
            dashboard: Arc::new(dashboard),
            admission: Arc::new(admission::Gate::new(settings.admission)),
            announcer: Announcer::start(&pool),
            provider_webhooks: Arc::new(settings.provider_webhooks.clone()),
            webhook_allow_loopback: settings.webhook_allow_loopback,
            pool,
        }
    }
}

/// The API's router with its layers; `/metrics` on it unless `ORDERFLOW_API_METRICS_ADDR` serves it elsewhere.
pub fn router(state: AppState, settings: &ApiSettings) -> Router {
    layered(
        routes::router(state.clone(), settings.metrics_addr.is_none()),
        state,
        &settings.limits,
    )
}

/// `routes` with what every request goes through: latency by route, a handler detached from its client, the
/// request and body timeouts, every refusal a problem, a trace span.
fn layered(routes: Router<AppState>, state: AppState, limits: &ServerLimits) -> Router {
    orderflow_shared::telemetry::metrics();
    routes
        .route_layer(axum::middleware::from_fn(track_http))
        .with_state(state)
        .layer(axum::middleware::from_fn(detach))
        // Outside `detach`: a request past its time is answered (503) while its handler finishes on its own.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(axum::middleware::map_response(error::problem_for_bare_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str)
                        .unwrap_or("unmatched");
                    tracing::info_span!("http", method = %request.method(), route, uri = %request.uri())
                })
                // A 5xx is not an error line per request: admission's 503s come by the thousand under load
                // (34,000 ERROR lines in one overload run), and `ApiError` already logs what has a cause (a
                // 500 at ERROR, PostgreSQL unavailable at WARN). Counted by status in the request metric.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// Runs each request's handler in its own task, so a client that hangs up does not cancel it halfway. Dropping
/// a handler inside `Pool::begin` leaves a pooled PostgreSQL connection inside a transaction nobody ends (sqlx
/// 0.9.0, launchbadge/sqlx#4393): the chaos test met it as an Idempotency-Key "in flight" for minutes.
async fn detach(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(error) => ApiError::Internal(anyhow::anyhow!("request handler failed: {error}")).into_response(),
    }
}

/// Records each request's latency by method, route template and status
/// (`orderflow_http_request_duration_seconds`).
async fn track_http(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    // A made-up method is one label, not one each: a client cannot grow the metrics.
    let method: &'static str = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics::histogram!(
        "orderflow_http_request_duration_seconds",
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Serves the API on `listener` (and `/metrics` on `ORDERFLOW_API_METRICS_ADDR` when set) until `shutdown`
/// resolves, then finishes in-flight requests.
pub async fn run(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    settings: ApiSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let signer = Signer::load(&pool).await.map_err(std::io::Error::other)?;
    let dashboard = session::Guard::load(&pool).await.map_err(std::io::Error::other)?;
    let backlog_source = (*pool.connect_options()).clone();
    let state = AppState::new(pool, &settings, signer, dashboard);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(admission::watch(
        state.admission.clone(),
        backlog_source,
        until_stopped(stopped.clone()),
    ));
    if let Some(addr) = settings.metrics_addr {
        let metrics_listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving the API's metrics at /metrics (no key)");
        let metrics = layered(routes::metrics_only(), state.clone(), &settings.limits);
        let limits = settings.limits.clone();
        let stopped = until_stopped(stopped.clone());
        tokio::spawn(async move {
            if let Err(error) = serve::serve(metrics_listener, metrics, &limits, stopped).await {
                tracing::warn!(%error, "the metrics listener stopped");
            }
        });
    }
    let app = router(state, &settings);
    serve::serve(listener, app, &settings.limits, until_stopped(stopped)).await
}
