//! Who calls `/v1`: an API key (`Authorization: Bearer ofk_…`), and what it may do. A handler names the scope it
//! needs in its signature (`Authorized<OrdersWrite>`); the extractor answers 401 for a missing, unknown or revoked
//! key, 403 naming the scope a key lacks, and 429 with `Retry-After` past the key's rate. Every `/v1` route also
//! sits behind [`require_key`], so a handler that forgot its extractor still cannot be called without a key.
//!
//! Keys are looked up by hash and kept for `ORDERFLOW_API_KEY_CACHE_SECS` (5 s), so a busy key costs no query per
//! request and a revoked key stops working within that time. `last_used_at` is written at most once a minute per
//! key and process, in the background.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use orderflow_shared::api_key::{self, ApiKey, Scope};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// How often a key's `last_used_at` is written at most, per process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Keys kept in the cache at most (entries past their time are dropped first).
const MAX_CACHED: usize = 10_000;

/// The caller of a `/v1` route.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
}

impl Caller {
    /// Whose Idempotency-Keys the caller's are (`idempotency_keys.caller`): the API key's.
    pub fn idempotency_scope(&self) -> String {
        format!("key:{}", self.key.id)
    }
}

/// A scope a route needs, as a type, so that a handler's signature says it.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

macro_rules! scope_types {
    ($($name:ident => $scope:expr),* $(,)?) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` scope, for `Authorized`.")]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Scope = $scope;
            }
        )*
    };
}

scope_types! {
    OrdersRead => Scope::OrdersRead,
    OrdersWrite => Scope::OrdersWrite,
    CatalogRead => Scope::CatalogRead,
    CatalogWrite => Scope::CatalogWrite,
    EventsRead => Scope::EventsRead,
}

/// The caller, allowed scope `S`.
pub struct Authorized<S: RequiredScope> {
    pub caller: Caller,
    scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = match parts.extensions.get::<Caller>() {
            Some(caller) => caller.clone(),
            None => authenticate(parts, state).await?,
        };
        if !caller.key.allows(S::SCOPE) {
            return Err(ApiError::MissingScope(S::SCOPE));
        }
        Ok(Self {
            caller,
            scope: PhantomData,
        })
    }
}

/// Middleware of every `/v1` route: the request needs a valid key within its rate; the caller is handed on to
/// the handler's `Authorized` extractor.
pub async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let caller = authenticate(&parts, &state).await?;
    state.keys.admit(&caller.key)?;
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(ApiError::KeyRequired)?;
    if !api_key::looks_like_a_key(presented) {
        return Err(ApiError::KeyInvalid(
            "the API key is malformed: it is ofk_ and 64 lower-case hex digits",
        ));
    }
    let key = state
        .keys
        .find(&state.pool, presented)
        .await?
        .ok_or(ApiError::KeyInvalid("the API key is unknown, or it was revoked"))?;
    Ok(Caller { key })
}

/// The keys seen lately, each with its rate-limit bucket.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, Cached>>,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

#[derive(Debug, Clone)]
struct Cached {
    key: ApiKey,
    fetched: Instant,
    touched: Option<Instant>,
}

/// A token bucket: `rate` tokens a second, at most twice that many saved up.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The key with this secret, if it exists and is not revoked: from the cache while it is fresh, else from
    /// the database. Touches `last_used_at` in the background at most once a minute.
    async fn find(&self, pool: &PgPool, secret: &str) -> Result<Option<ApiKey>, ApiError> {
        let hash = api_key::hash(secret);
        let now = Instant::now();
        let cached = self.lock_entries().get(&hash).cloned();
        let (key, touched) = match cached {
            Some(entry) if now.duration_since(entry.fetched) < self.ttl => (entry.key, entry.touched),
            cached => match api_key::find_by_secret(pool, secret).await? {
                None => {
                    self.lock_entries().remove(&hash);
                    return Ok(None);
                }
                Some(key) => (key, cached.and_then(|c| c.touched)),
            },
        };
        let touch = touched.is_none_or(|at| now.duration_since(at) >= TOUCH_EVERY);
        {
            let mut entries = self.lock_entries();
            if entries.len() >= MAX_CACHED {
                entries.retain(|_, e| now.duration_since(e.fetched) < self.ttl);
            }
            let fetched = match entries.get(&hash) {
                Some(entry) if now.duration_since(entry.fetched) < self.ttl => entry.fetched,
                _ => now,
            };
            entries.insert(
                hash,
                Cached {
                    key: key.clone(),
                    fetched,
                    touched: if touch { Some(now) } else { touched },
                },
            );
        }
        if touch {
            let (pool, id) = (pool.clone(), key.id);
            tokio::spawn(async move {
                if let Err(error) = api_key::touch(&pool, &[id]).await {
                    tracing::debug!(%error, "could not record a key's last use");
                }
            });
        }
        Ok(Some(key))
    }

    /// Takes one request from the key's bucket, or says when to retry (429).
    fn admit(&self, key: &ApiKey) -> Result<(), ApiError> {
        let rate = f64::from(key.rate_per_second.max(1));
        let capacity = rate * 2.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key.id).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        metrics::counter!("orderflow_rate_limited_requests_total", "key" => key.hint.clone()).increment(1);
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
        Err(ApiError::RateLimited { retry_after: wait })
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Cached>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}
