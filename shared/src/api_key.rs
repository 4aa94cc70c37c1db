//! API keys (`api_keys`): who may call `/v1` and with which scopes, the way payment and commerce APIs hand out
//! secret keys (Stripe's restricted keys, Shopify's access scopes). A key is `ofk_` and 64 hex digits of
//! randomness; only its SHA-256 is stored, so the key is shown once, when it is created. Operators create, list
//! and revoke keys (admin API, CLI, dashboard), each act recorded in the admin audit with who did it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::input::FieldError;
use crate::settings::Role;

/// What every key starts with, so that secret scanners recognise one that leaked.
pub const PREFIX: &str = "ofk_";

/// What a key may do. Persisted by name (`orders:read`): never renamed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Scope {
    /// Read orders and their events.
    #[serde(rename = "orders:read")]
    OrdersRead,
    /// Create and cancel orders.
    #[serde(rename = "orders:write")]
    OrdersWrite,
    /// Read skus, their stock and prices.
    #[serde(rename = "catalog:read")]
    CatalogRead,
    /// Create skus and change their stock and prices.
    #[serde(rename = "catalog:write")]
    CatalogWrite,
    /// Read the event feed (every order's events).
    #[serde(rename = "events:read")]
    EventsRead,
    /// Record shipments of orders (the warehouse's).
    #[serde(rename = "fulfilment:write")]
    FulfilmentWrite,
    /// Refund orders' captured money (customer service's, or the back office's).
    #[serde(rename = "refunds:write")]
    RefundsWrite,
    /// Scrape the API's `/metrics` (when it is not on its own address, `ORDERFLOW_API_METRICS_ADDR`).
    #[serde(rename = "metrics:read")]
    MetricsRead,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Self::OrdersRead,
        Self::OrdersWrite,
        Self::CatalogRead,
        Self::CatalogWrite,
        Self::EventsRead,
        Self::FulfilmentWrite,
        Self::RefundsWrite,
        Self::MetricsRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrdersRead => "orders:read",
            Self::OrdersWrite => "orders:write",
            Self::CatalogRead => "catalog:read",
            Self::CatalogWrite => "catalog:write",
            Self::EventsRead => "events:read",
            Self::FulfilmentWrite => "fulfilment:write",
            Self::RefundsWrite => "refunds:write",
            Self::MetricsRead => "metrics:read",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// The scopes named in `names`, each once, in `ALL`'s order; `field` names where they came from.
    pub fn parse_list(field: &str, names: &[String]) -> Result<Vec<Scope>, FieldError> {
        if names.is_empty() {
            return Err(FieldError::new(field, "a key needs at least one scope"));
        }
        let mut scopes = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let scope = Self::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                FieldError::new(
                    format!("{field}[{i}]"),
                    format!("{name:?} is not one of {}", known.join(", ")),
                )
            })?;
            scopes.push(scope);
        }
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// `ofk_` and the key's next 8 characters, to tell keys apart.
    pub hint: String,
    pub scopes: Vec<Scope>,
    /// Requests per second it may make (bursts of twice as many), per API process.
    pub rate_per_second: i32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A key just created, with the secret shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The key itself: shown once, never stored.
    pub secret: String,
}

