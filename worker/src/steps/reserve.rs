//! Reserve (CREATED → RESERVED): holds every line's stock, all or nothing; payment follows. An order whose lines
//! do not all fit is cancelled out of stock at once (it took nothing, so there is nothing to undo).
//!
//! The holds of a batch are decided first come first served in the batch's order: an order that does not fit
//! leaves its stock to the orders after it. A batch first decides on the stock as last committed
//! (`inventory::plan_reservations`) and writes the holds last, on its skus locked then, if every order planned to
//! fit still does (`ReservationPlan::hold`); if one no longer does, the batch is decided again on sku rows locked
//! for the decision (`inventory::reserve_many`). A hold lasts `ORDERFLOW_RESERVATION_TTL_SECS` while payment has
//! not started; the reconciler releases it after that.

use std::collections::HashMap;

use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory::{self, ReservationPlan, ReserveOutcome};
use orderflow_shared::order::{self, OrderRow, Transition};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::runner::Runner;
use crate::steps::{Decided, Decision, NoCall, Reading, Recheck, SagaStep, calls_no_one};

pub(crate) struct Reserve;

impl SagaStep for Reserve {
    const STEP: Step = Step::Reserve;
    type Call = NoCall;
    type Answer = NoCall;
    /// The holds planned on an unlocked reading, to write last; none when they were written deciding.
    type Last = Option<ReservationPlan>;
    calls_no_one!();

    async fn decide(
        runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
        reading: Reading,
    ) -> Result<Decided<Self>, StepError> {
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
        let (verdicts, last) = match reading {
            Reading::Unlocked => {
                let plan = inventory::plan_reservations(conn, wanted).await?;
                (plan.outcomes().to_vec(), Some(plan))
            }
            Reading::Locked => (inventory::reserve_many(conn, &wanted).await?, None),
        };
        let decisions = verdicts
            .into_iter()
            .map(|verdict| match verdict {
                ReserveOutcome::Reserved => Decision::End(
                    Ending::succeeded(Self::STEP).holding_stock_for(runner.settings.reservation_ttl),
                ),
                ReserveOutcome::OutOfStock => {
                    Decision::End(Ending::failed("out of stock", Some(Transition::RejectOutOfStock)))
                }
            })
            .collect();
        Ok(Decided { decisions, last })
    }

    async fn write_last(
        _runner: &Runner,
        conn: &mut PgConnection,
        plan: Option<ReservationPlan>,
    ) -> Result<Recheck, StepError> {
        match plan {
            Some(plan) if !plan.hold(conn).await? => Ok(Recheck::Moved),
            _ => Ok(Recheck::Holds),
        }
    }
}
