//! Release inventory (CANCELLING), the first compensation: gives back everything the order holds (reserved
//! units leave `reserved`, committed ones return to `on_hand`), written last in the batch's transaction;
//! cancel_payment follows. Idempotent: released stock is not released again.

use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory;
use orderflow_shared::order::OrderRow;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::runner::Runner;
use crate::steps::{Decided, Decision, NoCall, Reading, Recheck, SagaStep, calls_no_one};

pub(crate) struct ReleaseInventory;

impl SagaStep for ReleaseInventory {
    const STEP: Step = Step::ReleaseInventory;
    type Call = NoCall;
    type Answer = NoCall;
    /// The orders whose stock is released.
    type Last = Vec<Uuid>;
    calls_no_one!();

    async fn decide(
        _runner: &Runner,
        _conn: &mut PgConnection,
        orders: &[&OrderRow],
        _reading: Reading,
    ) -> Result<Decided<Self>, StepError> {
        Ok(Decided {
            decisions: orders
                .iter()
                .map(|_| Decision::End(Ending::succeeded(Self::STEP)))
                .collect(),
            last: orders.iter().map(|o| o.id).collect(),
        })
    }

    async fn write_last(
        _runner: &Runner,
        conn: &mut PgConnection,
        ids: Vec<Uuid>,
    ) -> Result<Recheck, StepError> {
        let released = inventory::release_many(conn, &ids).await?;
        tracing::info!(orders = ids.len(), released, "stock released");
        Ok(Recheck::Holds)
    }
}
