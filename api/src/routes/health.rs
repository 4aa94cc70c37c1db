//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use orderflow_shared::queue::views as queue_views;
use orderflow_shared::{admin, outbox};
use serde_json::{Value, json};

use crate::caller::{Authorized, MetricsRead};
use crate::{ApiError, AppState};

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: PostgreSQL answers. The body also says how far the outbox relay is behind.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", responses(
    (status = 200, description = "PostgreSQL answers; `outbox` has the relay's lag"),
    (status = 503, description = "PostgreSQL is unreachable", body = crate::error::Problem),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let outbox = outbox::stats(&state.pool).await.map_err(ApiError::Unavailable)?;
    Ok(Json(
        json!({"status": "ready", "database": "ok", "outbox": outbox}),
    ))
}

/// Prometheus text exposition: this process's own metrics (HTTP latency by route and status; in `orderflow dev`
/// also the worker's step durations and compensations) and, read from PostgreSQL at scrape time, the queues'
/// depth and oldest pending age, the stuck sagas and the outbox.
///
/// On the API's address it needs a key with `metrics:read`; with `ORDERFLOW_API_METRICS_ADDR` set it is served
/// there instead, to whoever reaches that address (`open_metrics`), and not here.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", security(("api_key" = ["metrics:read"])), responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain"),
    (status = 503, description = "PostgreSQL is unreachable", body = crate::error::Problem),
))]
pub async fn metrics(
    State(state): State<AppState>,
    _caller: Authorized<MetricsRead>,
) -> Result<Response, ApiError> {
    open_metrics(State(state)).await
}

/// `/metrics` on its own address (`ORDERFLOW_API_METRICS_ADDR`), with no key.
pub async fn open_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    for queue in queue_views::queue_stats(&state.pool).await? {
        for (kind, count) in [
            ("pending", queue.pending),
            ("scheduled", queue.scheduled),
            ("running", queue.running),
            ("failed", queue.failed),
            ("dead", queue.dead),
        ] {
            metrics::gauge!("orderflow_queue_jobs", "queue" => queue.queue.clone(), "state" => kind)
                .set(count as f64);
        }
        metrics::gauge!("orderflow_queue_oldest_pending_seconds", "queue" => queue.queue.clone())
            .set(queue.oldest_pending_seconds.unwrap_or(0.0));
    }
    metrics::gauge!("orderflow_stuck_sagas")
        .set(admin::stuck_count(&state.pool, state.admin.stuck_after).await? as f64);
    let outbox = outbox::stats(&state.pool).await?;
    metrics::gauge!("orderflow_outbox_lag_seconds").set(outbox.lag_seconds);
    metrics::gauge!("orderflow_outbox_unpublished_events").set(outbox.unpublished as f64);
    metrics::gauge!("orderflow_outbox_published_per_second").set(outbox.published_per_second);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        orderflow_shared::telemetry::metrics().render(),
    )
        .into_response())
}
