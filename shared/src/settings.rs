//! Configuration read from the environment, with local defaults so that nothing needs setting up to run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::admission::AdmissionSettings;
use crate::flow::{Budgets, Step};

/// The PostgreSQL database every binary uses unless `DATABASE_URL` says otherwise. On loopback, without TLS:
/// encrypting a same-host connection protects nothing, and turning it off took 10–18% off the CPU per saga in one
/// run of `bench/cpu-per-saga.sh` (docs/PERFORMANCE.md). A `DATABASE_URL` of your own keeps its own `sslmode` (`prefer` when unset).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orderflow?sslmode=disable";
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_PAYSIM_ADDR: &str = "127.0.0.1:8090";
pub const DEFAULT_PAYMENTS_URL: &str = "http://127.0.0.1:8090";
/// Where `orderflow dev` looks for NATS when `ORDERFLOW_NATS_URL` is unset.
pub const DEFAULT_NATS_ADDR: &str = "127.0.0.1:4222";

#[derive(Debug, thiserror::Error)]
#[error("{name} is not valid: {message}")]
pub struct SettingsError {
    pub name: &'static str,
    pub message: String,
}

/// Reads `name` from the environment, or `default` when it is unset or empty.
pub fn env_or(name: &'static str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, or returns `default` when it is unset.
pub fn env_parse<T>(name: &'static str, default: T) -> Result<T, SettingsError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    Ok(env_parse_opt(name)?.unwrap_or(default))
}

pub fn database_url() -> String {
    env_or("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// Connections one process may hold (`ORDERFLOW_DB_MAX_CONNECTIONS`, default 32). Each worker process keeps
/// one per queue for LISTEN (nine), so it needs at least `MIN_WORKER_CONNECTIONS`. Keep the sum over all
/// processes below PostgreSQL's `max_connections` (100 by default).
pub fn db_max_connections() -> Result<u32, SettingsError> {
    let value: u32 = env_parse("ORDERFLOW_DB_MAX_CONNECTIONS", 32)?;
    if value == 0 {
        return Err(SettingsError {
            name: "ORDERFLOW_DB_MAX_CONNECTIONS",
            message: "must be at least 1".to_owned(),
        });
    }
    Ok(value)
}

/// The longest fetch gap a worker takes (`ORDERFLOW_WORKER_FETCH_GAP_MS`): beyond it a step would wait longer than
/// any batch is worth.
pub const MAX_FETCH_GAP: Duration = Duration::from_secs(1);

/// A LISTEN connection per queue and room for steps, apalis's own fetches, the completer and the reconciler.
pub const MIN_WORKER_CONNECTIONS: u32 = crate::flow::Step::ALL.len() as u32 + 3;

pub fn api_addr() -> Result<SocketAddr, SettingsError> {
    env_parse("ORDERFLOW_API_ADDR", parse_default(DEFAULT_API_ADDR))
}

pub fn paysim_addr() -> Result<SocketAddr, SettingsError> {
    env_parse("ORDERFLOW_PAYSIM_ADDR", parse_default(DEFAULT_PAYSIM_ADDR))
}

fn parse_default(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Settings of the saga worker. `Default` is the shipped configuration; [`WorkerSettings::from_env`] reads each
/// field's variable over it.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Base URL of the payment provider (`ORDERFLOW_PAYMENTS_URL`; the simulator by default; Stripe's API shape).
    pub payments_url: String,
    /// The step queues this process works (`ORDERFLOW_WORKER_STEPS`, names separated by commas, e.g.
    /// `reserve,commit`; default all nine). A step no running worker takes waits in its queue: every step needs
    /// at least one process. Dedicated processes let an operator size or place one step apart (pay next to the
    /// payment provider, reserve on its own while a backlog drains).
    pub steps: Vec<Step>,
    /// Jobs one worker process has in hand at once, per queue (`ORDERFLOW_WORKER_CONCURRENCY`, default 192: two
    /// batches of up to 64 run while the next 64 wait, so a busy queue's next batch is full when a slot frees).
    pub concurrency: usize,
    /// Jobs claimed per fetch, per queue (`ORDERFLOW_WORKER_FETCH_SIZE`, default 64, at most `concurrency`).
    pub fetch_size: usize,
    /// Most orders one step runs for at once (`ORDERFLOW_WORKER_STEP_BATCH`, default 64): a step runs the jobs
    /// its queue worker has in hand together, in a few set-based statements and one commit. A batch is also
    /// bounded by the jobs in hand (`concurrency`). 1 runs every step one order at a time.
    pub step_batch: usize,
    /// How often an idle worker looks for delayed jobs (retries with backoff) besides LISTEN/NOTIFY
    /// (`ORDERFLOW_WORKER_POLL_MS`).
    pub poll_interval: Duration,
    /// While a queue's jobs come slowly (fewer than 16 per gap), the least time from a fetch that found some to
    /// the next (`ORDERFLOW_WORKER_FETCH_GAP_MS`, default 40, at most 1,000; 0: none; `worker/src/poll.rs`). The
    /// jobs announced meanwhile wait for one fetch and run as one batch: fewer, larger batches at moderate rates
    /// for a wait of at most the gap per step. A busier queue, or one whose last fetch found nothing or was longer
    /// ago than the gap (an idle one), fetches at once. At 100 sagas/s it halved PostgreSQL's CPU per saga
    /// (docs/PERFORMANCE.md, "Issue 16, part 4").
    pub fetch_gap: Duration,
    /// First retry delay of a transient step failure (`ORDERFLOW_RETRY_BASE_MS`); doubles per attempt up to
    /// `retry_max_delay` (`ORDERFLOW_RETRY_MAX_MS`).
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Attempts per step before it gives up (`ORDERFLOW_MAX_STEP_ATTEMPTS`, `ORDERFLOW_MAX_COMPENSATION_ATTEMPTS`,
    /// `ORDERFLOW_MAX_ATTEMPTS_<STEP>`).
    pub attempts: Budgets,
    /// Timeout of one call to the payment provider (`ORDERFLOW_PAYMENTS_TIMEOUT_MS`).
    pub payments_timeout: Duration,
    /// Upper bound of one step's run, far below apalis's orphan timeout (`ORDERFLOW_STEP_TIMEOUT_MS`).
    pub step_timeout: Duration,
    /// How long a reservation holds stock before payment starts (`ORDERFLOW_RESERVATION_TTL_SECS`).
    pub reservation_ttl: Duration,
    /// How often the reconciler looks for orphaned jobs, stranded sagas and expired reservations
    /// (`ORDERFLOW_RECONCILE_INTERVAL_MS`).
    pub reconcile_interval: Duration,
    /// How long a finished (Done) job stays in `apalis.jobs` before the reconciler deletes it
    /// (`ORDERFLOW_DONE_JOB_RETENTION_SECS`). The saga's own history (`saga_jobs`, `saga_steps`,
    /// `order_events`) is kept; only apalis's row goes.
    pub done_job_retention: Duration,
    /// How long an Idempotency-Key's record is kept before the reconciler purges it, after which the key may be
    /// used again (`ORDERFLOW_IDEMPOTENCY_RETENTION_SECS`, 24 h, as Stripe keeps them).
    pub idempotency_retention: Duration,
    /// How often the reconciler deletes what is past its retention (Done jobs, Idempotency-Key records): a
    /// minute; not a setting (tests shorten it).
    pub purge_interval: Duration,
    /// How often the reconciler reads the stock ledger against the skus' counts
    /// (`ORDERFLOW_LEDGER_CHECK_INTERVAL_SECS`, a minute): a read of the whole ledger, so not every pass.
    pub ledger_check_interval: Duration,
    /// How often the reconciler reads when waiting orders' holds lapse and warns of those that lapse soon
    /// (`ORDERFLOW_HOLD_CHECK_INTERVAL_SECS`, five minutes).
    pub hold_check_interval: Duration,
    /// How long before a waiting order's hold lapses the reconciler warns of it (`ORDERFLOW_HOLD_WARNING_SECS`, a
    /// day): the log line and `orderflow_holds_expiring`.
    pub hold_warning: Duration,
    /// How often the process looks for the payment provider's webhook events to apply
    /// (`ORDERFLOW_PROVIDER_EVENTS_INTERVAL_MS`, 250): the most an event waits once recorded.
    pub provider_events_interval: Duration,
    /// How long the saga waits for an asynchronous payment (the customer's 3-D Secure, a bank debit processing)
    /// from when its authorization began before it asks the provider and decides
    /// (`ORDERFLOW_ASYNC_PAYMENT_DEADLINE_SECS`, 15 minutes): the provider's webhook ends the wait sooner.
    pub async_payment_deadline: Duration,
    /// The longest a waiting payment holds the order's reserved stock from any one answer
    /// (`ORDERFLOW_ASYNC_PAYMENT_MAX_HOLD_SECS`, an hour): the hold is extended to the deadline (and a minute
    /// more, so the deadline's job decides before the reconciler expires it), never past this.
    pub async_payment_max_hold: Duration,
    /// Deliveries to merchants' webhook endpoints.
    pub webhooks: WebhookSettings,
    /// How long SIGTERM waits for in-flight steps (`ORDERFLOW_SHUTDOWN_GRACE_MS`).
    pub shutdown_grace: Duration,
    /// The outbox relay to NATS JetStream; off unless `ORDERFLOW_NATS_URL` is set.
    pub relay: Option<RelaySettings>,
    /// Where the worker serves its own `/metrics` (`ORDERFLOW_WORKER_METRICS_ADDR`); off by default.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            payments_url: DEFAULT_PAYMENTS_URL.to_owned(),
            steps: Step::ALL.to_vec(),
            concurrency: 192,
            fetch_size: 64,
            step_batch: 64,
            poll_interval: Duration::from_millis(1_000),
            fetch_gap: Duration::from_millis(40),
            retry_base_delay: Duration::from_millis(1_000),
            retry_max_delay: Duration::from_millis(300_000),
            attempts: Budgets::default(),
            payments_timeout: Duration::from_millis(10_000),
            step_timeout: Duration::from_millis(60_000),
            reservation_ttl: Duration::from_secs(900),
            reconcile_interval: Duration::from_millis(1_000),
            done_job_retention: Duration::from_secs(3_600),
            idempotency_retention: Duration::from_secs(86_400),
            purge_interval: Duration::from_secs(60),
            ledger_check_interval: Duration::from_secs(60),
            hold_check_interval: Duration::from_secs(300),
            hold_warning: Duration::from_secs(86_400),
            provider_events_interval: Duration::from_millis(250),
            async_payment_deadline: Duration::from_secs(900),
            async_payment_max_hold: Duration::from_secs(3_600),
            webhooks: WebhookSettings::default(),
            shutdown_grace: Duration::from_millis(30_000),
            relay: None,
            metrics_addr: None,
        }
    }
}

/// Where and how the outbox relay publishes.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `ORDERFLOW_NATS_URL`.
    pub nats_url: String,
    /// The JetStream stream, created if missing (`ORDERFLOW_NATS_STREAM`, default `ORDERS`).
    pub stream: String,
    /// Subjects are `<prefix>.<event>` (`ORDERFLOW_NATS_SUBJECT_PREFIX`, default `orders`).
    pub subject_prefix: String,
    /// Events read from the outbox and published per round (`ORDERFLOW_RELAY_PAGE_SIZE`, default 500).
    pub page_size: i64,
    /// How often an idle relay looks for new events (`ORDERFLOW_RELAY_IDLE_MS`, default 100).
    pub idle_interval: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            nats_url: format!("nats://{DEFAULT_NATS_ADDR}"),
            stream: "ORDERS".to_owned(),
            subject_prefix: "orders".to_owned(),
            page_size: 500,
            idle_interval: Duration::from_millis(100),
        }
    }
}

