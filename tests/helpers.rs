//! `spawn_app`: a fresh database, the API and the payment simulator on port 0, and (unless asked otherwise) an
//! in-process worker; plus small helpers to drive and inspect orders.

use std::path::PathBuf;
use std::time::Duration;

use orderflow_shared::admission::AdmissionSettings;
use orderflow_shared::api_key::{self, Scope};
use orderflow_shared::settings::{ApiSettings, KeySettings, Role, ServerLimits, WorkerSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// The server the tests use; each test creates its own database on it.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Connections of one test's pool (in-process worker and the test's own queries), of its API's pool and of
/// each worker process a test starts. PostgreSQL allows 100 by default; nextest runs two tests at once, and the
/// tests that start processes run one at a time (`.config/nextest.toml`), so the worst pair stays below it:
/// 20 + 8 + 2×16, with one announcing connection each for the API, the in-process worker and the two processes
/// (`queue::announce`), (+ 30 for the other test) = 94.
const TEST_POOL: u32 = 20;
const API_POOL: u32 = 8;
const WORKER_PROCESS_POOL: &str = "16";

pub struct TestApp {
    pub api: String,
    pub paysim: String,
    pub database_url: String,
    pub pool: PgPool,
    /// A client sending [`TestApp::key`] with every request.
    pub http: reqwest::Client,
    /// An API key with every scope, at the highest rate a key may have.
    pub key: String,
    /// A client sending no key.
    pub anonymous: reqwest::Client,
    stop: watch::Sender<bool>,
    tune: fn(&mut WorkerSettings),
    relay: Option<orderflow_shared::settings::RelaySettings>,
}

pub struct Options {
    pub worker: bool,
    pub sim: orderflow_paysim::SimConfig,
    /// Changes to the in-process worker's settings (`worker_settings`).
    pub tune: fn(&mut WorkerSettings),
    /// The in-process worker's outbox relay (off by default).
    pub relay: Option<orderflow_shared::settings::RelaySettings>,
    /// The API's timeouts and caps (the shipped ones by default).
    pub limits: ServerLimits,
    /// `ORDERFLOW_API_METRICS_ADDR` (unset by default: `/metrics` on the API's address, with a key).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Admission control: off by default here, unlike the shipped setting, because many tests make orders with
    /// no worker running (a backlog on purpose); `admission` tests it, and the chaos test runs the API process
    /// with the shipped setting.
    pub admission: AdmissionSettings,
    /// Whether the simulator's webhooks go to the API's `/v1/provider/webhooks` (signed with [`WEBHOOK_SECRET`]),
    /// as `orderflow dev` wires them; on by default, unless `sim.webhook_url` names another endpoint.
    pub webhooks: bool,
}

/// The provider webhook secret of every test app.
pub const WEBHOOK_SECRET: &str = "whsec_orderflow_tests";

impl Default for Options {
    fn default() -> Self {
        Self {
            worker: true,
            sim: orderflow_paysim::SimConfig::default(),
            tune: |_| {},
            relay: None,
            limits: ServerLimits::default(),
            metrics_addr: None,
            admission: AdmissionSettings::OFF,
            webhooks: true,
        }
    }
}

/// The tokens every test app accepts.
pub const VIEWER_TOKEN: &str = "viewer-token-0123456789";
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";

pub fn admin_settings() -> orderflow_shared::settings::AdminSettings {
    orderflow_shared::settings::AdminSettings {
        tokens: orderflow_shared::settings::parse_admin_tokens(&format!(
            "vera:viewer:{VIEWER_TOKEN},otto:operator:{OPERATOR_TOKEN}"
        ))
        .unwrap(),
        stuck_after: Duration::from_secs(1),
    }
}

/// A new API key with `scopes` and `rate` per second, created by the operator "tests"; its secret.
pub async fn create_key(pool: &PgPool, scopes: &[Scope], rate: i32) -> String {
    let request = api_key::NewKeyRequest {
        // A key's name is at most 100 characters: name the scopes while they fit.
        name: match scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ") {
            named if named.len() <= 90 => format!("tests {named}"),
            _ => format!("tests, {} scopes", scopes.len()),
        },
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        rate_per_second: Some(rate),
    };
    api_key::create(
        &mut pool.acquire().await.unwrap(),
        &request,
        rate,
        "tests",
        Role::Operator,
    )
    .await
    .unwrap()
    .secret
}

