//! Runs the steps: gathers the jobs a queue worker has in hand into batches, runs a step for a batch (one order
//! or many alike), executes what the step decided, and settles failures (retry with backoff, cancel, or park, as
//! `flow::after_failure` says). A step's own file (`crate::steps`) never needs to know the batching exists.
//!
//! A batch:
//! 1. One transaction locks the batch's orders (in id order: two batches cannot wait on each other in a cycle)
//!    and keeps those in the state the step runs from (a job whose order moved on, or does not exist, has nothing
//!    to do). The step decides for all of them at once, with set-based reads and writes. The attempts that call
//!    the provider are opened as STARTED; one statement (`order::advance`) ends the others, moves their orders
//!    and queues their next jobs. Commit.
//! 2. The provider calls go out concurrently.
//! 3. A second transaction locks the called orders again, the step records the answers, and `order::advance` ends
//!    those attempts. Commit.
//!
//! An order named twice in a batch runs its repeat in a batch after this one (which then finds its work done).
//! If the first transaction fails, nothing of the batch was written: a batch of several orders runs each of them
//! again in a batch of its own, and a batch of one settles its failure. A failure after the first commit (a
//! provider error, the second transaction failing) is its attempt's own and is settled per order. A crash leaves
//! committed STARTED attempts (with their PENDING payments, or committed stock), which the jobs' re-runs or the
//! reconciler finish.
//!
//! Batches grow with the load by themselves: a queue runs at most two at once (sixteen batches of one with
//! `ORDERFLOW_WORKER_STEP_BATCH=1`), and the jobs that arrive meanwhile form the next (as group commit does). A
//! lone job runs at once; a busy queue fills its batches up to `ORDERFLOW_WORKER_STEP_BATCH`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use orderflow_shared::flow::{self, AfterFailure, Step};
use orderflow_shared::order::advance::AttemptOf;
use orderflow_shared::order::{self, Move, OrderRow, PlannedTransition, Transition};
use orderflow_shared::queue::announce::{self, Announcer};
use orderflow_shared::queue::{NextJob, StepJob};
use orderflow_shared::settings::WorkerSettings;
use orderflow_shared::step_log;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::Provider;
use crate::steps::{self, Decision, SagaStep};

/// Everything a step needs; one per worker process, shared by all its queues.
#[derive(Debug, Clone)]
pub struct Runner {
    pub pool: PgPool,
    pub provider: Provider,
    pub settings: WorkerSettings,
    /// This process's unique instance name, recorded in the step log.
    pub instance: String,
    /// Wakes the queues of the jobs a batch queued, after its commit (`queue::announce`).
    pub announcer: Announcer,
}

/// What became of one job of a batch.
#[derive(Debug)]
enum Outcome {
    /// Done by the batch (or nothing to do).
    Done,
    /// The attempt failed: settled as `flow::after_failure` says.
    Failed(StepError),
    /// Run again in a batch of its own (its first batch failed before its commit), which settled it.
    RanAlone(Result<(), StepError>),
}

impl Runner {
    /// The runner of a worker process: the provider's client is built from `settings`.
    pub fn new(pool: PgPool, settings: WorkerSettings, instance: String) -> anyhow::Result<Self> {
        let provider = Provider::new(&settings.payments_url, settings.payments_timeout)?;
        Ok(Self {
            announcer: Announcer::start(&pool),
            pool,
            provider,
            settings,
            instance,
        })
    }

    /// Runs `step` for a batch of jobs; returns each job's result, in order. An `Err` means that even the
    /// failure could not be recorded (the database is gone): apalis then runs the job again (a few times, see
    /// `queue::APALIS_MAX_ATTEMPTS`) and after that the reconciler settles it.
    pub async fn run_batch(&self, step: Step, jobs: Vec<StepJob>) -> Vec<Result<(), StepError>> {
        let span = tracing::info_span!("batch", step = step.name(), jobs = jobs.len());
        steps::dispatch(self, step, jobs).instrument(span).await
    }

