//! Idempotency-Key records for order creation (`idempotency_keys`).
//!
//! A request takes a transaction-scoped advisory lock on its key first. If another request with the same key
//! holds it, that one is still in flight (409). Otherwise a stored record means a repeat: the same fingerprint
//! replays the stored response, another one is a misuse of the key (422).

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// SHA-256 of the request body's canonical JSON (object keys sorted, whitespace dropped), so that formatting
/// differences do not count as a different request.
pub fn fingerprint(body: &Value) -> Vec<u8> {
    // serde_json's map is ordered by key (no preserve_order feature), so to_vec is canonical.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// Tries to take the key's lock for the rest of the transaction; false if another transaction holds it.
pub async fn try_lock(conn: &mut PgConnection, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select pg_try_advisory_xact_lock(hashtextextended('orderflow.idempotency:' || $1, 0))",
    )
    .bind(key)
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub order_id: Uuid,
    pub response_status: i32,
    pub response_body: Value,
}

pub async fn find(executor: impl PgExecutor<'_>, key: &str) -> Result<Option<StoredResponse>, sqlx::Error> {
    sqlx::query_as(
        "select request_hash, order_id, response_status, response_body from idempotency_keys where key = $1",
    )
    .bind(key)
    .fetch_optional(executor)
    .await
}

pub async fn store(
    executor: impl PgExecutor<'_>,
    key: &str,
    request_hash: &[u8],
    order_id: Uuid,
    response_status: u16,
    response_body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"insert into idempotency_keys (key, request_hash, order_id, response_status, response_body)
           values ($1, $2, $3, $4, $5)"#,
    )
    .bind(key)
    .bind(request_hash)
    .bind(order_id)
    .bind(i32::from(response_status))
    .bind(response_body)
    .execute(executor)
    .await?;
    Ok(())
}
