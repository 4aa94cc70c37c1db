//! The payment provider simulator: the subset of Stripe's PaymentIntents API OrderFlow uses, with Stripe's
//! form-encoded requests, error shapes and `Idempotency-Key` semantics, so the worker's client could point at
//! the real provider. Test payment methods trigger the failures a real provider shows (decline, 503s, a lost
//! response, slowness); optional random faults add load-time noise. `GET /v1/sim/ledger` shows the money.
//!
//! State is in memory and lives as long as the process, like a sandbox account that is reset on restart.
//!
//! # Layout
//! - here: the simulator's knobs (`SimConfig`) and its router and `run`;
//! - `intents.rs`: PaymentIntents (create and confirm, retrieve, capture, multicapture, cancel, hold expiry),
//!   refunds, the ledger, the test payment methods' behaviours;
//! - `idempotency.rs`: Stripe's `Idempotency-Key` semantics (a repeat replays the first answer; the same key with
//!   other parameters is refused).

mod idempotency;
mod intents;

pub use intents::MAX_AMOUNT;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use orderflow_shared::settings::{SettingsError, env_parse};

/// Knobs of the simulator.
#[derive(Debug, Clone)]
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
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            slow_delay: Duration::from_millis(2_000),
            fault_rate: 0.0,
            lost_response_rate: 0.0,
            hold_lifetime: Duration::from_secs(7 * 24 * 3600),
        }
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
        })
    }
}

/// The simulator's shared state: one lock, held only for map operations, never across an await.
#[derive(Clone)]
pub struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) state: Arc<Mutex<intents::Ledger>>,
    pub(crate) keys: Arc<Mutex<idempotency::Keys>>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            state: Arc::default(),
            keys: Arc::default(),
        }
    }
}

pub fn router(config: SimConfig) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/payment_intents", post(intents::create))
        .route("/v1/payment_intents/{id}", get(intents::retrieve))
        .route("/v1/payment_intents/{id}/capture", post(intents::capture))
        .route("/v1/payment_intents/{id}/cancel", post(intents::cancel))
        .route("/v1/refunds", post(intents::refund))
        .route("/v1/charges/{id}", get(intents::retrieve_charge))
        .route("/v1/sim/ledger", get(intents::ledger))
        .route("/v1/sim/payment_intents/{id}/lapse", post(intents::lapse))
        .with_state(Sim::new(config))
}

/// Serves the simulator on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}
