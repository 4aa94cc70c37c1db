//! Who calls `/v1`: an API key (`Authorization: Bearer ofk_…`) or a customer token one minted
//! (`Bearer oft_…`, `orderflow_shared::customer_token`), and what it may do. A handler names the scope it
//! needs in its signature (`Authorized<OrdersWrite>`); the extractor answers 401 for a missing, unknown or revoked
//! key, 403 naming the scope a key lacks, and 429 with `Retry-After` past the key's rate. Every `/v1` route also
//! sits behind [`require_key`], so a handler that forgot its extractor still cannot be called without a key.
//!
//! Keys are looked up by hash and kept for `ORDERFLOW_API_KEY_CACHE_SECS` (5 s), so a busy key costs no query per
//! request and a revoked key stops working within that time; a busy key is renewed in the background before its
//! time is up, and a key nobody holds is read by one request while the others wait for its answer
//! ([`ReadThrough`]). `last_used_at` is written at most once a minute per key and process, in the background.
//!
//! A customer token is checked by its signature and expiry, then its minting key must still be live (looked up
//! by id, cached alike): revoking a key ends the tokens it minted within the cache's time. Each customer has its
//! own rate-limit bucket at its key's rate, so one customer cannot spend the storefront's.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
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
    /// Whether the caller has `scope`; a route that needs a second scope for part of its work asks with
    /// [`Caller::require`].
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
    FulfilmentWrite => Scope::FulfilmentWrite,
    RefundsWrite => Scope::RefundsWrite,
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

