//! The dashboard's sessions and forms. Signing in with an admin token opens a server-side session
//! (`orderflow_shared::admin_session`): the browser's cookie holds a random session id, never the token, so the
//! cookie is no bearer token and signing out ends it for good. Every form (sign-in and sign-out too) carries a
//! CSRF token: an HMAC, with the `dashboard_csrf` server secret, of the session id (or, before sign-in, of a
//! random nonce in its own cookie), checked in constant time. Failed sign-ins are logged with the client's
//! address and limited per address. Every dashboard response carries security headers
//! ([`security_headers`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use hmac::{Hmac, Mac};
use orderflow_shared::admin_session;
use sha2::Sha256;
use sqlx::PgPool;

use crate::auth::{self, Admin};
use crate::{ApiError, AppState};

/// The session cookie (a session id) and the sign-in form's cookie (a nonce its CSRF token is bound to).
pub const SESSION_COOKIE: &str = "orderflow_admin";
pub const SIGN_IN_COOKIE: &str = "orderflow_sign_in";
/// Failed sign-ins one client address may make: a burst of this many, then one per `FAILURE_REFILL`.
const FAILURE_BURST: f64 = 5.0;
const FAILURE_REFILL: Duration = Duration::from_secs(12);
/// Addresses whose failures are remembered at most (those that have waited their failures out go first).
const MAX_TRACKED: usize = 10_000;

/// A signed-in admin: who, and the session's CSRF token for the page's forms.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub admin: Admin,
    /// The session's id (the cookie's value).
    pub id: String,
    pub csrf: String,
}

impl Deref for SignedIn {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.admin
    }
}

/// What the dashboard keeps in each API process: the CSRF key and the failed sign-ins per client address.
pub struct Guard {
    csrf: Hmac<Sha256>,
    failures: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard(..)")
    }
}

