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
//! Failpoints: `worker.ship.start` (a transient failure before anything is written), `worker.ship.before_capture`
//! (aborts the process after the attempt and the shipment's CAPTURING committed, before the call),
//! `worker.ship.after_capture` (aborts the process after the provider captured, before anything is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{CancelReason, OrderRow, OrderStatus, Transition};
use orderflow_shared::payment::{self, Outcome, PaymentStatus};
use orderflow_shared::pending;
use orderflow_shared::shipment::{self, ShipmentRow, ShipmentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::ProviderError;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct Ship;

/// What the provider answered the capture of `shipment` (as it was fixed before the call).
#[derive(Debug)]
pub(crate) struct Captured {
    shipment: ShipmentRow,
    /// The hold's provider reference.
    intent: String,
    /// `Err`: refused for good (a voided or expired hold, a wrong amount), with the provider's words.
    outcome: Result<(), String>,
}

/// One shipment's capture, as fixed before the call.
#[derive(Debug)]
pub(crate) struct Capture {
    shipment: ShipmentRow,
    /// The hold's provider reference.
    intent: String,
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
        let intents: HashMap<Uuid, Option<String>> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .map(|p| (p.order_id, p.provider_ref))
            .collect();
        let mut decisions: Vec<Option<Decision<Capture>>> = Vec::with_capacity(orders.len());
        let mut starting = Vec::new();
        for order in orders {
            let decided = if let Err(error) = failpoints::crash("worker.ship.start", &order.customer_id) {
                Some(Decision::Fail(error))
            } else if !current.contains_key(&order.id) {
                // A repeat of a run that shipped the last one on its way: nothing to do.
                Some(Decision::Skip)
            } else if !intents.get(&order.id).is_some_and(Option::is_some) {
                Some(Decision::Fail(StepError::permanent(
                    CancelReason::PaymentFailed,
                    anyhow!("the order has no authorization to capture from"),
                )))
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
                decided.unwrap_or_else(|| {
                    match (fixed.get(&order.id), intents.get(&order.id).cloned().flatten()) {
                        (Some(shipment), Some(intent)) if shipment.status == ShipmentStatus::Capturing => {
                            Decision::Call(Capture {
                                shipment: shipment.clone(),
                                intent,
                            })
                        }
                        _ => Decision::Fail(StepError::Transient(anyhow!(
                            "the shipment to capture is not CAPTURING"
                        ))),
                    }
                })
            })
            .collect())
    }

    async fn call(runner: &Runner, order: &OrderRow, capture: &Capture) -> Result<Captured, StepError> {
        failpoints::abort("worker.ship.before_capture", Some(&order.customer_id));
        let shipment = &capture.shipment;
        let answer = runner
            .provider
            .capture_part(
                &capture.intent,
                &shipment::capture_key(shipment.id),
                shipment.amount,
                shipment.final_capture.unwrap_or(false),
            )
            .await;
        failpoints::abort("worker.ship.after_capture", Some(&order.customer_id));
        let outcome = match answer {
            Ok(()) => Ok(()),
            // The provider's answer, not a failure: the shipment fails and the order stays where it was.
            Err(refusal @ ProviderError::Rejected { .. }) => Err(refusal.to_string()),
            Err(unknown @ ProviderError::Transient(_)) => return Err(StepError::from_provider(unknown)),
        };
        Ok(Captured {
            shipment: shipment.clone(),
            intent: capture.intent.clone(),
            outcome,
        })
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
                        Ending::failed(why.clone(), Some(Transition::FailShipment))
                            .then(next(order.status))
                            .for_shipment(id)
                    }
                    // A repeat of a run that recorded it: its event is written and its next step queued.
                    _ => Ending::overtaken(format!("shipment {id} was recorded already")),
                }
            })
            .collect())
    }
}
