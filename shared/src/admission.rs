//! Admission under load: whether the API takes a new order now. An order the workers cannot start soon would
//! hold stock and a customer's attention for as long as the backlog ahead of it, so past a bound the API refuses
//! new orders at once (503 with `Retry-After`) instead of queueing them behind the others.
//!
//! The measure is the saga backlog: the wait a new order's steps would meet before a worker starts them, summed
//! over the saga's queues. Per queue it has two parts, because a job waits in two places:
//! - in the queue, due and not yet taken by a worker: the age of the queue's oldest such job
//!   ([`crate::queue::views::saga_queue_heads`]);
//! - in a worker's hands, taken and not yet started: a busy worker holds more jobs than it runs (the next batch
//!   waits for a slot while two run, and a fetch may bring more), and under overload that part was the larger
//!   (docs/PERFORMANCE.md, "Issue 16, part 5": up to 253 jobs a queue, a batch's run each). Only the worker knows
//!   which of its jobs have started, so each worker process reports, a few times a second while any wait, the
//!   longest wait of the jobs it holds per queue on the [`WAITS_CHANNEL`] notification channel ([`WaitReport`]);
//!   the API keeps each worker's last report for [`REPORT_TTL`] and adds, per queue, the longest ([`HeldWaits`]).
//!
//! It falls as soon as the workers catch up and needs no knowledge of the machine's rate. The API reads it a few
//! times a second ([`AdmissionSettings::refresh`]) and decides each request from the last reading, so a refusal
//! costs no query, and a refused request writes nothing: its Idempotency-Key may be sent again once the backlog
//! drains.
//!
//! Workers stopped with orders waiting are a backlog too: with admission on, the API refuses orders until a
//! worker takes the waiting ones. `ORDERFLOW_ADMISSION_MAX_BACKLOG_MS=0` turns admission off for deployments that
//! prefer to accept every order and work the backlog off later.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the API admits new orders (`ORDERFLOW_ADMISSION_MAX_BACKLOG_MS`, `ORDERFLOW_ADMISSION_REFRESH_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionSettings {
    /// Past this saga backlog new orders are refused; `None` admits every order (the variable set to 0).
    pub max_backlog: Option<Duration>,
    /// How often an API process reads the backlog: a refusal starts at most this long after the bound is
    /// passed, and stops at most this long after the backlog fell below it.
    pub refresh: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            max_backlog: Some(Duration::from_millis(1_000)),
            refresh: Duration::from_millis(100),
        }
    }
}

/// Retry-After is never shorter than this (HTTP has whole seconds) ...
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// ... nor longer than this: a backlog far past the bound may drain at once when a stopped worker comes back.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why an order is not admitted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub backlog: Duration,
    pub max_backlog: Duration,
    /// When to try again: how far the backlog is past the bound (it falls at least a second per second while
    /// nothing new is admitted and a worker runs), in whole seconds, 1 to 30.
    pub retry_after_secs: u64,
}

impl AdmissionSettings {
    /// Admission off: every order is taken.
    pub const OFF: Self = Self {
        max_backlog: None,
        refresh: Duration::from_millis(100),
    };

    /// Whether an order is taken with the saga backlog at `backlog` (`None`: not known, as when the last reading
    /// failed; the order is taken, and the database's own errors answer for an outage).
    pub fn admit(&self, backlog: Option<Duration>) -> Result<(), Refusal> {
        let (Some(max_backlog), Some(backlog)) = (self.max_backlog, backlog) else {
            return Ok(());
        };
        if backlog <= max_backlog {
            return Ok(());
        }
        let over = (backlog - max_backlog).clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER);
        Err(Refusal {
            backlog,
            max_backlog,
            retry_after_secs: over.as_secs() + u64::from(over.subsec_nanos() > 0),
        })
    }
}

/// The notification channel workers report their held jobs' waits on.
pub const WAITS_CHANNEL: &str = "orderflow_worker_waits";

/// How often a worker reports while jobs wait in its hands (and once more when none do): about the API's reading
/// interval.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// How long a worker's report counts: a report older than this is from a worker that stopped or lost its
/// connection.
pub const REPORT_TTL: Duration = Duration::from_secs(1);

// A worker that reports on time is never forgotten between two of its reports.
const _: () = assert!(REPORT_TTL.as_millis() >= 5 * REPORT_EVERY.as_millis());

/// A longer wait than this in a report is taken as this (a report is text anyone who may notify can send).
const MAX_REPORTED_WAIT: Duration = Duration::from_secs(3_600);
/// Reports from more worker processes than this are not kept (the same reason).
const MAX_WORKERS: usize = 1_024;

/// One worker process's report: per queue, how long its oldest held and not yet started job has waited.
/// On the wire: `<worker> <queue>=<microseconds> …`, e.g. `host-41-3fa2 orderflow.pay=125000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitReport {
    pub worker: String,
    pub waits: Vec<(String, Duration)>,
}

impl WaitReport {
    pub fn encode(&self) -> String {
        let mut payload = self.worker.clone();
        for (queue, wait) in &self.waits {
            payload.push_str(&format!(" {queue}={}", wait.as_micros()));
        }
        payload
    }

    /// Sends the report to every API process listening (one notification; a notification is not data, so the
    /// connection's commits need not wait for the disk).
    pub async fn send(&self, executor: impl sqlx::PgExecutor<'_>) -> Result<(), sqlx::Error> {
        sqlx::query!("select pg_notify($1, $2)", WAITS_CHANNEL, self.encode())
            .execute(executor)
            .await
            .map(|_| ())
    }

