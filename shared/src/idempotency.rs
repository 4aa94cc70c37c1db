//! Idempotency-Key records for order creation (`idempotency_keys`).
//!
//! A request takes a transaction-scoped advisory lock on its key first. If another request with the same key
//! holds it, that one is still in flight (409). Otherwise a stored record means a repeat: the same fingerprint
//! replays the stored response, another one is a misuse of the key (422). The record is written by the same
//! statement as the order ([`crate::order::insert`]), so an order and its key commit together or not at all.
//!
//! Order creation reads the lock and the stored record in one statement ([`crate::order::admit`]), so the
//! record is read in a snapshot taken just before the lock is won: a request that committed the same key in
//! between is not seen, and the second insert of the key fails on [`KEY_CONSTRAINT`] once the first has
//! committed. The caller then reads the key again and replays it.

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The key's primary key: violated only by a request that raced another with the same key (see above).
pub const KEY_CONSTRAINT: &str = "idempotency_keys_pkey";

/// SQL that takes the lock of the key in parameter `$n` for the rest of the transaction; true if it was free.
pub(crate) fn try_lock_sql(n: usize) -> String {
    format!("pg_try_advisory_xact_lock(hashtextextended('orderflow.idempotency:' || ${n}, 0))")
}

/// SHA-256 of the request body's canonical JSON (object keys sorted, whitespace dropped), so that formatting
/// differences do not count as a different request.
pub fn fingerprint(body: &Value) -> Vec<u8> {
    // serde_json's map is ordered by key (no preserve_order feature), so to_vec is canonical.
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// A key's record as stored: what a repeat of the request gets back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResponse {
    pub request_hash: Vec<u8>,
    pub order_id: Uuid,
    pub response_status: i32,
    pub response_body: Value,
}

/// A key's record to write with the order it created.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub response_status: u16,
    pub response_body: &'a Value,
}

/// The CTE that writes the record for the order in CTE `o`; its four parameters start at `$first`, in
/// `bind_record`'s order.
pub(crate) fn record_cte(first: usize) -> String {
    let [key, hash, status, body] = std::array::from_fn(|i| format!("${}", first + i));
    format!(
        r#"k as (insert into idempotency_keys (key, request_hash, order_id, response_status, response_body)
                 select {key}, {hash}, o.id, {status}, {body} from o)"#
    )
}

/// Binds `record_cte`'s four parameters, in order.
pub(crate) fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    record: &NewRecord<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(record.key)
        .bind(record.request_hash)
        .bind(i32::from(record.response_status))
        .bind(record.response_body)
}

/// Whether `error` is the second insert of a key (see the module's comment).
pub fn is_key_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.constraint() == Some(KEY_CONSTRAINT))
}
