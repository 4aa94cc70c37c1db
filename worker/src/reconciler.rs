//! The reconciler: runs in every worker process, every `reconcile_interval`, and leaves no saga behind.
//!
//! 1. Jobs fetched by a worker that is gone (killed, or a queue worker its process restarted) go back to
//!    Pending at once, so another worker runs them: recovery takes about one interval after `kill -9`. Queues
//!    with jobs due (rescued ones, delayed retries) get the wake-up apalis would send for a new job.
//! 2. Reservations past their hold, with no authorization in flight, are released: the order is cancelled
//!    with reason `reservation_expired`.
//! 3. Sagas whose job ended without moving them on (it finished, died for good or vanished) are settled as a
//!    failed attempt of the step they are in, exactly as a step failure is: retried later with backoff while the
//!    step has attempts left, then compensated (or, for a compensation, parked in NEEDS_ATTENTION). The step
//!    itself then finishes or undoes the work according to the step log and the payment row: a payment left
//!    PENDING is asked again with the same idempotency key (resume) or voided (compensate), a capture is
//!    replayed by its key (resume to fulfil) or refunded.
//! 4. Once a minute, Done jobs older than `done_job_retention` are deleted from `apalis.jobs` (see
//!    `queue::upkeep::purge_done_jobs`), in chunks, so the queue table holds what is live plus a recent window;
//!    and Idempotency-Key records older than `idempotency_retention` (`idempotency::purge_expired`).
//! 5. Every `ledger_check_interval`, in a task of its own, the stock ledger is read against the skus' counts
//!    (`ledger::drift`): a sku and location whose counts are not the sums of its movements is logged as an error,
//!    and `orderflow_stock_ledger_drift` counts them (0 when the ledger adds up).
//! 6. Every `hold_check_interval`, in a task of its own, the holds of orders waiting for their shipments: when each
//!    lapses is read from the provider once per authorization (`payments.capture_before`), and a hold that lapses
//!    within `hold_warning` is a warning in the log, their number the gauge `orderflow_holds_expiring`. Ship (or
//!    cancel) such an order before then; a shipment after the lapse authorizes what is left again (`steps::ship`).
//!    A waiting order whose re-authorization was declined is a warning too, at every check
//!    (`orderflow_holds_declined`).
//!
//! Many processes run it at once: rows are claimed with SKIP LOCKED and every order is checked again under its
//! row lock, which the steps take too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use orderflow_shared::flow::{self, Step};
use orderflow_shared::inventory::ledger;
use orderflow_shared::order::{self, CancelReason, OrderStatus};
use orderflow_shared::queue::{StepJob, upkeep};
use orderflow_shared::{idempotency, payment, step_log};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StepError;
use crate::runner::Runner;

/// Orders looked at per pass and per kind; the next pass takes the rest.
const PER_PASS: i64 = 200;
const MAX_ERROR_DELAY: Duration = Duration::from_secs(30);
/// How many rows one purge statement deletes (a chunk is one short transaction; a purge stops after
/// `PURGE_MAX_CHUNKS` and the next one, `WorkerSettings::purge_interval` later, goes on).
const PURGE_CHUNK: i64 = 5_000;
const PURGE_MAX_CHUNKS: usize = 20;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub rescued_jobs: usize,
    pub expired_reservations: usize,
    pub settled_sagas: usize,
}

