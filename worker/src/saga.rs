//! The saga's steps. Each one locks the order row first and does nothing unless the order is in the state the
//! step expects, so a job that runs twice (apalis re-runs a job whose ack was lost) changes nothing the second
//! time. A step's local writes, its transition event and the next job commit in one transaction; a step with
//! a remote side effect (the payment provider) commits its step-log row first, calls out, then records the
//! outcome in a second transaction.

use std::time::Duration;

use anyhow::anyhow;
use orderflow_shared::inventory;
use orderflow_shared::jobs::{self, Step, StepJob};
use orderflow_shared::order::{self, CancelReason, OrderRow, OrderStatus, Transition};
use orderflow_shared::payment::{self, PaymentRow, status as pay};
use orderflow_shared::saga::{self, status as log};
use orderflow_shared::settings::WorkerSettings;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::payments::{Authorization, AuthorizeRequest, PaymentsClient, ProviderError};

/// Everything a step needs; one per worker process, shared by all its queues.
#[derive(Debug, Clone)]
pub struct Saga {
    pub pool: PgPool,
    pub payments: PaymentsClient,
    pub settings: WorkerSettings,
    /// This process's unique instance name, recorded in the step log.
    pub instance: String,
}

impl Saga {
    /// Runs one job of `step` and settles its failure: a transient error is retried by a new delayed job, a
    /// permanent one (or an exhausted budget) starts compensation, and a compensation out of attempts parks the
    /// saga in NEEDS_ATTENTION. An `Err` here means even that could not be written; apalis then runs the job
    /// again (a few times, see `jobs::APALIS_MAX_ATTEMPTS`) and after that the reconciler settles it.
    #[tracing::instrument(skip_all, err, fields(
        order_id = %job.order_id,
        step = step.name(),
        attempt = job.attempt,
        trace_id = %job.trace.map(|t| t.to_string()).unwrap_or_default(),
    ))]
    pub async fn run(&self, step: Step, job: StepJob) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        let result = match step {
            Step::Reserve => self.reserve(job).await,
            Step::Pay => self.pay(job).await,
            Step::Commit => self.commit(job).await,
            Step::Fulfil => self.fulfil(job).await,
            Step::ReleaseInventory => self.release_inventory(job).await,
            Step::CancelPayment => self.cancel_payment(job).await,
        };
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(StepError::Transient(_)) => "transient_error",
            Err(StepError::Permanent { .. }) => "permanent_error",
        };
        metrics::histogram!("orderflow_saga_step_duration_seconds", "step" => step.name(), "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        match result {
            Ok(()) => {
                tracing::debug!(elapsed_ms, "step done");
                Ok(())
            }
            Err(error) => self.settle_alone(step, job, error).await,
        }
    }

    /// `settle` in a transaction of its own.
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

    /// Records a failed attempt of `step` (step log and `orders.last_error`) and decides what follows, in the
    /// caller's transaction: retry later while the step has attempts left and the error is transient; else
    /// compensate a forward step, or park a compensation. Nothing follows if the order has meanwhile left the
    /// step's state (a cancel overtook it): the job that moved it owns the saga now.
    pub(crate) async fn settle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        step: Step,
        job: StepJob,
        error: StepError,
    ) -> Result<(), StepError> {
        let (retryable, reason, error) = match error {
            StepError::Transient(error) => {
                let reason = match step {
                    Step::Pay | Step::Commit => CancelReason::PaymentFailed,
                    _ => CancelReason::StepFailed,
                };
                (true, reason, error)
            }
            StepError::Permanent { reason, error } => (false, reason, error),
        };
        let message = format!("{error:#}");
        let Some(order) = order::lock(tx, job.order_id).await? else {
            return Ok(());
        };
        saga::fail_attempt(tx, job.order_id, step, job.attempt, &self.instance, &message).await?;
        order::set_last_error(&mut **tx, job.order_id, &format!("{}: {message}", step.name())).await?;
        if order.status() != step.runs_from() {
            tracing::info!(status = %order.status(), error = message, "step failed after the saga moved on");
            return Ok(());
        }
        let budget = self.settings.max_attempts(step);
        if retryable && job.attempt < budget {
            let delay = self.backoff(job.attempt);
            tracing::warn!(error = message, ?delay, budget, "step failed; retrying later");
            let next = StepJob {
                order_id: job.order_id,
                attempt: job.attempt + 1,
                trace: job.trace,
            };
            jobs::enqueue(tx, step, next, Some(delay)).await?;
        } else if step.is_compensation() {
            tracing::error!(
                error = message,
                budget,
                "compensation failed for good; the saga needs attention"
            );
            order::transition(tx, &order, Transition::Park, Some(step.name()), None).await?;
        } else {
            tracing::warn!(
                error = message,
                reason = reason.as_str(),
                retryable,
                "step failed for good; compensating"
            );
            order::transition(
                tx,
                &order,
                Transition::StartCancel(reason),
                Some(Step::ReleaseInventory.name()),
                None,
            )
            .await?;
            enqueue_first(tx, Step::ReleaseInventory, job.order_id).await?;
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

    /// A step's first transaction: locks the order and, if it is in the status the step runs from, writes the
    /// attempt's STARTED row. `None`: the step has nothing to do (already done, or overtaken by a cancel).
    async fn open(&self, step: Step, job: StepJob) -> Result<Option<Opened>, StepError> {
        let mut tx = self.pool.begin().await?;
        let opened = saga::lock_and_start(&mut tx, job.order_id, step, job.attempt, &self.instance).await?;
        let Some((order, log_id)) = opened else {
            tracing::warn!("job for an order that does not exist; dropped");
            return Ok(None);
        };
        let Some(log_id) = log_id else {
            tracing::debug!(status = %order.status(), "order not in the step's state; nothing to do");
            return Ok(None);
        };
        Ok(Some(Opened { tx, order, log_id }))
    }

    /// The transaction after a remote call: the order locked again, as it is now.
    async fn relock(
        &self,
        order_id: Uuid,
    ) -> Result<Option<(Transaction<'static, Postgres>, OrderRow)>, StepError> {
        let mut tx = self.pool.begin().await?;
        Ok(order::lock(&mut tx, order_id).await?.map(|order| (tx, order)))
    }

    /// Reserve: hold every line's stock, all or nothing, then queue payment; out of stock cancels at once.
    async fn reserve(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::Reserve, job).await?
        else {
            return Ok(());
        };
        let lines: Vec<(String, i64)> = order::lines(&mut *tx, order.id)
            .await?
            .into_iter()
            .map(|l| (l.sku, l.quantity))
            .collect();
        match inventory::reserve(&mut tx, order.id, &lines).await? {
            inventory::ReserveOutcome::Reserved => {
                order::transition(&mut tx, &order, Transition::Reserve, Some(Step::Pay.name()), None).await?;
                order::hold_reservation(&mut *tx, order.id, self.settings.reservation_ttl).await?;
                enqueue_first(&mut tx, Step::Pay, order.id).await?;
                saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
            }
            inventory::ReserveOutcome::OutOfStock => {
                order::transition(&mut tx, &order, Transition::RejectOutOfStock, None, None).await?;
                saga::finish(&mut *tx, log_id, log::FAILED, Some("out of stock")).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pay: write PENDING and the step log, authorize a hold with the order's key, then record the verdict.
    async fn pay(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::Pay, job).await?
        else {
            return Ok(());
        };
        // Dropping `tx` here writes nothing: no step-log row, no PENDING payment (nothing in flight).
        failpoints::crash("worker.pay.start", &order.customer_id)?;
        let payment = payment::begin_authorization(
            &mut *tx,
            order.id,
            order.total,
            &order.currency,
            &order.payment_token,
        )
        .await?;
        tx.commit().await?;
        let verdict = self.authorize(&order.customer_id, &payment).await?;
        self.record_authorization(order.id, log_id, verdict).await
    }

    /// The pay step's remote call: asks the provider for the hold that `payment` (PENDING, committed) promises.
    pub(crate) async fn authorize(
        &self,
        customer_id: &str,
        payment: &PaymentRow,
    ) -> Result<Authorization, StepError> {
        failpoints::crash("worker.pay.before_authorize", customer_id)?;
        let verdict = self
            .payments
            .authorize(&authorize_request(payment))
            .await
            .map_err(StepError::from_provider)?;
        failpoints::abort("worker.pay.after_authorize", Some(customer_id));
        Ok(verdict)
    }

    /// The pay step's last transaction: the provider's verdict recorded on the order as it now is.
    pub(crate) async fn record_authorization(
        &self,
        order_id: Uuid,
        log_id: i64,
        verdict: Authorization,
    ) -> Result<(), StepError> {
        let Some((mut tx, order)) = self.relock(order_id).await? else {
            return Ok(());
        };
        let still_reserved = order.status() == OrderStatus::Reserved;
        match verdict {
            Authorization::Authorized { provider_ref } => {
                payment::set_status(
                    &mut *tx,
                    order.id,
                    &[pay::PENDING],
                    pay::AUTHORIZED,
                    Some(&provider_ref),
                    None,
                )
                .await?;
                if still_reserved {
                    order::transition(&mut tx, &order, Transition::Pay, Some(Step::Commit.name()), None)
                        .await?;
                    enqueue_first(&mut tx, Step::Commit, order.id).await?;
                    saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
                } else {
                    // Cancelled while the call was out; the cancel_payment compensation voids this hold.
                    saga::finish(&mut *tx, log_id, log::SKIPPED, Some(LEFT_RESERVED)).await?;
                }
            }
            Authorization::Declined { provider_ref, code } => {
                payment::set_status(
                    &mut *tx,
                    order.id,
                    &[pay::PENDING],
                    pay::DECLINED,
                    provider_ref.as_deref(),
                    Some(&code),
                )
                .await?;
                saga::finish(&mut *tx, log_id, log::FAILED, Some(&format!("declined: {code}"))).await?;
                if still_reserved {
                    order::transition(
                        &mut tx,
                        &order,
                        Transition::StartCancel(CancelReason::PaymentDeclined),
                        Some(Step::ReleaseInventory.name()),
                        None,
                    )
                    .await?;
                    enqueue_first(&mut tx, Step::ReleaseInventory, order.id).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commit: phase two of the reservation (stock leaves on_hand), then capture the hold.
    async fn commit(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::Commit, job).await?
        else {
            return Ok(());
        };
        failpoints::crash("worker.commit.before", &order.customer_id)?;
        let Some(payment) = payment::find(&mut *tx, order.id).await? else {
            return Err(StepError::permanent(
                CancelReason::StepFailed,
                anyhow!("a PAID order has no payment row"),
            ));
        };
        if payment.status == pay::CAPTURED {
            // This job already ran to the end and its transaction queued fulfil; dropping `tx` drops this
            // attempt's log row with it.
            return Ok(());
        }
        let Some(provider_ref) = payment.provider_ref else {
            return Err(StepError::permanent(
                CancelReason::PaymentFailed,
                anyhow!("the hold has no provider reference"),
            ));
        };
        if failpoints::hit("worker.commit.inventory", Some(&order.customer_id)) {
            return Err(StepError::permanent(
                CancelReason::InventoryCommitFailed,
                anyhow!("failpoint worker.commit.inventory"),
            ));
        }
        inventory::commit(&mut tx, order.id).await?;
        tx.commit().await?;
        self.capture(&order, &provider_ref).await?;

        let Some((mut tx, order)) = self.relock(order.id).await? else {
            return Ok(());
        };
        payment::set_status(&mut *tx, order.id, &[pay::AUTHORIZED], pay::CAPTURED, None, None).await?;
        if order.status() == OrderStatus::Paid {
            tracing::info!(provider_ref, "stock committed and payment captured");
            enqueue_first(&mut tx, Step::Fulfil, order.id).await?;
            saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
        } else {
            // Cancelled while capturing: cancel_payment sees CAPTURED and refunds.
            saga::finish(&mut *tx, log_id, log::SKIPPED, Some(LEFT_PAID)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The commit step's remote call: captures the hold (a repeat is harmless: same key).
    pub(crate) async fn capture(&self, order: &OrderRow, provider_ref: &str) -> Result<(), StepError> {
        match self
            .payments
            .capture(provider_ref, &payment::capture_key(order.id))
            .await
        {
            Ok(()) => {}
            // A repeat after a lost answer: the intent already moved to succeeded, which is what we wanted.
            Err(ProviderError::Rejected {
                intent_status: Some(status),
                ..
            }) if status == "succeeded" => {}
            Err(e) => return Err(StepError::from_provider(e)),
        }
        failpoints::abort("worker.commit.after_capture", Some(&order.customer_id));
        Ok(())
    }

    /// Fulfil: the money is captured and the stock committed; the order is done.
    async fn fulfil(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::Fulfil, job).await?
        else {
            return Ok(());
        };
        failpoints::crash("worker.fulfil.before", &order.customer_id)?;
        // Fulfil is queued by the capture's own transaction; this guards against a job queued by hand.
        let captured = payment::find(&mut *tx, order.id)
            .await?
            .is_some_and(|p| p.status == pay::CAPTURED);
        if !captured {
            return Err(StepError::Transient(anyhow!(
                "fulfil ran before the capture was recorded"
            )));
        }
        order::transition(&mut tx, &order, Transition::Fulfil, None, None).await?;
        saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Compensation 1: give back the stock (reserved or committed), then queue the payment compensation.
    async fn release_inventory(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::ReleaseInventory, job).await?
        else {
            return Ok(());
        };
        let released = inventory::release(&mut tx, order.id).await?;
        tracing::info!(released, "stock released");
        enqueue_first(&mut tx, Step::CancelPayment, order.id).await?;
        saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Compensation 2: void the hold or refund the capture (resolving an unknown authorization first by asking
    /// again with the same key), then end the order CANCELLED.
    async fn cancel_payment(&self, job: StepJob) -> Result<(), StepError> {
        let Some(Opened {
            mut tx,
            order,
            log_id,
        }) = self.open(Step::CancelPayment, job).await?
        else {
            return Ok(());
        };
        failpoints::crash("worker.cancel_payment.before", &order.customer_id)?;
        let open = payment::find(&mut *tx, order.id)
            .await?
            .filter(|p| pay::OPEN.contains(&p.status.as_str()));
        let Some(payment) = open else {
            order::transition(&mut tx, &order, Transition::FinishCancel, None, None).await?;
            saga::finish(&mut *tx, log_id, log::SUCCEEDED, Some("no money held")).await?;
            tx.commit().await?;
            return Ok(());
        };
        tx.commit().await?;

        let (to, provider_ref) = self.undo_payment(&payment).await?;

        let Some((mut tx, order)) = self.relock(order.id).await? else {
            return Ok(());
        };
        if order.status() != OrderStatus::Cancelling {
            return Ok(()); // Another run of this job finished it first.
        }
        payment::set_status(&mut *tx, order.id, &pay::OPEN, to, provider_ref.as_deref(), None).await?;
        order::transition(&mut tx, &order, Transition::FinishCancel, None, None).await?;
        saga::finish(&mut *tx, log_id, log::SUCCEEDED, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes sure no money stays held or taken. Returns the payment's final status and, when it was learned
    /// here, the provider reference.
    async fn undo_payment(&self, payment: &PaymentRow) -> Result<(&'static str, Option<String>), StepError> {
        // Compensations never give up on a rejection: they retry with backoff and leave the error visible.
        let retry = |e: ProviderError| match e {
            ProviderError::Transient(_) => StepError::Transient(e.into()),
            ProviderError::Rejected { .. } => {
                StepError::Transient(anyhow::Error::new(e).context("compensation rejected"))
            }
        };
        let order_id = payment.order_id;
        let (status, provider_ref) = if payment.status == pay::PENDING {
            // The authorization's outcome is unknown: repeat it with the same key and parameters; the
            // provider answers with what it did (or does it now), and we undo that.
            match self.payments.authorize(&authorize_request(payment)).await {
                Ok(Authorization::Authorized { provider_ref }) => (pay::AUTHORIZED, Some(provider_ref)),
                Ok(Authorization::Declined { provider_ref, .. }) => return Ok((pay::DECLINED, provider_ref)),
                Err(ProviderError::Rejected { .. }) => return Ok((pay::DECLINED, None)),
                Err(e) => return Err(retry(e)),
            }
        } else {
            (payment.status.as_str(), payment.provider_ref.clone())
        };
        let Some(reference) = provider_ref.as_deref() else {
            return Ok((pay::VOIDED, None));
        };
        if status != pay::CAPTURED {
            match self.payments.void(reference, &payment::void_key(order_id)).await {
                Ok(()) => return Ok((pay::VOIDED, provider_ref)),
                Err(ProviderError::Rejected {
                    intent_status: Some(s),
                    ..
                }) if s == "canceled" => return Ok((pay::VOIDED, provider_ref)),
                // Captured meanwhile (a capture raced the cancel): refund instead.
                Err(ProviderError::Rejected {
                    intent_status: Some(s),
                    ..
                }) if s == "succeeded" => {}
                Err(e) => return Err(retry(e)),
            }
        }
        match self
            .payments
            .refund(reference, &payment::refund_key(order_id))
            .await
        {
            Ok(()) => Ok((pay::REFUNDED, provider_ref)),
            Err(ProviderError::Rejected { code, .. }) if code == "charge_already_refunded" => {
                Ok((pay::REFUNDED, provider_ref))
            }
            Err(e) => Err(retry(e)),
        }
    }
}

/// Step-log notes of a step whose remote call was overtaken by a cancel.
pub(crate) const LEFT_RESERVED: &str = "order left RESERVED during the call";
pub(crate) const LEFT_PAID: &str = "order left PAID during the capture";

/// What `Saga::open` hands a step: its transaction, the locked order, and the attempt's log row.
struct Opened {
    tx: Transaction<'static, Postgres>,
    order: OrderRow,
    log_id: i64,
}

/// The authorization for a payment row: the same key and parameters every time, so a repeat is a replay.
fn authorize_request(payment: &PaymentRow) -> AuthorizeRequest<'_> {
    AuthorizeRequest {
        idempotency_key: &payment.idempotency_key,
        order_id: payment.order_id,
        amount: payment.amount,
        currency: &payment.currency,
        payment_method: &payment.payment_token,
    }
}

pub(crate) async fn enqueue_first(
    conn: &mut PgConnection,
    step: Step,
    order_id: Uuid,
) -> Result<(), StepError> {
    let job = StepJob {
        order_id,
        attempt: 1,
        trace: None,
    };
    jobs::enqueue(conn, step, job, None).await?;
    Ok(())
}
