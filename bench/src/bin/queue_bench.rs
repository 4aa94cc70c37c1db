//! `orderflow-queue-bench`: our queue layer (apalis-postgres configured as OrderFlow's worker runs it: one
//! worker per queue, `queue::queue_config`, pubsub + poll, concurrency 16, fetch 16 unless told) doing the peer benchmark's work, so the
//! two can be compared on the same database: N trivial jobs, or N chains of 4 jobs where each job enqueues the
//! next in its own transaction. Prints jobs per second.
//!
//! `orderflow-queue-bench --database-url … --jobs 10000 [--chain] [--fetch-size 16]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use clap::Parser;
use orderflow_shared::queue::completion::Completer;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

#[derive(Parser, Debug)]
struct Args {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderflow_peer"
    )]
    database_url: String,
    /// Trivial jobs, or chains with --chain.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// Chains of 4 steps instead of trivial jobs.
    #[arg(long)]
    chain: bool,
    /// Jobs per fetch (the worker's `ORDERFLOW_WORKER_FETCH_SIZE`).
    #[arg(long, default_value_t = 16)]
    fetch_size: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Job {
    chain: u64,
    step: u8,
}

#[derive(Clone)]
struct Ctx {
    pool: PgPool,
    completer: Completer,
    done: Arc<AtomicU64>,
    chain: bool,
    queue: String,
}

async fn handle(job: Job, ctx: Data<Ctx>, id: TaskId) -> Result<(), BoxDynError> {
    if ctx.chain && job.step < 4 {
        let mut tx = ctx.pool.begin().await?;
        let next = Job {
            chain: job.chain,
            step: job.step + 1,
        };
        let task: apalis_postgres::PgTask = TaskBuilder::new(serde_json::to_vec(&next)?).build();
        apalis_postgres::queries::push_tasks(&mut *tx, &ctx.queue, vec![task]).await?;
        tx.commit().await?;
    }
    ctx.completer.done(&id);
    ctx.done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Both sides get 20 connections for 16 concurrent jobs.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&args.database_url)
        .await?;
    // apalis's schema as OrderFlow deploys it: apalis's migrations, then ours (which index its jobs table and
    // drop apalis's duplicate indexes).
    orderflow_shared::db::migrate(&pool).await?;
    let queue = format!("bench.{}", uuid::Uuid::new_v4().simple());
    // Enqueue everything first, in batches, as the peer script does.
    for start in (0..args.jobs).step_by(1_000) {
        let tasks: Vec<apalis_postgres::PgTask> = (start..(start + 1_000).min(args.jobs))
            .map(|i| {
                TaskBuilder::new(serde_json::to_vec(&Job { chain: i, step: 1 }).unwrap_or_default()).build()
            })
            .collect();
        let mut tx = pool.begin().await?;
        apalis_postgres::queries::push_tasks(&mut *tx, &queue, tasks).await?;
        tx.commit().await?;
    }
    let expected = if args.chain { args.jobs * 4 } else { args.jobs };
    let done = Arc::new(AtomicU64::new(0));
    let worker = format!("{queue}@bench#0");
    let (completer, writer) = Completer::start(pool.clone(), worker.clone());
    let ctx = Ctx {
        pool: pool.clone(),
        completer,
        done: done.clone(),
        chain: args.chain,
        queue: queue.clone(),
    };
    let started = Instant::now();
    let backend = PostgresStorage::<Job>::new(&pool)
        .with_config(orderflow_shared::queue::queue_config(&queue, args.fetch_size))
        .with_pubsub()
        .poll_with_interval(Duration::from_millis(100));
    let finished = {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < expected {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<(), std::io::Error>(())
        }
    };
    WorkerBuilder::new(worker)
        .backend(backend)
        .data(ctx)
        .concurrency(args.concurrency)
        .parallelize(tokio::spawn)
        .build(handle)
        .run_until(finished)
        .await?;
    // Counted once every completion is written.
    writer.await?;
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"system\":\"orderflow-apalis\",\"kind\":\"{}\",\"jobs\":{n},\"seconds\":{elapsed:.3},\"jobs_per_s\":{:.1},\"fetch_size\":{}}}",
        if args.chain { "chain4" } else { "trivial" },
        n as f64 / elapsed,
        args.fetch_size
    );
    Ok(())
}
