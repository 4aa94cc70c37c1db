//! Steps run for many orders at once. The forward steps (reserve, pay, commit, fulfil) of every job a queue
//! worker has in hand are gathered into one batch: one transaction locks all their orders (in id order), opens
//! their attempts, does the step's writes with set-based statements and ends them all in one statement
//! (`saga::end_many`), so a step costs a handful of round trips and one commit per batch instead of per order.
//! The remote calls of pay and commit go out concurrently between the batch's two transactions.
//!
//! The batch takes only the common case. A job whose order is not in the step's state needs nothing (as in
//! `Saga::run`); a job that needs anything else (its order named twice in the batch, a payment not where the
//! step expects it, a failpoint armed for it) is left out before anything is written for it and runs alone
//! through `Saga::run` afterwards, which handles every case. If a batch's first transaction fails, nothing of it
//! was written and every job runs alone; once its attempts are committed, a failure is settled per job exactly
//! as `Saga::run` settles one (retry with backoff, or compensate). A crash anywhere leaves what a crash of the
//! one-order path leaves: committed attempts with their PENDING payment, or nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use futures::future::join_all;
use orderflow_shared::inventory::{self, ReserveOutcome};
use orderflow_shared::jobs::{Step, StepJob};
use orderflow_shared::order::{self, OrderRow, OrderStatus, PlannedTransition, Transition};
use orderflow_shared::payment::{self, status as pay};
use orderflow_shared::saga::{self, Ending, status as log};
use sqlx::{Postgres, Transaction};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::payments::Authorization;
use crate::saga::{LEFT_PAID, Saga};

/// Whether `step` runs in batches (compensations are rare and run one order at a time).
pub fn batches(step: Step) -> bool {
    matches!(step, Step::Reserve | Step::Pay | Step::Commit | Step::Fulfil)
}

type Reply = oneshot::Sender<Result<(), StepError>>;

/// Batches of one step that one queue worker runs at once. Jobs arriving while they run wait and form the next
/// batch, so batches grow with the load by themselves: a lone job runs at once, a busy queue fills its batches
/// (as group commit does). Two, so a batch waiting on the provider does not hold the next one back.
const BATCHES_IN_FLIGHT: usize = 2;

/// Gathers one queue worker's jobs into batches of up to `max`.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(StepJob, Reply)>,
}

impl Batcher {
    /// Starts the gatherer of `step`'s jobs; it ends when the last `Batcher` clone is dropped.
    pub fn start(saga: Arc<Saga>, step: Step, max: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gatherer = tokio::spawn(gather(saga, step, max.max(1), rx));
        (Self { tx }, gatherer)
    }

    /// Runs `job` in the next batch and returns its result as `Saga::run` would.
    pub async fn run(&self, job: StepJob) -> Result<(), StepError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .map_err(|_| StepError::Transient(anyhow!("the step batcher has stopped")))?;
        answer
            .await
            .map_err(|_| StepError::Transient(anyhow!("the step batch ended without an answer")))?
    }
}