impl RelaySettings {
    pub fn from_env() -> Result<Option<Self>, SettingsError> {
        let nats_url = env_or("ORDERFLOW_NATS_URL", "");
        if nats_url.trim().is_empty() {
            return Ok(None);
        }
        Self::for_url(&nats_url).map(Some)
    }

    /// The relay to `nats_url`, the rest from the environment or the defaults.
    pub fn for_url(nats_url: &str) -> Result<Self, SettingsError> {
        let default = Self::default();
        Ok(Self {
            nats_url: nats_url.to_owned(),
            stream: env_or("ORDERFLOW_NATS_STREAM", &default.stream),
            subject_prefix: env_or("ORDERFLOW_NATS_SUBJECT_PREFIX", &default.subject_prefix),
            page_size: renamed(
                "ORDERFLOW_RELAY_PAGE_SIZE",
                "ORDERFLOW_RELAY_BATCH",
                default.page_size,
            )?
            .max(1),
            idle_interval: env_millis("ORDERFLOW_RELAY_IDLE_MS", default.idle_interval)?,
        })
    }
}

impl WorkerSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let default = Self::default();
        let mut per_step = HashMap::new();
        for step in Step::ALL {
            if let Some(value) = env_parse_opt::<u32>(step_attempts_variable(step))? {
                per_step.insert(step, value.max(1));
            }
        }
        Ok(Self {
            payments_url: env_or("ORDERFLOW_PAYMENTS_URL", &default.payments_url),
            steps: parse_steps(&env_or("ORDERFLOW_WORKER_STEPS", ""))?,
            concurrency: env_parse("ORDERFLOW_WORKER_CONCURRENCY", default.concurrency)?.max(1),
            fetch_size: renamed(
                "ORDERFLOW_WORKER_FETCH_SIZE",
                "ORDERFLOW_WORKER_BATCH_SIZE",
                default.fetch_size,
            )?
            .max(1),
            step_batch: env_parse("ORDERFLOW_WORKER_STEP_BATCH", default.step_batch)?.max(1),
            poll_interval: env_millis("ORDERFLOW_WORKER_POLL_MS", default.poll_interval)?,
            fetch_gap: env_millis("ORDERFLOW_WORKER_FETCH_GAP_MS", default.fetch_gap)?.min(MAX_FETCH_GAP),
            retry_base_delay: env_millis("ORDERFLOW_RETRY_BASE_MS", default.retry_base_delay)?,
            retry_max_delay: env_millis("ORDERFLOW_RETRY_MAX_MS", default.retry_max_delay)?,
            attempts: Budgets {
                forward: env_parse("ORDERFLOW_MAX_STEP_ATTEMPTS", default.attempts.forward)?.max(1),
                compensation: env_parse(
                    "ORDERFLOW_MAX_COMPENSATION_ATTEMPTS",
                    default.attempts.compensation,
                )?
                .max(1),
                per_step,
            },
            payments_timeout: env_millis("ORDERFLOW_PAYMENTS_TIMEOUT_MS", default.payments_timeout)?,
            step_timeout: env_millis("ORDERFLOW_STEP_TIMEOUT_MS", default.step_timeout)?,
            reservation_ttl: env_secs("ORDERFLOW_RESERVATION_TTL_SECS", default.reservation_ttl)?,
            reconcile_interval: env_millis("ORDERFLOW_RECONCILE_INTERVAL_MS", default.reconcile_interval)?,
            done_job_retention: env_secs("ORDERFLOW_DONE_JOB_RETENTION_SECS", default.done_job_retention)?,
            idempotency_retention: env_secs(
                "ORDERFLOW_IDEMPOTENCY_RETENTION_SECS",
                default.idempotency_retention,
            )?,
            purge_interval: default.purge_interval,
            ledger_check_interval: env_secs(
                "ORDERFLOW_LEDGER_CHECK_INTERVAL_SECS",
                default.ledger_check_interval,
            )?,
            hold_check_interval: env_secs("ORDERFLOW_HOLD_CHECK_INTERVAL_SECS", default.hold_check_interval)?,
            hold_warning: env_secs("ORDERFLOW_HOLD_WARNING_SECS", default.hold_warning)?,
            provider_events_interval: env_millis(
                "ORDERFLOW_PROVIDER_EVENTS_INTERVAL_MS",
                default.provider_events_interval,
            )?,
            async_payment_deadline: env_secs(
                "ORDERFLOW_ASYNC_PAYMENT_DEADLINE_SECS",
                default.async_payment_deadline,
            )?,
            async_payment_max_hold: env_secs(
                "ORDERFLOW_ASYNC_PAYMENT_MAX_HOLD_SECS",
                default.async_payment_max_hold,
            )?,
            webhooks: WebhookSettings::from_env()?,
            shutdown_grace: env_millis("ORDERFLOW_SHUTDOWN_GRACE_MS", default.shutdown_grace)?,
            relay: RelaySettings::from_env()?,
            metrics_addr: env_parse_opt("ORDERFLOW_WORKER_METRICS_ADDR")?,
        })
    }
}

