//! The payment provider simulator: the subset of Stripe's PaymentIntents API OrderFlow uses, with Stripe's
//! form-encoded requests, error shapes and `Idempotency-Key` semantics, so the worker's client could point at
//! the real provider. Test payment methods trigger the failures a real provider shows (decline, 503s, a lost
//! response, slowness); optional random faults add load-time noise. `GET /v1/sim/ledger` shows the money.
//!
//! Every change of an intent is an event (`GET /v1/events`), delivered as Stripe's webhooks are to
//! `SimConfig::webhook_url`, signed with `Stripe-Signature`, with fault knobs that duplicate, reorder, delay and
//! send events before the request that made them answers.
//!
//! State is in memory and lives as long as the process, like a sandbox account that is reset on restart.
//!
//! # Layout
//! - here: the simulator's knobs (`SimConfig`) and its router and `run`;
//! - `intents.rs`: PaymentIntents (create and confirm, retrieve, capture, multicapture, cancel, hold expiry),
//!   refunds, the ledger, the test payment methods' behaviours;
//! - `idempotency.rs`: Stripe's `Idempotency-Key` semantics (a repeat replays the first answer; the same key with
//!   other parameters is refused);
//! - `events.rs`: the account's event log and `GET /v1/events`; `webhooks.rs`: the events' delivery and its faults.

mod events;
mod idempotency;
mod intents;
mod webhooks;

pub use intents::MAX_AMOUNT;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use orderflow_shared::settings::{SettingsError, env_parse};

/// Knobs of the simulator. Its `Debug` (logged at start) leaves the webhook secrets out.
#[derive(Clone)]
pub struct SimConfig {
    /// How long `pm_sim_slow` takes to answer.
    pub slow_delay: Duration,
    /// Probability (0–1) that any POST fails with 503 before doing anything.
    pub fault_rate: f64,
    /// Probability (0–1) that a create is executed but its response is lost (connection dropped).
    pub lost_response_rate: f64,
    /// How long an authorization holds before the provider cancels it (`cancellation_reason: automatic`), as
    /// card networks release an uncaptured hold after about seven days.
    pub hold_lifetime: Duration,
    /// Where events are POSTed as webhooks; none: they are only in `GET /v1/events`.
    pub webhook_url: Option<String>,
    /// The endpoint's signing secrets (`whsec_…`): each delivery carries one `v1` per secret, as Stripe signs
    /// while a secret is rolled.
    pub webhook_secrets: Vec<String>,
    /// Probability (0–1) that an event is delivered twice.
    pub webhook_duplicate_rate: f64,
    /// Probability (0–1) that an event is held back behind the next one.
    pub webhook_reorder_rate: f64,
    /// Probability (0–1) that a request answers only after its events' first delivery attempt.
    pub webhook_early_rate: f64,
    /// Each delivery waits a random time up to this before its first attempt.
    pub webhook_delay: Duration,
    /// The wait before a failed delivery's first retry; it doubles, up to a minute.
    pub webhook_retry: Duration,
    /// How long after its event a delivery is retried before the simulator gives up on it.
    pub webhook_retry_window: Duration,
    /// How many events the log keeps (the newest).
    pub event_retention: usize,
    /// How long a bank debit (`pm_sim_processing…`) stays `processing` before it settles.
    pub processing_delay: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            slow_delay: Duration::from_millis(2_000),
            fault_rate: 0.0,
            lost_response_rate: 0.0,
            hold_lifetime: Duration::from_secs(7 * 24 * 3600),
            webhook_url: None,
            webhook_secrets: Vec::new(),
            webhook_duplicate_rate: 0.0,
            webhook_reorder_rate: 0.0,
            webhook_early_rate: 0.0,
            webhook_delay: Duration::ZERO,
            webhook_retry: Duration::from_secs(1),
            webhook_retry_window: Duration::from_secs(3 * 24 * 3600),
            event_retention: 100_000,
            processing_delay: Duration::from_millis(2_000),
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("slow_delay", &self.slow_delay)
            .field("fault_rate", &self.fault_rate)
            .field("lost_response_rate", &self.lost_response_rate)
            .field("hold_lifetime", &self.hold_lifetime)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secrets",
                &format!("[{} redacted]", self.webhook_secrets.len()),
            )
            .field("webhook_duplicate_rate", &self.webhook_duplicate_rate)
            .field("webhook_reorder_rate", &self.webhook_reorder_rate)
            .field("webhook_early_rate", &self.webhook_early_rate)
            .field("webhook_delay", &self.webhook_delay)
            .field("webhook_retry", &self.webhook_retry)
            .field("webhook_retry_window", &self.webhook_retry_window)
            .field("event_retention", &self.event_retention)
            .field("processing_delay", &self.processing_delay)
            .finish()
    }
}

