//! The saga worker: one apalis worker per step queue, all sharing one [`Runner`] (pool, payment provider,
//! settings). Run as many `orderflow-worker` processes as needed; steps are idempotent and serialize per order
//! on the order's row lock.
//!
//! # Layout
//! - `lib.rs` (here): the process: one supervised apalis worker per step queue, the presence connection that
//!   tells other workers this process is alive, graceful shutdown, the worker's own `/metrics`.
//! - [`steps`]: one file per saga step (reserve, pay, commit, fulfil, release_inventory, cancel_payment, ship,
//!   release_rest) with
//!   everything about it: what it reads, decides and writes, its provider call, its failpoints.
//! - [`runner`]: runs a step for a batch of jobs (one or many orders alike), executes what the step decided,
//!   settles failures (retry with backoff, cancel, park), and gathers a queue's jobs into batches.
//! - [`reconciler`]: every process's repair loop: jobs of gone workers, expired reservations, stranded sagas,
//!   old Done jobs.
//! - [`provider`]: the payment provider's HTTP client (Stripe's PaymentIntents shape).
//! - [`relay`]: the outbox relay to NATS JetStream; [`inbox`]: the payment provider's webhook events, applied;
//!   [`webhooks`]: order events delivered to merchants' webhook endpoints.
//! - [`error`]: how a step fails (transient or permanent); `failpoints`: the test-only failpoints.
//!
//! The saga's rules (which step follows which, what undoes what, budgets) are `orderflow_shared::flow`'s.

pub mod error;
mod failpoints;
pub mod inbox;
mod poll;
pub mod provider;
pub mod reconciler;
pub mod relay;
pub mod runner;
mod steps;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use futures::FutureExt;
use futures::future::BoxFuture;
use orderflow_shared::flow::Step;
use orderflow_shared::queue::completion::Completer;
use orderflow_shared::queue::{StepJob, upkeep};
use orderflow_shared::settings::{MIN_WORKER_CONNECTIONS, WorkerSettings};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

pub use runner::{Batcher, Runner};

/// A unique name for this process start: `host-pid-uuid`. apalis strands the jobs of a worker that restarts
/// under the same name, so a name is never reused. It is also the `application_name` of the process's presence
/// connection, so it stays within PostgreSQL's 63 bytes and holds no `@` or `#` (queue worker names are
/// `<queue>@<instance>#<generation>`).
pub fn instance_name() -> String {
    let host: String = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().replace(['@', '#'], "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
        .chars()
        .take(32)
        .collect();
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &id[id.len() - 8..])
}

/// What each apalis worker carries to its handler; one per queue worker generation.
#[derive(Clone)]
struct StepContext {
    /// Records each job's end (see `orderflow_shared::queue::completion`).
    completer: Completer,
    /// Gathers the jobs in hand into batches and runs them (see `runner`).
    batcher: Batcher,
}

/// Runs the step in its own task: apalis's step timeout (or a shutdown) drops the handler's future, and a step
/// dropped inside `Pool::begin` would leave a pooled connection inside a transaction nobody ends (sqlx 0.9.0,
/// launchbadge/sqlx#4393). Detached, the step always runs to its end (its provider calls have their own
/// timeouts) and then records the job's end itself, even if apalis stopped waiting for it.
async fn handle(job: StepJob, ctx: Data<StepContext>, id: TaskId) -> Result<(), BoxDynError> {
    let StepContext { completer, batcher } = (*ctx).clone();
    let run = tokio::spawn(async move {
        let result = batcher.submit(job).await;
        match &result {
            Ok(()) => completer.done(&id),
            Err(error) => completer.failed(&id, error),
        }
        result
    });
    match run.await {
        Ok(result) => result.map_err(|e| Box::new(e) as BoxDynError),
        Err(error) => Err(Box::new(error) as BoxDynError),
    }
}

/// First delay before restarting a queue worker that stopped on an error; doubles up to the maximum.
const RESTART_BASE_DELAY: Duration = Duration::from_millis(500);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
/// A queue worker that ran this long before failing starts its restart backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How often the presence connection is checked, and the cap of its reconnect delay.
const PRESENCE_CHECK: Duration = Duration::from_secs(1);

