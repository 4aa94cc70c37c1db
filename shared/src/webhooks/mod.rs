//! Merchants' webhook endpoints (`webhook_endpoints`): where every order event is delivered, signed as Standard
//! Webhooks 1.0 sign (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">`), with the same event id and CloudEvents body as on NATS and the feed. [`delivery`]
//! fans events out to endpoints and records each attempt.
//!
//! An endpoint's secret is not stored. It is derived ([`secret`]) from the `webhook_endpoints` server secret, the
//! endpoint's id and its `generation`, shown once when the endpoint is made, and derived again to sign, as a
//! customer token is signed and not stored. Whoever reads the database reads the server secret too, so this
//! protects what encryption at rest with a key in the same database would, without a key to manage.

pub mod delivery;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::events::EventType;
use crate::input::{self, FieldError};

/// What every endpoint secret starts with, as Standard Webhooks' secrets do.
pub const PREFIX: &str = "whsec_";
/// The `server_secrets` row endpoint secrets are derived from.
pub const SERVER_SECRET: &str = "webhook_endpoints";
/// The longest URL an endpoint may have.
pub const MAX_URL: usize = 2_048;

/// Endpoint `id`'s secret of `generation`: `whsec_` and the base64 of 32 bytes, HMAC-SHA256 of
/// `webhook-endpoint:<id>:<generation>` under the server secret.
pub fn secret(server_secret: &[u8], id: Uuid, generation: i32) -> String {
    let mut mac = crate::server_secret::hmac(server_secret);
    mac.update(format!("webhook-endpoint:{id}:{generation}").as_bytes());
    format!("{PREFIX}{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` of `body` sent as message `id` at `timestamp`, under `secret` (`whsec_…`: the key is
/// the base64 after the prefix, decoded). `None` for a secret that is not such.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(PREFIX)?).ok()?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// An endpoint as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<String>,
    pub description: Option<String>,
    /// The secret's generation.
    pub generation: i32,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Since when its deliveries have failed without a success between (none: the last one succeeded).
    pub failing_since: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    fn from_row(row: &sqlx::postgres::PgRow) -> Self {
        Self {
            id: row.get("id"),
            url: row.get("url"),
            event_types: row.get("event_types"),
            description: row.get("description"),
            generation: row.get("generation"),
            enabled: row.get("enabled"),
            disabled_reason: row.get("disabled_reason"),
            failing_since: row.get("failing_since"),
            created_by: row.get("created_by"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        }
    }
}

macro_rules! endpoint_columns {
    () => {
        "id, url, event_types, description, generation, enabled, disabled_reason, failing_since, \
                       created_by, created_at, updated_at"
    };
}

/// Whether a delivery may go to `ip`: a public address, or this machine's when `allow_loopback`. Never a private,
/// link-local (a cloud's metadata service), shared, unspecified, multicast or broadcast one: an endpoint's URL
/// must not reach into the network OrderFlow runs in.
pub fn allowed_address(ip: std::net::IpAddr, allow_loopback: bool) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return allow_loopback;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A request for a new endpoint.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `https://…`; `http://` only to this machine (127.0.0.0/8, `localhost`, `[::1]`), for tests and dev.
    pub url: String,
    /// Event types (`order.paid`, …); none or empty: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl NewEndpoint {
    /// Checks the URL (this machine's only with `allow_loopback`) and the types, naming the field at fault.
    pub fn validate(&self, allow_loopback: bool) -> Result<(), FieldError> {
        check_url(&self.url, allow_loopback)?;
        for (i, kind) in self.event_types.iter().enumerate() {
            if EventType::parse(kind).is_none() {
                return Err(FieldError::new(
                    format!("event_types[{i}]"),
                    format!("{kind:?} is not an event type"),
                ));
            }
        }
        if self.event_types.len() > EventType::ALL.len() {
            return Err(FieldError::new("event_types", "names a type more than once"));
        }
        if let Some(description) = &self.description {
            input::check_plain("description", description)?;
            if description.chars().count() > 500 {
                return Err(FieldError::new("description", "must be at most 500 characters"));
            }
        }
        Ok(())
    }
}

/// An endpoint's URL: `https`, or `http` to this machine when `allow_loopback` (development); no address of the
/// network OrderFlow runs in ([`allowed_address`]; a name is checked again at each delivery, as it resolves); no
/// user info, no fragment, no whitespace.
pub fn check_url(url: &str, allow_loopback: bool) -> Result<(), FieldError> {
    let refuse = |message: &str| Err(FieldError::new("url", message));
    if url.len() > MAX_URL {
        return refuse("must be at most 2048 characters");
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("must be printable ASCII without spaces");
    }
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return refuse("must be an https:// URL (or http:// to this machine)"),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') || url.contains('#') {
        return refuse("must not carry user info or a fragment");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    if host.is_empty() {
        return refuse("has no host");
    }
    let address = host.parse::<std::net::IpAddr>().ok();
    let loopback = host.eq_ignore_ascii_case("localhost") || address.is_some_and(|ip| ip.is_loopback());
    if loopback && !allow_loopback {
        return refuse("must not be this machine (ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK is off)");
    }
    if address.is_some_and(|ip| !allowed_address(ip, allow_loopback)) {
        return refuse("must not be a private, link-local or otherwise internal address");
    }
    if !https && !loopback {
        return refuse("must be https:// (http:// only to this machine, in development)");
    }
    Ok(())
}

/// Makes an endpoint; answers it and its secret (shown this once), derived from `server_secret` (the
/// [`SERVER_SECRET`] row).
pub async fn create(
    conn: &mut PgConnection,
    request: &NewEndpoint,
    created_by: &str,
    server_secret: &[u8],
) -> Result<(Endpoint, String), sqlx::Error> {
    let id = Uuid::now_v7();
    let mut types = request.event_types.clone();
    types.sort();
    types.dedup();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // The fan-out's lock: no round reads the endpoints before this one commits and the feed after, so none can
    // move its cursor past events made after the endpoint without delivering them to it.
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(delivery::FAN_OUT_LOCK)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(concat!(
        "insert into webhook_endpoints (id, url, event_types, description, created_by)
         values ($1, $2, $3, $4, $5) returning ",
        endpoint_columns!(),
        ""
    ))
    .bind(id)
    .bind(&request.url)
    .bind(&types)
    .bind(&request.description)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let endpoint = Endpoint::from_row(&row);
    let secret = secret(server_secret, endpoint.id, endpoint.generation);
    Ok((endpoint, secret))
}

/// An endpoint with how its deliveries stand.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
}

