//! Telling queue workers that jobs are due, after the commit that queued them rather than inside it.
//!
//! apalis's insert trigger notifies `apalis::job::insert` for every due job, inside the inserting transaction.
//! A notifying transaction holds one lock on the database's notification queue from its commit until its end,
//! through its WAL flush, so notifying commits never share a flush: each new order and each step batch (which
//! queues the next step's jobs) waited for the one before it to reach the disk. That lock was the largest wait
//! of a new order's commit beside a busy worker (`orderflow dev` at 100 sagas/s: Lock:object a quarter of the
//! sampled commit waits; at 400/s, 8,663 samples, once the worker's own commits no longer notified).
//!
//! The hot paths, order creation and a step batch's transactions, begin with [`begin_quiet`]: their job rows are
//! not announced by the trigger (migration 20261204000002 reads the transaction's `orderflow.announce`). After
//! their commit they hand the queues to their process's [`Announcer`], which sends the same notification from a
//! connection of its own whose commits do not wait for the disk (`synchronous_commit = off`: a notification is
//! not data; one lost in a crash leaves the job to the workers' fetch timer), coalescing what arrives while one is
//! in flight into one statement. Every other writer (a cancellation, an operator's action, the reconciler)
//! notifies inside its transaction as before: rare, and nothing there is to be missed.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgExecutor, PgPool, Postgres, Transaction};
use tokio::sync::mpsc;

use super::NextJob;

/// The statement a quiet transaction begins with: `begin`, and the setting apalis's insert trigger reads
/// (transaction-local, so a pooled connection forgets it at the commit). Sent as one simple query: no round trip
/// of its own.
pub const BEGIN_QUIET: &str = "begin; set local orderflow.announce = 'after_commit'";

/// Begins a transaction whose due jobs are not announced by apalis's insert trigger: its caller announces them
/// through an [`Announcer`] once it has committed.
pub async fn begin_quiet(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(BEGIN_QUIET).await
}

/// A process's sender of queue notifications. Cheap to clone; its connection closes when the last clone goes.
#[derive(Debug, Clone)]
pub struct Announcer {
    queues: mpsc::UnboundedSender<&'static str>,
}

/// How long the announcer waits after an announcement failed twice. Notifications meanwhile
/// are dropped: the workers' fetch timer finds the jobs.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

impl Announcer {
    /// Starts the announcer on a connection like the pool's (its own, not one of the pool's), made on first use.
    pub fn start(pool: &PgPool) -> Self {
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]);
        let (queues, received) = mpsc::unbounded_channel();
        tokio::spawn(announce(options, received));
        Self { queues }
    }

    /// Tells `queue`'s workers that a job is due there. Call after the commit that queued it.
    pub fn announce(&self, queue: &'static str) {
        // The task ends only when every announcer is gone.
        let _ = self.queues.send(queue);
    }

    /// [`Announcer::announce`] for each job that is due at once (a delayed one is found when it comes due).
    pub fn announce_jobs<'a>(&self, jobs: impl IntoIterator<Item = &'a NextJob>) {
        for job in jobs {
            if job.delay.is_none() {
                self.announce(job.step.queue());
            }
        }
    }
}

/// The announcer's task: each statement notifies every queue named since the last one, once. A statement that
/// fails is sent again once, on a fresh connection (the first after a PostgreSQL restart fails on the old one);
/// what still fails is dropped, and the workers' fetch timer finds those jobs. The first failure of an outage is
/// a warning, the rest of it debug.
async fn announce(options: PgConnectOptions, mut received: mpsc::UnboundedReceiver<&'static str>) {
    let mut conn: Option<PgConnection> = None;
    let mut failing = false;
    while let Some(first) = received.recv().await {
        let mut queues = BTreeSet::from([first]);
        while let Ok(queue) = received.try_recv() {
            queues.insert(queue);
        }
        let queues: Vec<&str> = queues.into_iter().collect();
        let mut result = Ok(());
        for _ in 0..2 {
            result = send(&options, &mut conn, &queues).await;
            if result.is_ok() {
                break;
            }
            conn = None;
        }
        match result {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "queue announcements failing; the workers' fetch timer finds the jobs");
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
            Err(error) => {
                tracing::debug!(%error, "queue announcement failed");
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        }
    }
}

/// How long connecting or one announcement may take: a connection that stopped answering is dropped, not waited
/// on while new orders' announcements pile up behind it.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one announcement, connecting first if need be.
async fn send(
    options: &PgConnectOptions,
    conn: &mut Option<PgConnection>,
    queues: &[&str],
) -> Result<(), String> {
    let connection = match conn {
        Some(connection) => connection,
        None => {
            let connected = tokio::time::timeout(SEND_TIMEOUT, PgConnection::connect_with(options))
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|error| error.to_string())?;
            conn.insert(connected)
        }
    };
    tokio::time::timeout(SEND_TIMEOUT, notify(&mut *connection, queues))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|error| error.to_string())
}

/// The notification apalis's insert trigger sends, once per queue (apalis reads its `job_type` and wakes that
/// queue's fetch; the id is not used to fetch): the one place in Rust that writes it (the reconciler's wake-ups
/// send it too, `upkeep::wake_due_queues`).
pub(super) async fn notify(executor: impl PgExecutor<'_>, queues: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"select pg_notify('apalis::job::insert',
                            json_build_object('job_type', q, 'id', 'announced', 'run_at', now())::text)
           from unnest($1::text[]) q"#,
        queues as &[&str]
    )
    .execute(executor)
    .await?;
    Ok(())
}
