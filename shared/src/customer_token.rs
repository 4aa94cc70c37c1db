//! Customer tokens: what a storefront hands a customer's browser or app so that it can call OrderFlow directly
//! without a secret key (as Stripe's ephemeral and publishable keys do). A key with `orders:write` mints one for
//! a customer and a lifetime; it is signed, not stored, and expires.
//!
//! A token is `oft_<payload>.<signature>`: the payload is URL-safe base64 of `{"v":1,"k":<minting key's
//! id>,"c":<customer id>,"exp":<unix seconds>}`, the signature URL-safe base64 of HMAC-SHA256 over `oft_<payload>`
//! with the `customer_tokens` server secret (`server_secrets`, shared by every API process). Verifying checks the
//! signature in constant time, then the expiry; the API then checks that the minting key still exists and is not
//! revoked, so revoking a storefront's key ends every token it minted.
//!
//! What a token may do is fixed here ([`allows`]), not chosen when it is minted: create orders for its customer,
//! read and cancel that customer's orders, and read the catalogue if its key may.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::api_key::Scope;
use crate::input::{self, FieldError};

/// What every customer token starts with (secret scanners, and the API telling a token from a key).
pub const PREFIX: &str = "oft_";
/// Lifetimes a token may be minted with, in seconds: one minute to one day; an hour when not given.
pub const MIN_TTL: i64 = 60;
pub const MAX_TTL: i64 = 86_400;
pub const DEFAULT_TTL: i64 = 3_600;
/// Longer than any token this module mints (a 255-character customer id of 4-byte characters): anything longer
/// is refused before it is decoded.
const MAX_LEN: usize = 2_048;
/// The `server_secrets` row that signs tokens.
const SECRET_NAME: &str = "customer_tokens";

/// What a customer token says, once its signature and expiry are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The format's version.
    pub v: u8,
    /// The API key that minted it.
    pub k: Uuid,
    /// The customer it speaks for.
    pub c: String,
    /// When it expires, in Unix seconds.
    pub exp: i64,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// The scopes a customer token has, given the scopes of the key that minted it: its customer's orders (read,
/// create, cancel) and, if the key may, the catalogue's reads. Never the feed or the catalogue's writes.
pub fn allows(scope: Scope, key_allows: impl Fn(Scope) -> bool) -> bool {
    match scope {
        Scope::OrdersRead | Scope::OrdersWrite => true,
        Scope::CatalogRead => key_allows(Scope::CatalogRead),
        Scope::CatalogWrite
        | Scope::EventsRead
        | Scope::FulfilmentWrite
        | Scope::RefundsWrite
        | Scope::MetricsRead => false,
    }
}

/// `POST /v1/customer_tokens`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The customer the token speaks for (1–255 characters).
    pub customer_id: String,
    /// Lifetime in seconds, 60 to 86400; default 3600.
    pub ttl_seconds: Option<i64>,
}

impl MintRequest {
    /// The customer and lifetime, checked.
    pub fn validate(&self) -> Result<(String, i64), FieldError> {
        let customer = input::required_text("customer_id", &self.customer_id)?;
        let ttl = self.ttl_seconds.unwrap_or(DEFAULT_TTL);
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(FieldError::new(
                "ttl_seconds",
                format!("must be a whole number from {MIN_TTL} to {MAX_TTL}"),
            ));
        }
        Ok((customer, ttl))
    }
}

/// Why a presented token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the customer token is malformed")]
    Malformed,
    #[error("the customer token's signature does not verify")]
    BadSignature,
    #[error("the customer token has expired")]
    Expired,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: crate::server_secret::hmac(secret),
        }
    }

    /// The signer of every API process: the `customer_tokens` server secret, created by the first process that
    /// asks for it.
    pub async fn load(executor: impl PgExecutor<'_> + Copy) -> Result<Self, sqlx::Error> {
        Ok(Self::new(
            &crate::server_secret::load(executor, SECRET_NAME).await?,
        ))
    }

    fn signature(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac
    }

    /// A token for `customer`, minted by key `key`, valid until `now + ttl` seconds.
    pub fn mint(&self, key: Uuid, customer: &str, ttl: i64, now: DateTime<Utc>) -> (String, Claims) {
        let claims = Claims {
            v: 1,
            k: key,
            c: customer.to_owned(),
            exp: now.timestamp() + ttl,
        };
        let payload = serde_json::json!({"v": claims.v, "k": claims.k, "c": claims.c, "exp": claims.exp});
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload.to_string()));
        let signature = URL_SAFE_NO_PAD.encode(self.signature(&signed).finalize().into_bytes());
        (format!("{signed}.{signature}"), claims)
    }

    /// The claims of a token this signer made that has not expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        if token.len() > MAX_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        self.signature(signed)
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.v != 1 {
            return Err(TokenError::Malformed);
        }
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let key = Uuid::now_v7();
        let (token, claims) = signer.mint(key, "Zoë", 60, now());
        assert!(token.starts_with("oft_"));
        assert_eq!(signer.verify(&token, now()), Ok(claims.clone()));
        assert_eq!(claims.c, "Zoë");
        assert_eq!(claims.k, key);
        assert_eq!(
            signer.verify(&token, now() + chrono::Duration::seconds(59)),
            Ok(claims)
        );
        assert_eq!(
            signer.verify(&token, now() + chrono::Duration::seconds(60)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_changed_or_foreign_token_does_not_verify() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let (token, _) = signer.mint(Uuid::now_v7(), "alice", 600, now());
        let other = Signer::new(b"another secret, another deployment");
        assert_eq!(other.verify(&token, now()), Err(TokenError::BadSignature));

        // The same signature on a payload that names another customer.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(&signed[4..]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(payload.replace("alice", "bob__"));
        assert_eq!(
            signer.verify(&format!("oft_{forged}.{signature}"), now()),
            Err(TokenError::BadSignature)
        );
        for malformed in [
            "oft_",
            "oft_.",
            "ofk_abc.def",
            "oft_abc",
            "oft_!!.!!",
            &"oft_a.b".repeat(400),
        ] {
            assert!(signer.verify(malformed, now()).is_err(), "{malformed}");
        }
    }

    #[test]
    fn a_token_never_reads_the_feed_or_writes_the_catalogue() {
        for key_has_everything in [true, false] {
            let key = |_| key_has_everything;
            assert!(allows(Scope::OrdersRead, key));
            assert!(allows(Scope::OrdersWrite, key));
            assert_eq!(allows(Scope::CatalogRead, key), key_has_everything);
            assert!(!allows(Scope::CatalogWrite, key));
            assert!(!allows(Scope::EventsRead, key));
            assert!(!allows(Scope::MetricsRead, key));
        }
    }

    #[test]
    fn lifetimes_are_bounded() {
        let request = |ttl| MintRequest {
            customer_id: "c".to_owned(),
            ttl_seconds: ttl,
        };
        assert_eq!(request(None).validate(), Ok(("c".to_owned(), DEFAULT_TTL)));
        assert_eq!(request(Some(MAX_TTL)).validate(), Ok(("c".to_owned(), MAX_TTL)));
        for bad in [0, 59, MAX_TTL + 1, -1] {
            assert_eq!(
                request(Some(bad)).validate().map_err(|e| e.field),
                Err("ttl_seconds".to_owned())
            );
        }
    }
}