/// The SHA-256 under which a key is stored and looked up.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Whether `text` has the shape of a key (the prefix and 64 lower-case hex digits): anything else is refused
/// before a lookup.
pub fn looks_like_a_key(text: &str) -> bool {
    text.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.len() == 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// A key's row as it is read.
struct KeyRow {
    id: Uuid,
    name: String,
    hint: String,
    scopes: Vec<String>,
    rate_per_second: i32,
    created_by: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = sqlx::Error;

    fn try_from(row: KeyRow) -> Result<Self, Self::Error> {
        let scopes = row
            .scopes
            .iter()
            .map(|name| {
                Scope::parse(name)
                    .ok_or_else(|| sqlx::Error::Decode(format!("{name:?} is not a known Scope").into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: row.id,
            name: row.name,
            hint: row.hint,
            scopes,
            rate_per_second: row.rate_per_second,
            created_by: row.created_by,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// What an operator asks for when creating a key.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// Who or what uses it, e.g. `storefront` (1–100 characters).
    pub name: String,
    /// At least one of `orders:read`, `orders:write`, `catalog:read`, `catalog:write`, `events:read`, `metrics:read`.
    pub scopes: Vec<String>,
    /// Requests per second (default `ORDERFLOW_API_KEY_RATE`).
    pub rate_per_second: Option<i32>,
}

/// The most requests per second a key can be given.
pub const MAX_RATE: i32 = 100_000;

/// Creates a key for `by` (an operator) and records the act, in the caller's transaction; returns it with its
/// secret, which is not stored.
pub async fn create(
    conn: &mut PgConnection,
    request: &NewKeyRequest,
    default_rate: i32,
    by: &str,
    role: Role,
) -> Result<CreatedKey, CreateKeyError> {
    let name = crate::input::required_text("name", &request.name)?;
    if name.chars().count() > 100 {
        return Err(FieldError::new("name", "must be at most 100 characters").into());
    }
    let scopes = Scope::parse_list("scopes", &request.scopes)?;
    let rate = request.rate_per_second.unwrap_or(default_rate);
    if !(1..=MAX_RATE).contains(&rate) {
        return Err(FieldError::new(
            "rate_per_second",
            format!("must be a whole number from 1 to {MAX_RATE}"),
        )
        .into());
    }
    let secret = new_secret();
    let id = Uuid::now_v7();
    let hint = format!("{}…", &secret[..PREFIX.len() + 8]);
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let row = sqlx::query_as!(
        KeyRow,
        r#"with k as (
               insert into api_keys (id, name, hint, secret_hash, scopes, rate_per_second, created_by)
               values ($1, $2, $3, $4, $5, $6, $7)
               returning id, name, hint, scopes, rate_per_second, created_by, created_at, last_used_at, revoked_at
           ),
           audit as (
               insert into admin_actions (api_key_id, action, actor, role, outcome)
               select k.id, 'key_create', $7, $8, 'created key ' || k.hint from k
           )
           select id as "id!", name as "name!", hint as "hint!", scopes as "scopes!",
                  rate_per_second as "rate_per_second!", created_by as "created_by!", created_at as "created_at!",
                  last_used_at, revoked_at
           from k"#,
        id,
        name,
        hint,
        hash(&secret),
        &names as &[&str],
        rate,
        by,
        role.as_str()
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(CreatedKey {
        key: row.try_into()?,
        secret,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The key a request presents, if it exists and is not revoked.
pub async fn find_by_secret(
    executor: impl PgExecutor<'_>,
    secret: &str,
) -> Result<Option<ApiKey>, sqlx::Error> {
    let row = sqlx::query_as!(
        KeyRow,
        r#"select id, name, hint, scopes, rate_per_second, created_by, created_at, last_used_at, revoked_at
           from api_keys where secret_hash = $1 and revoked_at is null"#,
        hash(secret)
    )
    .fetch_optional(executor)
    .await?;
    row.map(ApiKey::try_from).transpose()
}

/// Key `id`, if it exists and is not revoked (the key that minted a customer token).
pub async fn find_live(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    let row = sqlx::query_as!(
        KeyRow,
        r#"select id, name, hint, scopes, rate_per_second, created_by, created_at, last_used_at, revoked_at
           from api_keys where id = $1 and revoked_at is null"#,
        id
    )
    .fetch_optional(executor)
    .await?;
    row.map(ApiKey::try_from).transpose()
}

/// Every key, newest first, revoked ones too.
pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<ApiKey>, sqlx::Error> {
    let rows = sqlx::query_as!(
        KeyRow,
        r#"select id, name, hint, scopes, rate_per_second, created_by, created_at, last_used_at, revoked_at
           from api_keys order by created_at desc, id desc"#
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(ApiKey::try_from).collect()
}

/// Revokes key `id` for `by` and records the act, in one statement; the key as it now is, `None` for a key that
/// does not exist. Revoking a revoked key changes nothing and records nothing.
pub async fn revoke(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    by: &str,
    role: Role,
) -> Result<Option<ApiKey>, sqlx::Error> {
    let row = sqlx::query_as!(
        KeyRow,
        r#"with revoked as (
               update api_keys set revoked_at = now(), updated_at = now()
               where id = $1 and revoked_at is null
               returning id, hint
           ),
           audit as (
               insert into admin_actions (api_key_id, action, actor, role, outcome)
               select revoked.id, 'key_revoke', $2, $3, 'revoked key ' || revoked.hint from revoked
           )
           select id, name, hint, scopes, rate_per_second, created_by, created_at, last_used_at,
                  coalesce(revoked_at, (select now() from revoked)) as revoked_at
           from api_keys where id = $1"#,
        id,
        by,
        role.as_str()
    )
    .fetch_optional(executor)
    .await?;
    row.map(ApiKey::try_from).transpose()
}

/// Records that the keys were used now (the API batches these: at most once a minute per key and process).
pub async fn touch(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!("update api_keys set last_used_at = now() where id = any($1)", ids)
        .execute(executor)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_recognisable_random_and_stored_by_hash_only() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(looks_like_a_key(&a) && looks_like_a_key(&b), "{a}");
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
        for not_a_key in [
            "",
            "ofk_",
            "ofk_XYZ",
            "sk_live_0123",
            &a[..a.len() - 1],
            &a.to_uppercase(),
        ] {
            assert!(!looks_like_a_key(not_a_key), "{not_a_key}");
        }
    }

    #[test]
    fn scopes_parse_by_name_and_an_unknown_one_is_named_by_its_position() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Scope::parse_list("scopes", &names(&["orders:write", "orders:read", "orders:write"])),
            Ok(vec![Scope::OrdersRead, Scope::OrdersWrite])
        );
        let wrong = Scope::parse_list("scopes", &names(&["orders:read", "orders:delete"])).unwrap_err();
        assert_eq!(wrong.field, "scopes[1]");
        assert_eq!(Scope::parse_list("scopes", &[]).unwrap_err().field, "scopes");
        for scope in Scope::ALL {
            assert_eq!(
                serde_json::to_value(scope).ok(),
                Some(serde_json::json!(scope.as_str()))
            );
        }
    }
}
