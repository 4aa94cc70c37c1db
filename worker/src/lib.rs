//! The saga worker: one apalis worker per step queue, all sharing one `Saga` (pool, payment client,
//! settings). Run as many `orderflow-worker` processes as needed; steps are idempotent and serialize per order
//! on the order's row lock.

pub mod error;
pub mod payments;
pub mod saga;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use orderflow_shared::jobs::{Step, StepJob};
use orderflow_shared::settings::WorkerSettings;
use sqlx::PgPool;

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

/// Runs the worker until `shutdown` resolves, then lets in-flight steps finish.
pub async fn run(
    pool: PgPool,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let instance = instance_name();
    let payments = payments::PaymentsClient::new(&settings.payments_url, settings.payments_timeout)
        .context("failed to build the payment provider client")?;
    let saga = Arc::new(Saga {
        pool: pool.clone(),
        payments,
        settings: settings.clone(),
        instance: instance.clone(),
    });
    tracing::info!(%instance, payments_url = %settings.payments_url, "orderflow-worker starting");

    let mut monitor = Monitor::new();
    for step in Step::ALL {
        let pool = pool.clone();
        let ctx = StepContext {
            step,
            saga: saga.clone(),
        };
        let settings = settings.clone();
        // Each (re)start of a worker gets a fresh name so apalis never strands a predecessor's jobs.
        let base = format!("{}@{instance}", step.queue());
        monitor = monitor.register(move |restarts| {
            let config = Config::default().queue(step.queue()).batch_size(1);
            let backend = PostgresStorage::<StepJob>::new(&pool)
                .with_config(config)
                .with_pubsub()
                .poll_with_interval(settings.poll_interval);
            WorkerBuilder::new(format!("{base}-{restarts}"))
                .backend(backend)
                .data(ctx.clone())
                .concurrency(settings.concurrency)
                .timeout(settings.step_timeout)
                .parallelize(tokio::spawn)
                .build(handle)
        });
    }
    monitor
        .shutdown_timeout(std::time::Duration::from_secs(30))
        .run_with_signal(async move {
            shutdown.await;
            Ok(())
        })
        .await
        .context("the worker monitor failed")?;
    tracing::info!("orderflow-worker stopped");
    Ok(())
}