impl Caller {
    /// 403 unless the caller also has `scope` (a route whose request may do what another scope guards).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match (self.allows(scope), &self.customer) {
            (true, _) => Ok(()),
            (false, Some(_)) => Err(ApiError::TokenCannot(scope)),
            (false, None) => Err(ApiError::MissingScope(scope)),
        }
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
    /// Keys by the hash of their secret; `None` for a secret that names no live key.
    by_secret: ReadThrough<Vec<u8>, ApiKey>,
    /// The keys that minted customer tokens, by id.
    minters: ReadThrough<Uuid, ApiKey>,
    /// When this process last wrote each key's `last_used_at`.
    touched: Mutex<HashMap<Uuid, Instant>>,
    buckets: Mutex<HashMap<BucketId, Bucket>>,
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
            by_secret: ReadThrough::new(ttl),
            minters: ReadThrough::new(ttl),
            touched: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The key with this secret, if it exists and is not revoked (see [`ReadThrough`] for when the database is
    /// asked). Touches `last_used_at` in the background at most once a minute.
    async fn find(&self, pool: &PgPool, secret: &str) -> Result<Option<ApiKey>, ApiError> {
        let (reader, secret_owned) = (pool.clone(), secret.to_owned());
        let key = self
            .by_secret
            .get(api_key::hash(secret), move || {
                let (pool, secret) = (reader.clone(), secret_owned.clone());
                async move { api_key::find_by_secret(&pool, &secret).await }
            })
            .await?;
        if let Some(key) = &key {
            self.touch(pool, key.id);
        }
        Ok(key)
    }

    /// Key `id` if it is live, for a customer token it minted.
    async fn find_minter(&self, pool: &PgPool, id: Uuid) -> Result<Option<ApiKey>, ApiError> {
        let pool = pool.clone();
        Ok(self
            .minters
            .get(id, move || {
                let pool = pool.clone();
                async move { api_key::find_live(&pool, id).await }
            })
            .await?)
    }

    /// Takes one request from the caller's bucket (its key's, or its customer's at the key's rate), or says when
    /// to retry (429).
    fn admit(&self, caller: &Caller) -> Result<(), ApiError> {
        let key = &caller.key;
        let rate = f64::from(key.rate_per_second.max(1));
        let capacity = rate * 2.0;
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
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

    /// Writes key `id`'s `last_used_at` in the background, unless this process did within the last minute.
    fn touch(&self, pool: &PgPool, id: Uuid) {
        let now = Instant::now();
        {
            let mut touched = lock(&self.touched);
            if touched
                .get(&id)
                .is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY)
            {
                return;
            }
            if touched.len() >= MAX_CACHED {
                touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
            }
            touched.insert(id, now);
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Err(error) = api_key::touch(&pool, &[id]).await {
                tracing::debug!(%error, "could not record a key's last use");
            }
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rows read from the database and trusted for `ttl`, so that a busy key costs no query per request, and read
/// at most once at a time each, so that a burst of requests never becomes a burst of the same query:
/// - fresh (read less than `ttl` ago): answered from memory; past half of `ttl`, one background read renews it,
///   so a key in steady use never waits for the database;
/// - missing or past `ttl`: one request reads it while the others with the same id wait for that answer (under
///   a saturated pool every request used to send its own, thousands in a burst).
///
/// A row that does not exist is remembered alike (`None`): a secret no key has is asked for once per `ttl`.
/// Nothing is served older than `ttl`, so a revoked key is refused within it.
#[derive(Debug)]
struct ReadThrough<K, V> {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<K, Entry<V>>>>,
    /// One gate per id being read in the foreground.
    gates: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: Option<V>,
    /// When the read that gave it started (its age counts from here) and when its answer came.
    fetched: Instant,
    landed: Instant,
    renewing: bool,
}

impl<K, V> ReadThrough<K, V>
where
    K: std::hash::Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Arc::new(Mutex::new(HashMap::new())),
            gates: Mutex::new(HashMap::new()),
        }
    }

    async fn get<F, Fut>(&self, id: K, read: F) -> Result<Option<V>, sqlx::Error>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, sqlx::Error>> + Send + 'static,
    {
        let asked = Instant::now();
        if let Some(value) = self.fresh(&id, asked, &read) {
            return Ok(value);
        }
        let gate = Arc::clone(lock(&self.gates).entry(id.clone()).or_default());
        let answer = {
            let _turn = gate.lock().await;
            // Answered while this request waited its turn: as fresh as a read of its own.
            let read_meanwhile = lock(&self.entries)
                .get(&id)
                .filter(|e| e.landed >= asked && asked.duration_since(e.fetched) < self.ttl)
                .map(|e| e.value.clone());
            match read_meanwhile {
                Some(value) => Ok(value),
                None => {
                    let started = Instant::now();
                    read()
                        .await
                        .inspect(|value| store(&self.entries, self.ttl, id.clone(), value.clone(), started))
                }
            }
        };
        let mut gates = lock(&self.gates);
        // Ours and the map's: nobody else waits at this gate, so it goes.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(&id);
        }
        answer
    }

    /// The value if it was read less than `ttl` ago; past half of it, a background read renews it (`read`).
    fn fresh<F, Fut>(&self, id: &K, now: Instant, read: &F) -> Option<Option<V>>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, sqlx::Error>> + Send + 'static,
    {
        let mut entries = lock(&self.entries);
        let entry = entries.get_mut(id)?;
        let age = now.duration_since(entry.fetched);
        if age >= self.ttl {
            return None;
        }
        if age >= self.ttl / 2 && !entry.renewing {
            entry.renewing = true;
            let (entries, ttl, id, renewal) = (Arc::clone(&self.entries), self.ttl, id.clone(), read());
            tokio::spawn(async move {
                let started = Instant::now();
                match renewal.await {
                    Ok(value) => store(&entries, ttl, id, value, started),
                    Err(error) => {
                        tracing::debug!(%error, "could not renew a cached key");
                        if let Some(entry) = lock(&entries).get_mut(&id) {
                            entry.renewing = false;
                        }
                    }
                }
            });
        }
        Some(entry.value.clone())
    }
}

