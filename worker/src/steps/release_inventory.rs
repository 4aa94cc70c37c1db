//! Release inventory (CANCELLING), the first compensation: gives back everything the order holds (reserved
//! units leave `reserved`, committed ones return to `on_hand`); cancel_payment follows. Idempotent: released
//! stock is not released again.

use orderflow_shared::flow::{Ending, Step};
use orderflow_shared::inventory;
use orderflow_shared::order::OrderRow;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::StepError;
use crate::runner::Runner;
use crate::steps::{Decision, NoCall, SagaStep, calls_no_one};

pub(crate) struct ReleaseInventory;

impl SagaStep for ReleaseInventory {
    const STEP: Step = Step::ReleaseInventory;
    type Call = NoCall;
    type Answer = NoCall;
    calls_no_one!();

    async fn decide(
        _runner: &Runner,
        conn: &mut PgConnection,
        orders: &[&OrderRow],
    ) -> Result<Vec<Decision<NoCall>>, StepError> {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        let released = inventory::release_many(conn, &ids).await?;
        tracing::info!(orders = ids.len(), released, "stock released");
        Ok(orders
            .iter()
            .map(|_| Decision::End(Ending::succeeded(Self::STEP)))
            .collect())
    }
}
