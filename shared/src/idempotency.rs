//! Idempotency-Key records for order creation (`idempotency_keys`).
//!
//! A key belongs to its caller (the API key that sent it): two callers may use the same key without colliding,
//! and the lock and the record below are the caller's key's. Records are kept for a retention (24 h by default)
//! and then purged by the reconciler ([`purge_expired`]); after that the key may be used again.
//!
//! A request takes a transaction-scoped advisory lock on its key first. If another request with the same key
//! holds it, that one is still in flight (409). Otherwise a stored record means a repeat: the same fingerprint
//! replays the stored response, another one is a misuse of the key (422). The record is written by the same
//! statement as the order ([`crate::order::create::insert`]), so an order and its key commit together or not at
//! all.
//!
//! Order creation reads the lock and the stored record in one statement ([`crate::order::create::admit`]), so the
//! record is read in a snapshot taken just before the lock is won: a request that committed the same key in
//! between is not seen, and the second insert of the key fails on [`KEY_CONSTRAINT`] once the first has
//! committed. The caller then reads the key again and replays it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The key's primary key: violated only by a request that raced another with the same key (see above).
pub const KEY_CONSTRAINT: &str = "idempotency_keys_pkey";

/// SHA-256 of the request body's canonical JSON (object keys sorted, whitespace dropped), so that formatting
/// differences do not count as a different request.
pub fn fingerprint(body: &Value) -> Vec<u8> {
    // serde_json's map is ordered by key (no preserve_order feature), so to_vec is canonical.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// A key's record as stored: what a repeat of the request gets back.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub order_id: Uuid,
    pub response_status: i32,
    pub response_body: Value,
}

/// Deletes up to `limit` records made more than `older_than` ago; returns how many. Their orders stay.
pub async fn purge_expired(
    executor: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"delete from idempotency_keys where (caller, key) in (
               select caller, key from idempotency_keys
               where created_at < now() - make_interval(secs => $1)
               limit $2 for update skip locked)"#,
        older_than.as_secs_f64(),
        limit
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(deleted)
}

/// Whether `error` is the second insert of a key (see the module's comment).
pub fn is_key_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.constraint() == Some(KEY_CONSTRAINT))
}