/// The id of the key with secret `secret`.
pub async fn key_id(pool: &PgPool, secret: &str) -> Uuid {
    sqlx::query_scalar("select id from api_keys where secret_hash = $1")
        .bind(api_key::hash(secret))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `builder`'s client, sending `key` with every request (a request's own `Authorization` replaces it).
pub fn client_with_key(key: &str, builder: reqwest::ClientBuilder) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    builder.default_headers(headers).build().unwrap()
}

/// A client with a new every-scope key for the database at `database_url` (already migrated: an API or worker
/// process on it is ready), for tests that run the API as a process.
pub async fn keyed_client(database_url: &str, timeout: Duration) -> reqwest::Client {
    let pool = PgPool::connect(database_url).await.unwrap();
    let key = create_key(&pool, &Scope::ALL, api_key::MAX_RATE).await;
    pool.close().await;
    client_with_key(&key, reqwest::Client::builder().timeout(timeout))
}

/// [`spawn_app`] with no worker: what the test runs of the saga, it runs by hand.
pub async fn spawn_app_without_worker() -> TestApp {
    spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// The shipped settings, quicker where a test would otherwise wait: a smaller worker, short retries, polls and
/// reconciler passes, and the simulator at `payments_url`.
pub fn worker_settings(payments_url: &str) -> WorkerSettings {
    WorkerSettings {
        payments_url: payments_url.to_owned(),
        concurrency: 16,
        fetch_size: 8,
        poll_interval: Duration::from_millis(200),
        retry_base_delay: Duration::from_millis(200),
        retry_max_delay: Duration::from_secs(2),
        payments_timeout: Duration::from_secs(5),
        step_timeout: Duration::from_secs(30),
        reconcile_interval: Duration::from_millis(250),
        provider_events_interval: Duration::from_millis(100),
        webhooks: orderflow_shared::settings::WebhookSettings {
            allow_loopback: true,
            ..Default::default()
        },
        shutdown_grace: Duration::from_secs(10),
        ..WorkerSettings::default()
    }
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    orderflow_shared::telemetry::init("warn");
    let name = format!("orderflow_test_{}", Uuid::new_v4().simple());
    let database_url = format!("{}/{name}", server_url());
    let pool = orderflow_shared::db::connect(&database_url, TEST_POOL, "orderflow-tests")
        .await
        .expect("connect");
    orderflow_shared::db::migrate(&pool).await.expect("migrate");

    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paysim = format!("http://{}", sim_listener.local_addr().unwrap());
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", api_listener.local_addr().unwrap());
    let mut sim = options.sim;
    if options.webhooks && sim.webhook_url.is_none() {
        sim.webhook_url = Some(format!("{api}/v1/provider/webhooks"));
        sim.webhook_secrets = vec![WEBHOOK_SECRET.to_owned()];
    }
    tokio::spawn(orderflow_paysim::run(sim_listener, sim, stopped()));
    // The API's own pool, with the shipped statement and lock timeouts, as `orderflow-api` has.
    let limits = options.limits.clone();
    let api_pool =
        orderflow_shared::db::connect_with(&database_url, API_POOL, "orderflow-tests-api", limits.session())
            .await
            .expect("connect the API's pool");
    tokio::spawn(orderflow_api::run(
        api_listener,
        api_pool,
        ApiSettings {
            admin: admin_settings(),
            keys: KeySettings::default(),
            limits,
            admission: options.admission,
            metrics_addr: options.metrics_addr,
            provider_webhooks: orderflow_shared::settings::ProviderWebhookSettings {
                secrets: vec![WEBHOOK_SECRET.to_owned()],
                ..Default::default()
            },
            // The tests' merchants' endpoints listen on 127.0.0.1.
            webhook_allow_loopback: true,
        },
        stopped(),
    ));
    let key = create_key(&pool, &Scope::ALL, api_key::MAX_RATE).await;
    let app = TestApp {
        api,
        paysim,
        database_url,
        pool,
        http: client_with_key(&key, reqwest::Client::builder()),
        key,
        anonymous: reqwest::Client::new(),
        stop,
        tune: options.tune,
        relay: options.relay,
    };
    if options.worker {
        app.start_worker();
    }
    app
}

impl TestApp {
    /// A step runner on the app's database and simulator, for steps driven by hand (no queue worker).
    pub fn runner(&self, instance: &str) -> orderflow_worker::Runner {
        orderflow_worker::Runner::new(
            self.pool.clone(),
            worker_settings(&self.paysim),
            instance.to_owned(),
        )
        .unwrap()
    }

    /// Starts an in-process worker; it stops with the app.
    pub fn start_worker(&self) {
        self.start_worker_with(self.tune);
    }

    /// Starts an in-process worker with `tune` applied to its settings instead of the app's own changes.
    pub fn start_worker_with(&self, tune: fn(&mut WorkerSettings)) {
        let mut rx = self.stop.subscribe();
        let mut settings = worker_settings(&self.paysim);
        settings.relay = self.relay.clone();
        tune(&mut settings);
        tokio::spawn(orderflow_worker::run(self.pool.clone(), settings, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    pub async fn put_sku(&self, sku: &str, on_hand: i64, price: i64) {
        let response = self
            .http
            .put(format!("{}/v1/skus/{sku}", self.api))
            .json(&json!({"on_hand": on_hand, "price": price, "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT sku {sku}: {}",
            response.status()
        );
    }

    /// PUTs a sku fulfilled by shipment (its orders wait in PAID for shipments).
    pub async fn put_shipment_sku(&self, sku: &str, on_hand: i64, price: i64) {
        let response = self
            .http
            .put(format!("{}/v1/skus/{sku}", self.api))
            .json(&json!({"on_hand": on_hand, "price": price, "currency": "USD", "fulfilment": "shipment"}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT sku {sku}: {}",
            response.status()
        );
    }

    /// POSTs a shipment of order `id` with Idempotency-Key `key`; the status and the answer.
    pub async fn ship(&self, id: Uuid, key: &str, body: Value) -> (u16, Value) {
        post_shipment(&self.http, &self.api, id, key, body).await
    }

    /// POSTs a refund of order `id` with Idempotency-Key `key`; the status and the answer.
    pub async fn refund(&self, id: Uuid, key: &str, body: Value) -> (u16, Value) {
        post_refund(&self.http, &self.api, id, key, body).await
    }

    /// POSTs a return of order `id` with Idempotency-Key `key`; the status and the answer.
    pub async fn return_units(&self, id: Uuid, key: &str, body: Value) -> (u16, Value) {
        post_return(&self.http, &self.api, id, key, body).await
    }

    /// The order's events of `kind` (`order.shipped`), in order.
    pub async fn events_of(&self, id: Uuid, kind: &str) -> Vec<Value> {
        self.events(id)
            .await
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// Lapses the simulator's hold of intent `intent` now, as its lifetime running out would.
    pub async fn lapse(&self, intent: &str) {
        let response = self
            .http
            .post(format!("{}/v1/sim/payment_intents/{intent}/lapse", self.paysim))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "lapse {intent}");
    }

    /// Takes order `id`'s row lock in a transaction of its own and holds it until the transaction ends, so that
    /// requests sent meanwhile wait on it and race once it is let go.
    pub async fn hold_order(&self, id: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut holder = self.pool.begin().await.unwrap();
        sqlx::query("select 1 from orders where id = $1 for update")
            .bind(id)
            .execute(&mut *holder)
            .await
            .unwrap();
        holder
    }

    /// `GET /v1/orders/{id}/refunds`: the order's refunds and its money.
    pub async fn refunds(&self, id: Uuid) -> Value {
        self.get_json(&format!("{}/v1/orders/{id}/refunds", self.api))
            .await
    }

    /// Polls until refund `refund` of order `id` is `status`; returns it.
    pub async fn wait_refund(&self, id: Uuid, refund: &Value, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.refunds(id).await;
            if let Some(found) = now["refunds"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == refund["id"] && r["status"] == status)
            {
                return found.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "refund never {status}: {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the order until it is PAID with its payment AUTHORIZED (the view reads the order and its payment
    /// apart, so the payment alone can be seen a moment before the order moves).
    pub async fn wait_paid(&self, id: Uuid) -> Value {
        self.wait_until(id, Duration::from_secs(30), |o| {
            o["status"] == "PAID" && o["payment"]["status"] == "AUTHORIZED"
        })
        .await
    }

    /// GETs `url` and parses the JSON answer, whatever its status.
    pub async fn get_json(&self, url: &str) -> Value {
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// GETs a path of the API.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.api)).send().await.unwrap()
    }

    pub async fn sku(&self, sku: &str) -> Value {
        self.get_json(&format!("{}/v1/skus/{sku}", self.api)).await
    }

    /// POSTs an order with a fresh idempotency key; returns the response.
    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.post_order_with_key(body, &Uuid::new_v4().to_string()).await
    }

    /// `GET` an admin API path with `token` as the bearer, or with no credentials at all.
    pub async fn admin_get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let request = match token {
            Some(token) => self
                .anonymous
                .get(format!("{}{path}", self.api))
                .bearer_auth(token),
            None => self.anonymous.get(format!("{}{path}", self.api)),
        };
        request.send().await.unwrap()
    }

    /// `GET` an admin API path with the viewer token; it must answer 200.
    pub async fn admin_json(&self, path: &str) -> Value {
        let response = self.admin_get(path, Some(VIEWER_TOKEN)).await;
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    pub async fn post_order_with_key(&self, body: &Value, key: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/orders", self.api))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends all `bodies` at once (fresh keys); every one must be accepted. Returns the ids in body order.
    pub async fn create_orders(&self, bodies: &[Value]) -> Vec<Uuid> {
        let responses = futures::future::join_all(bodies.iter().map(|b| self.post_order(b))).await;
        let mut ids = Vec::with_capacity(responses.len());
        for response in responses {
            assert_eq!(response.status(), 202, "create order");
            let body: Value = response.json().await.unwrap();
            ids.push(body["id"].as_str().unwrap().parse().unwrap());
        }
        ids
    }

    /// Creates an order and returns its id.
    pub async fn create_order(&self, customer: &str, lines: &[(&str, i64)], token: &str) -> Uuid {
        let response = self.post_order(&order_body(customer, lines, token)).await;
        assert_eq!(response.status(), 202, "create order");
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn order(&self, id: Uuid) -> Value {
        self.get_json(&format!("{}/v1/orders/{id}", self.api)).await
    }

    pub async fn events(&self, id: Uuid) -> Vec<Value> {
        let events = self
            .get_json(&format!("{}/v1/orders/{id}/events", self.api))
            .await;
        events.as_array().unwrap().clone()
    }

    pub async fn cancel(&self, id: Uuid) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/orders/{id}/cancel", self.api))
            .json(&json!({"reason": "changed my mind"}))
            .send()
            .await
            .unwrap()
    }

    /// Polls the order until `done(order)`; panics after `timeout`, showing the order as it was.
    pub async fn wait_until(&self, id: Uuid, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let order = self.order(id).await;
            if done(&order) {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} stuck: {order}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the order's last error contains `needle`, then returns its public view. The text is read from
    /// the database: the public view carries only a stable `error_code`, never a step's error text.
    pub async fn wait_for_error(&self, id: Uuid, needle: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let error: Option<String> = sqlx::query_scalar("select last_error from orders where id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if error.as_deref().is_some_and(|e| e.contains(needle)) {
                let order = self.order(id).await;
                assert!(order.get("last_error").is_none(), "{order}");
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} never failed with {needle:?}: {error:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the order until its status is one of `wanted`.
    pub async fn wait_for(&self, id: Uuid, wanted: &[&str], timeout: Duration) -> Value {
        self.wait_until(id, timeout, |o| {
            wanted.contains(&o["status"].as_str().unwrap_or_default())
        })
        .await
    }

    /// Polls the order until its payment is in `status`.
    pub async fn wait_for_payment(&self, id: Uuid, status: &str) -> Value {
        self.wait_until(id, Duration::from_secs(10), |o| o["payment"]["status"] == status)
            .await
    }

    pub async fn wait_terminal(&self, id: Uuid) -> Value {
        self.wait_for(id, &["FULFILLED", "CANCELLED"], Duration::from_secs(60))
            .await
    }

    /// Every intent in the simulator's ledger, in creation order.
    pub async fn ledger(&self) -> Vec<Value> {
        let ledger = self.get_json(&format!("{}/v1/sim/ledger", self.paysim)).await;
        ledger["intents"].as_array().unwrap().clone()
    }

    /// The simulator's intents whose metadata names this order.
    pub async fn intents_of(&self, id: Uuid) -> Vec<Value> {
        let id = id.to_string();
        self.ledger()
            .await
            .into_iter()
            .filter(|i| i["metadata"]["order_id"] == id)
            .collect()
    }
}

impl TestApp {
    /// A stop signal for tasks a test starts itself; it fires when the app is dropped.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// POSTs a shipment with Idempotency-Key `key` (with a client of one's own, for requests sent from spawned tasks).
pub async fn post_shipment(
    http: &reqwest::Client,
    api: &str,
    id: Uuid,
    key: &str,
    body: Value,
) -> (u16, Value) {
    post_keyed(http, &format!("{api}/v1/orders/{id}/shipments"), key, body).await
}

/// POSTs `body` to `url` with Idempotency-Key `key`; the status and the answer.
async fn post_keyed(http: &reqwest::Client, url: &str, key: &str, body: Value) -> (u16, Value) {
    let response = http
        .post(url)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// POSTs a return with Idempotency-Key `key` (with a client of one's own: another caller's, or for requests sent
/// from spawned tasks).
pub async fn post_return(
    http: &reqwest::Client,
    api: &str,
    id: Uuid,
    key: &str,
    body: Value,
) -> (u16, Value) {
    post_keyed(http, &format!("{api}/v1/orders/{id}/returns"), key, body).await
}

/// A problem's `type`, as `urn:orderflow:problem:{slug}`.
pub fn problem_type(slug: &str) -> Value {
    json!(format!("urn:orderflow:problem:{slug}"))
}

/// POSTs a refund with Idempotency-Key `key` (with a client of one's own, for requests sent from spawned tasks).
pub async fn post_refund(
    http: &reqwest::Client,
    api: &str,
    id: Uuid,
    key: &str,
    body: Value,
) -> (u16, Value) {
    let response = http
        .post(format!("{api}/v1/orders/{id}/refunds"))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

pub fn order_body(customer: &str, lines: &[(&str, i64)], token: &str) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
        .collect();
    json!({"customer_id": customer, "currency": "USD", "lines": lines, "payment_token": token})
}

/// The event statuses of an order, as "FROM>TO" strings in sequence.
pub fn transitions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}>{}",
                e["from"].as_str().unwrap_or("-"),
                e["to"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// A binary of the workspace next to the test binary (`target/<profile>/`). The README's test command
/// (`tests/run.sh`) builds them with the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let binary = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        binary.is_file(),
        "{} is missing: run the tests with `bash tests/run.sh`, which builds it",
        binary.display()
    );
    binary
}

/// A child process killed and reaped when dropped, so a failing test leaves no process behind.
pub struct Killed(pub std::process::Child);

impl Killed {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` (a `kill` name such as "TERM" or "KILL").
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit, up to `timeout`; its exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an `orderflow-worker` process on `database_url` with `env` on top, quiet and with fast retries.
/// With `ORDERFLOW_TEST_LOG_DIR` set, its log (at info) goes to `<dir>/worker-<n>.log`, for debugging.
pub fn spawn_worker_process(database_url: &str, env: &[(&str, &str)]) -> Killed {
    let Some(dir) = std::env::var_os("ORDERFLOW_TEST_LOG_DIR") else {
        return spawn_process("orderflow-worker", database_url, env, None);
    };
    static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = PathBuf::from(dir).join(format!("worker-{}-{n}.log", std::process::id()));
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info,sqlx=warn"));
    spawn_process("orderflow-worker", database_url, &env, Some(&log))
}

/// Starts a workspace binary with the test defaults (fast retries, quiet) and `env` on top; its stderr goes to
/// `log` if given.
pub fn spawn_process(
    name: &str,
    database_url: &str,
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> Killed {
    let mut command = std::process::Command::new(binary(name));
    command
        .env("DATABASE_URL", database_url)
        .env("ORDERFLOW_RETRY_BASE_MS", "200")
        .env("ORDERFLOW_RETRY_MAX_MS", "2000")
        .env("ORDERFLOW_WORKER_POLL_MS", "200")
        .env("ORDERFLOW_RECONCILE_INTERVAL_MS", "250")
        .env("RUST_LOG", "warn")
        .env("ORDERFLOW_DB_MAX_CONNECTIONS", WORKER_PROCESS_POOL)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null());
    match log {
        Some(path) => command.stderr(std::fs::File::create(path).unwrap()),
        None => command.stderr(std::process::Stdio::null()),
    };
    Killed(command.spawn().unwrap_or_else(|e| panic!("start {name}: {e}")))
}

/// The process id inside a worker instance name (`host-pid-suffix`), as recorded in the step log.
pub fn pid_of_instance(instance: &str) -> u32 {
    let mut parts = instance.rsplit('-');
    let _suffix = parts.next();
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {instance:?}"))
}

/// A free TCP port on 127.0.0.1 (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` until it returns `Some`; panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One stored message: its subject, its Nats-Msg-Id and the CloudEvent.
pub struct Received {
    pub subject: String,
    pub msg_id: String,
    pub event: orderflow_shared::outbox::CloudEvent,
}

/// Reads the whole stream with a pull consumer, acknowledging each message, until `expected` arrived and the
/// stream stays quiet for a moment.
pub async fn consume_stream(nats_url: &str, stream: &str, expected: usize) -> Vec<Received> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut received = Vec::new();
    loop {
        let wait = if received.len() >= expected { 500 } else { 10_000 };
        match tokio::time::timeout(
            Duration::from_millis(wait),
            futures::StreamExt::next(&mut messages),
        )
        .await
        {
            Ok(Some(message)) => {
                let message = message.unwrap();
                let msg_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                received.push(Received {
                    subject: message.subject.to_string(),
                    msg_id,
                    event: serde_json::from_slice(&message.payload).unwrap(),
                });
                message.ack().await.unwrap();
            }
            _ => return received,
        }
    }
}

pub async fn delete_stream(nats_url: &str, stream: &str) {
    if let Ok(client) = async_nats::connect(nats_url).await {
        let _ = async_nats::jetstream::new(client).delete_stream(stream).await;
    }
}

/// What a [`Receiver`] got: one request.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    pub at: std::time::Instant,
    /// The status the receiver answered (after its wait).
    pub answered: u16,
}

impl WebhookRequest {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a [`Receiver`] answers the `n`th request (from 0): a status, after a wait.
pub type Answer = std::sync::Arc<dyn Fn(usize, &WebhookRequest) -> (u16, Duration) + Send + Sync>;

/// A webhook endpoint on port 0 that keeps every request it gets (as a merchant's or the provider's receiver
/// would see it) and answers as `answer` says.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<WebhookRequest>>>,
}

impl Receiver {
    pub async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = got.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let mut received = WebhookRequest {
                    headers,
                    body: body.to_vec(),
                    at: std::time::Instant::now(),
                    answered: 0,
                };
                let (status, wait) = {
                    let mut got = kept.lock().unwrap();
                    let answer = answer(got.len(), &received);
                    received.answered = answer.0;
                    got.push(received);
                    answer
                };
                async move {
                    tokio::time::sleep(wait).await;
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got }
    }

    /// Answers 200 at once.
    pub async fn accepting() -> Self {
        Self::start(std::sync::Arc::new(|_, _| (200, Duration::ZERO))).await
    }

    pub fn received(&self) -> Vec<WebhookRequest> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until `done` holds for what was received; answers it.
    pub async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[WebhookRequest]) -> bool,
    ) -> Vec<WebhookRequest> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; received {:?}",
                received
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
