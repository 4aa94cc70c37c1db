//! Fulfil (PAID → FULFILLED; a shipment order PARTIALLY_FULFILLED → FULFILLED): the money is captured and the
//! stock committed; the order is done. Commit (or ship, after the last shipment) queues it in the transaction that
//! records the capture, so it only guards against a job queued by hand: before the capture is recorded it fails
//! (transient) and is retried. A shipment order's fulfil queues a refund asked for meanwhile.
//!
//! Failpoint: `worker.fulfil.before` (a transient failure, nothing written).

use std::collections::{HashMap, HashSet};

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::order::{Fulfilment, OrderRow, OrderStatus};
use orderflow_shared::payment::{self, PaymentStatus};
use orderflow_shared::pending;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::runner::Runner;
use crate::steps::{Decision, NoCall, SagaStep, calls_no_one};

pub(crate) struct Fulfil;

impl SagaStep for Fulfil {
    const STEP: Step = Step::Fulfil;
    type Call = NoCall;
    type Answer = NoCall;
    calls_no_one!();

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<NoCall>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        // A shipment order's refunds asked for meanwhile wait for fulfil: it queues the first. An auto order cannot
        // have one yet (refunds wait for FULFILLED), so its batch reads nothing more.
        let shipping: Vec<Uuid> = orders
            .iter()
            .filter(|o| o.fulfilment == Fulfilment::Shipment)
            .map(|o| o.id)
            .collect();
        let pending = match shipping.is_empty() {
            true => HashMap::new(),
            false => pending::of_orders(&mut *conn, &shipping).await?,
        };
        let captured: HashSet<Uuid> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .filter(|p| p.status == PaymentStatus::Captured)
            .map(|p| p.order_id)
            .collect();
        Ok(orders
            .iter()
            .map(|order| {
                if let Err(error) = failpoints::crash("worker.fulfil.before", &order.customer_id) {
                    return Decision::Fail(error);
                }
                if !captured.contains(&order.id) {
                    return Decision::Fail(StepError::Transient(anyhow!(
                        "fulfil ran before the capture was recorded"
                    )));
                }
                let next = pending
                    .get(&order.id)
                    .and_then(|p| p.next_step(OrderStatus::Fulfilled));
                Decision::End(Ending::succeeded(Self::STEP).then(next))
            })
            .collect())
    }
}
