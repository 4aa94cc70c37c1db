//! Release the rest (PARTIALLY_FULFILLED → FULFILLED): a shipment order cancelled after some of it shipped. The
//! first transaction gives back the units not shipped (`inventory::release_rest`) with the attempt; the call
//! cancels what is left of the hold (Stripe's cancel of a `requires_capture` intent releases its remaining
//! `amount_capturable`; what was captured stays captured) under the order's own key; the record marks the payment
//! CAPTURED (its captures are all there is, after a declined re-authorization too) and the order FULFILLED (a refund is refused while it runs, so none
//! is pending after it; it asks `pending` all the same, as every step after payment does). What shipped stays
//! shipped. A hold already gone (expired, or released by a final capture) has nothing left to
//! release; after a declined re-authorization (`steps::ship`) there is no hold to ask about at all.
//!
//! It never gives up (`Step::never_gives_up`): it retries every failure, as nothing can undo a shipment.
//!
//! Failpoint: `worker.release_rest.before_release` (aborts the process after the units went back, before the
//! hold's release).

use std::collections::HashMap;

use anyhow::anyhow;
use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory;
use orderflow_shared::order::{OrderRow, OrderStatus};
use orderflow_shared::payment::{self, Outcome, PaymentStatus};
use orderflow_shared::pending;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::failpoints;
use crate::provider::ProviderError;
use crate::runner::Runner;
use crate::steps::{Decision, SagaStep};

pub(crate) struct ReleaseRest;

impl SagaStep for ReleaseRest {
    const STEP: Step = Step::ReleaseRest;
    /// The hold's provider reference; none when no hold is open (a declined re-authorization).
    type Call = Option<String>;
    type Answer = ();

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<Option<String>>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let intents: HashMap<Uuid, Option<String>> = payment::find_many(&mut *conn, &ids)
            .await?
            .into_iter()
            .filter(|p| p.provider_ref.is_some() || p.status == PaymentStatus::Declined)
            .map(|p| {
                (
                    p.order_id,
                    p.provider_ref.filter(|_| p.status != PaymentStatus::Declined),
                )
            })
            .collect();
        // Only the orders that go on to the call: one that fails has nothing written.
        let releasing: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| intents.contains_key(id))
            .collect();
        let released = inventory::release_rest(conn, &releasing).await?;
        tracing::info!(
            orders = releasing.len(),
            released,
            "the units not shipped released"
        );
        Ok(orders
            .iter()
            .map(|order| match intents.get(&order.id).cloned() {
                Some(intent) => Decision::Call(intent),
                None => Decision::Fail(StepError::Transient(anyhow!(
                    "the order has no authorization to release"
                ))),
            })
            .collect())
    }

    async fn call(runner: &Runner, order: &OrderRow, intent: &Option<String>) -> Result<(), StepError> {
        failpoints::abort("worker.release_rest.before_release", Some(&order.customer_id));
        let Some(intent) = intent else {
            return Ok(());
        };
        match runner
            .provider
            .void(intent, &payment::release_rest_key(order.id))
            .await
        {
            Ok(()) => Ok(()),
            // Nothing left to release: the hold expired, or a final capture released it.
            Err(ProviderError::Rejected {
                intent_status: Some(status),
                ..
            }) if status == "canceled" || status == "succeeded" => Ok(()),
            Err(error) => Err(StepError::from_provider(error)),
        }
    }

    async fn record(
        _runner: &Runner,
        conn: &mut PgConnection,
        answered: &[(&OrderRow, &())],
    ) -> Result<Vec<Ending>, StepError> {
        let outcomes: Vec<Outcome> = answered
            .iter()
            .filter(|(order, _)| Self::STEP.runs_in(order.status))
            .map(|(order, _)| Outcome {
                order_id: order.id,
                status: PaymentStatus::Captured,
                provider_ref: None,
                decline_code: None,
            })
            .collect();
        // What the shipments captured is all the order's payment will be, whatever its last authorization was: a
        // partly captured hold, one re-authorized and never captured from (released now), one declined.
        payment::record(
            &mut *conn,
            &[
                PaymentStatus::Authorized,
                PaymentStatus::PartiallyCaptured,
                PaymentStatus::Declined,
            ],
            &outcomes,
        )
        .await?;
        let ids: Vec<Uuid> = answered.iter().map(|(order, _)| order.id).collect();
        let pending = pending::of_orders(&mut *conn, &ids).await?;
        Ok(answered
            .iter()
            .map(|(order, _)| match Self::STEP.runs_in(order.status) {
                true => Ending::succeeded(Self::STEP).then(
                    pending
                        .get(&order.id)
                        .and_then(|p| p.next_step(OrderStatus::Fulfilled)),
                ),
                false => Ending::overtaken("the order left PARTIALLY_FULFILLED during the release"),
            })
            .collect())
    }
}
