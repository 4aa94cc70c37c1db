//! The saga's steps, one file each: what the step reads, what it decides, what it writes, its remote call and
//! its failpoints. A step is written once, for any number of orders: the runner (`crate::runner`) hands it the
//! orders of a batch, locked and in the state the step runs from, and executes what it decides, for one order or
//! for a full batch alike. Where a step sits in the saga (what follows it, what undoes it, what its failure does)
//! is `orderflow_shared::flow`'s.
//!
//! A step decides, per order ([`Decision`]):
//! - **end** the attempt now ([`Ending`]: succeeded, failed, cancel), with the step's writes done in the runner's
//!   transaction (set-based, for all the orders at once), which also ends the attempt, moves the order and
//!   queues the next job;
//! - **skip**: nothing to do (a re-run that finds its work done); nothing is written;
//! - **fail**: transient (retried with backoff) or permanent (the saga is cancelled); nothing is written for
//!   the order in this transaction, and the runner settles the failure;
//! - **call** the payment provider: the runner commits the attempt as STARTED with the step's writes so far (the
//!   step log before the side effect), makes the call, then hands the answer, with the order as it is by then,
//!   to [`SagaStep::record`], which decides how the attempt ends.

mod cancel_payment;
mod commit;
mod fulfil;
mod pay;
mod refund;
mod release_inventory;
mod release_rest;
mod reserve;
mod ship;

use std::future::Future;

use futures::future::BoxFuture;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::OrderRow;
use orderflow_shared::queue::StepJob;
use sqlx::PgConnection;

use crate::error::StepError;
use crate::runner::Runner;

use cancel_payment::CancelPayment;
use commit::Commit;
use fulfil::Fulfil;
use pay::Pay;
use refund::Refund;
use release_inventory::ReleaseInventory;
use release_rest::ReleaseRest;
use reserve::Reserve;
use ship::Ship;

/// Runs `step` for a batch of jobs: the one place that maps a step of the flow to its file.
pub(crate) fn dispatch(
    runner: &Runner,
    step: Step,
    jobs: Vec<StepJob>,
) -> BoxFuture<'_, Vec<Result<(), StepError>>> {
    match step {
        Step::Reserve => runner.run_step::<Reserve>(jobs),
        Step::Pay => runner.run_step::<Pay>(jobs),
        Step::Commit => runner.run_step::<Commit>(jobs),
        Step::Fulfil => runner.run_step::<Fulfil>(jobs),
        Step::ReleaseInventory => runner.run_step::<ReleaseInventory>(jobs),
        Step::CancelPayment => runner.run_step::<CancelPayment>(jobs),
        Step::Ship => runner.run_step::<Ship>(jobs),
        Step::ReleaseRest => runner.run_step::<ReleaseRest>(jobs),
        Step::Refund => runner.run_step::<Refund>(jobs),
    }
}

/// What a step decided for one order.
#[derive(Debug)]
pub(crate) enum Decision<C> {
    /// End the attempt now, as the ending says.
    End(Ending),
    /// Nothing to do; nothing is recorded.
    Skip,
    /// The attempt failed before anything was written for the order.
    Fail(StepError),
    /// Commit the attempt, then make this call and [`SagaStep::record`] its answer.
    Call(C),
}

/// The answer of a step that calls no one: it has no value, so such a step can never decide [`Decision::Call`].
#[derive(Debug)]
pub(crate) enum NoCall {}

/// One step of the saga. The runner calls `decide` with the batch's orders (each locked, in
/// `STEP.runs_from()`, its attempt number known to the runner); a step with a remote call also implements
/// `call` and `record`.
pub(crate) trait SagaStep: Send + Sync + 'static {
    const STEP: Step;
    /// What the step asks of the provider for one order.
    type Call: Send + Sync + 'static;
    /// What the provider answered.
    type Answer: Send + Sync + 'static;

    /// Decides for each of `orders` (in order: one decision each), doing the step's writes for those that go on
    /// in the runner's transaction, set-based. An order decided `Skip` or `Fail` must have nothing written for
    /// it: the transaction commits the others.
    fn decide(
        runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> impl Future<Output = Result<Vec<Decision<Self::Call>>, StepError>> + Send;

    /// The remote call for one order, after its attempt (and the writes before it) committed. A step that calls
    /// no one says so with [`calls_no_one!`].
    fn call(
        runner: &Runner,
        order: &OrderRow,
        call: &Self::Call,
    ) -> impl Future<Output = Result<Self::Answer, StepError>> + Send;

    /// Records the answers in a second transaction: each order as it is now (locked again; it may have moved
    /// while the call was out) with its answer; returns how each attempt ends, in order.
    fn record(
        runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Self::Answer)],
    ) -> impl Future<Output = Result<Vec<Ending>, StepError>> + Send;
}

/// The `call` and `record` of a step that calls no one (`type Call = NoCall`): neither can run, since no value of
/// `NoCall` exists to decide a call with. A step that does call writes both; neither is left to a default.
macro_rules! calls_no_one {
    () => {
        async fn call(
            _runner: &$crate::runner::Runner,
            _order: &orderflow_shared::order::OrderRow,
            call: &$crate::steps::NoCall,
        ) -> Result<$crate::steps::NoCall, $crate::error::StepError> {
            match *call {}
        }

        async fn record(
            _runner: &$crate::runner::Runner,
            _conn: &mut sqlx::PgConnection,
            answered: &[(&orderflow_shared::order::OrderRow, &$crate::steps::NoCall)],
        ) -> Result<Vec<orderflow_shared::flow::Ending>, $crate::error::StepError> {
            match answered.first() {
                Some((_, answer)) => match **answer {},
                None => Ok(Vec::new()),
            }
        }
    };
}
use calls_no_one;