/// A duration in milliseconds from `name`, or `default`.
fn env_millis(name: &'static str, default: Duration) -> Result<Duration, SettingsError> {
    let millis = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    Ok(Duration::from_millis(env_parse(name, millis)?))
}

/// A duration in seconds from `name`, or `default`.
fn env_secs(name: &'static str, default: Duration) -> Result<Duration, SettingsError> {
    Ok(Duration::from_secs(env_parse(name, default.as_secs())?))
}

/// A setting that was renamed: the new variable, else the old one (still read, with a warning), else `default`.
fn renamed<T>(name: &'static str, old: &'static str, default: T) -> Result<T, SettingsError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    if let Some(value) = env_parse_opt(name)? {
        return Ok(value);
    }
    match env_parse_opt(old)? {
        Some(value) => {
            tracing::warn!("{old} is deprecated; it is now called {name}");
            Ok(value)
        }
        None => Ok(default),
    }
}

/// The steps named in `list` (comma-separated, as in the step log), in `Step::ALL`'s order; all of them for an
/// empty list.
pub fn parse_steps(list: &str) -> Result<Vec<Step>, SettingsError> {
    let mut named = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let step = Step::parse(name).ok_or_else(|| SettingsError {
            name: "ORDERFLOW_WORKER_STEPS",
            message: format!(
                "no step is called {name:?}; the steps are {}",
                Step::ALL.map(Step::name).join(", ")
            ),
        })?;
        named.push(step);
    }
    if named.is_empty() {
        return Ok(Step::ALL.to_vec());
    }
    Ok(Step::ALL
        .into_iter()
        .filter(|step| named.contains(step))
        .collect())
}