impl SimConfig {
    pub fn from_env() -> Result<Self, SettingsError> {
        let rate = |name: &'static str| -> Result<f64, SettingsError> {
            let value: f64 = env_parse(name, 0.0)?;
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(SettingsError {
                    name,
                    message: format!("{value} is not between 0 and 1"),
                })
            }
        };
        Ok(Self {
            slow_delay: Duration::from_millis(env_parse("ORDERFLOW_PAYSIM_SLOW_MS", 2_000)?),
            fault_rate: rate("ORDERFLOW_PAYSIM_FAULT_RATE")?,
            lost_response_rate: rate("ORDERFLOW_PAYSIM_LOST_RATE")?,
            hold_lifetime: Duration::from_secs(env_parse("ORDERFLOW_PAYSIM_HOLD_SECS", 7 * 24 * 3600)?),
            webhook_url: std::env::var("ORDERFLOW_PAYSIM_WEBHOOK_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            webhook_secrets: orderflow_shared::settings::env_list("ORDERFLOW_PAYSIM_WEBHOOK_SECRET"),
            webhook_duplicate_rate: rate("ORDERFLOW_PAYSIM_WEBHOOK_DUPLICATE_RATE")?,
            webhook_reorder_rate: rate("ORDERFLOW_PAYSIM_WEBHOOK_REORDER_RATE")?,
            webhook_early_rate: rate("ORDERFLOW_PAYSIM_WEBHOOK_EARLY_RATE")?,
            webhook_delay: Duration::from_millis(env_parse("ORDERFLOW_PAYSIM_WEBHOOK_DELAY_MS", 0)?),
            processing_delay: Duration::from_millis(env_parse("ORDERFLOW_PAYSIM_PROCESSING_MS", 2_000)?),
            ..Self::default()
        })
    }
}

/// The simulator's shared state: one lock, held only for map operations, never across an await.
#[derive(Clone)]
pub struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) state: Arc<Mutex<intents::Ledger>>,
    pub(crate) keys: Arc<Mutex<idempotency::Keys>>,
    pub(crate) webhooks: webhooks::Webhooks,
}

fn router(sim: Sim) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/payment_intents", post(intents::create))
        .route("/v1/payment_intents/{id}", get(intents::retrieve))
        .route("/v1/payment_intents/{id}/capture", post(intents::capture))
        .route("/v1/payment_intents/{id}/cancel", post(intents::cancel))
        .route("/v1/refunds", post(intents::refund))
        .route("/v1/charges/{id}", get(intents::retrieve_charge))
        .route("/v1/sim/ledger", get(intents::ledger))
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}", get(events::retrieve))
        .route("/v1/sim/payment_intents/{id}/lapse", post(intents::lapse))
        .route("/v1/sim/payment_intents/{id}/customer", post(intents::customer))
        .with_state(sim)
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (webhooks, deliveries) = webhooks::Webhooks::start(&config);
    let log = events::Log::new(config.event_retention, config.webhook_url.is_some());
    let sim = Sim {
        config,
        state: Arc::new(Mutex::new(intents::Ledger::new(log))),
        keys: Arc::default(),
        webhooks,
    };
    let lapses = tokio::spawn(intents::keep_time(sim.clone()));
    let served = axum::serve(listener, router(sim))
        .with_graceful_shutdown(shutdown)
        .await;
    lapses.abort();
    if let Some(deliveries) = deliveries {
        deliveries.abort();
    }
    served
}