/// Runs the worker until `shutdown` resolves: one supervised apalis worker per step queue and the reconciler.
/// Then it stops fetching, lets in-flight steps finish (up to `shutdown_grace`), hands back whatever it still
/// holds and returns.
pub async fn run(
    pool: PgPool,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let connections = pool.options().get_max_connections();
    anyhow::ensure!(
        connections >= MIN_WORKER_CONNECTIONS,
        "ORDERFLOW_DB_MAX_CONNECTIONS is {connections}; the worker needs at least {MIN_WORKER_CONNECTIONS} \
         (one LISTEN connection per queue stays open, plus room for steps)"
    );
    let instance = instance_name();
    // Record step metrics from the first step on (rendered by ORDERFLOW_WORKER_METRICS_ADDR, or by the API's
    // /metrics when both run in one process).
    orderflow_shared::telemetry::metrics();
    let grace = settings.shutdown_grace;
    let runner = Arc::new(
        Runner::new(pool, settings, instance).context("failed to build the payment provider client")?,
    );
    let steps: Vec<&str> = runner.settings.steps.iter().map(|step| step.name()).collect();
    tracing::info!(instance = %runner.instance, payments_url = %runner.settings.payments_url, steps = %steps.join(","), "orderflow-worker starting");

    // Present before fetching anything: without this connection, other workers take our jobs back.
    let presence_options = runner
        .pool
        .connect_options()
        .as_ref()
        .clone()
        .application_name(&runner.instance);
    let presence = PgConnection::connect_with(&presence_options)
        .await
        .context("failed to open the worker's presence connection")?;

    let (stop, stopped) = watch::channel(false);
    let presence = tokio::spawn(keep_presence(presence_options, presence, stopped.clone()));
    let queues: Vec<_> = runner
        .settings
        .steps
        .iter()
        .map(|&step| tokio::spawn(supervise(runner.clone(), step, stopped.clone())))
        .collect();
    let reconciler = tokio::spawn(reconciler::run(runner.clone(), stopped.clone()));
    let deliveries = tokio::spawn(webhooks::run(
        runner.pool.clone(),
        runner.settings.webhooks.clone(),
        stopped.clone(),
    ));
    let inbox = tokio::spawn(inbox::run(
        runner.pool.clone(),
        runner.settings.provider_events_interval,
        stopped.clone(),
    ));
    if let Some(addr) = runner.settings.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind ORDERFLOW_WORKER_METRICS_ADDR {addr}"))?;
        tracing::info!(%addr, "serving the worker's metrics at /metrics");
        tokio::spawn(serve_metrics(listener, stopped.clone()));
    }
    let relay = runner.settings.relay.clone().map(|settings| {
        let options = runner.pool.connect_options().as_ref().clone();
        let stats = Arc::new(relay::RelayStats::default());
        tokio::spawn(relay::run(options, settings, stats, stopped.clone()))
    });
    shutdown.await;
    tracing::info!(?grace, "shutting down: no new jobs; waiting for in-flight steps");
    let _ = stop.send(true);
    if tokio::time::timeout(grace, futures::future::join_all(queues))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "in-flight steps did not finish in time; handing their jobs back"
        );
    }
    let _ = reconciler.await;
    let _ = inbox.await;
    let _ = deliveries.await;
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    match upkeep::release_jobs_of(&runner.pool, &runner.instance).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "handed unfinished jobs back to the queue"),
        Err(error) => {
            tracing::warn!(%error, "could not hand jobs back; the reconciler of another worker will")
        }
    }
    let _ = presence.await;
    tracing::info!("orderflow-worker stopped");
    Ok(())
}

/// The worker's own `/metrics`: step durations and outcomes, compensations by reason (the queue and saga gauges
/// are the API's, read from PostgreSQL).
async fn serve_metrics(listener: tokio::net::TcpListener, mut stopped: watch::Receiver<bool>) {
    orderflow_shared::telemetry::metrics();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                orderflow_shared::telemetry::metrics().render(),
            )
        }),
    );
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(%error, "the metrics endpoint stopped");
    }
}

