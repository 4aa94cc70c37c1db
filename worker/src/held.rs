//! The jobs a worker holds and has not started, and its reports of them to the API's admission control
//! (`orderflow_shared::admission`: only the worker knows which of its claimed jobs have started).
//!
//! A queue's jobs wait in the worker in two places: claimed by a fetch and not yet handed to a handler (apalis
//! asks for the next job only while a handler is free: `poll::Paced` keeps the rest of a fetch), and handed to the
//! step's batcher and waiting for a batch slot (`runner::gather`). Both are first in, first out, so each keeps
//! only when its oldest job arrived; [`Held`] has the two per queue. [`report`] writes, every `REPORT_EVERY`
//! while any job has waited at least [`MIN_REPORTED_WAIT`] and once when none has any more, the longest wait per
//! queue (`admission::report_held`: one statement on a table of its own, unlogged).

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orderflow_shared::admission::{self, REPORT_EVERY};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

/// The instants below are kept as microseconds since this one, plus one (zero: nothing waits). Set when the
/// first [`Held`] is made.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Shorter waits are not reported (they count as none): far below any useful bound, and at a moderate rate
/// nearly every job waits a little while a batch runs, so the worker would write a report every 100 ms for nothing.
pub const MIN_REPORTED_WAIT: Duration = Duration::from_millis(25);

/// How long connecting or one report may take: a report that late is stale anyway.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

fn to_micros(at: Option<Instant>) -> u64 {
    at.map_or(0, |at| {
        u64::try_from(at.saturating_duration_since(*EPOCH).as_micros()).unwrap_or(u64::MAX - 1) + 1
    })
}

fn from_micros(micros: u64) -> Option<Instant> {
    (micros != 0).then(|| *EPOCH + Duration::from_micros(micros - 1))
}

/// Since when the oldest job of one queue has waited in this worker's hands, in each of the two places.
#[derive(Debug)]
pub struct Held {
    fetched: AtomicU64,
    gathered: AtomicU64,
}

impl Default for Held {
    fn default() -> Self {
        LazyLock::force(&EPOCH);
        Self {
            fetched: AtomicU64::new(0),
            gathered: AtomicU64::new(0),
        }
    }
}

impl Held {
    /// The oldest job claimed and not yet handed to a handler arrived at `since` (`None`: none is left).
    pub fn fetched_since(&self, since: Option<Instant>) {
        self.fetched.store(to_micros(since), Ordering::Relaxed);
    }

    /// The oldest job waiting for a batch slot was handed over at `since` (`None`: none waits).
    pub fn gathered_since(&self, since: Option<Instant>) {
        self.gathered.store(to_micros(since), Ordering::Relaxed);
    }

    /// How long the oldest held job that has not started has waited, at `now`.
    pub fn wait(&self, now: Instant) -> Duration {
        [&self.fetched, &self.gathered]
            .into_iter()
            .filter_map(|at| from_micros(at.load(Ordering::Relaxed)))
            .min()
            .map_or(Duration::ZERO, |oldest| now.saturating_duration_since(oldest))
    }
}

/// Reports the waits of `queues` as `instance`, for as long as it runs (the worker aborts it at shutdown), on a
/// connection of its own (opened on the first report and again after a failure; its commits do not wait for the
/// disk: a report is stale within a second). A report that cannot be written is dropped: once the last one is
/// older than `REPORT_TTL`, admission counts the queues' heads alone, as it did before workers reported.
pub async fn report(options: PgConnectOptions, instance: String, queues: Vec<(&'static str, Arc<Held>)>) {
    let options = options.options([("synchronous_commit", "off")]);
    let mut ticks = tokio::time::interval(REPORT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<PgConnection> = None;
    let mut reported_a_wait = false;
    let mut failing = false;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let waits: Vec<(&str, Duration)> = queues
            .iter()
            .map(|(queue, held)| (*queue, held.wait(now)))
            .filter(|(_, wait)| *wait >= MIN_REPORTED_WAIT)
            .collect();
        let waiting = !waits.is_empty();
        if !waiting && !reported_a_wait {
            continue;
        }
        match send(&options, &mut connection, &instance, &waits).await {
            Ok(()) => {
                reported_a_wait = waiting;
                if std::mem::take(&mut failing) {
                    tracing::info!("reporting held jobs again");
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "cannot report held jobs to admission control");
                }
                connection = None;
            }
        }
    }
}

/// Sends one report, connecting first if need be.
async fn send(
    options: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
    instance: &str,
    waits: &[(&str, Duration)],
) -> Result<(), String> {
    let connection = match connection {
        Some(connection) => connection,
        None => {
            let connected = tokio::time::timeout(SEND_TIMEOUT, options.connect())
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|error| error.to_string())?;
            connection.insert(connected)
        }
    };
    tokio::time::timeout(
        SEND_TIMEOUT,
        admission::report_held(&mut *connection, instance, waits),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_that_of_the_oldest_job_in_either_place() {
        let held = Held::default();
        // Whole microseconds after the epoch, as kept.
        let start = *EPOCH + Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(held.wait(start), Duration::ZERO);
        held.gathered_since(Some(start + ms(30)));
        assert_eq!(held.wait(start + ms(100)), ms(70));
        held.fetched_since(Some(start + ms(10)));
        assert_eq!(held.wait(start + ms(100)), ms(90));
        held.fetched_since(None);
        held.gathered_since(None);
        assert_eq!(held.wait(start + ms(100)), Duration::ZERO);
    }
}
