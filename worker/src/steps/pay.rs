//! Pay (RESERVED → PAID): asks the provider for a hold of the order's total (an authorization with manual
//! capture); commit follows, or for a shipment order nothing: it waits in PAID, its hold asked for with
//! multicapture so that each shipment captures its part. The PENDING payment row commits with the attempt before the call, so a crash
//! mid-call leaves a row that says "ask the provider again with this key"; the key is derived from the order,
//! so a repeat is a replay, never a second hold. A decline starts the cancellation (`payment_declined`). An
//! order cancelled while the call was out keeps its hold recorded (AUTHORIZED), which cancel_payment voids.
//!
//! Asynchronous methods: an answer of `requires_action` (the customer must authenticate) or `processing` (a bank
//! settles later) is recorded as the payment's REQUIRES_ACTION or PROCESSING with its intent, the order stays
//! RESERVED with its stock held to the deadline (within `async_payment_max_hold`), and the step waits: its next
//! attempt is queued at the deadline (`async_payment_deadline` from when the authorization began), holding no
//! worker. The provider's webhook wakes it sooner (`provider_event`). Every later attempt asks where the intent
//! stands (a retrieve: a repeat of the create would only replay its first answer) and decides: authorized → PAID,
//! failed → the cancellation, a customer still not done past the deadline → the cancellation
//! (`payment_not_completed`), whose cancel_payment cancels the intent; a bank debit still processing → another
//! wait, since it cannot be cancelled.
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
use crate::provider::{Authorization, AuthorizeRequest, WaitingFor};
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

/// The step-log note of an authorization that came back after the order was cancelled.
const LEFT_RESERVED: &str = "order left RESERVED during the call";

/// How long past the deadline a waiting order's stock stays held: the deadline's attempt decides first, and the
/// reconciler's expiry is only for a saga no worker runs.
const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_secs(60);

/// What the provider said of the authorization, and until when the saga waits for an undecided one.
#[derive(Debug)]
pub(crate) struct Answered {
    verdict: Authorization,
    deadline: chrono::DateTime<chrono::Utc>,
}

pub(crate) struct Pay;

impl SagaStep for Pay {
    const STEP: Step = Step::Pay;
    /// The PENDING payment the authorization is for.
    type Call = PaymentRow;
    type Answer = Answered;

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

    async fn call(runner: &Runner, order: &OrderRow, payment: &PaymentRow) -> Result<Answered, StepError> {
        failpoints::crash("worker.pay.before_authorize", &order.customer_id)?;
        let verdict = match (payment.status.is_waiting(), &payment.provider_ref) {
            (true, Some(intent)) => runner.provider.retrieve_authorization(intent).await,
            _ => runner.provider.authorize(&authorize_request(payment)).await,
        }
        .map_err(StepError::from_provider)?;
        failpoints::abort("worker.pay.after_authorize", Some(&order.customer_id));
        let waits = chrono::Duration::from_std(runner.settings.async_payment_deadline).unwrap_or_default();
        Ok(Answered {
            verdict,
            deadline: payment.created_at + waits,
        })
    }

    async fn record(
        runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Answered)],
    ) -> Result<Vec<Ending>, StepError> {
        let now = chrono::Utc::now();
        let outcomes: Vec<Outcome> = answered
            .iter()
            .map(|(order, answer)| match &answer.verdict {
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
                // Recorded past the deadline too: the intent is what cancel_payment cancels.
                Authorization::Waiting { provider_ref, status } => Outcome {
                    order_id: order.id,
                    status: status.status(),
                    provider_ref: Some(provider_ref.clone()),
                    decline_code: None,
                },
            })
            .collect();
        payment::record(&mut *conn, &PaymentStatus::UNDECIDED, &outcomes).await?;
        Ok(answered
            .iter()
            .map(|(order, answer)| {
                let still_reserved = Self::STEP.runs_in(order.status);
                match (&answer.verdict, still_reserved) {
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
                    (Authorization::Waiting { status, .. }, true) => waiting(
                        *status,
                        answer.deadline,
                        now,
                        runner.settings.async_payment_deadline,
                        runner.settings.async_payment_max_hold,
                    ),
                    // Cancelled meanwhile: cancel_payment cancels the intent.
                    (Authorization::Waiting { .. }, false) => Ending::overtaken(LEFT_RESERVED),
                }
            })
            .collect())
    }
}

/// How an attempt whose authorization still waits ends: it waits on, to the deadline, with the stock held that
/// long (and [`DEADLINE_SLACK`] more, within `max_hold`); past the deadline, the order is cancelled.
///
/// A bank debit still processing at the deadline is not cancelled: the provider cannot cancel it (Stripe refuses
/// to cancel a `processing` intent), so cancelling the order would leave money on its way to a cancelled order.
/// The order waits another `period` instead, its stock held, and the debit's settlement (its webhook, or the
/// next look) decides.
fn waiting(
    status: WaitingFor,
    deadline: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    period: std::time::Duration,
    max_hold: std::time::Duration,
) -> Ending {
    let wait = |left: std::time::Duration, note: String| {
        Ending::waits(note, left).holding_stock_for((left + DEADLINE_SLACK).min(max_hold))
    };
    match ((deadline - now).to_std(), status) {
        (Ok(left), WaitingFor::Customer) if !left.is_zero() => wait(
            left,
            format!("waiting for the customer's action until {deadline}"),
        ),
        (_, WaitingFor::Customer) => Ending::cancel(
            CancelReason::PaymentNotCompleted,
            format!("the customer's action did not come by the deadline {deadline}"),
        ),
        (Ok(left), WaitingFor::Provider) if !left.is_zero() => wait(
            left,
            format!("waiting for the bank's settlement until {deadline}"),
        ),
        (_, WaitingFor::Provider) => wait(
            period,
            format!(
                "the bank's settlement did not come by {deadline}; waiting on, as it cannot be cancelled"
            ),
        ),
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
