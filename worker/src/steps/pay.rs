//! Pay (RESERVED → PAID): asks the provider for a hold of the order's total (an authorization with manual
//! capture); commit follows, or for a shipment order nothing: it waits in PAID, its hold asked for with
//! multicapture so that each shipment captures its part. The PENDING payment row commits with the attempt before the call, so a crash
//! mid-call leaves a row that says "ask the provider again with this key"; the key is derived from the order,
//! so a repeat is a replay, never a second hold. A decline starts the cancellation (`payment_declined`). An
//! order cancelled while the call was out keeps its hold recorded (AUTHORIZED), which cancel_payment voids.
//!
//! Failpoints: `worker.pay.start` (a transient failure before anything is written), `worker.pay.before_authorize`
//! (after the PENDING row committed, before the call), `worker.pay.after_authorize` (aborts the process after the
//! provider authorized, before anything is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{CancelReason, OrderRow};
use orderflow_shared::payment::{self, Outcome, PaymentRow, PaymentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::{Authorization, AuthorizeRequest};
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

/// The step-log note of an authorization that came back after the order was cancelled.
const LEFT_RESERVED: &str = "order left RESERVED during the call";

pub(crate) struct Pay;

impl SagaStep for Pay {
    const STEP: Step = Step::Pay;
    /// The PENDING payment the authorization is for.
    type Call = PaymentRow;
    type Answer = Authorization;

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<PaymentRow>>, StepError> {
        let mut decisions: Vec<Option<Decision<PaymentRow>>> = orders
            .iter()
            .map(|order| {
                failpoints::crash("worker.pay.start", &order.customer_id)
                    .err()
                    .map(Decision::Fail)
            })
            .collect();
        let paying: Vec<&OrderRow> = orders
            .iter()
            .zip(&decisions)
            .filter(|(_, decided)| decided.is_none())
            .map(|(order, _)| *order)
            .collect();
        let mut payments: HashMap<Uuid, PaymentRow> = payment::begin_authorizations(&mut *conn, &paying)
            .await?
            .into_iter()
            .map(|p| (p.order_id, p))
            .collect();
        Ok(orders
            .iter()
            .zip(decisions.iter_mut())
            .map(|(order, decided)| {
                decided
                    .take()
                    .unwrap_or_else(|| match payments.remove(&order.id) {
                        Some(payment) => Decision::Call(payment),
                        None => Decision::Fail(StepError::Transient(anyhow!(
                            "the PENDING payment row is missing"
                        ))),
                    })
            })
            .collect())
    }

    async fn call(
        runner: &Runner,
        order: &OrderRow,
        payment: &PaymentRow,
    ) -> Result<Authorization, StepError> {
        failpoints::crash("worker.pay.before_authorize", &order.customer_id)?;
        let verdict = runner
            .provider
            .authorize(&authorize_request(payment))
            .await
            .map_err(StepError::from_provider)?;
        failpoints::abort("worker.pay.after_authorize", Some(&order.customer_id));
        Ok(verdict)
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Authorization)],
    ) -> Result<Vec<Ending>, StepError> {
        let outcomes: Vec<Outcome> = answered
            .iter()
            .map(|(order, verdict)| match verdict {
                Authorization::Authorized { provider_ref } => Outcome {
                    order_id: order.id,
                    status: PaymentStatus::Authorized,
                    provider_ref: Some(provider_ref.clone()),
                    decline_code: None,
                },
                Authorization::Declined { provider_ref, code } => Outcome {
                    order_id: order.id,
                    status: PaymentStatus::Declined,
                    provider_ref: provider_ref.clone(),
                    decline_code: Some(code.clone()),
                },
            })
            .collect();
        payment::record(&mut *conn, &[PaymentStatus::Pending], &outcomes).await?;
        Ok(answered
            .iter()
            .map(|(order, verdict)| {
                let still_reserved = Self::STEP.runs_in(order.status);
                match (verdict, still_reserved) {
                    (Authorization::Authorized { .. }, true) => {
                        Ending::succeeded(Self::STEP).then(Self::STEP.next_for(order.fulfilment))
                    }
                    // Cancelled while the call was out: cancel_payment voids this hold.
                    (Authorization::Authorized { .. }, false) => Ending::overtaken(LEFT_RESERVED),
                    (Authorization::Declined { code, .. }, true) => {
                        Ending::cancel(CancelReason::PaymentDeclined, format!("declined: {code}"))
                    }
                    (Authorization::Declined { code, .. }, false) => {
                        Ending::failed(format!("declined: {code}"), None)
                    }
                }
            })
            .collect())
    }
}

/// The authorization for a payment row: the same key and parameters every time, so a repeat is a replay.
pub(crate) fn authorize_request(payment: &PaymentRow) -> AuthorizeRequest<'_> {
    AuthorizeRequest {
        idempotency_key: &payment.idempotency_key,
        order_id: payment.order_id,
        amount: payment.amount,
        currency: &payment.currency,
        payment_method: &payment.payment_token,
        multicapture: payment.multicapture,
        off_session: false,
    }
}