/// The variable that overrides one step's attempts, e.g. `ORDERFLOW_MAX_ATTEMPTS_PAY`.
pub fn step_attempts_variable(step: Step) -> &'static str {
    match step {
        Step::Reserve => "ORDERFLOW_MAX_ATTEMPTS_RESERVE",
        Step::Pay => "ORDERFLOW_MAX_ATTEMPTS_PAY",
        Step::Commit => "ORDERFLOW_MAX_ATTEMPTS_COMMIT",
        Step::Fulfil => "ORDERFLOW_MAX_ATTEMPTS_FULFIL",
        Step::ReleaseInventory => "ORDERFLOW_MAX_ATTEMPTS_RELEASE_INVENTORY",
        Step::CancelPayment => "ORDERFLOW_MAX_ATTEMPTS_CANCEL_PAYMENT",
        Step::Ship => "ORDERFLOW_MAX_ATTEMPTS_SHIP",
        Step::ReleaseRest => "ORDERFLOW_MAX_ATTEMPTS_RELEASE_REST",
        Step::Refund => "ORDERFLOW_MAX_ATTEMPTS_REFUND",
    }
}

fn env_parse_opt<T>(name: &'static str) -> Result<Option<T>, SettingsError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().map(Some).map_err(|e: T::Err| SettingsError {
                name,
                message: format!("{value:?}: {e}"),
            })
        }
        _ => Ok(None),
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read queues, sagas and their history.
    Viewer,
    /// Also act: retry, compensate, resolve.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// One admin bearer token: whose it is (recorded with every action) and its role.
