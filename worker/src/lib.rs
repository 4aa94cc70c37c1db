//! The saga worker: one apalis worker per step queue, all sharing one `Saga` (pool, payment client,
//! settings). Run as many `orderflow-worker` processes as needed; steps are idempotent and serialize per order
//! on the order's row lock.

pub mod error;
pub mod payments;
pub mod saga;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use futures::FutureExt;
use futures::future::BoxFuture;
use orderflow_shared::jobs::{Step, StepJob};
use orderflow_shared::settings::{MIN_WORKER_CONNECTIONS, WorkerSettings};
use sqlx::PgPool;
use tokio::sync::watch;

pub use saga::Saga;

/// A unique name for this process start: `host-pid-uuid`. apalis strands the jobs of a worker that restarts
/// under the same name, so a name is never reused.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &id[id.len() - 8..])
}

/// What each apalis worker carries to its handler.
#[derive(Clone)]
struct StepContext {
    step: Step,
    saga: Arc<Saga>,
}

async fn handle(job: StepJob, ctx: Data<StepContext>) -> Result<(), BoxDynError> {
    ctx.saga
        .run(ctx.step, job)
        .await
        .map_err(|e| Box::new(e) as BoxDynError)
}

/// How long shutdown waits for in-flight steps.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// First delay before restarting a queue worker that stopped on an error; doubles up to the maximum.
const RESTART_BASE_DELAY: Duration = Duration::from_millis(500);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
/// A queue worker that ran this long before failing starts its restart backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the worker until `shutdown` resolves, then lets in-flight steps finish (up to `SHUTDOWN_GRACE`).
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
    let payments = payments::PaymentsClient::new(&settings.payments_url, settings.payments_timeout)
        .context("failed to build the payment provider client")?;
    let saga = Arc::new(Saga {
        pool,
        payments,
        settings,
        instance,
    });
    tracing::info!(instance = %saga.instance, payments_url = %saga.settings.payments_url, "orderflow-worker starting");

    let (stop, stopped) = watch::channel(false);
    let queues: Vec<_> = Step::ALL
        .into_iter()
        .map(|step| {
            let ctx = StepContext {
                step,
                saga: saga.clone(),
            };
            tokio::spawn(supervise(ctx, stopped.clone()))
        })
        .collect();
    shutdown.await;
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, futures::future::join_all(queues))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight steps did not finish in time; exiting anyway");
    }
    tracing::info!("orderflow-worker stopped");
    Ok(())
}

/// Serves one step's queue until shutdown. apalis ends a worker for good when a single fetch fails (a dropped
/// connection, a PostgreSQL restart) and its monitor restarts without delay, so this restarts the worker itself,
/// under a fresh name (apalis strands the jobs of a name that comes back), after a capped exponential delay.
async fn supervise(ctx: StepContext, mut stopped: watch::Receiver<bool>) {
    let step = ctx.step;
    let base = format!("{}@{}", step.queue(), ctx.saga.instance);
    let mut failures: u32 = 0;
    for generation in 0u64.. {
        let started = Instant::now();
        let result = queue_worker(&ctx, format!("{base}-{generation}"), stopped.clone()).await;
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
    ctx: &StepContext,
    name: String,
    mut stopped: watch::Receiver<bool>,
) -> BoxFuture<'static, Result<(), WorkerError>> {
    let settings = &ctx.saga.settings;
    let config = Config::default().queue(ctx.step.queue()).batch_size(1);
    let backend = PostgresStorage::<StepJob>::new(&ctx.saga.pool)
        .with_config(config)
        .with_pubsub()
        .poll_with_interval(settings.poll_interval);
    WorkerBuilder::new(name)
        .backend(backend)
        .data(ctx.clone())
        .concurrency(settings.concurrency)
        .timeout(settings.step_timeout)
        .parallelize(tokio::spawn)
        .build(handle)
        .run_until(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            Ok::<(), std::io::Error>(())
        })
        .boxed()
}