    /// Runs `S` for the jobs (boxed: a failed batch runs its jobs again through it).
    pub(crate) fn run_step<S: SagaStep>(
        &self,
        jobs: Vec<StepJob>,
    ) -> BoxFuture<'_, Vec<Result<(), StepError>>> {
        async move {
            let started = Instant::now();
            let mut seen = HashSet::with_capacity(jobs.len());
            let (firsts, repeats): (Vec<usize>, Vec<usize>) =
                (0..jobs.len()).partition(|&i| seen.insert(jobs[i].order_id));
            let batch: Vec<StepJob> = firsts.iter().map(|&i| jobs[i]).collect();
            let outcomes = match self.attempt::<S>(&batch).await {
                Ok(outcomes) => outcomes,
                Err(error) if batch.len() > 1 => {
                    tracing::warn!(error = %format!("{error:#}"), "the batch failed before its commit; its jobs run one by one");
                    let alone = batch.iter().map(|job| self.run_step::<S>(vec![*job]));
                    join_all(alone)
                        .await
                        .into_iter()
                        .map(|mut results| Outcome::RanAlone(results.pop().unwrap_or(Ok(()))))
                        .collect()
                }
                Err(error) => vec![Outcome::Failed(error)],
            };
            let elapsed = started.elapsed().as_secs_f64();
            let settled = batch.iter().zip(outcomes).map(|(job, outcome)| async move {
                let recorded = |outcome: &'static str| {
                    metrics::histogram!("orderflow_saga_step_duration_seconds", "step" => S::STEP.name(), "outcome" => outcome)
                        .record(elapsed);
                };
                match outcome {
                    Outcome::Done => {
                        recorded("ok");
                        Ok(())
                    }
                    Outcome::Failed(error) => {
                        recorded(error.outcome());
                        self.settle_alone(S::STEP, *job, error)
                            .instrument(job_span(S::STEP, job))
                            .await
                    }
                    Outcome::RanAlone(result) => result,
                }
            });
            let mut results: Vec<Option<Result<(), StepError>>> = jobs.iter().map(|_| None).collect();
            for (index, result) in firsts.into_iter().zip(join_all(settled).await) {
                results[index] = Some(result);
            }
            if !repeats.is_empty() {
                let again = self.run_step::<S>(repeats.iter().map(|&i| jobs[i]).collect()).await;
                for (index, result) in repeats.into_iter().zip(again) {
                    results[index] = Some(result);
                }
            }
            results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
        }
        .boxed()
    }

    /// One attempt of `S` for the jobs (each order once). `Err`: the first transaction failed, so nothing of the
    /// batch was written.
    async fn attempt<S: SagaStep>(&self, jobs: &[StepJob]) -> Result<Vec<Outcome>, StepError> {
        let mut outcomes: Vec<Outcome> = jobs.iter().map(|_| Outcome::Done).collect();
        let mut tx = announce::begin_quiet(&self.pool).await?;
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.order_id).collect();
        let mut locked: HashMap<Uuid, OrderRow> = order::lock_many(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let mut members: Vec<(usize, OrderRow)> = Vec::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            let _span = job_span(S::STEP, job).entered();
            match locked.remove(&job.order_id) {
                None => tracing::warn!("job for an order that does not exist; dropped"),
                Some(order) if !S::STEP.runs_in(order.status) => {
                    tracing::debug!(status = %order.status, "order not in the step's state; nothing to do")
                }
                Some(order) => members.push((index, order)),
            }
        }
        if members.is_empty() {
            return Ok(outcomes);
        }
        let orders: Vec<&OrderRow> = members.iter().map(|(_, order)| order).collect();
        let decisions = S::decide(self, &mut tx, &orders).await?;
        if decisions.len() != members.len() {
            return Err(StepError::Transient(anyhow!(
                "{} decided for {} of {} orders",
                S::STEP,
                decisions.len(),
                members.len()
            )));
        }
        let attempt_of = |index: usize| AttemptOf {
            step: S::STEP,
            number: jobs[index].attempt,
            log_id: None,
            worker: &self.instance,
        };
        let mut ended: Vec<(usize, Move<'_>)> = Vec::new();
        let mut calls: Vec<(usize, &OrderRow, S::Call)> = Vec::new();
        for ((index, order), decision) in members.iter().zip(decisions) {
            match decision {
                Decision::End(ending) => {
                    ended.push((*index, Move::ending(order, attempt_of(*index), ending)))
                }
                Decision::Skip => {}
                Decision::Fail(error) => outcomes[*index] = Outcome::Failed(error),
                Decision::Call(call) => calls.push((*index, order, call)),
            }
        }
        // The attempts that call out commit as STARTED before their call: the step log before the side effect.
        let started: HashMap<Uuid, i64> = if calls.is_empty() {
            HashMap::new()
        } else {
            let attempts: Vec<(Uuid, u32)> = calls.iter().map(|(i, o, _)| (o.id, jobs[*i].attempt)).collect();
            step_log::start_many(&mut *tx, S::STEP, &attempts, &self.instance)
                .await?
                .into_iter()
                .collect()
        };
        let moves: Vec<Move<'_>> = ended.iter().map(|(_, m)| m.clone()).collect();
        let planned = order::advance(&mut tx, &moves).await?;
        if jobs.len() > 1 {
            fail_batch("worker.batch.before_end", orders.iter().copied())?;
        }
        tx.commit().await?;
        self.announcer
            .announce_jobs(moves.iter().filter_map(|m| m.next.as_ref()));
        for ((index, the_move), planned) in ended.iter().zip(&planned) {
            log_ended(S::STEP, &jobs[*index], the_move, planned.as_ref());
        }
        if calls.is_empty() {
            return Ok(outcomes);
        }

        // From here on the attempts are committed: a failure is the attempt's own, settled per order.
        let answers = join_all(calls.iter().map(|(index, order, call)| {
            S::call(self, order, call).instrument(job_span(S::STEP, &jobs[*index]))
        }))
        .await;
        let mut answered: Vec<(usize, &OrderRow, S::Answer)> = Vec::with_capacity(calls.len());
        for ((index, order, _), answer) in calls.iter().zip(answers) {
            match answer {
                Ok(answer) => answered.push((*index, order, answer)),
                Err(error) => outcomes[*index] = Outcome::Failed(error),
            }
        }
        if answered.is_empty() {
            return Ok(outcomes);
        }
        if let Err(error) = self.record::<S>(jobs, &answered, &started).await {
            for (index, _, _) in &answered {
                outcomes[*index] = Outcome::Failed(StepError::Transient(anyhow!("{error:#}")));
            }
        }
        Ok(outcomes)
    }

    /// The second transaction of a batch whose step called out: the answers recorded on the orders as they are
    /// now, and their attempts ended.
    async fn record<S: SagaStep>(
        &self,
        jobs: &[StepJob],
        answered: &[(usize, &OrderRow, S::Answer)],
        started: &HashMap<Uuid, i64>,
    ) -> Result<(), StepError> {
        let mut tx = announce::begin_quiet(&self.pool).await?;
        fail_batch(
            "worker.batch.before_record",
            answered.iter().map(|(_, order, _)| *order),
        )?;
        let ids: Vec<Uuid> = answered.iter().map(|(_, order, _)| order.id).collect();
        let now: HashMap<Uuid, OrderRow> = order::lock_many(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let present: Vec<(usize, &OrderRow, &S::Answer)> = answered
            .iter()
            .filter_map(|(index, order, answer)| now.get(&order.id).map(|o| (*index, o, answer)))
            .collect();
        let pairs: Vec<(&OrderRow, &S::Answer)> = present
            .iter()
            .map(|(_, order, answer)| (*order, *answer))
            .collect();
        let endings = S::record(self, &mut tx, &pairs).await?;
        if endings.len() != present.len() {
            return Err(StepError::Transient(anyhow!(
                "{} recorded {} of {} answers",
                S::STEP,
                endings.len(),
                present.len()
            )));
        }
        let moves: Vec<Move<'_>> = present
            .iter()
            .zip(endings)
            .map(|((index, order, _), ending)| {
                let attempt = AttemptOf {
                    step: S::STEP,
                    number: jobs[*index].attempt,
                    log_id: started.get(&order.id).copied(),
                    worker: &self.instance,
                };
                Move::ending(order, attempt, ending)
            })
            .collect();
        let planned = order::advance(&mut tx, &moves).await?;
        tx.commit().await?;
        self.announcer
            .announce_jobs(moves.iter().filter_map(|m| m.next.as_ref()));
        for (((index, _, _), the_move), planned) in present.iter().zip(&moves).zip(&planned) {
            log_ended(S::STEP, &jobs[*index], the_move, planned.as_ref());
        }
        Ok(())
    }

    /// [`Runner::settle`] in a transaction of its own.
    pub(crate) async fn settle_alone(
        &self,
        step: Step,
        job: StepJob,
        error: StepError,
    ) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        self.settle(&mut tx, step, job, error).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed attempt of `step` (step log and `orders.last_error`) and does what follows it
    /// (`flow::after_failure`), in the caller's transaction: the same step again after a backoff, or the
    /// cancellation of a forward step, or a compensation parked. Nothing follows if the order has meanwhile left
    /// the step's state (a cancel overtook it): whatever moved it owns the saga now.
    pub(crate) async fn settle(
        &self,
        conn: &mut PgConnection,
        step: Step,
        job: StepJob,
        error: StepError,
    ) -> Result<(), StepError> {
        let message = error.to_string();
        let Some(order) = order::lock(conn, job.order_id).await? else {
            return Ok(());
        };
        step_log::fail_attempt(conn, job.order_id, step, job.attempt, &self.instance, &message).await?;
        let last_error = Some(format!("{step}: {message}"));
        // A job whose step is no longer the saga's current one (a leftover ship job of an order whose rest was
        // cancelled, or that waits for shipments) must not take the saga back: noted only.
        if !step.runs_in(order.status) || order.current_step != Some(step) {
            tracing::info!(status = %order.status, error = message, "step failed after the saga moved on");
            let noted = Move {
                last_error,
                ..Move::new(&order)
            };
            order::advance(conn, &[noted]).await?;
            return Ok(());
        }
        let budget = self.settings.attempts.of(step);
        let after = match flow::after_failure(step, job.attempt, budget, error.failure()) {
            AfterFailure::Retry { attempt } => {
                let delay = self.backoff(job.attempt);
                tracing::warn!(error = message, ?delay, budget, "step failed; retrying later");
                Move {
                    next: Some(NextJob {
                        step,
                        attempt,
                        delay: Some(delay),
                        trace: job.trace,
                    }),
                    ..Move::new(&order)
                }
            }
            AfterFailure::Park => {
                tracing::error!(
                    error = message,
                    budget,
                    "compensation failed for good; the saga needs attention"
                );
                Move {
                    transition: Some(Transition::Park),
                    parked_in: Some(step),
                    ..Move::new(&order)
                }
            }
            AfterFailure::Cancel(reason) => {
                tracing::warn!(
                    error = message,
                    reason = reason.as_str(),
                    "step failed for good; compensating"
                );
                flow::cancellation(&order, reason, None)
            }
        };
        let planned = order::advance(conn, &[Move { last_error, ..after }]).await?;
        for planned in planned.iter().flatten() {
            planned.log();
        }
        Ok(())
    }

    /// Delay before attempt `attempt + 1`: base × 2^(attempt−1), capped, with up to 20% jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base_delay.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.settings.retry_max_delay.as_millis() as u64);
        let jitter = rand::random_range(0..=capped / 5 + 1);
        Duration::from_millis(capped + jitter)
    }
}

