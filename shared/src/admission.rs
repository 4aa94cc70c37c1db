//! Admission under load: whether the API takes a new order now. An order the workers cannot start soon would
//! hold stock and a customer's attention for as long as the backlog ahead of it, so past a bound the API refuses
//! new orders at once (503 with `Retry-After`) instead of queueing them behind the others.
//!
//! The measure is the saga backlog: over the saga's queues, the sum of each one's oldest job that is due and
//! not yet taken by a worker, in seconds ([`crate::queue::views::saga_backlog`]). It is about how long a new
//! order's steps would wait before a worker takes them, whichever step is the slow one, and it falls as soon as
//! the workers catch up; it needs no knowledge of the machine's rate. The API reads it a few times a second
//! ([`AdmissionSettings::refresh`]) and decides each request from the last reading, so a refusal costs no
//! query, and a refused request writes nothing: its Idempotency-Key may be sent again once the backlog drains.
//!
//! Workers stopped with orders waiting are a backlog too: with admission on, the API refuses orders until a
//! worker takes the waiting ones. `ORDERFLOW_ADMISSION_MAX_BACKLOG_MS=0` turns admission off for deployments that
//! prefer to accept every order and work the backlog off later.

use std::time::Duration;

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
}
