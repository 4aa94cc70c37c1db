//! The API's side of admission (`orderflow_shared::admission` has the rule): the last reading of the saga
//! backlog, kept fresh by one task on a PostgreSQL connection of its own (not the request pool, which is what an
//! overload saturates: a reading that waited for it would be late exactly when it matters), and the check that
//! order creation makes against it before reading its body. The reading lives as long as the API process.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use orderflow_shared::admission::AdmissionSettings;
use orderflow_shared::queue::views::saga_backlog;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use crate::{ApiError, AppState};

/// `backlog_micros` when the last reading failed (or none was made yet).
const UNKNOWN: u64 = u64::MAX;

/// The last backlog reading and the refusals made from it.
pub struct Gate {
    settings: AdmissionSettings,
    backlog_micros: AtomicU64,
    refused: AtomicU64,
}

/// What operators see of admission (the admin API's queue list and the dashboard's overview).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdmissionView {
    /// The bound (`ORDERFLOW_ADMISSION_MAX_BACKLOG_MS`) in seconds; null when admission is off.
    pub max_backlog_seconds: Option<f64>,
    /// This API process's last reading of the saga backlog in seconds; null when off or the reading failed.
    pub backlog_seconds: Option<f64>,
    /// Whether this API process refuses new orders now.
    pub refusing: bool,
    /// Orders this API process refused since it started.
    pub refused: u64,
}

impl Gate {
    pub fn new(settings: AdmissionSettings) -> Self {
        Self {
            settings,
            backlog_micros: AtomicU64::new(UNKNOWN),
            refused: AtomicU64::new(0),
        }
    }

    fn backlog(&self) -> Option<Duration> {
        match self.backlog_micros.load(Ordering::Relaxed) {
            UNKNOWN => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    fn record(&self, backlog: Option<Duration>) {
        let micros = backlog.map_or(UNKNOWN, |b| u64::try_from(b.as_micros()).unwrap_or(UNKNOWN - 1));
        self.backlog_micros.store(micros, Ordering::Relaxed);
        metrics::gauge!("orderflow_saga_backlog_seconds").set(backlog.map_or(0.0, |b| b.as_secs_f64()));
    }

    /// Admits a new order, or refuses it (503) and counts the refusal.
    pub fn check(&self) -> Result<(), ApiError> {
        self.settings.admit(self.backlog()).map_err(|refusal| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("orderflow_orders_refused_total", "reason" => "saga_backlog").increment(1);
            ApiError::Overloaded(refusal)
        })
    }

    pub fn view(&self) -> AdmissionView {
        let backlog = self.backlog();
        AdmissionView {
            max_backlog_seconds: self.settings.max_backlog.map(|b| b.as_secs_f64()),
            backlog_seconds: backlog
                .filter(|_| self.settings.max_backlog.is_some())
                .map(|b| b.as_secs_f64()),
            refusing: self.settings.admit(backlog).is_err(),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Reads the saga backlog every `refresh` until `stopped` resolves (not at all with admission off). A failed
/// reading (PostgreSQL down, a statement past its timeout) leaves the backlog unknown, which admits: the
/// database's own errors answer for an outage. The connection is opened again at the next reading.
pub async fn watch(gate: Arc<Gate>, options: PgConnectOptions, stopped: impl Future<Output = ()>) {
    if gate.settings.max_backlog.is_none() {
        return;
    }
    metrics::gauge!("orderflow_admission_max_backlog_seconds")
        .set(gate.settings.max_backlog.map_or(0.0, |b| b.as_secs_f64()));
    let options = options.application_name("orderflow-api-admission");
    let mut ticks = tokio::time::interval(gate.settings.refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<PgConnection> = None;
    let mut failing = false;
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = ticks.tick() => {}
        }
        let reading = match &mut connection {
            Some(connection) => saga_backlog(connection).await,
            None => match options.connect().await {
                Ok(opened) => saga_backlog(connection.insert(opened)).await,
                Err(error) => Err(error),
            },
        };
        match reading {
            Ok(backlog) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("reading the saga backlog again");
                }
                gate.record(Some(backlog));
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "cannot read the saga backlog; admitting every order until it can");
                }
                connection = None;
                gate.record(None);
            }
        }
    }
}

/// An order creation admitted by [`Gate::check`]; its rejection is the 503.
pub struct Admitted;

impl FromRequestParts<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.admission.check().map(|()| Admitted)
    }
}