async fn gather(saga: Arc<Saga>, step: Step, max: usize, mut rx: mpsc::UnboundedReceiver<(StepJob, Reply)>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut waiting = Vec::with_capacity(max);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if rx.recv_many(&mut waiting, max).await == 0 {
            return;
        }
        // The jobs apalis hands over together arrive one task after another: let those already woken join.
        tokio::task::yield_now().await;
        while waiting.len() < max {
            match rx.try_recv() {
                Ok(job) => waiting.push(job),
                Err(_) => break,
            }
        }
        let (jobs, replies): (Vec<StepJob>, Vec<Reply>) = waiting.drain(..).unzip();
        let saga = saga.clone();
        tokio::spawn(async move {
            let results = saga.run_batch(step, jobs).await;
            drop(slot);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

/// What became of one job of a batch.
#[derive(Debug)]
enum Outcome {
    /// Done by the batch (or nothing to do).
    Done,
    /// The batch's attempt failed after it was committed: settled as `Saga::run` settles a failure.
    Failed(StepError),
    /// Left out of the batch before anything was written for it: run by `Saga::run`.
    Alone,
}

/// A job whose order the batch locked, found in the step's state, and opened an attempt for.
#[derive(Debug)]
struct Member {
    /// The job's index in the batch.
    index: usize,
    order: OrderRow,
    log_id: i64,
}

impl Saga {
    /// Runs one batch of `step`'s jobs; returns each job's result, in order, as `Saga::run` would return it.
    #[tracing::instrument(skip_all, fields(step = step.name(), jobs = jobs.len()))]
    pub async fn run_batch(&self, step: Step, jobs: Vec<StepJob>) -> Vec<Result<(), StepError>> {
        let started = Instant::now();
        let outcomes = match step {
            Step::Reserve => self.reserve_batch(&jobs).await,
            Step::Pay => self.pay_batch(&jobs).await,
            Step::Commit => self.commit_batch(&jobs).await,
            Step::Fulfil => self.fulfil_batch(&jobs).await,
            Step::ReleaseInventory | Step::CancelPayment => Ok(jobs.iter().map(|_| Outcome::Alone).collect()),
        };
        let outcomes = outcomes.unwrap_or_else(|error| {
            tracing::warn!(%error, "the batch could not start; its jobs run one by one");
            jobs.iter().map(|_| Outcome::Alone).collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let settled = jobs.into_iter().zip(outcomes).map(|(job, outcome)| async move {
            match outcome {
                Outcome::Done => {
                    metrics::histogram!("orderflow_saga_step_duration_seconds", "step" => step.name(), "outcome" => "ok")
                        .record(elapsed);
                    Ok(())
                }
                Outcome::Failed(error) => {
                    let outcome = match &error {
                        StepError::Transient(_) => "transient_error",
                        StepError::Permanent { .. } => "permanent_error",
                    };
                    metrics::histogram!("orderflow_saga_step_duration_seconds", "step" => step.name(), "outcome" => outcome)
                        .record(elapsed);
                    self.settle_alone(step, job, error).await
                }
                Outcome::Alone => self.run(step, job).await,
            }
        });
        join_all(settled).await
    }

    /// Locks the batch's orders and sorts its jobs: an order in the step's state, named once, is a candidate
    /// (with its job's index); a missing order or one in another state needs nothing; a repeat runs alone.
    async fn lock_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        step: Step,
        jobs: &[StepJob],
    ) -> Result<(Vec<Outcome>, Vec<(usize, OrderRow)>), sqlx::Error> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id).collect();
        let mut locked: HashMap<Uuid, OrderRow> = order::lock_many(tx, &ids)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut candidates = Vec::with_capacity(jobs.len());
        let mut seen = HashSet::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            if !seen.insert(job.order_id) {
                outcomes.push(Outcome::Alone);
                continue;
            }
            outcomes.push(Outcome::Done);
            match locked.remove(&job.order_id) {
                None => {
                    tracing::warn!(order_id = %job.order_id, "job for an order that does not exist; dropped")
                }
                Some(order) if order.status() != step.runs_from() => {
                    tracing::debug!(order_id = %order.id, status = %order.status(), "order not in the step's state; nothing to do")
                }
                Some(order) => candidates.push((index, order)),
            }
        }
        Ok((outcomes, candidates))
    }

    /// Opens an attempt for each candidate (one STARTED row each, as `Saga::open` writes one).
    async fn start_batch(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        step: Step,
        jobs: &[StepJob],
        candidates: Vec<(usize, OrderRow)>,
    ) -> Result<Vec<Member>, sqlx::Error> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let attempts: Vec<(Uuid, u32)> = candidates
            .iter()
            .map(|(index, order)| (order.id, jobs[*index].attempt))
            .collect();
        let log_ids: HashMap<Uuid, i64> = saga::start_many(&mut **tx, step, &attempts, &self.instance)
            .await?
            .into_iter()
            .collect();
        Ok(candidates
            .into_iter()
            .filter_map(|(index, order)| {
                log_ids
                    .get(&order.id)
                    .map(|&log_id| Member { index, order, log_id })
            })
            .collect())
    }

    /// Reserve for many orders in one transaction: every hold decided on the locked stock, first come first
    /// served; reserved orders go on to pay, the rest are cancelled out of stock.
    async fn reserve_batch(&self, jobs: &[StepJob]) -> Result<Vec<Outcome>, StepError> {
        let mut tx = self.pool.begin().await?;
        let (outcomes, candidates) = self.lock_batch(&mut tx, Step::Reserve, jobs).await?;
        let members = self.start_batch(&mut tx, Step::Reserve, jobs, candidates).await?;
        if members.is_empty() {
            return Ok(outcomes);
        }
        let ids: Vec<Uuid> = members.iter().map(|m| m.order.id).collect();
        let mut lines: HashMap<Uuid, Vec<(String, i64)>> = HashMap::new();
        for line in order::lines_of(&mut *tx, &ids).await? {
            lines
                .entry(line.order_id)
                .or_default()
                .push((line.sku, line.quantity));
        }
        let wanted: Vec<(Uuid, Vec<(String, i64)>)> = ids
            .iter()
            .map(|id| (*id, lines.remove(id).unwrap_or_default()))
            .collect();
        let verdicts = inventory::reserve_many(&mut tx, &wanted).await?;
        let endings: Vec<Ending<'_>> = members
            .iter()
            .zip(verdicts)
            .map(|(m, verdict)| match verdict {
                ReserveOutcome::Reserved => Ending {
                    order: &m.order,
                    log_id: m.log_id,
                    log_status: log::SUCCEEDED,
                    log_error: None,
                    transition: Some(Transition::Reserve),
                    next: Some(Step::Pay),
                    hold_for: Some(self.settings.reservation_ttl),
                },
                ReserveOutcome::OutOfStock => Ending {
                    order: &m.order,
                    log_id: m.log_id,
                    log_status: log::FAILED,
                    log_error: Some("out of stock"),
                    transition: Some(Transition::RejectOutOfStock),
                    next: None,
                    hold_for: None,
                },
            })
            .collect();
        fail_batch("worker.batch.before_end", &members)?;
        let planned = saga::end_many(&mut tx, &endings).await?;
        tx.commit().await?;
        for (m, p) in members.iter().zip(&planned) {
            log_done(Step::Reserve, &jobs[m.index], p.as_ref(), "step done");
        }
        Ok(outcomes)
    }

    /// Pay for many orders: their attempts and PENDING payments in one transaction, the authorizations sent
    /// concurrently, and the verdicts recorded in a second transaction. An authorized order still RESERVED
    /// moves on in the batch; any other verdict is recorded as the one-order path records it.
    async fn pay_batch(&self, jobs: &[StepJob]) -> Result<Vec<Outcome>, StepError> {
        let mut tx = self.pool.begin().await?;
        let (mut outcomes, candidates) = self.lock_batch(&mut tx, Step::Pay, jobs).await?;
        let candidates = self.leave_out(&mut outcomes, candidates, |order| {
            failpoints::armed("worker.pay.start", &order.customer_id)
                || failpoints::armed("worker.pay.before_authorize", &order.customer_id)
        });
        let members = self.start_batch(&mut tx, Step::Pay, jobs, candidates).await?;
        if members.is_empty() {
            return Ok(outcomes);
        }
        let orders: Vec<&OrderRow> = members.iter().map(|m| &m.order).collect();
        let mut payments: HashMap<Uuid, payment::PaymentRow> =
            payment::begin_authorizations(&mut *tx, &orders)
                .await?
                .into_iter()
                .map(|p| (p.order_id, p))
                .collect();
        tx.commit().await?;

        // From here on the attempts are committed: a failure is this attempt's, settled per job.
        let calls = members.iter().map(|m| {
            let payment = payments.remove(&m.order.id);
            async move {
                let payment = payment
                    .ok_or_else(|| StepError::Transient(anyhow!("the PENDING payment row is missing")))?;
                self.authorize(&m.order.customer_id, &payment).await
            }
        });
        let verdicts = join_all(calls).await;
        let mut answered = Vec::new();
        for (m, verdict) in members.iter().zip(verdicts) {
            match verdict {
                Ok(verdict) => answered.push((m, verdict)),
                Err(error) => outcomes[m.index] = Outcome::Failed(error),
            }
        }
        if answered.is_empty() {
            return Ok(outcomes);
        }
        let mut others = Vec::new();
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            fail_batch("worker.batch.before_record", answered.iter().map(|(m, _)| *m))?;
            let ids: Vec<Uuid> = answered.iter().map(|(m, _)| m.order.id).collect();
            let now: HashMap<Uuid, OrderRow> = order::lock_many(&mut tx, &ids)
                .await?
                .into_iter()
                .map(|o| (o.id, o))
                .collect();
            let mut authorized = Vec::new();
            for (m, verdict) in &answered {
                match (now.get(&m.order.id), verdict) {
                    (None, _) => {}
                    (Some(order), Authorization::Authorized { provider_ref })
                        if order.status() == OrderStatus::Reserved =>
                    {
                        authorized.push((*m, order, provider_ref.as_str()))
                    }
                    (Some(_), verdict) => others.push((*m, verdict.clone())),
                }
            }
            if !authorized.is_empty() {
                let moves: Vec<(Uuid, Option<&str>)> =
                    authorized.iter().map(|(_, o, r)| (o.id, Some(*r))).collect();
                payment::set_status_many(&mut *tx, &[pay::PENDING], pay::AUTHORIZED, &moves).await?;
                let endings: Vec<Ending<'_>> = authorized
                    .iter()
                    .map(|(m, order, _)| Ending {
                        order,
                        log_id: m.log_id,
                        log_status: log::SUCCEEDED,
                        log_error: None,
                        transition: Some(Transition::Pay),
                        next: Some(Step::Commit),
                        hold_for: None,
                    })
                    .collect();
                let planned = saga::end_many(&mut tx, &endings).await?;
                tx.commit().await?;
                for ((m, _, _), p) in authorized.iter().zip(&planned) {
                    log_done(Step::Pay, &jobs[m.index], p.as_ref(), "step done");
                }
            } else {
                tx.commit().await?;
            }
            Ok::<(), StepError>(())
        }
        .await;
        if let Err(error) = recorded {
            for (m, _) in &answered {
                outcomes[m.index] = Outcome::Failed(StepError::Transient(anyhow!("{error:#}")));
            }
            return Ok(outcomes);
        }
        // Declined, or overtaken by a cancel while the call was out: recorded one by one, as they are rare.
        let records = others.into_iter().map(|(m, verdict)| async move {
            (
                m.index,
                self.record_authorization(m.order.id, m.log_id, verdict).await,
            )
        });
        for (index, result) in join_all(records).await {
            if let Err(error) = result {
                outcomes[index] = Outcome::Failed(error);
            }
        }
        Ok(outcomes)
    }

    /// Commit for many orders: the stock of all of them committed in one transaction with their attempts, the
    /// captures sent concurrently, then the captures recorded and fulfilment queued in a second transaction.
    async fn commit_batch(&self, jobs: &[StepJob]) -> Result<Vec<Outcome>, StepError> {
        let mut tx = self.pool.begin().await?;
        let (mut outcomes, candidates) = self.lock_batch(&mut tx, Step::Commit, jobs).await?;
        let ids: Vec<Uuid> = candidates.iter().map(|(_, o)| o.id).collect();
        let payments: HashMap<Uuid, payment::PaymentRow> = payment::find_many(&mut *tx, &ids)
            .await?
            .into_iter()
            .map(|p| (p.order_id, p))
            .collect();
        // The common case only: an authorized hold with its reference. A missing payment, a capture already
        // recorded (a re-run) or an armed failpoint goes the one-order way, which knows each of them.
        let candidates = self.leave_out(&mut outcomes, candidates, |order| {
            let authorized = payments
                .get(&order.id)
                .is_some_and(|p| p.status == pay::AUTHORIZED && p.provider_ref.is_some());
            !authorized
                || failpoints::armed("worker.commit.before", &order.customer_id)
                || failpoints::armed("worker.commit.inventory", &order.customer_id)
        });
        let members = self.start_batch(&mut tx, Step::Commit, jobs, candidates).await?;
        if members.is_empty() {
            return Ok(outcomes);
        }
        let ids: Vec<Uuid> = members.iter().map(|m| m.order.id).collect();
        inventory::commit_many(&mut tx, &ids).await?;
        tx.commit().await?;

        let calls = members.iter().map(|m| {
            let provider_ref = payments
                .get(&m.order.id)
                .and_then(|p| p.provider_ref.as_deref())
                .unwrap_or_default();
            self.capture(&m.order, provider_ref)
        });
        let captures = join_all(calls).await;
        let mut captured = Vec::new();
        for (m, capture) in members.iter().zip(captures) {
            match capture {
                Ok(()) => captured.push(m),
                Err(error) => outcomes[m.index] = Outcome::Failed(error),
            }
        }
        if captured.is_empty() {
            return Ok(outcomes);
        }
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            fail_batch("worker.batch.before_record", captured.iter().copied())?;
            let ids: Vec<Uuid> = captured.iter().map(|m| m.order.id).collect();
            let now = order::lock_many(&mut tx, &ids).await?;
            let moves: Vec<(Uuid, Option<&str>)> = now.iter().map(|o| (o.id, None)).collect();
            payment::set_status_many(&mut *tx, &[pay::AUTHORIZED], pay::CAPTURED, &moves).await?;
            let log_ids: HashMap<Uuid, i64> = captured.iter().map(|m| (m.order.id, m.log_id)).collect();
            let endings: Vec<Ending<'_>> = now
                .iter()
                .filter_map(|order| {
                    let log_id = *log_ids.get(&order.id)?;
                    let paid = order.status() == OrderStatus::Paid;
                    // Cancelled while capturing: cancel_payment sees CAPTURED and refunds.
                    Some(Ending {
                        order,
                        log_id,
                        log_status: if paid { log::SUCCEEDED } else { log::SKIPPED },
                        log_error: (!paid).then_some(LEFT_PAID),
                        transition: None,
                        next: paid.then_some(Step::Fulfil),
                        hold_for: None,
                    })
                })
                .collect();
            saga::end_many(&mut tx, &endings).await?;
            tx.commit().await?;
            for m in &captured {
                log_done(
                    Step::Commit,
                    &jobs[m.index],
                    None,
                    "stock committed and payment captured",
                );
            }
            Ok::<(), StepError>(())
        }
        .await;
        if let Err(error) = recorded {
            for m in &captured {
                outcomes[m.index] = Outcome::Failed(StepError::Transient(anyhow!("{error:#}")));
            }
        }
        Ok(outcomes)
    }

    /// Fulfil for many orders in one transaction (those whose capture is recorded; any other runs alone).
    async fn fulfil_batch(&self, jobs: &[StepJob]) -> Result<Vec<Outcome>, StepError> {
        let mut tx = self.pool.begin().await?;
        let (mut outcomes, candidates) = self.lock_batch(&mut tx, Step::Fulfil, jobs).await?;
        let ids: Vec<Uuid> = candidates.iter().map(|(_, o)| o.id).collect();
        let captured: HashSet<Uuid> = payment::find_many(&mut *tx, &ids)
            .await?
            .into_iter()
            .filter(|p| p.status == pay::CAPTURED)
            .map(|p| p.order_id)
            .collect();
        let candidates = self.leave_out(&mut outcomes, candidates, |order| {
            !captured.contains(&order.id) || failpoints::armed("worker.fulfil.before", &order.customer_id)
        });
        let members = self.start_batch(&mut tx, Step::Fulfil, jobs, candidates).await?;
        if members.is_empty() {
            return Ok(outcomes);
        }
        let endings: Vec<Ending<'_>> = members
            .iter()
            .map(|m| Ending {
                order: &m.order,
                log_id: m.log_id,
                log_status: log::SUCCEEDED,
                log_error: None,
                transition: Some(Transition::Fulfil),
                next: None,
                hold_for: None,
            })
            .collect();
        fail_batch("worker.batch.before_end", &members)?;
        let planned = saga::end_many(&mut tx, &endings).await?;
        tx.commit().await?;
        for (m, p) in members.iter().zip(&planned) {
            log_done(Step::Fulfil, &jobs[m.index], p.as_ref(), "step done");
        }
        Ok(outcomes)
    }

    /// Takes the candidates for which `alone` holds out of the batch: they run by themselves afterwards.
    fn leave_out(
        &self,
        outcomes: &mut [Outcome],
        candidates: Vec<(usize, OrderRow)>,
        alone: impl Fn(&OrderRow) -> bool,
    ) -> Vec<(usize, OrderRow)> {
        candidates
            .into_iter()
            .filter(|(index, order)| {
                let out = alone(order);
                if out {
                    outcomes[*index] = Outcome::Alone;
                }
                !out
            })
            .collect()
    }
}

/// Logs what a batch did for one order inside a span with the fields of `Saga::run`'s (order, step, attempt,
/// trace id), so an order's trace follows it through batched steps as through single ones.
fn log_done(step: Step, job: &StepJob, planned: Option<&PlannedTransition>, message: &'static str) {
    let span = tracing::info_span!(
        "run",
        order_id = %job.order_id,
        step = step.name(),
        attempt = job.attempt,
        trace_id = %job.trace.map(|t| t.to_string()).unwrap_or_default(),
    );
    let _entered = span.enter();
    match planned {
        Some(p) => tracing::info!(from = %p.from, to = %p.to, reason = p.reason, "order transition"),
        None => tracing::info!("{message}"),
    }
}

/// Failpoints of the batch itself (tests): armed for a customer (`return(<customer id>)`), the batch that holds
/// one of its orders fails at that point as if its transaction had failed there, taking the whole batch with it.
fn fail_batch<'a>(name: &str, members: impl IntoIterator<Item = &'a Member>) -> Result<(), StepError> {
    let mut members = members.into_iter();
    if members.any(|m| failpoints::armed(name, &m.order.customer_id)) {
        return Err(StepError::Transient(anyhow!("failpoint {name}")));
    }
    Ok(())
}