#[derive(Clone)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"***")
            .finish()
    }
}

/// The API process's settings.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    pub admin: AdminSettings,
    pub keys: KeySettings,
    pub limits: ServerLimits,
    /// When new orders are refused under load (`crate::admission`).
    pub admission: AdmissionSettings,
    /// Where the API serves `/metrics` to anyone who reaches it (`ORDERFLOW_API_METRICS_ADDR`, for a private
    /// network); unset, `/metrics` is on the API's own address and needs a key with `metrics:read`.
    pub metrics_addr: Option<SocketAddr>,
    /// The payment provider's webhooks (`POST /v1/provider/webhooks`).
    pub provider_webhooks: ProviderWebhookSettings,
    /// Whether merchants' webhook endpoints may be on this machine ([`webhook_allow_loopback`]).
    pub webhook_allow_loopback: bool,
}

/// How every worker process delivers order events to merchants' webhook endpoints (`crate::webhooks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// When each attempt is made (`ORDERFLOW_WEBHOOK_RETRY_SCHEDULE`, durations such as
    /// `0,5s,5m,30m,2h,5h,10h,14h,20h,24h`, Standard Webhooks' example, about three days): the first element is
    /// the first attempt's (0: at once, as the event is fanned out; it is not waited for), each later one the wait
    /// after the attempt before failed. One attempt per element; past the last a delivery is DEAD.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint whose deliveries fail this long without a success is disabled
    /// (`ORDERFLOW_WEBHOOK_DISABLE_AFTER_SECS`, three days).
    pub disable_after: Duration,
    /// One attempt's time limit (`ORDERFLOW_WEBHOOK_TIMEOUT_MS`, 15 s).
    pub timeout: Duration,
    /// Attempts one process makes at once (`ORDERFLOW_WEBHOOK_CONCURRENCY`, 16).
    pub concurrency: usize,
    /// How often an idle process looks for events to fan out and deliveries due
    /// (`ORDERFLOW_WEBHOOK_POLL_MS`, 250).
    pub poll_interval: Duration,
    /// Whether endpoints may be on this machine ([`webhook_allow_loopback`]).
    pub allow_loopback: bool,
}

