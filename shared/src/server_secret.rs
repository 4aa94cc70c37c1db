//! Secrets the API processes share (`server_secrets`): each 32 random bytes, written by whichever process asks
//! for it first, so every process signs and verifies alike with nothing to configure. Customer tokens
//! (`customer_tokens`) and the dashboard's CSRF tokens (`dashboard_csrf`) are signed with them.

use hmac::{Hmac, KeyInit};
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

/// An HMAC-SHA256 keyed by `secret`: its key is one block (64 bytes), zero-padded as HMAC pads a shorter key,
/// filled by the secret's SHA-256 whatever the secret's length.
pub fn hmac(secret: &[u8]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(&Sha256::digest(secret));
    Hmac::new(&block.into())
}

/// Secret `name`: 32 random bytes, written by whichever process asks first.
pub async fn load(executor: impl PgExecutor<'_> + Copy, name: &str) -> Result<Vec<u8>, sqlx::Error> {
    let fresh: [u8; 32] = rand::random();
    sqlx::query!(
        "insert into server_secrets (name, secret) values ($1, $2) on conflict (name) do nothing",
        name,
        &fresh[..]
    )
    .execute(executor)
    .await?;
    sqlx::query_scalar!("select secret from server_secrets where name = $1", name)
        .fetch_one(executor)
        .await
}
