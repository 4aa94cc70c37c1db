//! Cancel payment (CANCELLING → CANCELLED), the last compensation: makes sure no money stays held or taken.
//! A hold is voided (or refunded, if a capture won the race), a capture refunded; a PENDING authorization (its
//! outcome unknown) is first asked again with the same key, so the provider says what it did, and that is undone.
//! A DECLINED payment's intent is cancelled too: a declined intent (`requires_payment_method`, a card declined or
//! a 3-D Secure abandoned) could otherwise still be confirmed with another card from the customer's browser,
//! placing a hold on a cancelled order. Every call carries a key derived from the order, so repeats are replays. A compensation never gives up on a
//! rejection: it retries with backoff and, out of attempts, parks the saga in NEEDS_ATTENTION for an operator.
//!
//! Failpoint: `worker.cancel_payment.before` (a transient failure, nothing written).

use std::collections::HashMap;

use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::OrderRow;
use orderflow_shared::payment::{self, Outcome, PaymentRow, PaymentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::{Authorization, ProviderError};
use crate::runner::Runner;
use crate::steps::pay::authorize_request;
use crate::steps::{Decision, SagaStep};

pub(crate) struct CancelPayment;

/// Where the money ended: the payment's final status and, when it was learned here, its provider reference.
#[derive(Debug)]
pub(crate) struct Undone {
    status: PaymentStatus,
    provider_ref: Option<String>,
}

impl SagaStep for CancelPayment {
    const STEP: Step = Step::CancelPayment;
    /// The payment that may still hold or have taken money.
    type Call = PaymentRow;
    type Answer = Undone;

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<PaymentRow>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let mut open: HashMap<Uuid, PaymentRow> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .filter(|p| {
                p.status.is_open() || (p.status == PaymentStatus::Declined && p.provider_ref.is_some())
            })
            .map(|p| (p.order_id, p))
            .collect();
        Ok(orders
            .iter()
            .map(|order| {
                if let Err(error) = failpoints::crash("worker.cancel_payment.before", &order.customer_id) {
                    return Decision::Fail(error);
                }
                match open.remove(&order.id) {
                    Some(payment) => Decision::Call(payment),
                    None => Decision::End(Ending::succeeded(Self::STEP).with_note("no money held")),
                }
            })
            .collect())
    }

    async fn call(runner: &Runner, _order: &OrderRow, payment: &PaymentRow) -> Result<Undone, StepError> {
        undo(runner, payment).await
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Undone)],
    ) -> Result<Vec<Ending>, StepError> {
        let still_cancelling = |order: &OrderRow| Self::STEP.runs_in(order.status);
        let outcomes: Vec<Outcome> = answered
            .iter()
            .filter(|(order, _)| still_cancelling(order))
            .map(|(order, undone)| Outcome {
                order_id: order.id,
                status: undone.status,
                provider_ref: undone.provider_ref.clone(),
                decline_code: None,
            })
            .collect();
        payment::record(&mut *conn, &PaymentStatus::OPEN, &outcomes).await?;
        Ok(answered
            .iter()
            .map(|(order, _)| {
                if still_cancelling(order) {
                    Ending::succeeded(Self::STEP)
                } else {
                    Ending::overtaken("order left CANCELLING while the call was out")
                }
            })
            .collect())
    }
}

/// Makes sure no money stays held or taken by `payment`.
async fn undo(runner: &Runner, payment: &PaymentRow) -> Result<Undone, StepError> {
    // Compensations never give up on a rejection: they retry with backoff and leave the error visible.
    let retry = |e: ProviderError| match e {
        ProviderError::Transient(_) => StepError::Transient(e.into()),
        ProviderError::Rejected { .. } => {
            StepError::Transient(anyhow::Error::new(e).context("compensation rejected"))
        }
    };
    let undone = |status, provider_ref| Ok(Undone { status, provider_ref });
    let order_id = payment.order_id;
    if let (PaymentStatus::Processing, Some(reference)) = (payment.status, payment.provider_ref.as_deref()) {
        // A bank debit on its way cannot be cancelled, and a refused cancel would be replayed under its key
        // forever: ask first, and void only once it has settled.
        let now = runner
            .provider
            .retrieve_authorization(reference)
            .await
            .map_err(retry)?;
        if let Authorization::Waiting { .. } = now {
            return Err(StepError::Transient(anyhow::anyhow!(
                "the bank debit is still processing: it can be voided once it settles"
            )));
        }
    }
    if let (PaymentStatus::Declined, Some(reference)) = (payment.status, payment.provider_ref.as_deref()) {
        // Nothing is held; the intent is closed so that nothing can be, and the payment stays DECLINED.
        return match runner
            .provider
            .void(reference, &payment::void_key(order_id))
            .await
        {
            Ok(()) | Err(ProviderError::Rejected { .. }) => {
                undone(PaymentStatus::Declined, payment.provider_ref.clone())
            }
            Err(e) => Err(retry(e)),
        };
    }
    let (status, provider_ref) = if payment.status == PaymentStatus::Pending {
        // The authorization's outcome is unknown: repeat it with the same key and parameters; the provider
        // answers with what it did (or does it now), and we undo that.
        match runner.provider.authorize(&authorize_request(payment)).await {
            Ok(Authorization::Authorized { provider_ref }) => (PaymentStatus::Authorized, Some(provider_ref)),
            // Waiting for the customer or the bank: cancelling the intent ends that too.
            Ok(Authorization::Waiting { provider_ref, status }) => (status.status(), Some(provider_ref)),
            Ok(Authorization::Declined { provider_ref, .. }) => {
                return undone(PaymentStatus::Declined, provider_ref);
            }
            Err(ProviderError::Rejected { .. }) => return undone(PaymentStatus::Declined, None),
            Err(e) => return Err(retry(e)),
        }
    } else {
        (payment.status, payment.provider_ref.clone())
    };
    let Some(reference) = provider_ref.as_deref() else {
        return undone(PaymentStatus::Voided, None);
    };
    if status != PaymentStatus::Captured {
        match runner
            .provider
            .void(reference, &payment::void_key(order_id))
            .await
        {
            Ok(()) => return undone(PaymentStatus::Voided, provider_ref),
            Err(ProviderError::Rejected {
                intent_status: Some(s),
                ..
            }) if s == "canceled" => return undone(PaymentStatus::Voided, provider_ref),
            // Captured meanwhile (a capture raced the cancel): refund instead.
            Err(ProviderError::Rejected {
                intent_status: Some(s),
                ..
            }) if s == "succeeded" => {}
            Err(e) => return Err(retry(e)),
        }
    }
    match runner
        .provider
        .refund(reference, &payment::refund_key(order_id))
        .await
    {
        Ok(()) => undone(PaymentStatus::Refunded, provider_ref),
        Err(ProviderError::Rejected { code, .. }) if code == "charge_already_refunded" => {
            undone(PaymentStatus::Refunded, provider_ref)
        }
        Err(e) => Err(retry(e)),
    }
}