/// `ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK` (`true` or `false`, off when unset; `orderflow dev` turns it on): whether
/// webhook endpoints may be on this machine (`http://127.0.0.1…`), for development and tests. Off, no endpoint's
/// URL reaches a port of the host OrderFlow runs on. The API checks it when an endpoint is made, the worker at
/// each delivery.
pub fn webhook_allow_loopback() -> Result<bool, SettingsError> {
    env_parse("ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK", false)
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_schedule: crate::webhooks::delivery::RETRY_SCHEDULE.to_vec(),
            disable_after: Duration::from_secs(3 * 86_400),
            timeout: Duration::from_secs(15),
            concurrency: 16,
            poll_interval: Duration::from_millis(250),
            allow_loopback: false,
        }
    }
}

impl WebhookSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let default = Self::default();
        let retry_schedule = match std::env::var("ORDERFLOW_WEBHOOK_RETRY_SCHEDULE") {
            Err(_) => default.retry_schedule,
            Ok(text) => text
                .split(',')
                .map(|item| {
                    let item = item.trim();
                    if item == "0" {
                        return Some(Duration::ZERO);
                    }
                    crate::admin::parse_duration(item)
                })
                .collect::<Option<Vec<_>>>()
                .filter(|schedule| !schedule.is_empty())
                .ok_or_else(|| SettingsError {
                    name: "ORDERFLOW_WEBHOOK_RETRY_SCHEDULE",
                    message: format!("{text:?} is not a list of durations such as 0,5s,5m,2h,1d"),
                })?,
        };
        Ok(Self {
            retry_schedule,
            disable_after: env_secs("ORDERFLOW_WEBHOOK_DISABLE_AFTER_SECS", default.disable_after)?,
            timeout: env_millis("ORDERFLOW_WEBHOOK_TIMEOUT_MS", default.timeout)?,
            concurrency: env_parse("ORDERFLOW_WEBHOOK_CONCURRENCY", default.concurrency)?.max(1),
            poll_interval: env_millis("ORDERFLOW_WEBHOOK_POLL_MS", default.poll_interval)?,
            allow_loopback: webhook_allow_loopback()?,
        })
    }
}

/// How the API checks the payment provider's webhooks (`crate::stripe_signature`).
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderWebhookSettings {
    /// The endpoint's signing secrets (`ORDERFLOW_PROVIDER_WEBHOOK_SECRETS`, comma-separated: two while one is
    /// rolled, as Stripe signs with both). None: every delivery is refused, as none can be checked.
    pub secrets: Vec<String>,
    /// How far a signature's timestamp may be from now, either way (`ORDERFLOW_PROVIDER_WEBHOOK_TOLERANCE_SECS`,
    /// 300, Stripe's own).
    pub tolerance_secs: i64,
}

impl std::fmt::Debug for ProviderWebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderWebhookSettings")
            .field("secrets", &format!("[{} redacted]", self.secrets.len()))
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Default for ProviderWebhookSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance_secs: 300,
        }
    }
}

/// Variable `name` as a comma-separated list, each item trimmed, empty ones dropped (unset: none).
pub fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ProviderWebhookSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Ok(Self {
            secrets: env_list("ORDERFLOW_PROVIDER_WEBHOOK_SECRETS"),
            tolerance_secs: env_parse("ORDERFLOW_PROVIDER_WEBHOOK_TOLERANCE_SECS", 300)?,
        })
    }
}

/// What one client may hold of the API process: every bound a client could otherwise stretch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection must send a request's line and headers within this (`ORDERFLOW_API_HEADER_TIMEOUT_SECS`,
    /// 30), else it is closed: a client trickling headers (slowloris) holds nothing for long.
    pub header_read_timeout: Duration,
    /// A request body must keep arriving: no pause longer than this (`ORDERFLOW_API_BODY_TIMEOUT_SECS`, 10;
    /// 408 past it).
    pub body_timeout: Duration,
    /// A whole request, body to answer (`ORDERFLOW_API_REQUEST_TIMEOUT_SECS`, 30; 503 past it, while the
    /// handler finishes on its own).
    pub request_timeout: Duration,
    /// Connections held at once (`ORDERFLOW_API_MAX_CONNECTIONS`, 1024); more wait in the listen backlog.
    pub max_connections: usize,
    /// The API pool's `statement_timeout` (`ORDERFLOW_API_STATEMENT_TIMEOUT_MS`, 5000; the worker's long steps
    /// have none): a statement past it ends with 503.
    pub statement_timeout: Duration,
    /// The API pool's `lock_timeout` (`ORDERFLOW_API_LOCK_TIMEOUT_MS`, 2000): a request waiting longer for a row
    /// a step holds gets 503 with `Retry-After`.
    pub lock_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            statement_timeout: Duration::from_millis(5_000),
            lock_timeout: Duration::from_millis(2_000),
        }
    }
}

