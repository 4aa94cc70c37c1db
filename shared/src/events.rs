//! The append-only audit trail of order transitions (`order_events`), which is also the outbox.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::order::{CancelReason, OrderStatus};

/// Stable event type names: consumers subscribe to these, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Created,
    Reserved,
    Paid,
    Fulfilled,
    /// A shipment's units left stock and its part of the payment was captured (the event names the shipment).
    Shipped,
    /// A shipment's capture was refused for good: nothing shipped (the event names the shipment).
    ShipmentFailed,
    /// Captured money was given back (the event names the refund).
    Refunded,
    /// The provider refused a refund for good: nothing was refunded (the event names the refund).
    RefundFailed,
    /// Units of the order came back (restocked or written off); a refund of their value may follow.
    Returned,
    CancellationStarted,
    Cancelled,
    NeedsAttention,
    CancellationResumed,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        Self::Created,
        Self::Reserved,
        Self::Paid,
        Self::Fulfilled,
        Self::Shipped,
        Self::ShipmentFailed,
        Self::Refunded,
        Self::RefundFailed,
        Self::Returned,
        Self::CancellationStarted,
        Self::Cancelled,
        Self::NeedsAttention,
        Self::CancellationResumed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "order.created",
            Self::Reserved => "order.reserved",
            Self::Paid => "order.paid",
            Self::Fulfilled => "order.fulfilled",
            Self::Shipped => "order.shipped",
            Self::ShipmentFailed => "order.shipment_failed",
            Self::Refunded => "order.refunded",
            Self::RefundFailed => "order.refund_failed",
            Self::Returned => "order.returned",
            Self::CancellationStarted => "order.cancellation_started",
            Self::Cancelled => "order.cancelled",
            Self::NeedsAttention => "order.needs_attention",
            Self::CancellationResumed => "order.cancellation_resumed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == value)
    }
}

stored_as_text!(EventType);

/// One transition as recorded.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub sequence: i32,
    pub event_type: EventType,
    pub from_status: Option<OrderStatus>,
    pub to_status: OrderStatus,
    /// The cancel reason the transition carries.
    pub reason: Option<CancelReason>,
    /// The shipment an `order.shipped` or `order.shipment_failed` event is about.
    pub shipment_id: Option<Uuid>,
    /// The refund an `order.refunded` or `order.refund_failed` event is about.
    pub refund_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

pub async fn for_order(executor: impl PgExecutor<'_>, order_id: Uuid) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query_as!(
        EventRow,
        r#"select id, event_id, order_id, sequence, event_type as "event_type: _", from_status as "from_status: _",
                  to_status as "to_status: _", reason as "reason: _", shipment_id, refund_id,
                  created_at
           from order_events where order_id = $1 order by sequence"#,
        order_id
    )
    .fetch_all(executor)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consumers learn the subjects from the README: it names every event type's (`orders.<type>`).
    #[test]
    fn event_types_round_trip() {
        for event in EventType::ALL {
            assert_eq!(EventType::parse(event.as_str()), Some(event));
        }
        assert_eq!(EventType::parse("order.refund"), None);
    }

    #[test]
    fn the_readme_names_every_event_type() {
        let readme = include_str!("../../README.md");
        for event in EventType::ALL {
            let subject = event.as_str().replacen("order.", "orders.", 1);
            assert!(
                readme.contains(&format!("`{subject}`")),
                "README.md does not name {subject}"
            );
        }
    }
}