impl Guard {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            csrf: orderflow_shared::server_secret::hmac(secret),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self::new(
            &orderflow_shared::server_secret::load(pool, "dashboard_csrf").await?,
        ))
    }

    fn mac(&self, purpose: &str, value: &str) -> Hmac<Sha256> {
        let mut mac = self.csrf.clone();
        mac.update(purpose.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        mac
    }

    /// The CSRF token of a form bound to `value` (a session id, or the sign-in nonce) for `purpose`.
    pub fn csrf(&self, purpose: &str, value: &str) -> String {
        hex(&self.mac(purpose, value).finalize().into_bytes())
    }

    /// Whether `presented` is the CSRF token for `purpose` and `value`, compared in constant time.
    pub fn csrf_matches(&self, purpose: &str, value: &str, presented: Option<&str>) -> bool {
        presented
            .and_then(unhex)
            .is_some_and(|bytes| self.mac(purpose, value).verify_slice(&bytes).is_ok())
    }

    /// Refuses a sign-in from `client` while its failures are over the limit: the seconds to wait.
    pub fn sign_in_allowed(&self, client: IpAddr) -> Result<(), u64> {
        let failures = self.lock();
        match failures.get(&client) {
            Some(&(tokens, at)) if refill(tokens, at) < 1.0 => {
                let wait = (1.0 - refill(tokens, at)) * FAILURE_REFILL.as_secs_f64();
                Err(wait.ceil().max(1.0) as u64)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `client`.
    pub fn sign_in_failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (tokens, at)| refill(*tokens, *at) < FAILURE_BURST);
        }
        let entry = failures.entry(client).or_insert((FAILURE_BURST, now));
        *entry = ((refill(entry.0, entry.1) - 1.0).max(0.0), now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (f64, Instant)>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A failure bucket's tokens now, `tokens` at `at` refilled one per `FAILURE_REFILL`, up to the burst.
fn refill(tokens: f64, at: Instant) -> f64 {
    (tokens + at.elapsed().as_secs_f64() / FAILURE_REFILL.as_secs_f64()).min(FAILURE_BURST)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The session's CSRF purpose: the forms of a signed-in page (actions, keys, sign-out).
pub const SESSION_FORMS: &str = "session";
/// The sign-in form's CSRF purpose.
pub const SIGN_IN_FORM: &str = "sign-in";

/// The signed-in admin of the request's session cookie, if the session is open and the admin token that opened
/// it is still configured.
pub async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Option<SignedIn>, ApiError> {
    let Some(id) = auth::cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    if id.len() != 64 {
        return Ok(None);
    }
    let Some(token_hash) = admin_session::token_of(&state.pool, &id).await? else {
        return Ok(None);
    };
    let admin = state
        .admin
        .tokens
        .iter()
        .find(|t| admin_session::hash(&t.token) == token_hash)
        .map(|t| Admin {
            name: t.name.clone(),
            role: t.role,
        });
    Ok(admin.map(|admin| SignedIn {
        admin,
        csrf: state.dashboard.csrf(SESSION_FORMS, &id),
        id,
    }))
}

/// The client's address, as the accept loop recorded it (the proxy's, behind one).
pub fn client(connect: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    connect.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Whether a cookie may go without `Secure`: only for plain HTTP on the loopback name a browser treats as its
/// own machine (`localhost`, `127.0.0.1`, `[::1]`), unless a proxy says the request came over HTTPS.
fn plain_http_localhost(headers: &HeaderMap) -> bool {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    !forwarded_https && matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// Sets cookie `name` to `value` for `max_age` on the dashboard's path: HttpOnly, SameSite=Strict, and Secure
/// unless plain-HTTP localhost.
pub fn set_cookie(response: &mut Response, request: &HeaderMap, name: &str, value: &str, max_age: Duration) {
    let secure = if plain_http_localhost(request) {
        ""
    } else {
        "; Secure"
    };
    let cookie = format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Every dashboard response: no script, styles only inline, forms only to itself, never in a frame, no
/// sniffing, no referrer.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_bound_to_their_purpose_and_value() {
        let guard = Guard::new(b"a secret of thirty-two bytes....");
        let token = guard.csrf(SESSION_FORMS, "session-a");
        assert!(guard.csrf_matches(SESSION_FORMS, "session-a", Some(&token)));
        assert!(!guard.csrf_matches(SESSION_FORMS, "session-b", Some(&token)));
        assert!(!guard.csrf_matches(SIGN_IN_FORM, "session-a", Some(&token)));
        assert!(!guard.csrf_matches(SESSION_FORMS, "session-a", None));
        assert!(!guard.csrf_matches(SESSION_FORMS, "session-a", Some("zz")));
        let other = Guard::new(b"another deployment's secret.....");
        assert!(!other.csrf_matches(SESSION_FORMS, "session-a", Some(&token)));
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address() {
        let guard = Guard::new(b"s");
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..5 {
            assert_eq!(guard.sign_in_allowed(a), Ok(()));
            guard.sign_in_failed(a);
        }
        assert!(
            guard
                .sign_in_allowed(a)
                .is_err_and(|wait| (1..=12).contains(&wait))
        );
        assert_eq!(guard.sign_in_allowed(b), Ok(()), "another address is not held up");
    }

    #[test]
    fn only_plain_http_localhost_goes_without_secure() {
        let headers = |host: &str, proto: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(
                header::HOST,
                HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
            );
            if let Some(proto) = proto {
                h.insert(
                    "x-forwarded-proto",
                    HeaderValue::from_str(proto).unwrap_or(HeaderValue::from_static("x")),
                );
            }
            h
        };
        for local in ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "localhost"] {
            assert!(plain_http_localhost(&headers(local, None)), "{local}");
            assert!(!plain_http_localhost(&headers(local, Some("https"))), "{local}");
        }
        for remote in [
            "orders.example.com",
            "10.0.0.5:8080",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!plain_http_localhost(&headers(remote, None)), "{remote}");
        }
    }
}