impl ServerLimits {
    pub fn from_env() -> Result<Self, SettingsError> {
        let default = Self::default();
        let positive = |name: &'static str, value: Duration| {
            if value.is_zero() {
                Err(SettingsError {
                    name,
                    message: "must be more than 0".to_owned(),
                })
            } else {
                Ok(value)
            }
        };
        Ok(Self {
            header_read_timeout: positive(
                "ORDERFLOW_API_HEADER_TIMEOUT_SECS",
                env_secs("ORDERFLOW_API_HEADER_TIMEOUT_SECS", default.header_read_timeout)?,
            )?,
            body_timeout: positive(
                "ORDERFLOW_API_BODY_TIMEOUT_SECS",
                env_secs("ORDERFLOW_API_BODY_TIMEOUT_SECS", default.body_timeout)?,
            )?,
            request_timeout: positive(
                "ORDERFLOW_API_REQUEST_TIMEOUT_SECS",
                env_secs("ORDERFLOW_API_REQUEST_TIMEOUT_SECS", default.request_timeout)?,
            )?,
            max_connections: env_parse("ORDERFLOW_API_MAX_CONNECTIONS", default.max_connections)?.max(1),
            statement_timeout: positive(
                "ORDERFLOW_API_STATEMENT_TIMEOUT_MS",
                env_millis("ORDERFLOW_API_STATEMENT_TIMEOUT_MS", default.statement_timeout)?,
            )?,
            lock_timeout: positive(
                "ORDERFLOW_API_LOCK_TIMEOUT_MS",
                env_millis("ORDERFLOW_API_LOCK_TIMEOUT_MS", default.lock_timeout)?,
            )?,
        })
    }

    /// The API pool's session settings.
    pub fn session(&self) -> crate::db::Session {
        crate::db::Session {
            statement_timeout: Some(self.statement_timeout),
            lock_timeout: Some(self.lock_timeout),
        }
    }
}

impl ApiSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Ok(Self {
            limits: ServerLimits::from_env()?,
            admin: AdminSettings::from_env()?,
            keys: KeySettings::from_env()?,
            admission: AdmissionSettings::from_env()?,
            metrics_addr: env_parse_opt("ORDERFLOW_API_METRICS_ADDR")?,
            provider_webhooks: ProviderWebhookSettings::from_env()?,
            webhook_allow_loopback: webhook_allow_loopback()?,
        })
    }
}

impl AdmissionSettings {
    /// `ORDERFLOW_ADMISSION_MAX_BACKLOG_MS` (1000; 0 turns admission off) and `ORDERFLOW_ADMISSION_REFRESH_MS`
    /// (100, at least 10).
    pub fn from_env() -> Result<Self, SettingsError> {
        let default = Self::default();
        let max_backlog = env_millis(
            "ORDERFLOW_ADMISSION_MAX_BACKLOG_MS",
            default.max_backlog.unwrap_or_default(),
        )?;
        let refresh = env_millis("ORDERFLOW_ADMISSION_REFRESH_MS", default.refresh)?;
        if refresh < Duration::from_millis(10) {
            return Err(SettingsError {
                name: "ORDERFLOW_ADMISSION_REFRESH_MS",
                message: "must be at least 10 (a reading is one query)".to_owned(),
            });
        }
        Ok(Self {
            max_backlog: (!max_backlog.is_zero()).then_some(max_backlog),
            refresh,
        })
    }
}

/// API keys, as the API process handles them.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// Requests per second a new key may make unless its creator says otherwise (`ORDERFLOW_API_KEY_RATE`, 100;
    /// bursts of twice as many), per API process.
    pub default_rate: i32,
    /// How long an API process trusts a key it looked up (`ORDERFLOW_API_KEY_CACHE_SECS`, 5): a revoked key stops
    /// working within this long.
    pub cache_ttl: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            default_rate: 100,
            cache_ttl: Duration::from_secs(5),
        }
    }
}

