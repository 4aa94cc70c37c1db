//! Reserve (CREATED → RESERVED): holds every line's stock, all or nothing; payment follows. An order whose lines
//! do not all fit is cancelled out of stock at once (it took nothing, so there is nothing to undo).
//!
//! The holds of a batch are decided first come first served in the batch's order, on sku rows locked for the
//! decision (`inventory::reserve_many`): an order that does not fit leaves its stock to the orders after it. A hold
//! lasts `ORDERFLOW_RESERVATION_TTL_SECS` while payment has not started; the reconciler releases it after that.

use std::collections::HashMap;

use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory::{self, ReserveOutcome};
use orderflow_shared::order::{self, OrderRow, Transition};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::runner::Runner;
use crate::steps::{Decision, NoCall, SagaStep, calls_no_one};

pub(crate) struct Reserve;

impl SagaStep for Reserve {
    const STEP: Step = Step::Reserve;
    type Call = NoCall;
    type Answer = NoCall;
    calls_no_one!();

    async fn decide(
        runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<NoCall>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let mut lines: HashMap<Uuid, Vec<(String, i64)>> = HashMap::new();
        for line in order::lines_of(&mut *conn, &ids).await? {
            lines
                .entry(line.order_id)
                .or_default()
                .push((line.sku, line.quantity));
        }
        let wanted: Vec<(Uuid, Vec<(String, i64)>)> = ids
            .iter()
            .map(|id| (*id, lines.remove(id).unwrap_or_default()))
            .collect();
        let verdicts = inventory::reserve_many(conn, &wanted).await?;
        Ok(verdicts
            .into_iter()
            .map(|verdict| match verdict {
                ReserveOutcome::Reserved => Decision::End(
                    Ending::succeeded(Self::STEP).holding_stock_for(runner.settings.reservation_ttl),
                ),
                ReserveOutcome::OutOfStock => {
                    Decision::End(Ending::failed("out of stock", Some(Transition::RejectOutOfStock)))
                }
            })
            .collect())
    }
}
