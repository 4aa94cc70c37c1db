//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The process can serve: PostgreSQL answers.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "PostgreSQL answers"),
    (status = 503, description = "PostgreSQL is unreachable", body = crate::error::Problem),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    sqlx::query("select 1")
        .execute(&state.pool)
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(Json(json!({"status": "ready", "database": "ok"})))
}