impl KeySettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let default = Self::default();
        let rate: i32 = env_parse("ORDERFLOW_API_KEY_RATE", default.default_rate)?;
        if !(1..=crate::api_key::MAX_RATE).contains(&rate) {
            return Err(SettingsError {
                name: "ORDERFLOW_API_KEY_RATE",
                message: format!("must be from 1 to {}", crate::api_key::MAX_RATE),
            });
        }
        Ok(Self {
            default_rate: rate,
            cache_ttl: env_secs("ORDERFLOW_API_KEY_CACHE_SECS", default.cache_ttl)?,
        })
    }
}

/// The admin API's and dashboard's settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `ORDERFLOW_ADMIN_TOKENS`: comma-separated `name:role:token` (role `viewer` or `operator`). Without any,
    /// the admin API answers 401 to everyone.
    pub tokens: Vec<AdminToken>,
    /// A saga not over and without progress for this long is stuck (`ORDERFLOW_STUCK_AFTER_SECS`, default 60).
    pub stuck_after: Duration,
}

impl Default for AdminSettings {
    /// No tokens (the admin API refuses everyone) and a minute without progress for stuck.
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            stuck_after: Duration::from_secs(60),
        }
    }
}

impl AdminSettings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Ok(Self {
            tokens: parse_admin_tokens(&env_or("ORDERFLOW_ADMIN_TOKENS", ""))?,
            stuck_after: env_secs("ORDERFLOW_STUCK_AFTER_SECS", Self::default().stuck_after)?,
        })
    }

    /// The token's owner, comparing in constant time so a guess learns nothing from the timing.
    pub fn authenticate(&self, presented: &str) -> Option<&AdminToken> {
        self.tokens
            .iter()
            .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `name:role:token[,name:role:token…]`.
pub fn parse_admin_tokens(value: &str) -> Result<Vec<AdminToken>, SettingsError> {
    let wrong = |message: String| SettingsError {
        name: "ORDERFLOW_ADMIN_TOKENS",
        message,
    };
    let mut tokens = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(wrong(format!(
                "{:?} is not name:role:token",
                entry.split(':').next().unwrap_or("")
            )));
        };
        let role = match role {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            other => {
                return Err(wrong(format!(
                    "role {other:?} of {name:?} is not viewer or operator"
                )));
            }
        };
        if name.is_empty() || token.len() < 16 {
            return Err(wrong(format!(
                "{name:?} needs a name and a token of at least 16 characters"
            )));
        }
        tokens.push(AdminToken {
            name: name.to_owned(),
            role,
            token: token.to_owned(),
        });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn admin_tokens_parse_with_their_roles_and_bad_ones_are_named() {
        let tokens =
            parse_admin_tokens("ann:operator:0123456789abcdef, bob:viewer:fedcba9876543210").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!((tokens[0].name.as_str(), tokens[0].role), ("ann", Role::Operator));
        assert_eq!((tokens[1].name.as_str(), tokens[1].role), ("bob", Role::Viewer));
        let settings = AdminSettings {
            tokens,
            stuck_after: Duration::from_secs(60),
        };
        assert_eq!(
            settings.authenticate("fedcba9876543210").map(|t| t.name.as_str()),
            Some("bob")
        );
        assert!(settings.authenticate("fedcba987654321").is_none());
        assert!(
            !format!("{settings:?}").contains("fedcba"),
            "tokens never appear in logs"
        );

        for bad in [
            "ann:admin:0123456789abcdef",
            "ann:viewer:short",
            "ann-viewer",
            ":viewer:0123456789abcdef",
        ] {
            let error = parse_admin_tokens(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.starts_with("ORDERFLOW_ADMIN_TOKENS"), "{bad}: {error}");
        }
    }

    #[test]
    fn worker_steps_parse_in_queue_order_and_an_unknown_one_is_named() {
        assert_eq!(parse_steps("").unwrap(), Step::ALL.to_vec());
        assert_eq!(parse_steps(" , ").unwrap(), Step::ALL.to_vec());
        assert_eq!(
            parse_steps("commit, reserve,commit").unwrap(),
            vec![Step::Reserve, Step::Commit]
        );
        let error = parse_steps("reserve,charge").unwrap_err().to_string();
        assert!(
            error.starts_with("ORDERFLOW_WORKER_STEPS") && error.contains("\"charge\""),
            "{error}"
        );
    }
}
