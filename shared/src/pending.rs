//! What an order has pending after payment, and the step that runs next for it. An order has one current step at
//! a time; shipments and refunds asked for while a step runs are written PENDING and wait for it. So each step
//! after payment (ship, fulfil of a shipment order, release_rest, refund) reads, in its record's transaction under
//! the order's lock, what is pending ([`of_orders`]) and queues the step for it ([`Pending::next_step`]); a request
//! that finds the order with no current step queues its own step. The lock makes the two exclusive: nothing
//! pending is ever left without a step.

use std::collections::HashMap;

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::flow::Step;
use crate::order::OrderStatus;

/// What is pending for an order, read after a step's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// A shipment PENDING or CAPTURING.
    pub shipping: bool,
    /// Units held and not shipped (a RESERVED reservation with `quantity > shipped + cancelled`).
    pub units: bool,
    /// A refund PENDING or REFUNDING.
    pub refunding: bool,
}

impl Pending {
    /// The step that runs next for an order in `status` (as the ending step leaves it): ship for a shipment on its
    /// way; fulfil for a PARTIALLY_FULFILLED order with nothing left to ship; refund for a refund on its way; else
    /// none (the order waits for a client). Shipments go first: a refund waits for the capture before it.
    pub fn next_step(self, status: OrderStatus) -> Option<Step> {
        match self {
            // A FULFILLED order has nothing to ship (nothing ships once the rest is cancelled): only a refund runs.
            Pending { refunding, .. } if status == OrderStatus::Fulfilled => {
                refunding.then_some(Step::Refund)
            }
            Pending { shipping: true, .. } => Some(Step::Ship),
            Pending { units: false, .. } if status == OrderStatus::PartiallyFulfilled => Some(Step::Fulfil),
            Pending { refunding: true, .. } => Some(Step::Refund),
            Pending { .. } => None,
        }
    }
}

/// [`Pending`] for each of the orders, in one read.
pub async fn of_orders(
    executor: impl PgExecutor<'_>,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, Pending>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select o.id as "id!",
                  exists (select 1 from shipments s where s.order_id = o.id and s.status in ('PENDING', 'CAPTURING'))
                      as "shipping!",
                  exists (select 1 from reservations r where r.order_id = o.id and r.status = 'RESERVED'
                          and r.quantity > r.shipped + r.cancelled) as "units!",
                  exists (select 1 from refunds f where f.order_id = o.id and f.status in ('PENDING', 'REFUNDING'))
                      as "refunding!"
           from unnest($1::uuid[]) as o(id)"#,
        order_ids
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let pending = Pending {
                shipping: row.shipping,
                units: row.units,
                refunding: row.refunding,
            };
            (row.id, pending)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn pending(shipping: bool, units: bool, refunding: bool) -> Pending {
        Pending {
            shipping,
            units,
            refunding,
        }
    }

    #[test]
    fn a_shipment_runs_first_then_fulfil_once_nothing_is_left_then_a_refund() {
        assert_eq!(
            pending(true, true, true).next_step(PartiallyFulfilled),
            Some(Step::Ship)
        );
        assert_eq!(
            pending(true, false, false).next_step(PartiallyFulfilled),
            Some(Step::Ship)
        );
        assert_eq!(
            pending(false, true, false).next_step(PartiallyFulfilled),
            None,
            "waits for the next shipment"
        );
        assert_eq!(
            pending(false, true, false).next_step(Paid),
            None,
            "a refused shipment: waits"
        );
        assert_eq!(
            pending(false, false, false).next_step(PartiallyFulfilled),
            Some(Step::Fulfil)
        );
        assert_eq!(
            pending(false, false, true).next_step(PartiallyFulfilled),
            Some(Step::Fulfil)
        );
        assert_eq!(
            pending(false, true, true).next_step(PartiallyFulfilled),
            Some(Step::Refund)
        );
        assert_eq!(
            pending(false, false, true).next_step(Fulfilled),
            Some(Step::Refund)
        );
        assert_eq!(pending(false, false, false).next_step(Fulfilled), None);
        // Only a refund runs in FULFILLED, whatever else the rows say.
        assert_eq!(pending(true, true, false).next_step(Fulfilled), None);
        assert_eq!(
            pending(true, false, true).next_step(Fulfilled),
            Some(Step::Refund)
        );
    }
}
