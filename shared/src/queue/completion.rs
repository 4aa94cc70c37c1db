//! Batched job completion: how a queue worker tells apalis that a job is over.
//!
//! apalis-postgres 1.0 writes results itself (`persist_results`), but its statement finds the jobs to update
//! through `lock_by = <worker>`, which matches every job that worker ever ran, Done ones included: each write
//! scanned all of them (5.6 ms per write after 5,400 jobs, the largest single cost of a saga in
//! `pg_stat_statements`, and growing for as long as the worker runs). Our workers turn that off and complete
//! jobs here instead: by primary key, many per statement (whatever finished while the last write was out), one
//! round trip each, and with `synchronous_commit = off`, because a completion lost in a PostgreSQL crash costs
//! only a re-run of an idempotent step, which the recovery already does for jobs whose worker is gone.
//!
//! A job stays `Queued` (or `Running`) under its worker's name until its completion is written; a worker that
//! dies first leaves it to the reconciler (`queue::upkeep::rescue_orphaned_jobs`), exactly as before.

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Completions written per statement at most.
const MAX_BATCH: usize = 512;

/// How one run of a job ended, as apalis records it: `Done`, or `Failed` with the error (apalis fetches a
/// `Failed` job again while its attempts last).
#[derive(Debug)]
struct Completion {
    job_id: String,
    error: Option<String>,
}

/// The sending side; cheap to clone into every job. When the last clone is dropped, the writer flushes what is
/// left and ends.
#[derive(Debug, Clone)]
pub struct Completer {
    tx: mpsc::UnboundedSender<Completion>,
}

impl Completer {
    /// Starts the writer for the jobs that `worker` (an apalis worker name, their `lock_by`) fetched. Await the
    /// handle after dropping every `Completer` to be sure the last completions were written.
    pub fn start(pool: PgPool, worker: String) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_completions(pool, worker, rx));
        (Self { tx }, writer)
    }

    pub fn done(&self, job_id: impl ToString) {
        self.send(job_id.to_string(), None);
    }

    pub fn failed(&self, job_id: impl ToString, error: impl ToString) {
        self.send(job_id.to_string(), Some(error.to_string()));
    }

    fn send(&self, job_id: String, error: Option<String>) {
        // The writer outlives every sender, so this only fails after a panic in it; the job is then rescued.
        if self.tx.send(Completion { job_id, error }).is_err() {
            tracing::warn!("the completion writer is gone; the job will be handed back and re-run");
        }
    }
}

async fn write_completions(pool: PgPool, worker: String, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(error) = write(&pool, &worker, &batch).await {
            // The jobs stay claimed by this worker; when it is replaced or gone the reconciler re-runs them.
            tracing::warn!(%error, jobs = batch.len(), %worker, "failed to record finished jobs");
        }
        batch.clear();
    }
}

async fn write(pool: &PgPool, worker: &str, batch: &[Completion]) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = batch.iter().map(|c| c.job_id.as_str()).collect();
    let statuses: Vec<&str> = batch
        .iter()
        .map(|c| if c.error.is_some() { "Failed" } else { "Done" })
        .collect();
    let results: Vec<serde_json::Value> = batch
        .iter()
        .map(|c| match &c.error {
            None => serde_json::json!({ "Ok": null }),
            Some(error) => serde_json::json!({ "Err": error }),
        })
        .collect();
    // One statement, its own transaction, one round trip. `synchronous_commit` off for that transaction only
    // (`set_config(.., true)`, read at its commit): the CTE is joined, so it runs whenever a row is updated,
    // and a statement that updates none writes nothing to flush. Only jobs still claimed by this worker: one the
    // reconciler handed to another worker meanwhile is theirs. `coalesce` keeps the planner off the `lock_by`
    // index, which leads to every job the worker ever ran (the trap apalis's own statement falls into); the rows
    // are found by primary key.
    sqlx::query!(
        r#"with no_flush as (select set_config('synchronous_commit', 'off', true))
           update apalis.jobs j
           set status = c.status, attempts = j.attempts + 1, last_result = c.result, done_at = now()
           from unnest($1::text[], $2::text[], $3::jsonb[]) as c(id, status, result), no_flush
           where j.id = c.id and coalesce(j.lock_by, '') = $4 and j.status in ('Queued', 'Running')"#,
        &ids as &[&str],
        &statuses as &[&str],
        &results,
        worker
    )
    .execute(pool)
    .await?;
    Ok(())
}