/// The span of one job's work, with the fields a one-order run has (order, step, attempt, trace id), so an
/// order's trace follows it through a batch.
fn job_span(step: Step, job: &StepJob) -> tracing::Span {
    tracing::info_span!(
        "run",
        order_id = %job.order_id,
        step = step.name(),
        attempt = job.attempt,
        trace_id = %job.trace.map(|t| t.to_string()).unwrap_or_default(),
    )
}

/// Logs how one order's attempt ended, in its job's span.
fn log_ended(step: Step, job: &StepJob, the_move: &Move<'_>, planned: Option<&PlannedTransition>) {
    let _span = job_span(step, job).entered();
    match planned {
        Some(planned) => planned.log(),
        None => tracing::info!(
            status = ?the_move.attempt.as_ref().map(|a| a.status),
            next = ?the_move.next.map(|n| n.step.name()),
            "step done"
        ),
    }
}

/// Failpoints of a batch itself (tests): armed for a customer (`return(<customer id>)`), the batch holding one of
/// its orders fails at that point as if its transaction had failed there.
fn fail_batch<'a>(name: &str, orders: impl IntoIterator<Item = &'a OrderRow>) -> Result<(), StepError> {
    let mut orders = orders.into_iter();
    if orders.any(|order| failpoints::hit(name, Some(&order.customer_id))) {
        return Err(StepError::Transient(anyhow!("failpoint {name}")));
    }
    Ok(())
}

