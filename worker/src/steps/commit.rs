//! Commit (PAID; the order stays PAID until fulfil): phase two of the reservation (the units leave `on_hand`),
//! then the capture of the hold; fulfil follows. The stock commit commits with the attempt before the capture;
//! the capture's key is derived from the order, so a repeat (a crash after the capture, before it was recorded)
//! is a replay. A capture made while the order was being cancelled is recorded (CAPTURED) and cancel_payment
//! refunds it. A re-run after the capture was recorded finds nothing to do.
//!
//! When commit fails, it is retried with backoff; out of attempts, or failing for good (the inventory commit, the
//! provider refusing), the saga is cancelled (see `flow::after_failure`): release_inventory restocks the units,
//! cancel_payment voids the hold or refunds the capture.
//!
//! Failpoints: `worker.commit.before` (a transient failure, nothing written), `worker.commit.inventory` (the
//! inventory commit fails for good), `worker.commit.after_capture` (aborts the process after the capture, before
//! it is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory;
use orderflow_shared::order::{CancelReason, OrderRow};
use orderflow_shared::payment::{self, Outcome, PaymentRow, PaymentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::ProviderError;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

/// The step-log note of a capture that went through after the order was cancelled.
const LEFT_PAID: &str = "order left PAID during the capture";

pub(crate) struct Commit;

impl SagaStep for Commit {
    const STEP: Step = Step::Commit;
    /// The hold's provider reference.
    type Call = String;
    type Answer = ();

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<String>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let payments: HashMap<Uuid, PaymentRow> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .map(|p| (p.order_id, p))
            .collect();
        let decisions: Vec<Decision<String>> = orders
            .iter()
            .map(|order| {
                if let Err(error) = failpoints::crash("worker.commit.before", &order.customer_id) {
                    return Decision::Fail(error);
                }
                let Some(payment) = payments.get(&order.id) else {
                    return Decision::Fail(StepError::permanent(
                        CancelReason::StepFailed,
                        anyhow!("a PAID order has no payment row"),
                    ));
                };
                if payment.status == PaymentStatus::Captured {
                    // An earlier run captured and queued fulfil in the same transaction.
                    return Decision::Skip;
                }
                let Some(provider_ref) = payment.provider_ref.clone() else {
                    return Decision::Fail(StepError::permanent(
                        CancelReason::PaymentFailed,
                        anyhow!("the hold has no provider reference"),
                    ));
                };
                if failpoints::hit("worker.commit.inventory", Some(&order.customer_id)) {
                    return Decision::Fail(StepError::permanent(
                        CancelReason::InventoryCommitFailed,
                        anyhow!("failpoint worker.commit.inventory"),
                    ));
                }
                Decision::Call(provider_ref)
            })
            .collect();
        let committing: Vec<Uuid> = orders
            .iter()
            .zip(&decisions)
            .filter(|(_, decision)| matches!(decision, Decision::Call(_)))
            .map(|(order, _)| order.id)
            .collect();
        if !committing.is_empty() {
            inventory::commit_many(conn, &committing).await?;
        }
        Ok(decisions)
    }

    /// Captures the hold (a repeat is harmless: same key).
    async fn call(runner: &Runner, order: &OrderRow, provider_ref: &String) -> Result<(), StepError> {
        match runner
            .provider
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

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &())],
    ) -> Result<Vec<Ending>, StepError> {
        let captured: Vec<Outcome> = answered
            .iter()
            .map(|(order, _)| Outcome {
                order_id: order.id,
                status: PaymentStatus::Captured,
                provider_ref: None,
                decline_code: None,
            })
            .collect();
        payment::record(&mut *conn, &[PaymentStatus::Authorized], &captured).await?;
        Ok(answered
            .iter()
            .map(|(order, _)| {
                if Self::STEP.runs_in(order.status) {
                    Ending::succeeded(Self::STEP)
                } else {
                    // Cancelled while capturing: cancel_payment sees CAPTURED and refunds.
                    Ending::overtaken(LEFT_PAID)
                }
            })
            .collect())
    }
}
