//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use orderflow_shared::outbox;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: PostgreSQL answers. The body also says how far the outbox relay is behind.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "PostgreSQL answers; `outbox` has the relay's lag"),
    (status = 503, description = "PostgreSQL is unreachable", body = crate::error::Problem),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let outbox = outbox::stats(&state.pool).await.map_err(ApiError::Unavailable)?;
    Ok(Json(
        json!({"status": "ready", "database": "ok", "outbox": outbox}),
    ))
}

/// Prometheus text exposition. For now the outbox: its lag (age of the oldest unpublished event), how many
/// events wait, and how many were published per second over the last minute.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain"),
    (status = 503, description = "PostgreSQL is unreachable", body = crate::error::Problem),
))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = outbox::stats(&state.pool).await?;
    let mut body = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        body.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge(
        "orderflow_outbox_lag_seconds",
        "Age of the oldest event not yet published to NATS (0 when none).",
        stats.lag_seconds,
    );
    gauge(
        "orderflow_outbox_unpublished_events",
        "Events not yet published to NATS.",
        stats.unpublished as f64,
    );
    gauge(
        "orderflow_outbox_published_per_second",
        "Events published to NATS per second, averaged over the last minute.",
        stats.published_per_second,
    );
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}