/// Runs passes until `stopped`; a pass that fails (the database is down) is retried with a capped backoff.
pub async fn run(runner: Arc<Runner>, mut stopped: watch::Receiver<bool>) {
    let interval = runner.settings.reconcile_interval;
    let mut delay = interval;
    // The first purge waits one interval: a fleet restarting together does not scan the table at once.
    let purge_interval = runner.settings.purge_interval;
    let mut next_purge = tokio::time::Instant::now() + purge_interval;
    // The ledger's check reads the whole ledger: a task of its own, so a long read never holds up the repairs.
    tokio::spawn(check_ledger_every(runner.clone(), stopped.clone()));
    tokio::spawn(check_holds_every(runner.clone(), stopped.clone()));
    loop {
        if tokio::time::Instant::now() >= next_purge {
            match purge(&runner).await {
                Ok(Purged { jobs: 0, keys: 0 }) => {}
                Ok(Purged { jobs, keys }) => {
                    tracing::info!(
                        jobs,
                        idempotency_keys = keys,
                        "deleted old Done jobs and Idempotency-Keys"
                    )
                }
                Err(error) => {
                    tracing::warn!(%error, "could not delete old Done jobs or Idempotency-Keys; next time")
                }
            }
            next_purge = tokio::time::Instant::now() + purge_interval;
        }
        match pass(&runner).await {
            Ok(pass) => {
                if pass != Pass::default() {
                    tracing::info!(?pass, "reconciler pass");
                }
                delay = interval;
            }
            Err(error) => {
                delay = (delay * 2).min(MAX_ERROR_DELAY);
                tracing::warn!(
                    error = format!("{error:#}"),
                    ?delay,
                    "reconciler pass failed; backing off"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass over the three kinds of repair.
pub async fn pass(runner: &Runner) -> anyhow::Result<Pass> {
    let queues: Vec<&str> = Step::ALL.iter().map(|s| s.queue()).collect();
    let rescued = upkeep::rescue_orphaned_jobs(&runner.pool, &queues).await?;
    for job in &rescued {
        tracing::warn!(
            job = job.id,
            queue = job.queue,
            worker = job.worker,
            status = job.status.as_str(),
            "took a job back from a worker that is gone"
        );
    }
    step_log::close_attempts_of_gone_workers(&runner.pool).await?;
    upkeep::wake_due_queues(&runner.pool, &queues).await?;
    let mut result = Pass {
        rescued_jobs: rescued.len(),
        ..Pass::default()
    };
    // One order that cannot be repaired (a row this version cannot read, say) is logged and left for the next
    // pass; it does not stop the repairs of the others.
    for order_id in order::expired_reservations(&runner.pool, PER_PASS).await? {
        match expire(runner, order_id).await {
            Ok(expired) => result.expired_reservations += usize::from(expired),
            Err(error) => {
                tracing::warn!(%order_id, error = format!("{error:#}"), "could not expire a reservation")
            }
        }
    }
    for order_id in upkeep::stranded_sagas(&runner.pool, PER_PASS).await? {
        match settle_stranded(runner, order_id).await {
            Ok(settled) => result.settled_sagas += usize::from(settled),
            Err(error) => {
                tracing::warn!(%order_id, error = format!("{error:#}"), "could not settle a stranded saga")
            }
        }
    }
    Ok(result)
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Purged {
    jobs: u64,
    keys: u64,
}

/// Deletes the Done jobs and the Idempotency-Key records past their retention, a chunk at a time.
async fn purge(runner: &Runner) -> Result<Purged, sqlx::Error> {
    let settings = &runner.settings;
    let jobs =
        in_chunks(|| upkeep::purge_done_jobs(&runner.pool, settings.done_job_retention, PURGE_CHUNK)).await?;
    let keys =
        in_chunks(|| idempotency::purge_expired(&runner.pool, settings.idempotency_retention, PURGE_CHUNK))
            .await?;
    Ok(Purged { jobs, keys })
}

/// Runs `delete_chunk` until a chunk comes back short or `PURGE_MAX_CHUNKS` ran; the rows deleted.
async fn in_chunks<F, Fut>(mut delete_chunk: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut purged = 0;
    for _ in 0..PURGE_MAX_CHUNKS {
        let deleted = delete_chunk().await?;
        purged += deleted;
        if deleted < PURGE_CHUNK as u64 {
            break;
        }
    }
    Ok(purged)
}

/// Checks the stock ledger every `ledger_check_interval` until `stopped`.
async fn check_ledger_every(runner: Arc<Runner>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Err(error) = check_ledger(&runner).await {
            tracing::warn!(%error, "could not read the stock ledger against the counts; next time");
        }
        tokio::select! {
            () = tokio::time::sleep(runner.settings.ledger_check_interval) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reads the stock ledger against the skus' counts: each sku and location that does not add up is an error in the
/// log (a change made without its movement: a bug, or a process of a version before the ledger still running),
/// and their number the gauge `orderflow_stock_ledger_drift`; `orderflow_stock_ledger_checked_timestamp_seconds`
/// says when a check last succeeded (a check that keeps failing leaves it behind).
async fn check_ledger(runner: &Runner) -> Result<(), sqlx::Error> {
    let drift = ledger::drift(&runner.pool).await?;
    for off in &drift {
        tracing::error!(
            sku = off.sku,
            location = off.location,
            on_hand = off.on_hand,
            reserved = off.reserved,
            ledger_on_hand = off.ledger_on_hand,
            ledger_reserved = off.ledger_reserved,
            "the stock ledger does not add up to the sku's counts"
        );
    }
    metrics::gauge!("orderflow_stock_ledger_drift").set(drift.len() as f64);
    metrics::gauge!("orderflow_stock_ledger_checked_timestamp_seconds").set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |t| t.as_secs_f64()),
    );
    Ok(())
}

/// Checks waiting orders' holds every `hold_check_interval` until `stopped`.
async fn check_holds_every(runner: Arc<Runner>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Err(error) = check_holds(&runner).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not check when holds lapse; next time"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(runner.settings.hold_check_interval) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// Reads when the holds of waiting orders lapse (those not read yet, `PER_PASS` a check), then warns of each that
/// lapses within `hold_warning` and sets `orderflow_holds_expiring` to how many do; warns of each waiting order
/// whose re-authorization was declined and sets `orderflow_holds_declined`. Returns both numbers.
/// Every worker runs it (as the ledger's check): each reports the same counts, so aggregate the gauges with max.
pub async fn check_holds(runner: &Runner) -> anyhow::Result<Holds> {
    for hold in payment::unread_holds(&runner.pool, PER_PASS).await? {
        let read = match runner.provider.capture_before(&hold.provider_ref).await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(order_id = %hold.order_id, intent = hold.provider_ref, %error, "could not read when a hold lapses; in an hour");
                None
            }
        };
        if read.is_none() {
            tracing::debug!(order_id = %hold.order_id, intent = hold.provider_ref, "not known when the hold lapses");
        }
        payment::record_capture_before(&runner.pool, hold.order_id, hold.attempt, read).await?;
    }
    let warning = chrono::Duration::from_std(runner.settings.hold_warning)?;
    let (expiring, count) =
        payment::expiring_holds(&runner.pool, chrono::Utc::now() + warning, PER_PASS).await?;
    for hold in &expiring {
        tracing::warn!(
            order_id = %hold.order_id,
            status = %hold.status,
            intent = hold.provider_ref,
            capture_before = %hold.capture_before,
            "the order's hold lapses soon (or has): ship or cancel it before then, or its next shipment must authorize again"
        );
    }
    metrics::gauge!("orderflow_holds_expiring").set(count as f64);
    let (declined, declined_count) = payment::declined_waiting(&runner.pool, PER_PASS).await?;
    for order_id in &declined {
        tracing::warn!(
            %order_id,
            "the order's hold lapsed and its re-authorization was declined: it ships nothing until the customer's \
             payment is sorted out or the rest is cancelled"
        );
    }
    metrics::gauge!("orderflow_holds_declined").set(declined_count as f64);
    Ok(Holds {
        expiring: count,
        declined: declined_count,
    })
}

/// What one check of the waiting orders' holds found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Holds {
    /// Open holds that lapse within `hold_warning` (or have).
    pub expiring: i64,
    /// Orders whose re-authorization after a lapsed hold was declined.
    pub declined: i64,
}

/// Cancels a reserved order whose hold ran out, if it still has and no authorization started meanwhile.
async fn expire(runner: &Runner, order_id: Uuid) -> anyhow::Result<bool> {
    let mut tx = runner.pool.begin().await?;
    let Some(order) = order::try_lock(&mut tx, order_id).await? else {
        return Ok(false);
    };
    if !order::reservation_expired(&mut *tx, order_id).await? {
        return Ok(false);
    }
    let planned = flow::start_cancellation(&mut tx, &order, CancelReason::ReservationExpired, None).await?;
    tx.commit().await?;
    planned.log();
    tracing::info!(%order_id, reserved_until = ?order.reserved_until, "reservation expired; releasing the stock");
    Ok(true)
}

/// Settles a saga whose job no longer moves it on as a failed attempt of its current step.
async fn settle_stranded(runner: &Runner, order_id: Uuid) -> anyhow::Result<bool> {
    let mut tx = runner.pool.begin().await?;
    let Some(order) = order::try_lock(&mut tx, order_id).await? else {
        return Ok(false);
    };
    if !OrderStatus::LIVE.contains(&order.status) {
        return Ok(false);
    }
    let Some(dead) = upkeep::stranded_job(&mut tx, order.job_id.as_deref()).await? else {
        return Ok(false);
    };
    let Some(step) = flow::current_step(&mut tx, &order).await? else {
        return Ok(false);
    };
    let logged = step_log::last_attempt(&mut *tx, order_id, step).await?;
    let attempt = dead.attempt.unwrap_or(0).max(logged).max(1);
    let reason = format!("reconciler: {}", dead.describe());
    tracing::warn!(%order_id, step = step.name(), attempt, reason, "settling a stranded saga");
    let job = StepJob {
        order_id,
        attempt,
        trace: order.trace_id.as_deref().and_then(|t| t.parse().ok()),
    };
    runner
        .settle(&mut tx, step, job, StepError::Transient(anyhow!(reason)))
        .await
        .map_err(|e| anyhow!(e))?;
    tx.commit().await?;
    Ok(true)
}
