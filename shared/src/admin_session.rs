//! The dashboard's sign-in sessions (`admin_sessions`): a random id in the browser's cookie, its hash here with
//! the admin token that opened it, an expiry, and a sign-out. See the migration for why each is kept.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

/// How long a session lasts from sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A new session id: 32 random bytes as 64 hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 under which a session id or an admin token is kept.
pub fn hash(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// Opens session `id` for the admin token `token` (named `name`), until `LIFETIME` from now; deletes sessions that
/// ended more than a day ago. Returns when it expires.
pub async fn open(
    executor: impl PgExecutor<'_> + Copy,
    id: &str,
    token: &str,
    name: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query!("delete from admin_sessions where expires_at < now() - interval '1 day'")
        .execute(executor)
        .await?;
    sqlx::query_scalar!(
        "insert into admin_sessions (id_hash, token_hash, admin_name, expires_at)
         values ($1, $2, $3, now() + make_interval(secs => $4)) returning expires_at",
        hash(id),
        hash(token),
        name,
        LIFETIME.as_secs_f64()
    )
    .fetch_one(executor)
    .await
}

/// The hash of the admin token that opened session `id`, if the session is open (not expired, not signed out).
pub async fn token_of(executor: impl PgExecutor<'_>, id: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "select token_hash from admin_sessions
         where id_hash = $1 and revoked_at is null and expires_at > now()",
        hash(id)
    )
    .fetch_optional(executor)
    .await
}

/// Signs session `id` out: it never works again.
pub async fn close(executor: impl PgExecutor<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update admin_sessions set revoked_at = now() where id_hash = $1 and revoked_at is null",
        hash(id)
    )
    .execute(executor)
    .await?;
    Ok(())
}