/// Holds the presence connection (application_name = instance) open until shutdown, reconnecting when it drops.
/// While it is down (PostgreSQL restarting), other workers may take this worker's jobs back; the steps are
/// idempotent, so a job that then also finishes here does no harm.
async fn keep_presence(
    options: PgConnectOptions,
    mut conn: PgConnection,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(PRESENCE_CHECK) => false,
            _ = stopped.wait_for(|stop| *stop) => true,
        };
        if stop {
            let _ = conn.close().await;
            return;
        }
        if conn.ping().await.is_ok() {
            continue;
        }
        tracing::warn!("presence connection lost; reconnecting");
        let mut delay = Duration::from_millis(100);
        conn = loop {
            match PgConnection::connect_with(&options).await {
                Ok(conn) => break conn,
                Err(error) => tracing::debug!(%error, "presence connection still down"),
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            delay = (delay * 2).min(PRESENCE_CHECK);
        };
        tracing::info!("presence connection back");
    }
}

/// Serves one step's queue until shutdown. apalis ends a worker for good when a single fetch fails (a dropped
/// connection, a PostgreSQL restart) and its monitor restarts without delay, so this restarts the worker itself,
/// under a fresh name (apalis strands the jobs of a name that comes back), after a capped exponential delay.
/// The reconciler hands the jobs of the generation that stopped to the next one (a later generation of the same
/// name has registered, so the earlier one is gone).
async fn supervise(runner: Arc<Runner>, step: Step, mut stopped: watch::Receiver<bool>) {
    let base = format!("{}@{}", step.queue(), runner.instance);
    let mut failures: u32 = 0;
    for generation in 0u64.. {
        let started = Instant::now();
        let result = queue_worker(&runner, step, format!("{base}#{generation}"), stopped.clone()).await;
        if *stopped.borrow() {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        let delay = RESTART_BASE_DELAY
            .saturating_mul(1 << failures.min(10))
            .min(RESTART_MAX_DELAY);
        failures += 1;
        let error = result
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ended without an error".to_owned());
        tracing::warn!(queue = step.queue(), %error, ?delay, "queue worker stopped; restarting it");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// One apalis worker for the step's queue, running until `stopped` turns true or the worker fails. Built in a
/// plain function returning a boxed future: built inside `supervise`'s async body, apalis's worker future trips
/// rustc's higher-ranked `Send` check ("implementation of `FnOnce` is not general enough").
fn queue_worker(
    runner: &Arc<Runner>,
    step: Step,
    name: String,
    mut stopped: watch::Receiver<bool>,
) -> BoxFuture<'static, Result<(), WorkerError>> {
    let settings = &runner.settings;
    // A queue holds one connection per batch in flight, whatever its concurrency; with batches of one order it
    // holds one per job, so it stays within what the pool can serve.
    let concurrency = if settings.step_batch > 1 {
        settings.concurrency
    } else {
        settings.concurrency.min(runner::ONE_BY_ONE_IN_FLIGHT)
    };
    let fetch_size = settings.fetch_size.min(concurrency);
    let config = orderflow_shared::queue::queue_config(step.queue(), fetch_size);
    let backend = PostgresStorage::<StepJob>::new(&runner.pool).with_config(config.clone());
    let backend = poll::Paced::new(
        backend,
        runner.pool.clone(),
        step.queue(),
        config,
        fetch_size,
        settings.poll_interval,
        settings.fetch_gap,
    );
    let (completer, writer) = Completer::start(runner.pool.clone(), name.clone());
    let (batcher, gatherer) = Batcher::start(runner.clone(), step, settings.step_batch);
    let ctx = StepContext { completer, batcher };
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx)
        .concurrency(concurrency)
        .timeout(settings.step_timeout)
        .parallelize(tokio::spawn)
        .build(handle)
        .run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            Ok::<(), std::io::Error>(())
        })
        .boxed();
    async move {
        let result = worker.await;
        // The worker's handlers are gone; the writer and the gatherer end once the last detached step has
        // reported.
        let _ = writer.await;
        let _ = gatherer.await;
        result
    }
    .boxed()
}