/// Keeps `value`, read from `started` on: its time counts from the read's start, so a key revoked while the read
/// ran is not trusted longer than `ttl` after the revocation.
fn store<K: std::hash::Hash + Eq, V>(
    entries: &Mutex<HashMap<K, Entry<V>>>,
    ttl: Duration,
    id: K,
    value: Option<V>,
    started: Instant,
) {
    let now = Instant::now();
    let mut entries = lock(entries);
    if entries.len() >= MAX_CACHED {
        entries.retain(|_, e| now.duration_since(e.fetched) < ttl);
    }
    entries.insert(
        id,
        Entry {
            value,
            fetched: started,
            landed: now,
            renewing: false,
        },
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Read = std::pin::Pin<Box<dyn Future<Output = Result<Option<u32>, sqlx::Error>> + Send>>;

    /// A source that counts its reads, answers `value` after `delay`.
    #[derive(Clone)]
    struct Source {
        reads: Arc<AtomicUsize>,
        value: Arc<Mutex<Option<u32>>>,
        delay: Duration,
    }

    impl Source {
        fn new(value: u32, delay: Duration) -> Self {
            Self {
                reads: Arc::new(AtomicUsize::new(0)),
                value: Arc::new(Mutex::new(Some(value))),
                delay,
            }
        }

        fn reader(&self) -> impl Fn() -> Read + Send + 'static {
            let source = self.clone();
            move || {
                let source = source.clone();
                Box::pin(async move {
                    source.reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(source.delay).await;
                    Ok(*source.value.lock().unwrap())
                })
            }
        }

        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_burst_of_misses_reads_once_and_everyone_gets_the_answer() {
        let cache = Arc::new(ReadThrough::<u8, u32>::new(Duration::from_secs(5)));
        let source = Source::new(7, Duration::from_millis(100));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let (cache, read) = (Arc::clone(&cache), source.reader());
            tasks.spawn(async move { cache.get(1, read).await.unwrap() });
        }
        let answers = tasks.join_all().await;
        assert_eq!(answers.len(), 200);
        assert!(answers.iter().all(|a| *a == Some(7)));
        assert_eq!(source.reads(), 1, "200 concurrent misses of one id read it once");
        assert!(lock(&cache.gates).is_empty(), "no gate is left behind");
    }

    #[tokio::test]
    async fn an_entry_is_renewed_in_the_background_and_never_served_past_its_time() {
        let ttl = Duration::from_millis(400);
        let cache = ReadThrough::<u8, u32>::new(ttl);
        let source = Source::new(1, Duration::from_millis(10));
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), Some(1));
        assert_eq!(source.reads(), 1);
        // Fresh: from memory.
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), Some(1));
        assert_eq!(source.reads(), 1);
        // Past half its time: still answered at once, and one read renews it behind the request.
        *source.value.lock().unwrap() = Some(2);
        tokio::time::sleep(ttl / 2 + Duration::from_millis(20)).await;
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), Some(1));
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), Some(1));
        let renewed =
            |cache: &ReadThrough<u8, u32>| lock(&cache.entries).get(&1).and_then(|e| e.value) == Some(2);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !renewed(&cache) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(renewed(&cache), "the background read renewed the entry");
        assert_eq!(
            source.reads(),
            2,
            "one renewal, however many requests saw the half-time"
        );
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), Some(2));
        // Revoked (gone from the source): refused once the renewed entry's time is up, whatever renewals do.
        *source.value.lock().unwrap() = None;
        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
        assert_eq!(cache.get(1, source.reader()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_missing_id_is_remembered_and_a_failed_read_is_not() {
        let cache = ReadThrough::<u8, u32>::new(Duration::from_secs(5));
        let source = Source::new(3, Duration::ZERO);
        *source.value.lock().unwrap() = None;
        assert_eq!(cache.get(9, source.reader()).await.unwrap(), None);
        assert_eq!(cache.get(9, source.reader()).await.unwrap(), None);
        assert_eq!(source.reads(), 1, "an unknown secret is asked for once per ttl");
        let failing = || async { Err::<Option<u32>, _>(sqlx::Error::PoolTimedOut) };
        assert!(cache.get(4, failing).await.is_err());
        assert!(lock(&cache.entries).get(&4).is_none(), "an error is not cached");
    }
}
