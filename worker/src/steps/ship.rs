//! Ship (a shipment order, PAID or PARTIALLY_FULFILLED → PARTIALLY_FULFILLED): the order's oldest shipment on its
//! way (`orderflow_shared::shipment`). The first transaction fixes its capture (amount, and whether it is the
//! final one) and commits the attempt as STARTED with it; the call captures that part of the hold under the
//! shipment's own key; the second transaction records the capture and, in the same statement, takes the shipped
//! units out of stock, so no unit leaves stock without its capture on record. A crash anywhere re-runs the
//! capture under the same key, which the provider answers as before, never capturing twice. After it: ship again
//! for the next shipment on its way, fulfil once nothing is left to ship, refund for a refund asked meanwhile, or
//! nothing (the order waits): `pending::Pending::next_step`.
//!
//! A capture the provider refuses for good is an answer like another: the record fails the shipment (nothing
//! shipped, its units stay reserved; `order.shipment_failed`) and the order stays where it was. An unknown outcome
//! is a failure, retried under the same key for as long as it takes (`flow::after_failure`). A repeat of a run
//! that recorded its shipment already (a job run twice) finds nothing CAPTURING and writes nothing.
//!
//! A hold that lapsed (the provider cancelled it after its lifetime, about seven days for a card: the capture is
//! refused with the intent `canceled`, or `succeeded` keeping what earlier shipments captured, and its charge's
//! `capture_before` is past) is not a refusal of the shipment (a hold cancelled before its time, by someone at the
//! provider, is, and is not authorized again behind their back): the same call authorizes what is left to capture (the order's total less what its shipments
//! captured) as a new PaymentIntent under the key of the order's next authorization
//! (`payment::reauthorization_key`), then captures the shipment from it under a key of its own. Both keys and the
//! amount are derived from rows that do not change while the shipment is CAPTURING, so a crash anywhere in it
//! repeats both as replays. The record keeps the new authorization on the payment row in the same transaction as
//! the capture (`payment::record_reauthorizations`). The re-authorization is asked `off_session` (the customer
//! is not there). A declined (or refused) re-authorization fails the shipment with the reason `authorization
//! lapsed; re-authorization declined: <code>`, kept on the order for operators (`last_error`); the payment row
//! is DECLINED (the reconciler counts such orders), the order stays where it was with its units reserved, and
//! its next shipment asks a new authorization under a key of its own (a decline that was the bank's mood, not the
//! card's end, may pass), or a cancel releases the rest.
//!
//! Failpoints: `worker.ship.start` (a transient failure before anything is written), `worker.ship.before_capture`
//! (aborts the process after the attempt and the shipment's CAPTURING committed, before the call),
//! `worker.ship.after_reauthorize` (aborts the process after a re-authorization, before the capture from it),
//! `worker.ship.after_capture` (aborts the process after the provider captured, before anything is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{CancelReason, OrderRow, OrderStatus, Transition};
use orderflow_shared::payment::{self, Outcome, PaymentRow, PaymentStatus, Reauthorization};
use orderflow_shared::pending;
use orderflow_shared::refund;
use orderflow_shared::shipment::{self, ShipmentRow, ShipmentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::{Authorization, AuthorizeRequest, ProviderError};
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct Ship;

/// What the provider answered the capture of `shipment` (as it was fixed before the call).
#[derive(Debug)]
pub(crate) struct Captured {
    shipment: ShipmentRow,
    /// The hold the capture drew on (a re-authorization's, when one was made).
    intent: String,
    /// `Err`: refused for good (a voided hold, a wrong amount, a declined re-authorization), in words for people.
    outcome: Result<(), String>,
    /// The re-authorization the call made because the hold had lapsed, to be kept on the payment row.
    reauthorized: Option<Reauthorization>,
}

impl Captured {
    /// Whether the shipment failed because the hold lapsed and could not be made again: a dead end only an
    /// operator (or the customer's new card) can see to.
    fn lapsed_for_good(&self) -> bool {
        self.outcome.is_err()
            && self
                .reauthorized
                .as_ref()
                .is_some_and(|r| r.decline_code.is_some())
    }
}

/// How the failure of a shipment whose hold lapsed and could not be authorized again begins.
const LAPSED: &str = "authorization lapsed";

/// The payment statuses a shipment goes on from: an open hold (captured from), or a declined re-authorization
/// (authorized again).
const CAPTURES_FROM: [PaymentStatus; 3] = [
    PaymentStatus::Authorized,
    PaymentStatus::PartiallyCaptured,
    PaymentStatus::Declined,
];

/// One shipment's capture, as fixed before the call.
#[derive(Debug)]
pub(crate) struct Capture {
    shipment: ShipmentRow,
    /// The order's authorization as it now is.
    payment: PaymentRow,
    /// What is left to capture of the order: its total less what its shipments captured, the amount a
    /// re-authorization asks for.
    uncaptured: i64,
}

impl Capture {
    /// The intent to capture from, while the hold is open as far as our rows know; none after a declined
    /// re-authorization (the next shipment authorizes again).
    fn open_hold(&self) -> Option<&str> {
        matches!(
            self.payment.status,
            PaymentStatus::Authorized | PaymentStatus::PartiallyCaptured
        )
        .then_some(self.payment.provider_ref.as_deref())
        .flatten()
    }

    /// The intent whose money the next authorization replaces: the open one, or the one a declined
    /// re-authorization meant to replace.
    fn replaced(&self) -> Option<&str> {
        self.open_hold()
            .or(self.payment.replaces.as_deref())
            .or(self.payment.provider_ref.as_deref())
    }
}

impl SagaStep for Ship {
    const STEP: Step = Step::Ship;
    type Call = Capture;
    type Answer = Captured;

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<Capture>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let current: HashMap<Uuid, ShipmentRow> = shipment::current_of(&mut *conn, &ids)
            .await?
            .into_iter()
            .map(|s| (s.order_id, s))
            .collect();
        let payments: HashMap<Uuid, PaymentRow> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .filter(|p| p.provider_ref.is_some() || p.replaces.is_some())
            .map(|p| (p.order_id, p))
            .collect();
        let money = refund::money_of(&mut *conn, &ids).await?;
        let mut decisions: Vec<Option<Decision<Capture>>> = Vec::with_capacity(orders.len());
        let mut starting = Vec::new();
        for order in orders {
            let decided = if let Err(error) = failpoints::crash("worker.ship.start", &order.customer_id) {
                Some(Decision::Fail(error))
            } else if !current.contains_key(&order.id) {
                // A repeat of a run that shipped the last one on its way: nothing to do.
                Some(Decision::Skip)
            } else if !payments.contains_key(&order.id) {
                Some(Decision::Fail(StepError::permanent(
                    CancelReason::PaymentFailed,
                    anyhow!("the order has no authorization to capture from"),
                )))
            } else if let Some(status) = payments
                .get(&order.id)
                .map(|p| p.status)
                .filter(|s| !CAPTURES_FROM.contains(s))
            {
                // Only an open hold is captured from, and only a declined re-authorization is made again: never a
                // second hold beside one that may be live.
                Some(Decision::Fail(StepError::Transient(anyhow!(
                    "the order's payment is {}: nothing to capture from",
                    status.as_str()
                ))))
            } else {
                starting.push(current[&order.id].id);
                None
            };
            decisions.push(decided);
        }
        let fixed: HashMap<Uuid, ShipmentRow> = shipment::begin_captures(&mut *conn, &starting)
            .await?
            .into_iter()
            .map(|s| (s.order_id, s))
            .collect();
        Ok(orders
            .iter()
            .zip(decisions)
            .map(|(order, decided)| {
                decided.unwrap_or_else(|| match (fixed.get(&order.id), payments.get(&order.id)) {
                    (Some(shipment), Some(payment)) if shipment.status == ShipmentStatus::Capturing => {
                        let captured = money.get(&order.id).map_or(0, |m| m.captured);
                        Decision::Call(Capture {
                            shipment: shipment.clone(),
                            payment: payment.clone(),
                            uncaptured: order.total - captured,
                        })
                    }
                    _ => Decision::Fail(StepError::Transient(anyhow!(
                        "the shipment to capture is not CAPTURING"
                    ))),
                })
            })
            .collect())
    }

    async fn call(runner: &Runner, order: &OrderRow, capture: &Capture) -> Result<Captured, StepError> {
        failpoints::abort("worker.ship.before_capture", Some(&order.customer_id));
        let shipment = &capture.shipment;
        let answered = |intent: &str, outcome, reauthorized| Captured {
            shipment: shipment.clone(),
            intent: intent.to_owned(),
            outcome,
            reauthorized,
        };
        if let Some(intent) = capture.open_hold() {
            match capture_from(runner, capture, intent, capture.payment.attempt).await? {
                Err(Refusal::Lapsed) => {}
                outcome => {
                    failpoints::abort("worker.ship.after_capture", Some(&order.customer_id));
                    return Ok(answered(intent, outcome.map_err(|r| r.to_string()), None));
                }
            }
        }
        // The hold lapsed (or the last re-authorization was declined): authorize what is left to capture.
        let attempt = capture.payment.attempt + 1;
        let key = payment::reauthorization_key(order.id, attempt);
        let request = AuthorizeRequest {
            idempotency_key: &key,
            order_id: order.id,
            amount: capture.uncaptured,
            currency: &capture.payment.currency,
            payment_method: &capture.payment.payment_token,
            multicapture: true,
            off_session: true,
        };
        let replaces = capture.replaced().unwrap_or_default().to_owned();
        let reauthorization = |provider_ref, decline_code| Reauthorization {
            order_id: order.id,
            attempt,
            amount: capture.uncaptured,
            replaces: replaces.clone(),
            provider_ref,
            decline_code,
        };
        match runner.provider.authorize(&request).await {
            Ok(Authorization::Authorized { provider_ref }) => {
                failpoints::abort("worker.ship.after_reauthorize", Some(&order.customer_id));
                let outcome = capture_from(runner, capture, &provider_ref, attempt).await?;
                failpoints::abort("worker.ship.after_capture", Some(&order.customer_id));
                let reauthorized = reauthorization(Some(provider_ref.clone()), None);
                Ok(answered(
                    &provider_ref,
                    outcome.map_err(|r| r.to_string()),
                    Some(reauthorized),
                ))
            }
            // Off-session, a method that wants the customer back is declined (`authentication_required`); a
            // provider that waits for them instead holds no money, and is taken as that decline.
            Ok(Authorization::Waiting { provider_ref, .. }) => {
                let code = "authentication_required".to_owned();
                let why = format!("{LAPSED}; re-authorization declined: {code}");
                let declined = reauthorization(Some(provider_ref), Some(code));
                Ok(answered(&replaces, Err(why), Some(declined)))
            }
            Ok(Authorization::Declined { provider_ref, code }) => {
                let why = format!("{LAPSED}; re-authorization declined: {code}");
                let declined = reauthorization(provider_ref, Some(code));
                Ok(answered(&replaces, Err(why), Some(declined)))
            }
            // Refused for good (an intent that wants the customer back): recorded as declined, so the next
            // shipment asks under a key of its own rather than being answered this refusal again.
            Err(refusal @ ProviderError::Rejected { .. }) => {
                let ProviderError::Rejected { code, .. } = &refusal else {
                    unreachable!("matched as Rejected")
                };
                let declined = reauthorization(None, Some(code.clone()));
                let why = format!("{LAPSED}; re-authorization refused: {refusal}");
                Ok(answered(&replaces, Err(why), Some(declined)))
            }
            Err(unknown @ ProviderError::Transient(_)) => Err(StepError::from_provider(unknown)),
        }
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Captured)],
    ) -> Result<Vec<Ending>, StepError> {
        let ids: Vec<Uuid> = answered.iter().map(|(order, _)| order.id).collect();
        // Each answer is recorded on its own shipment, and only while that one is CAPTURING: a run that lost the
        // race to record it (a job run twice) writes nothing.
        let (mut done, mut refused) = (Vec::new(), Vec::new());
        for (_, answer) in answered {
            match &answer.outcome {
                Ok(()) => done.push((answer.shipment.id, answer.intent.as_str())),
                Err(why) => refused.push((answer.shipment.id, why.as_str())),
            }
        }
        let reauthorized: Vec<Reauthorization> = answered
            .iter()
            .filter_map(|(_, answer)| answer.reauthorized.clone())
            .collect();
        payment::record_reauthorizations(&mut *conn, &reauthorized).await?;
        let recorded = shipment::complete(&mut *conn, &done).await?;
        let failed = shipment::fail(&mut *conn, &refused).await?;
        let payments: Vec<Outcome> = answered
            .iter()
            .filter(|(_, answer)| recorded.contains(&answer.shipment.id))
            .map(|(order, answer)| Outcome {
                order_id: order.id,
                status: match answer.shipment.final_capture {
                    Some(true) => PaymentStatus::Captured,
                    _ => PaymentStatus::PartiallyCaptured,
                },
                provider_ref: None,
                decline_code: None,
            })
            .collect();
        payment::record(
            &mut *conn,
            &[PaymentStatus::Authorized, PaymentStatus::PartiallyCaptured],
            &payments,
        )
        .await?;
        let pending = pending::of_orders(&mut *conn, &ids).await?;
        Ok(answered
            .iter()
            .map(|(order, answer)| {
                let id = answer.shipment.id;
                // A cancel and an operator's compensate wait for a shipment being captured, so the order is still
                // shipping; should it not be, its capture is on record all the same and nothing moves it.
                if !Self::STEP.runs_in(order.status) {
                    return Ending::overtaken(format!(
                        "order left shipping during the capture (now {})",
                        order.status
                    ));
                }
                let next = |status| pending.get(&order.id).and_then(|p| p.next_step(status));
                match &answer.outcome {
                    Ok(()) if recorded.contains(&id) => Ending::succeeded(Self::STEP)
                        .then(next(OrderStatus::PartiallyFulfilled))
                        .for_shipment(id),
                    Err(why) if failed.contains(&id) => {
                        let failed = Ending::failed(why.clone(), Some(Transition::FailShipment))
                            .then(next(order.status))
                            .for_shipment(id);
                        match answer.lapsed_for_good() {
                            true => failed.for_operators(),
                            false => failed,
                        }
                    }
                    // A repeat of a run that recorded it: its event is written and its next step queued.
                    _ => Ending::overtaken(format!("shipment {id} was recorded already")),
                }
            })
            .collect())
    }
}