/// Every endpoint, oldest first, with its deliveries' counts.
pub async fn list(executor: impl PgExecutor<'_>) -> Result<Vec<EndpointView>, sqlx::Error> {
    let rows = sqlx::query(concat!("select ", endpoint_columns!(), ",
                (select count(*) from webhook_deliveries d where d.endpoint_id = w.id and d.status = 'PENDING') as pending,
                (select count(*) from webhook_deliveries d where d.endpoint_id = w.id and d.status = 'DELIVERED') as delivered,
                (select count(*) from webhook_deliveries d where d.endpoint_id = w.id and d.status = 'DEAD') as dead
         from webhook_endpoints w order by created_at, id"))
    .fetch_all(executor)
    .await?;
    Ok(rows
        .iter()
        .map(|row| EndpointView {
            endpoint: Endpoint::from_row(row),
            pending: row.get("pending"),
            delivered: row.get("delivered"),
            dead: row.get("dead"),
        })
        .collect())
}

pub async fn find(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Endpoint>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "select ",
        endpoint_columns!(),
        " from webhook_endpoints where id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.as_ref().map(Endpoint::from_row))
}

/// Enables the endpoint (its PENDING deliveries resume, its run of failures counts anew) or disables it with
/// `reason`; answers it, none if there is no such endpoint.
pub async fn set_enabled(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    enabled: bool,
    reason: Option<&str>,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let row = sqlx::query(concat!("update webhook_endpoints
         set enabled = $2, disabled_reason = case when $2 then null else coalesce($3, 'disabled by an operator') end,
             failing_since = case when $2 then null else failing_since end, updated_at = now()
         where id = $1 returning ", endpoint_columns!(), ""))
    .bind(id)
    .bind(enabled)
    .bind(reason)
    .fetch_optional(executor)
    .await?;
    Ok(row.as_ref().map(Endpoint::from_row))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn signs_as_standard_webhooks_does() {
        // The specification's example: secret, id, timestamp, body and the signature it gives.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(sign("not a secret", "id", 1, body), None);
    }

    #[test]
    fn a_secret_is_the_same_for_the_same_endpoint_and_generation_only() {
        let server = [7u8; 32];
        let id = Uuid::now_v7();
        let first = secret(&server, id, 1);
        assert!(first.starts_with(PREFIX));
        assert_eq!(STANDARD.decode(&first[PREFIX.len()..]).unwrap().len(), 32);
        assert_eq!(first, secret(&server, id, 1));
        assert_ne!(first, secret(&server, id, 2));
        assert_ne!(first, secret(&server, Uuid::now_v7(), 1));
        assert_ne!(first, secret(&[8u8; 32], id, 1));
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_taken() {
        for good in [
            "https://shop.example/hooks",
            "https://shop.example:8443/hooks?x=1",
            "https://8.8.8.8/h",
        ] {
            assert_eq!(check_url(good, false), Ok(()), "{good}");
        }
        for local in [
            "http://127.0.0.1:9000/hooks",
            "http://localhost/hooks",
            "http://[::1]:9000/hooks",
        ] {
            assert_eq!(check_url(local, true), Ok(()), "{local}");
            assert!(
                check_url(local, false).is_err(),
                "{local} needs ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK"
            );
        }
        for bad in [
            "http://shop.example/hooks",
            "http://10.0.0.1/hooks",
            "ftp://shop.example/",
            "https://user:pw@shop.example/",
            "https://shop.example/a#frag",
            "https:///nohost",
            "https://shop.example/a b",
            "shop.example",
            "https://10.0.0.1/h",
            "https://192.168.1.1/h",
            "https://169.254.169.254/latest/meta-data",
            "https://[fd00::1]/h",
            "https://[fe80::1]/h",
            "https://[::ffff:10.0.0.1]/h",
            "https://100.64.0.1/h",
            "https://0.0.0.0/h",
        ] {
            assert!(check_url(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_event_type_is_named() {
        let request = NewEndpoint {
            url: "https://shop.example/hooks".to_owned(),
            event_types: vec!["order.paid".to_owned(), "order.teleported".to_owned()],
            description: None,
        };
        assert_eq!(request.validate(true).unwrap_err().field, "event_types[1]");
    }
}
