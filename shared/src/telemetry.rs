//! One tracing set-up for every binary and the tests: `RUST_LOG` filters, `ORDERFLOW_LOG_FORMAT=json` switches
//! to JSON lines.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}

/// A W3C trace id (16 bytes, 32 lower-case hex digits). The API takes it from the request's `traceparent` or
/// makes one; it is stored with the order and carried in every saga job, so the API's and the workers' logs of
/// one order share it (the `trace_id` field of their spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl TraceId {
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().as_u128())
    }

    /// The trace id of a `traceparent` header (`00-<trace id>-<parent id>-<flags>`), if it is well formed and
    /// not all zeros.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || parent.len() != 16 || flags.len() != 2 || version == "ff" {
            return None;
        }
        trace.parse().ok()
    }

    /// A `traceparent` header for this trace, with `span` as the parent id, sampled.
    pub fn traceparent(self, span: u64) -> String {
        format!("00-{self}-{span:016x}-01")
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for TraceId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let value = if valid {
            u128::from_str_radix(s, 16).ok()
        } else {
            None
        };
        value
            .filter(|v| *v != 0)
            .map(Self)
            .ok_or("not a trace id (32 lower-case hex digits, not all zero)")
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "orderflow_http_request_duration_seconds",
        "HTTP request latency by method, route and status."
    );
    describe_histogram!(
        "orderflow_saga_step_duration_seconds",
        "Saga step run time by step and outcome."
    );
    describe_counter!(
        "orderflow_compensations_total",
        "Sagas that started compensating, by reason."
    );
    describe_counter!(
        "orderflow_webhook_attempts_total",
        "Attempts to deliver order events to merchants' webhook endpoints, by outcome (delivered, retry, dead, gone)."
    );
    describe_counter!(
        "orderflow_provider_events_applied_total",
        "The payment provider's webhook events applied, by what applying them did (effect)."
    );
    describe_gauge!(
        "orderflow_queue_jobs",
        "Jobs per queue and state (pending, scheduled, running, failed, dead)."
    );
    describe_gauge!(
        "orderflow_queue_oldest_pending_seconds",
        "Age of the oldest due job per queue (0 when none)."
    );
    describe_gauge!(
        "orderflow_saga_backlog_seconds",
        "The saga backlog admission control reads: over the saga's queues, the sum of each one's oldest due job's age."
    );
    describe_gauge!(
        "orderflow_admission_max_backlog_seconds",
        "The saga backlog past which new orders are refused (absent when admission control is off)."
    );
    describe_counter!(
        "orderflow_orders_refused_total",
        "Orders refused by admission control (503), by reason."
    );
    describe_gauge!(
        "orderflow_stuck_sagas",
        "Sagas not over and without progress for longer than the stuck threshold."
    );
    describe_gauge!(
        "orderflow_outbox_lag_seconds",
        "Age of the oldest event not yet published to NATS (0 when none)."
    );
    describe_gauge!(
        "orderflow_outbox_unpublished_events",
        "Events not yet published to NATS."
    );
    describe_gauge!(
        "orderflow_outbox_published_per_second",
        "Events published per second over the last minute."
    );
    describe_gauge!(
        "orderflow_stock_ledger_drift",
        "Skus and locations whose on_hand or reserved is not the sum of their stock movements, at the reconciler's last check (0 when the ledger adds up)."
    );
    describe_gauge!(
        "orderflow_stock_ledger_checked_timestamp_seconds",
        "When the reconciler's check of the stock ledger last succeeded (Unix time)."
    );
}

/// The process's Prometheus registry, installed on first use. Histograms measured in seconds get buckets from
/// 1 ms to 10 s. If another recorder was installed first (it cannot be here), the handle renders an empty page.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        const BUCKETS: [f64; 13] = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
                &BUCKETS,
            )
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only what this one sees"
            );
        }
        describe_metrics();
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_yields_its_trace_id_and_round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceId::from_traceparent(header).map(|t| t.to_string());
        assert_eq!(trace.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let again = TraceId::from_traceparent(&TraceId(0xabc).traceparent(7)).map(|t| t.0);
        assert_eq!(again, Some(0xabc));
    }

    #[test]
    fn malformed_or_zero_trace_ids_are_refused() {
        for header in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(TraceId::from_traceparent(header).is_none(), "{header}");
        }
    }
}
