//! Ship (a shipment order, PAID or PARTIALLY_FULFILLED → PARTIALLY_FULFILLED): the order's oldest shipment on its
//! way (`orderflow_shared::shipment`). The first transaction fixes its capture (amount, and whether it is the
//! final one) and commits the attempt as STARTED with it; the call captures that part of the hold under the
//! shipment's own key; the second transaction records the capture and, in the same statement, takes the shipped
//! units out of stock, so no unit leaves stock without its capture on record. A crash anywhere re-runs the
//! capture under the same key, which the provider answers as before, never capturing twice. After it: ship again
//! for the next shipment on its way, fulfil once nothing is left to ship, or nothing (the order waits).
//!
//! A capture the provider refuses for good fails the shipment (nothing shipped, its units stay reserved) and the
//! order stays where it was (`flow::AfterFailure::FailShipment`); an unknown outcome is retried under the same
//! key for as long as it takes.
//!
//! Failpoints: `worker.ship.start` (a transient failure before anything is written), `worker.ship.before_capture`
//! (aborts the process after the attempt and the shipment's CAPTURING committed, before the call),
//! `worker.ship.after_capture` (aborts the process after the provider captured, before anything is recorded).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{CancelReason, OrderRow};
use orderflow_shared::payment::{self, Outcome, PaymentStatus};
use orderflow_shared::shipment::{self, ShipmentRow, ShipmentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct Ship;

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
    /// The capture's shipment and the intent it drew on.
    type Answer = Capture;

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

    async fn call(runner: &Runner, order: &OrderRow, capture: &Capture) -> Result<Capture, StepError> {
        failpoints::abort("worker.ship.before_capture", Some(&order.customer_id));
        let shipment = &capture.shipment;
        runner
            .provider
            .capture_part(
                &capture.intent,
                &shipment::capture_key(shipment.id),
                shipment.amount,
                shipment.final_capture.unwrap_or(false),
            )
            .await
            .map_err(StepError::from_provider)?;
        failpoints::abort("worker.ship.after_capture", Some(&order.customer_id));
        Ok(Capture {
            shipment: shipment.clone(),
            intent: capture.intent.clone(),
        })
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &Capture)],
    ) -> Result<Vec<Ending>, StepError> {
        let done: Vec<(Uuid, &str)> = answered
            .iter()
            .map(|(_, c)| (c.shipment.id, c.intent.as_str()))
            .collect();
        shipment::complete(&mut *conn, &done).await?;
        let captured: Vec<Outcome> = answered
            .iter()
            .map(|(order, c)| Outcome {
                order_id: order.id,
                status: match c.shipment.final_capture {
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
            &captured,
        )
        .await?;
        let mut endings = Vec::with_capacity(answered.len());
        for (order, capture) in answered {
            // The order cannot leave shipping while a shipment is on its way (a cancel or an operator's compensate
            // waits for it to end); should it have, the capture is on record all the same.
            if !Self::STEP.runs_in(order.status) {
                endings.push(Ending::overtaken(format!(
                    "order left shipping during the capture (now {})",
                    order.status
                )));
                continue;
            }
            let next = if shipment::pending(&mut *conn, order.id).await? {
                Some(Step::Ship)
            } else if shipment::anything_left(&mut *conn, order.id).await? {
                None
            } else {
                Some(Step::Fulfil)
            };
            endings.push(
                Ending::succeeded(Self::STEP)
                    .then(next)
                    .for_shipment(capture.shipment.id),
            );
        }
        Ok(endings)
    }
}