    /// The report in `payload`, or `None` if it is not one.
    pub fn decode(payload: &str) -> Option<Self> {
        let mut parts = payload.split_ascii_whitespace();
        let worker = parts.next()?.to_owned();
        let waits = parts
            .map(|part| {
                let (queue, micros) = part.split_once('=')?;
                let wait = Duration::from_micros(micros.parse().ok()?).min(MAX_REPORTED_WAIT);
                Some((queue.to_owned(), wait))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { worker, waits })
    }
}

/// The API's view of what workers hold: each worker's last report, while it counts.
#[derive(Debug, Default)]
pub struct HeldWaits {
    reports: HashMap<String, (Instant, Vec<(String, Duration)>)>,
}

impl HeldWaits {
    /// Keeps `payload` (a [`WaitReport`]) as its worker's last report, received at `now`; ignores anything else.
    pub fn record(&mut self, payload: &str, now: Instant) {
        let Some(report) = WaitReport::decode(payload) else {
            return;
        };
        if self.reports.len() >= MAX_WORKERS && !self.reports.contains_key(&report.worker) {
            return;
        }
        self.reports.insert(report.worker, (now, report.waits));
    }

    /// The saga backlog at `now`: per queue, the age of its head (`heads`, from
    /// [`crate::queue::views::saga_queue_heads`]) and the longest wait a worker reports for it, summed over the
    /// queues. Reports older than [`REPORT_TTL`] are dropped.
    pub fn backlog(&mut self, heads: &[(String, Duration)], now: Instant) -> Duration {
        self.reports
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= REPORT_TTL);
        heads
            .iter()
            .map(|(queue, head)| {
                let held = self
                    .reports
                    .values()
                    .flat_map(|(_, waits)| waits.iter())
                    .filter(|(q, _)| q == queue)
                    .map(|(_, wait)| *wait)
                    .max()
                    .unwrap_or_default();
                *head + held
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn a_backlog_up_to_the_bound_is_admitted() {
        let settings = AdmissionSettings::default();
        assert_eq!(settings.admit(Some(Duration::ZERO)), Ok(()));
        assert_eq!(settings.admit(Some(ms(1_000))), Ok(()));
    }

    #[test]
    fn past_the_bound_an_order_is_refused_with_a_retry_after_of_the_excess_in_whole_seconds() {
        let settings = AdmissionSettings::default();
        let refusal = settings.admit(Some(ms(1_001))).unwrap_err();
        assert_eq!(refusal.retry_after_secs, 1);
        assert_eq!(refusal.max_backlog, ms(1_000));
        assert_eq!(settings.admit(Some(ms(4_500))).unwrap_err().retry_after_secs, 4);
        assert_eq!(settings.admit(Some(ms(6_000))).unwrap_err().retry_after_secs, 5);
        assert_eq!(
            settings
                .admit(Some(Duration::from_secs(3_600)))
                .unwrap_err()
                .retry_after_secs,
            30
        );
    }

    #[test]
    fn an_unknown_backlog_or_admission_off_takes_every_order() {
        assert_eq!(AdmissionSettings::default().admit(None), Ok(()));
        assert_eq!(
            AdmissionSettings::OFF.admit(Some(Duration::from_secs(3_600))),
            Ok(())
        );
    }

    fn heads(pairs: &[(&str, u64)]) -> Vec<(String, Duration)> {
        pairs.iter().map(|(q, m)| ((*q).to_owned(), ms(*m))).collect()
    }

    #[test]
    fn a_report_reads_back_as_it_was_written_and_anything_else_is_not_one() {
        let report = WaitReport {
            worker: "host-41-3fa2".into(),
            waits: vec![
                ("orderflow.pay".into(), ms(125)),
                ("orderflow.commit".into(), ms(0)),
            ],
        };
        assert_eq!(
            report.encode(),
            "host-41-3fa2 orderflow.pay=125000 orderflow.commit=0"
        );
        assert_eq!(WaitReport::decode(&report.encode()), Some(report));
        assert_eq!(WaitReport::decode(""), None);
        assert_eq!(WaitReport::decode("w orderflow.pay"), None);
        assert_eq!(WaitReport::decode("w orderflow.pay=-5"), None);
        assert_eq!(WaitReport::decode("w orderflow.pay=1e9"), None);
        let huge = WaitReport::decode("w orderflow.pay=99999999999999").unwrap();
        assert_eq!(huge.waits[0].1, MAX_REPORTED_WAIT);
    }

    #[test]
    fn the_backlog_adds_per_queue_the_longest_held_wait_of_the_workers_that_reported_lately() {
        let start = Instant::now();
        let mut held = HeldWaits::default();
        let queues = heads(&[
            ("orderflow.reserve", 100),
            ("orderflow.pay", 0),
            ("orderflow.commit", 50),
        ]);
        assert_eq!(
            held.backlog(&queues, start),
            ms(150),
            "no report: the heads alone"
        );

        held.record("a orderflow.reserve=200000 orderflow.pay=300000", start);
        held.record("b orderflow.reserve=400000 orderflow.fulfil=900000", start);
        held.record("not a report at all", start);
        // reserve: 100 + max(200, 400); pay: 0 + 300; commit: 50 + 0; fulfil is not among the heads.
        assert_eq!(held.backlog(&queues, start + ms(500)), ms(850));

        // A worker's newer report replaces its last one.
        held.record("b orderflow.reserve=0", start + ms(600));
        assert_eq!(held.backlog(&queues, start + ms(700)), ms(650));

        // Past the TTL a report no longer counts: a (we heard nothing from it since), then b.
        assert_eq!(held.backlog(&queues, start + ms(1_300)), ms(150));
        assert_eq!(held.backlog(&queues, start + ms(1_700)), ms(150));
        assert!(held.reports.is_empty());
    }
}
