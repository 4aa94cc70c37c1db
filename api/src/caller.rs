//! Who calls `/v1`: an API key (`Authorization: Bearer ofk_…`) or a customer token one minted
//! (`Bearer oft_…`, `orderflow_shared::customer_token`), and what it may do. A handler names the scope it
//! needs in its signature (`Authorized<OrdersWrite>`); the extractor answers 401 for a missing, unknown or revoked
//! key, 403 naming the scope a key lacks, and 429 with `Retry-After` past the key's rate. Every `/v1` route also
//! sits behind [`require_key`], so a handler that forgot its extractor still cannot be called without a key.
//!
//! Keys are looked up by hash and kept for `ORDERFLOW_API_KEY_CACHE_SECS` (5 s), so a busy key costs no query per
//! request and a revoked key stops working within that time. `last_used_at` is written at most once a minute per
//! key and process, in the background.
//!
//! A customer token is checked by its signature and expiry, then its minting key must still be live (looked up
//! by id, cached alike): revoking a key ends the tokens it minted within the cache's time. Each customer has its
//! own rate-limit bucket at its key's rate, so one customer cannot spend the storefront's.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use orderflow_shared::api_key::{self, ApiKey, Scope};
use orderflow_shared::customer_token;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// How often a key's `last_used_at` is written at most, per process.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Keys kept in the cache at most (entries past their time are dropped first); rate-limit buckets likewise
/// (full ones are dropped first: a bucket refilled to capacity is what a new one would be).
const MAX_CACHED: usize = 10_000;
const MAX_BUCKETS: usize = 100_000;

/// The caller of a `/v1` route.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key; for a customer token, the key that minted it.
    pub key: ApiKey,
    /// For a customer token: the customer it speaks for.
    pub customer: Option<String>,
}

impl Caller {
    fn allows(&self, scope: Scope) -> bool {
        match self.customer {
            None => self.key.allows(scope),
            Some(_) => customer_token::allows(scope, |s| self.key.allows(s)),
        }
    }

    /// Whose Idempotency-Keys the caller's are (`idempotency_keys.caller`): the API key's, or the customer's for
    /// a customer token.
    pub fn idempotency_scope(&self) -> String {
        match &self.customer {
            Some(customer) => format!("customer:{customer}"),
            None => format!("key:{}", self.key.id),
        }
    }

    /// Whether the caller may see an order of `customer`: a key sees every order, a customer token its own.
    pub fn sees(&self, customer: &str) -> bool {
        self.customer.as_deref().is_none_or(|own| own == customer)
    }
}

/// The rate-limit bucket a request draws from: its key's, or its customer's under the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketId {
    key: Uuid,
    customer: Option<String>,
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
    MetricsRead => Scope::MetricsRead,
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
        if !caller.allows(S::SCOPE) {
            return Err(match caller.customer {
                Some(_) => ApiError::TokenCannot(S::SCOPE),
                None => ApiError::MissingScope(S::SCOPE),
            });
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
    state.keys.admit(&caller)?;
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let presented = crate::auth::bearer(parts).ok_or(ApiError::KeyRequired)?;
    let presented = presented.as_str();
    if presented.starts_with(customer_token::PREFIX) {
        let claims = state
            .signer
            .verify(presented, chrono::Utc::now())
            .map_err(|error| {
                ApiError::KeyInvalid(match error {
                    customer_token::TokenError::Malformed => "the customer token is malformed",
                    customer_token::TokenError::BadSignature => {
                        "the customer token's signature does not verify"
                    }
                    customer_token::TokenError::Expired => "the customer token has expired",
                })
            })?;
        let key = state
            .keys
            .find_minter(&state.pool, claims.k)
            .await?
            .ok_or(ApiError::KeyInvalid(
                "the key that minted this customer token was revoked",
            ))?;
        return Ok(Caller {
            key,
            customer: Some(claims.c),
        });
    }
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
    Ok(Caller { key, customer: None })
}

/// The keys seen lately, each with its rate-limit bucket.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, Cached>>,
    /// The keys that minted customer tokens, by id, with when they were read.
    minters: Mutex<HashMap<Uuid, (ApiKey, Instant)>>,
    buckets: Mutex<HashMap<BucketId, Bucket>>,
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
    rate: f64,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            minters: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The key with this secret, if it exists and is not revoked: from the cache while it is fresh, else from
    /// the database. Touches `last_used_at` in the background at most once a minute.
    async fn find(&self, pool: &PgPool, secret: &str) -> Result<Option<ApiKey>, ApiError> {
        let hash = api_key::hash(secret);
        let now = Instant::now();
        let cached = self.lock_entries().get(&hash).cloned();
        let (key, fetched, touched) = match cached {
            Some(entry) if now.duration_since(entry.fetched) < self.ttl => {
                (entry.key, Some(entry.fetched), entry.touched)
            }
            cached => match api_key::find_by_secret(pool, secret).await? {
                None => {
                    self.lock_entries().remove(&hash);
                    return Ok(None);
                }
                Some(key) => (key, None, cached.and_then(|c| c.touched)),
            },
        };
        let touch = touched.is_none_or(|at| now.duration_since(at) >= TOUCH_EVERY);
        // A fresh entry that needs no touch is left as it is: a busy key's request writes nothing here.
        if fetched.is_none() || touch {
            let mut entries = self.lock_entries();
            if entries.len() >= MAX_CACHED {
                entries.retain(|_, e| now.duration_since(e.fetched) < self.ttl);
            }
            entries.insert(
                hash,
                Cached {
                    key: key.clone(),
                    fetched: fetched.unwrap_or(now),
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

    /// Key `id` if it is live, for a customer token it minted: from the cache while fresh, else the database.
    async fn find_minter(&self, pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, ApiError> {
        let now = Instant::now();
        let cached = self.lock(&self.minters).get(&id).cloned();
        if let Some((key, fetched)) = cached
            && now.duration_since(fetched) < self.ttl
        {
            return Ok(Some(key));
        }
        let key = api_key::find_live(pool, id).await?;
        let mut minters = self.lock(&self.minters);
        if minters.len() >= MAX_CACHED {
            minters.retain(|_, (_, fetched)| now.duration_since(*fetched) < self.ttl);
        }
        match &key {
            Some(key) => minters.insert(id, (key.clone(), now)),
            None => minters.remove(&id),
        };
        Ok(key)
    }

    /// Takes one request from the caller's bucket (its key's, or its customer's at the key's rate), or says when
    /// to retry (429).
    fn admit(&self, caller: &Caller) -> Result<(), ApiError> {
        let key = &caller.key;
        let rate = f64::from(key.rate_per_second.max(1));
        let capacity = rate * 2.0;
        let now = Instant::now();
        let mut buckets = self.lock(&self.buckets);
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * b.rate < b.rate * 2.0);
        }
        let id = BucketId {
            key: key.id,
            customer: caller.customer.clone(),
        };
        let bucket = buckets.entry(id).or_insert(Bucket {
            tokens: capacity,
            at: now,
            rate,
        });
        bucket.rate = rate;
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
        self.lock(&self.entries)
    }

    fn lock<'a, T>(&self, mutex: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }
}