/// Why a capture was refused for good.
#[derive(Debug)]
enum Refusal {
    /// The hold is gone: the provider cancelled it after its lifetime (`canceled`), or it lapsed after a part was
    /// captured (`succeeded`). The shipment needs a new authorization.
    Lapsed,
    /// Refused for another reason (a wrong amount): the shipment fails.
    Other(ProviderError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lapsed => f.write_str("the hold lapsed"),
            Self::Other(error) => error.fmt(f),
        }
    }
}

/// Captures the shipment's part from `intent`, the order's authorization number `authorization`. `Err` is an
/// unknown outcome (retry under the same key); `Ok(Err)` a refusal for good.
async fn capture_from(
    runner: &Runner,
    capture: &Capture,
    intent: &str,
    authorization: i32,
) -> Result<Result<(), Refusal>, StepError> {
    let shipment = &capture.shipment;
    let answer = runner
        .provider
        .capture_part(
            intent,
            &shipment::capture_key(shipment.id, authorization),
            shipment.amount,
            shipment.final_capture.unwrap_or(false),
        )
        .await;
    match answer {
        Ok(()) => Ok(Ok(())),
        Err(refusal) if ended(&refusal) => {
            // The hold ended. It lapsed if its lifetime is over; one cancelled before that was cancelled by someone
            // (at the provider's dashboard, say), and is not authorized again behind their back.
            match runner.provider.capture_before(intent).await {
                Ok(Some(lapses)) if lapses <= chrono::Utc::now() => Ok(Err(Refusal::Lapsed)),
                Ok(Some(_)) => Ok(Err(Refusal::Other(refusal))),
                // Not knowing is not a refusal: a repeat after a crash may find a re-authorization behind this
                // refusal, which only a lapse leads back to. Asked again later.
                Ok(None) => Err(StepError::Transient(anyhow!(
                    "the ended hold {intent}'s charge does not say when it lapses"
                ))),
                Err(error) => Err(StepError::Transient(anyhow!(
                    "reading when the ended hold {intent} lapses: {error}"
                ))),
            }
        }
        Err(refusal @ ProviderError::Rejected { .. }) => Ok(Err(Refusal::Other(refusal))),
        Err(unknown @ ProviderError::Transient(_)) => Err(StepError::from_provider(unknown)),
    }
}

/// Whether a refusal says the intent's hold is over: the intent `canceled`, or `succeeded` (what was captured
/// kept), or Stripe's `charge_expired_for_capture` (the authorization expired while the intent still reads
/// `requires_capture`).
fn ended(refusal: &ProviderError) -> bool {
    match refusal {
        ProviderError::Rejected {
            code, intent_status, ..
        } => {
            code == "charge_expired_for_capture"
                || intent_status
                    .as_deref()
                    .is_some_and(|status| status == "canceled" || status == "succeeded")
        }
        ProviderError::Transient(_) => false,
    }
}