type Reply = oneshot::Sender<Result<(), StepError>>;

/// Batches of one step that one queue worker runs at once when batches hold many orders. Two, so a batch
/// waiting on the provider does not hold the next one back.
const BATCHES_IN_FLIGHT: usize = 2;
/// With batches of one order (`ORDERFLOW_WORKER_STEP_BATCH=1`), as many run at once as a queue that runs one
/// job at a time may: each holds a pooled connection.
pub(crate) const ONE_BY_ONE_IN_FLIGHT: usize = 16;

/// Gathers one queue worker's jobs into batches of up to `max`.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(StepJob, Reply)>,
}

impl Batcher {
    /// Starts the gatherer of `step`'s jobs; it ends when the last `Batcher` clone is dropped.
    pub fn start(runner: Arc<Runner>, step: Step, max: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let gatherer = tokio::spawn(gather(runner, step, max.max(1), rx));
        (Self { tx }, gatherer)
    }

    /// Hands `job` to the next batch and returns its result.
    pub async fn submit(&self, job: StepJob) -> Result<(), StepError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((job, reply))
            .map_err(|_| StepError::Transient(anyhow!("the step batcher has stopped")))?;
        answer
            .await
            .map_err(|_| StepError::Transient(anyhow!("the step batch ended without an answer")))?
    }
}

async fn gather(
    runner: Arc<Runner>,
    step: Step,
    max: usize,
    mut rx: mpsc::UnboundedReceiver<(StepJob, Reply)>,
) {
    let in_flight = if max > 1 {
        BATCHES_IN_FLIGHT
    } else {
        ONE_BY_ONE_IN_FLIGHT
    };
    let slots = Arc::new(Semaphore::new(in_flight));
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
        let runner = runner.clone();
        tokio::spawn(async move {
            let results = runner.run_batch(step, jobs).await;
            drop(slot);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}
