//! The transactional outbox: `order_events` rows, written in their transition's transaction, read by the NATS
//! relay (unpublished ones, marked published after JetStream acknowledged them) and by the polling feed. Both
//! hand out the same CloudEvents 1.0 JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::events::EventType;
use crate::order::{CancelReason, OrderStatus};

/// CloudEvents `source` of every OrderFlow event.
pub const SOURCE: &str = "urn:orderflow:orders";

/// One event with the order facts its consumers need.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub txid: i64,
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub sequence: i32,
    pub event_type: EventType,
    pub from_status: Option<OrderStatus>,
    pub to_status: OrderStatus,
    pub reason: Option<CancelReason>,
    pub shipment_id: Option<Uuid>,
    pub refund_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
}

/// A CloudEvents 1.0 event in JSON (structured mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloudEvent {
    pub specversion: String,
    /// The event id (a UUID); JetStream's `Nats-Msg-Id` too, so a re-sent event is dropped as a duplicate.
    pub id: Uuid,
    pub source: String,
    /// The transition's event type, one of `events::EventType` (`order.created`, `order.paid`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The order id.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: EventData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventData {
    pub order_id: Uuid,
    /// 1, 2, 3… per order: a consumer that sees a gap has missed an event.
    pub sequence: i32,
    pub from: Option<String>,
    pub to: String,
    pub reason: Option<String>,
    /// The shipment an `order.shipped` or `order.shipment_failed` event is about (absent on the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipment_id: Option<Uuid>,
    /// The refund an `order.refunded` or `order.refund_failed` event is about (absent on the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
}

impl OutboxEvent {
    pub fn to_cloud_event(&self) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: self.event_id,
            source: SOURCE.to_owned(),
            event_type: self.event_type.as_str().to_owned(),
            subject: self.order_id.to_string(),
            time: self.created_at,
            datacontenttype: "application/json".to_owned(),
            data: EventData {
                order_id: self.order_id,
                sequence: self.sequence,
                from: self.from_status.map(|s| s.as_str().to_owned()),
                to: self.to_status.as_str().to_owned(),
                reason: self.reason.map(|r| r.as_str().to_owned()),
                shipment_id: self.shipment_id,
                refund_id: self.refund_id,
                customer_id: self.customer_id.clone(),
                total: self.total,
                currency: self.currency.clone(),
            },
        }
    }

    /// The NATS subject: `<prefix>.<type without "order.">`, e.g. `orders.paid`.
    pub fn subject(&self, prefix: &str) -> String {
        let event_type = self.event_type.as_str();
        let kind = event_type.strip_prefix("order.").unwrap_or(event_type);
        format!("{prefix}.{kind}")
    }

    /// The feed cursor just after this event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            id: self.id,
        }
    }
}

/// The oldest unpublished events, up to `limit`, in id order (per order that is commit order: a transition
/// takes the order's row lock, so the next event of an order is inserted after the previous one committed).
pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as!(
        OutboxEvent,
        r#"select e.id, e.txid::text::bigint as "txid!", e.event_id, e.order_id, e.sequence,
                  e.event_type as "event_type: _", e.from_status as "from_status: _", e.to_status as "to_status: _",
                  e.reason as "reason: _", e.shipment_id, e.refund_id, e.created_at, o.customer_id, o.total, o.currency
           from order_events e join orders o on o.id = e.order_id
           where e.published_at is null
           order by e.id
           limit $1"#,
        limit
    )
    .fetch_all(conn)
    .await
}

/// The events `ids` (their `event_id`s), in no particular order: what a webhook delivery sends.
pub async fn by_event_ids(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as!(
        OutboxEvent,
        r#"select e.id, e.txid::text::bigint as "txid!", e.event_id, e.order_id, e.sequence,
                  e.event_type as "event_type: _", e.from_status as "from_status: _", e.to_status as "to_status: _",
                  e.reason as "reason: _", e.shipment_id, e.refund_id, e.created_at, o.customer_id, o.total, o.currency
           from order_events e join orders o on o.id = e.order_id
           where e.event_id = any($1)"#,
        ids
    )
    .fetch_all(executor)
    .await
}

pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query!(
        "update order_events set published_at = now() where id = any($1) and published_at is null",
        ids
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// A position in the feed: after the event `id` of transaction `txid`. Shown to clients as `<txid>-<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub txid: i64,
    pub id: i64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.txid, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WRONG: &str = "must be a cursor returned by this feed (<number>-<number>)";
        let (txid, id) = s.split_once('-').ok_or(WRONG)?;
        Ok(Self {
            txid: txid.parse().map_err(|_| WRONG)?,
            id: id.parse().map_err(|_| WRONG)?,
        })
    }
}

/// Up to `limit` events after `after`, in feed order. Only events whose transaction is older than every running
/// transaction are served, so nothing can later appear behind the cursor.
pub async fn feed(
    executor: impl PgExecutor<'_>,
    after: Cursor,
    limit: i64,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    sqlx::query_as!(
        OutboxEvent,
        r#"select e.id, e.txid::text::bigint as "txid!", e.event_id, e.order_id, e.sequence,
                  e.event_type as "event_type: _", e.from_status as "from_status: _", e.to_status as "to_status: _",
                  e.reason as "reason: _", e.shipment_id, e.refund_id, e.created_at, o.customer_id, o.total, o.currency
           from order_events e join orders o on o.id = e.order_id
           where (e.txid, e.id) > ($1::text::xid8, $2)
             and e.txid < pg_snapshot_xmin(pg_current_snapshot())
           order by e.txid, e.id
           limit $3"#,
        after.txid.to_string(),
        after.id,
        limit
    )
    .fetch_all(executor)
    .await
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboxStats {
    pub unpublished: i64,
    /// Age of the oldest unpublished event (0 when none): the outbox lag.
    pub lag_seconds: f64,
    /// Events published in the last minute, per second.
    pub published_per_second: f64,
}

pub async fn stats(executor: impl PgExecutor<'_>) -> Result<OutboxStats, sqlx::Error> {
    sqlx::query_as!(
        OutboxStats,
        r#"select
             (select count(*) from order_events where published_at is null) as "unpublished!",
             coalesce((select extract(epoch from now() - min(created_at))::float8
                       from order_events where published_at is null), 0) as "lag_seconds!",
             (select count(*) from order_events where published_at > now() - interval '1 minute')::float8 / 60
               as "published_per_second!""#
    )
    .fetch_one(executor)
    .await
}
