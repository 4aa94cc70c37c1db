//! The saga's steps. Each one locks the order row first and does nothing unless the order is in the state the
//! step expects, so a job that runs twice (apalis re-runs a job whose ack was lost) changes nothing the second
//! time. A step's local writes, its transition event and the next job commit in one transaction; a step with
//! a remote side effect (the payment provider) commits its step-log row first, calls out, then records the
//! outcome in a second transaction.

use std::time::Duration;

use anyhow::anyhow;
use orderflow_shared::jobs::{self, Step, StepJob};
use orderflow_shared::order::{self, CancelReason, OrderRow, OrderStatus, Transition};
use orderflow_shared::payment::{self, status as pay};
use orderflow_shared::settings::WorkerSettings;
use orderflow_shared::{inventory, saga};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::StepError;
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
    /// permanent one (or an exhausted budget) starts compensation. An `Err` here means even that could not be
    /// written; apalis then runs the job again.
    #[tracing::instrument(skip_all, fields(order_id = %job.order_id, step = step.name(), attempt = job.attempt), err)]
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
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::debug!(elapsed_ms, "step done");
                Ok(())
            }
            Err(StepError::Transient(error))
                if step.is_compensation() || job.attempt < self.settings.max_step_attempts =>
            {
                tracing::warn!(
                    elapsed_ms,
                    error = format!("{error:#}"),
                    "step failed; retrying later"
                );
                self.retry_later(step, job, &error).await
            }
            Err(StepError::Transient(error)) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "step retries exhausted; compensating"
                );
                let reason = match step {
                    Step::Pay | Step::Commit => CancelReason::PaymentFailed,
                    _ => CancelReason::StepFailed,
                };
                self.compensate(step, job, reason, &error).await
            }
            Err(StepError::Permanent { reason, error }) => {
                tracing::warn!(
                    reason = reason.as_str(),
                    error = format!("{error:#}"),
                    "step failed for good; compensating"
                );
                self.compensate(step, job, reason, &error).await
            }
        }
    }

    /// Delay before attempt `attempt + 1`: base × 2^(attempt−1), capped, with up to 20% jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base_delay.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.settings.retry_max_delay.as_millis() as u64);
        let jitter = rand::random_range(0..=capped / 5 + 1);
        Duration::from_millis(capped + jitter)
    }

    async fn retry_later(&self, step: Step, job: StepJob, error: &anyhow::Error) -> Result<(), StepError> {
        let message = format!("{error:#}");
        let mut tx = self.pool.begin().await?;
        close_open_attempts(&mut tx, job, step, &self.instance, &message).await?;
        order::set_last_error(&mut *tx, job.order_id, &format!("{}: {message}", step.name())).await?;
        let next = StepJob {
            order_id: job.order_id,
            attempt: job.attempt + 1,
        };
        jobs::enqueue(&mut tx, step, next, Some(self.backoff(job.attempt))).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts compensation for a failed forward step: CANCELLING with `reason`, then the release job. A failed
    /// compensation step only records its error: compensation steps retry (see `run`), never compensate.
    async fn compensate(
        &self,
        step: Step,
        job: StepJob,
        reason: CancelReason,
        error: &anyhow::Error,
    ) -> Result<(), StepError> {
        let message = format!("{error:#}");
        let mut tx = self.pool.begin().await?;
        close_open_attempts(&mut tx, job, step, &self.instance, &message).await?;
        order::set_last_error(&mut *tx, job.order_id, &format!("{}: {message}", step.name())).await?;
        let Some(order) = order::lock(&mut tx, job.order_id).await? else {
            tx.commit().await?;
            return Ok(());
        };
        if matches!(
            order.status(),
            OrderStatus::Created | OrderStatus::Reserved | OrderStatus::Paid
        ) {
            order::transition(
                &mut tx,
                &order,
                Transition::StartCancel(reason),
                Some(Step::ReleaseInventory.name()),
                None,
            )
            .await?;
            enqueue_first(&mut tx, Step::ReleaseInventory, job.order_id).await?;
        } else {
            tracing::warn!(status = %order.status(), "cannot compensate from this status; left as is");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Locks the order and returns it if it is in `expected`; otherwise the step has nothing to do.
    async fn lock_in(
        &self,
        conn: &mut PgConnection,
        order_id: Uuid,
        expected: OrderStatus,
    ) -> Result<Option<OrderRow>, StepError> {
        let Some(order) = order::lock(conn, order_id).await? else {
            tracing::warn!("job for an order that does not exist; dropped");
            return Ok(None);
        };
        if order.status() != expected {
            tracing::debug!(status = %order.status(), expected = %expected, "order not in the step's state; nothing to do");
            return Ok(None);
        }
        Ok(Some(order))
    }

    /// Reserve: hold every line's stock, all or nothing, then queue payment; out of stock cancels at once.
    async fn reserve(&self, job: StepJob) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = self.lock_in(&mut tx, job.order_id, OrderStatus::Created).await? else {
            return Ok(());
        };
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::Reserve.name(),
            job.attempt,
            Some(Step::ReleaseInventory.name()),
            &self.instance,
        )
        .await?;
        let lines: Vec<(String, i64)> = order::lines(&mut *tx, order.id)
            .await?
            .into_iter()
            .map(|l| (l.sku, l.quantity))
            .collect();
        match inventory::reserve(&mut tx, order.id, &lines).await? {
            inventory::ReserveOutcome::Reserved => {
                order::transition(&mut tx, &order, Transition::Reserve, Some(Step::Pay.name()), None).await?;
                enqueue_first(&mut tx, Step::Pay, order.id).await?;
                saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
            }
            inventory::ReserveOutcome::OutOfStock => {
                order::transition(&mut tx, &order, Transition::RejectOutOfStock, None, None).await?;
                saga::finish(&mut *tx, step_id, "FAILED", Some("out of stock")).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pay: write PENDING and the step log, authorize a hold with the order's key, then record the verdict.
    async fn pay(&self, job: StepJob) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = self.lock_in(&mut tx, job.order_id, OrderStatus::Reserved).await? else {
            return Ok(());
        };
        let payment = payment::begin_authorization(
            &mut *tx,
            order.id,
            order.total,
            &order.currency,
            &order.payment_token,
        )
        .await?;
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::Pay.name(),
            job.attempt,
            Some(Step::CancelPayment.name()),
            &self.instance,
        )
        .await?;
        tx.commit().await?;

        failpoint_crash("worker.pay.before_authorize", &order.customer_id)?;
        let verdict = self
            .payments
            .authorize(&AuthorizeRequest {
                idempotency_key: &payment.idempotency_key,
                order_id: order.id,
                amount: payment.amount,
                currency: &payment.currency,
                payment_method: &payment.payment_token,
            })
            .await
            .map_err(StepError::from_provider)?;

        let mut tx = self.pool.begin().await?;
        let Some(order) = order::lock(&mut tx, order.id).await? else {
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
                    saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
                } else {
                    // Cancelled while the call was out; the cancel_payment compensation voids this hold.
                    saga::finish(
                        &mut *tx,
                        step_id,
                        "SKIPPED",
                        Some("order left RESERVED during the call"),
                    )
                    .await?;
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
                saga::finish(&mut *tx, step_id, "FAILED", Some(&format!("declined: {code}"))).await?;
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
        let mut tx = self.pool.begin().await?;
        let Some(order) = self.lock_in(&mut tx, job.order_id, OrderStatus::Paid).await? else {
            return Ok(());
        };
        failpoint_crash("worker.commit.before", &order.customer_id)?;
        let Some(payment) = payment::find(&mut *tx, order.id).await? else {
            return Err(StepError::permanent(
                CancelReason::StepFailed,
                anyhow!("a PAID order has no payment row"),
            ));
        };
        if payment.status == pay::CAPTURED {
            return Ok(()); // This job already ran to the end; its transaction queued fulfil.
        }
        let Some(provider_ref) = payment.provider_ref.clone() else {
            return Err(StepError::permanent(
                CancelReason::PaymentFailed,
                anyhow!("the hold has no provider reference"),
            ));
        };
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::Commit.name(),
            job.attempt,
            Some(Step::ReleaseInventory.name()),
            &self.instance,
        )
        .await?;
        if failpoint_hit("worker.commit.inventory", &order.customer_id) {
            return Err(StepError::permanent(
                CancelReason::InventoryCommitFailed,
                anyhow!("failpoint worker.commit.inventory"),
            ));
        }
        inventory::commit(&mut tx, order.id).await?;
        tx.commit().await?;

        let captured = self
            .payments
            .capture(&provider_ref, &payment::capture_key(order.id))
            .await;
        let captured = match captured {
            Ok(()) => Ok(()),
            // A repeat after a lost answer: the intent already moved to succeeded, which is what we wanted.
            Err(ProviderError::Rejected {
                intent_status: Some(status),
                ..
            }) if status == "succeeded" => Ok(()),
            Err(e) => Err(StepError::from_provider(e)),
        };
        captured?;

        let mut tx = self.pool.begin().await?;
        let Some(order) = order::lock(&mut tx, order.id).await? else {
            return Ok(());
        };
        payment::set_status(&mut *tx, order.id, &[pay::AUTHORIZED], pay::CAPTURED, None, None).await?;
        if order.status() == OrderStatus::Paid {
            set_current_step(&mut tx, order.id, Step::Fulfil).await?;
            enqueue_first(&mut tx, Step::Fulfil, order.id).await?;
            saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
        } else {
            // Cancelled while capturing: cancel_payment sees CAPTURED and refunds.
            saga::finish(
                &mut *tx,
                step_id,
                "SKIPPED",
                Some("order left PAID during the capture"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Fulfil: the money is captured and the stock committed; the order is done.
    async fn fulfil(&self, job: StepJob) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = self.lock_in(&mut tx, job.order_id, OrderStatus::Paid).await? else {
            return Ok(());
        };
        failpoint_crash("worker.fulfil.before", &order.customer_id)?;
        let captured = payment::find(&mut *tx, order.id)
            .await?
            .is_some_and(|p| p.status == pay::CAPTURED);
        if !captured {
            return Err(StepError::Transient(anyhow!(
                "fulfil ran before the capture was recorded"
            )));
        }
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::Fulfil.name(),
            job.attempt,
            None,
            &self.instance,
        )
        .await?;
        order::transition(&mut tx, &order, Transition::Fulfil, None, None).await?;
        saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Compensation 1: give back the stock (reserved or committed), then queue the payment compensation.
    async fn release_inventory(&self, job: StepJob) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = self
            .lock_in(&mut tx, job.order_id, OrderStatus::Cancelling)
            .await?
        else {
            return Ok(());
        };
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::ReleaseInventory.name(),
            job.attempt,
            None,
            &self.instance,
        )
        .await?;
        let released = inventory::release(&mut tx, order.id).await?;
        tracing::info!(released, "stock released");
        set_current_step(&mut tx, order.id, Step::CancelPayment).await?;
        enqueue_first(&mut tx, Step::CancelPayment, order.id).await?;
        saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Compensation 2: void the hold or refund the capture (resolving an unknown authorization first by asking
    /// again with the same key), then end the order CANCELLED.
    async fn cancel_payment(&self, job: StepJob) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = self
            .lock_in(&mut tx, job.order_id, OrderStatus::Cancelling)
            .await?
        else {
            return Ok(());
        };
        let payment = payment::find(&mut *tx, order.id).await?;
        let open = payment
            .as_ref()
            .filter(|p| matches!(p.status.as_str(), pay::PENDING | pay::AUTHORIZED | pay::CAPTURED));
        let Some(payment) = open.cloned() else {
            order::transition(&mut tx, &order, Transition::FinishCancel, None, None).await?;
            tx.commit().await?;
            return Ok(());
        };
        let step_id = saga::start(
            &mut *tx,
            order.id,
            Step::CancelPayment.name(),
            job.attempt,
            None,
            &self.instance,
        )
        .await?;
        tx.commit().await?;

        let outcome = self.undo_payment(&payment).await?;

        let mut tx = self.pool.begin().await?;
        let Some(order) = self
            .lock_in(&mut tx, job.order_id, OrderStatus::Cancelling)
            .await?
        else {
            return Ok(());
        };
        let (to, provider_ref) = outcome;
        let from = [pay::PENDING, pay::AUTHORIZED, pay::CAPTURED];
        payment::set_status(&mut *tx, order.id, &from, to, provider_ref.as_deref(), None).await?;
        order::transition(&mut tx, &order, Transition::FinishCancel, None, None).await?;
        saga::finish(&mut *tx, step_id, "SUCCEEDED", None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes sure no money stays held or taken. Returns the payment's final status and, when it was learned
    /// here, the provider reference.
    async fn undo_payment(
        &self,
        payment: &payment::PaymentRow,
    ) -> Result<(&'static str, Option<String>), StepError> {
        let transient = |e: ProviderError| match e {
            ProviderError::Transient(_) => StepError::Transient(e.into()),
            // Compensations never give up on a rejection: they retry with backoff and leave the error visible.
            ProviderError::Rejected { .. } => {
                StepError::Transient(anyhow::Error::new(e).context("compensation rejected"))
            }
        };
        let order_id = payment.order_id;
        let (status, provider_ref) = match payment.status.as_str() {
            pay::PENDING => {
                // The authorization's outcome is unknown: repeat it with the same key and parameters; the
                // provider answers with what it did (or does it now), and we undo that.
                let verdict = self
                    .payments
                    .authorize(&AuthorizeRequest {
                        idempotency_key: &payment.idempotency_key,
                        order_id,
                        amount: payment.amount,
                        currency: &payment.currency,
                        payment_method: &payment.payment_token,
                    })
                    .await;
                match verdict {
                    Ok(Authorization::Authorized { provider_ref }) => ("AUTHORIZED", Some(provider_ref)),
                    Ok(Authorization::Declined { provider_ref, .. }) => {
                        return Ok((pay::DECLINED, provider_ref));
                    }
                    Err(ProviderError::Rejected { .. }) => return Ok((pay::DECLINED, None)),
                    Err(e) => return Err(transient(e)),
                }
            }
            other => (other, payment.provider_ref.clone()),
        };
        let Some(reference) = provider_ref.clone() else {
            return Ok((pay::VOIDED, None));
        };
        if status == pay::CAPTURED {
            return self
                .refund(order_id, &reference)
                .await
                .map(|s| (s, provider_ref))
                .map_err(transient);
        }
        match self.payments.void(&reference, &payment::void_key(order_id)).await {
            Ok(()) => Ok((pay::VOIDED, provider_ref)),
            Err(ProviderError::Rejected {
                intent_status: Some(s),
                ..
            }) if s == "canceled" => Ok((pay::VOIDED, provider_ref)),
            // Captured meanwhile (a capture raced the cancel): refund instead.
            Err(ProviderError::Rejected {
                intent_status: Some(s),
                ..
            }) if s == "succeeded" => self
                .refund(order_id, &reference)
                .await
                .map(|s| (s, provider_ref))
                .map_err(transient),
            Err(e) => Err(transient(e)),
        }
    }

    async fn refund(&self, order_id: Uuid, reference: &str) -> Result<&'static str, ProviderError> {
        match self
            .payments
            .refund(reference, &payment::refund_key(order_id))
            .await
        {
            Ok(()) => Ok(pay::REFUNDED),
            Err(ProviderError::Rejected { code, .. }) if code == "charge_already_refunded" => {
                Ok(pay::REFUNDED)
            }
            Err(e) => Err(e),
        }
    }
}

async fn enqueue_first(conn: &mut PgConnection, step: Step, order_id: Uuid) -> Result<(), StepError> {
    jobs::enqueue(conn, step, StepJob { order_id, attempt: 1 }, None).await?;
    Ok(())
}

async fn set_current_step(conn: &mut PgConnection, order_id: Uuid, step: Step) -> Result<(), sqlx::Error> {
    sqlx::query("update orders set current_step = $2, updated_at = now() where id = $1")
        .bind(order_id)
        .bind(step.name())
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks this attempt's STARTED log rows FAILED (or writes a FAILED row if its transaction never committed).
async fn close_open_attempts(
    conn: &mut PgConnection,
    job: StepJob,
    step: Step,
    instance: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let closed = sqlx::query(
        r#"update saga_steps set status = 'FAILED', error = $4, finished_at = now()
           where order_id = $1 and step = $2 and attempt = $3 and status = 'STARTED'"#,
    )
    .bind(job.order_id)
    .bind(step.name())
    .bind(i32::try_from(job.attempt).unwrap_or(i32::MAX))
    .bind(error)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if closed == 0 {
        let id = saga::start(&mut *conn, job.order_id, step.name(), job.attempt, None, instance).await?;
        saga::finish(&mut *conn, id, "FAILED", Some(error)).await?;
    }
    Ok(())
}

/// True when failpoint `name` is configured as `return(<customer_id>)` for this order's customer. Scoping by
/// customer lets one test fail one order while others in the same process run normally.
fn failpoint_hit(name: &str, customer_id: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |arg| arg).flatten().as_deref() == Some(customer_id)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, customer_id);
        false
    }
}

/// A failpoint that simulates the step dying at this point (a transient failure of this attempt).
fn failpoint_crash(name: &str, customer_id: &str) -> Result<(), StepError> {
    if failpoint_hit(name, customer_id) {
        return Err(StepError::Transient(anyhow!("failpoint {name}")));
    }
    Ok(())
}
