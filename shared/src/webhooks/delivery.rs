//! Every order event, delivered to every enabled endpoint that takes its type (`webhook_deliveries`), on the same
//! outbox the NATS relay and the feed read:
//! - [`fan_out`]: one process at a time (a transaction-scoped advisory lock) reads the events past the cursor in
//!   feed order and writes a delivery per matching endpoint, moving the cursor in the same transaction. A crash
//!   re-reads, and the unique (endpoint, event) drops what was written before. An endpoint gets the events made
//!   from its creation on; disabled, it gets none (a replay of a time range makes them).
//! - [`claim`]: the due deliveries whose order has no earlier undelivered one to the same endpoint (nor an earlier
//!   event the fan-out has not read yet), so event n+1 of an order waits for n's acknowledgement while other
//!   orders go on; each claimed for a lease, so a worker that dies mid-attempt leaves it due again.
//! - [`record`]: how an attempt went, in the delivery log (`webhook_attempts`) and on the delivery: a 2xx is
//!   DELIVERED; `410 Gone` disables the endpoint; anything else waits its turn in the retry schedule (or the
//!   endpoint's `Retry-After`) and is DEAD once the schedule is spent. An endpoint failing without a success for
//!   longer than the disable window is disabled, saying why.
//!
//! At least once: a delivery is repeated (same `webhook-id`) if its attempt's outcome was not recorded.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use crate::outbox::{self, Cursor};

/// The advisory lock key of the fan-out (one process at a time).
pub(crate) const FAN_OUT_LOCK: i64 = 0x0F_57_48_4F_4F_4B; // "OF WHOOK"

/// The Standard Webhooks example schedule: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h
/// after each failure (about three days in all).
pub const RETRY_SCHEDULE: [Duration; 10] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(300),
    Duration::from_secs(1_800),
    Duration::from_secs(7_200),
    Duration::from_secs(18_000),
    Duration::from_secs(36_000),
    Duration::from_secs(50_400),
    Duration::from_secs(72_000),
    Duration::from_secs(86_400),
];

/// The most of an endpoint's answer the log keeps.
pub const RESPONSE_EXCERPT: usize = 1_024;

/// Reads up to `limit` events past the cursor and writes their deliveries; answers how many events it read (0
/// also when another process holds the fan-out).
pub async fn fan_out(conn: &mut PgConnection, limit: i64) -> Result<usize, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let leader: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(FAN_OUT_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(0);
    }
    let row = sqlx::query("select txid, id from webhook_cursor where single for update")
        .fetch_one(&mut *tx)
        .await?;
    let cursor = Cursor {
        txid: row.get("txid"),
        id: row.get("id"),
    };
    let any: bool = sqlx::query_scalar("select exists (select 1 from webhook_endpoints where enabled)")
        .fetch_one(&mut *tx)
        .await?;
    if !any {
        // No endpoint to deliver to: the cursor goes to the feed's head, one read however long the history, and
        // a write only when the head moved (an idle deployment writes nothing each round).
        sqlx::query(
            r#"update webhook_cursor c set txid = head.txid, id = head.id
               from (select e.txid::text::bigint as txid, e.id from order_events e
                     where e.txid < pg_snapshot_xmin(pg_current_snapshot())
                     order by e.txid desc, e.id desc limit 1) as head
               where c.single and (c.txid, c.id) <> (head.txid, head.id)"#,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(0);
    }
    let events = outbox::feed(&mut *tx, cursor, limit).await?;
    let Some(last) = events.last().map(outbox::OutboxEvent::cursor) else {
        return Ok(0);
    };
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let orders: Vec<Uuid> = events.iter().map(|e| e.order_id).collect();
    let sequences: Vec<i32> = events.iter().map(|e| e.sequence).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.created_at).collect();
    sqlx::query(
        r#"insert into webhook_deliveries (endpoint_id, event_id, order_id, sequence)
           select w.id, e.event_id, e.order_id, e.sequence
           from unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[])
                as e(event_id, order_id, sequence, type, created_at)
           join webhook_endpoints w
             on w.enabled and e.created_at >= w.created_at
            and (cardinality(w.event_types) = 0 or e.type = any(w.event_types))
           order by e.order_id, e.sequence
           on conflict (endpoint_id, event_id) do nothing"#,
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&sequences)
    .bind(&types)
    .bind(&times)
    .execute(&mut *tx)
    .await?;
    sqlx::query("update webhook_cursor set txid = $1, id = $2 where single")
        .bind(last.txid)
        .bind(last.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(events.len())
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub url: String,
    pub generation: i32,
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub sequence: i32,
    /// This attempt's number in its round (1 for the first).
    pub attempt: i32,
    pub round: i32,
}

/// Claims up to `limit` due deliveries of enabled endpoints for `lease`: each the earliest undelivered one of
/// its order to its endpoint.
pub async fn claim(pool: &PgPool, limit: i64, lease: Duration) -> Result<Vec<Due>, sqlx::Error> {
    let rows = sqlx::query(
        r#"with due as (
               select d.id from webhook_deliveries d
               join webhook_endpoints w on w.id = d.endpoint_id and w.enabled
               where d.status = 'PENDING' and d.next_attempt_at <= now()
                 and not exists (
                     select 1 from webhook_deliveries p
                     where p.endpoint_id = d.endpoint_id and p.order_id = d.order_id and p.status = 'PENDING'
                       and p.sequence < d.sequence)
                 -- Nor an earlier event of the order that the fan-out has not read yet: the feed is in commit
                 -- order of transactions by id, which need not be the order's sequence, so a page can end
                 -- between an order's event n+1 and n.
                 and not exists (
                     select 1 from order_events e, webhook_cursor c
                     where e.order_id = d.order_id and e.sequence < d.sequence
                       and (e.txid, e.id) > (c.txid::text::xid8, c.id))
               order by d.next_attempt_at
               limit $1
               for update of d skip locked
           )
           update webhook_deliveries d
           set attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
           from due, webhook_endpoints w
           where d.id = due.id and w.id = d.endpoint_id
           returning d.id, d.endpoint_id, w.url, w.generation, d.event_id, d.order_id, d.sequence, d.attempts,
                     d.replays"#,
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| Due {
            id: row.get("id"),
            endpoint_id: row.get("endpoint_id"),
            url: row.get("url"),
            generation: row.get("generation"),
            event_id: row.get("event_id"),
            order_id: row.get("order_id"),
            sequence: row.get("sequence"),
            attempt: row.get("attempts"),
            round: row.get("replays"),
        })
        .collect())
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub started_at: DateTime<Utc>,
    /// The endpoint's status code; none if it never answered.
    pub status: Option<u16>,
    pub latency: Duration,
    /// The first [`RESPONSE_EXCERPT`] bytes of its answer.
    pub response: Option<String>,
    /// Why there was no answer.
    pub error: Option<String>,
    /// Its `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

/// What recording an attempt concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Tried again after this long.
    Retry(Duration),
    /// The schedule is spent.
    Dead,
    /// The endpoint answered `410 Gone`: disabled; the delivery waits for it to be enabled again.
    Gone,
}

/// The verdict on attempt `attempt` (1-based) of a round, by the endpoint's answer and the schedule.
pub fn verdict(attempted: &Attempted, attempt: i32, schedule: &[Duration]) -> Verdict {
    match attempted.status {
        Some(status) if (200..300).contains(&status) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        _ => match schedule.get(usize::try_from(attempt).unwrap_or(usize::MAX)) {
            Some(wait) => Verdict::Retry(attempted.retry_after.map_or(*wait, |asked| asked.max(*wait))),
            None => Verdict::Dead,
        },
    }
}

/// Records attempt `due` as `attempted` says, with the schedule and the endpoint's disable window; answers the
/// verdict.
pub async fn record(
    pool: &PgPool,
    due: &Due,
    attempted: &Attempted,
    schedule: &[Duration],
    disable_after: Duration,
) -> Result<Verdict, sqlx::Error> {
    let verdict = verdict(attempted, due.attempt, schedule);
    let latency_ms = i32::try_from(attempted.latency.as_millis()).unwrap_or(i32::MAX);
    let status = attempted.status.map(i32::from);
    let mut tx = pool.begin().await?;
    sqlx::query(
        r#"insert into webhook_attempts (delivery_id, round, attempt, started_at, status_code, latency_ms, response,
                                         error)
           values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict do nothing"#,
    )
    .bind(due.id)
    .bind(due.round)
    .bind(due.attempt)
    .bind(attempted.started_at)
    .bind(status)
    .bind(latency_ms)
    .bind(&attempted.response)
    .bind(&attempted.error)
    .execute(&mut *tx)
    .await?;
    let (new_status, wait) = match verdict {
        Verdict::Delivered => ("DELIVERED", None),
        Verdict::Retry(wait) => ("PENDING", Some(wait)),
        Verdict::Dead => ("DEAD", None),
        // Due again as soon as the endpoint is enabled.
        Verdict::Gone => ("PENDING", Some(Duration::ZERO)),
    };
    sqlx::query(
        r#"update webhook_deliveries
           set status = $2, last_status = $3, last_latency_ms = $4, last_error = $5,
               next_attempt_at = case when $6::float8 is null then next_attempt_at
                                      else now() + make_interval(secs => $6) end,
               delivered_at = case when $2 = 'DELIVERED' then now() else delivered_at end
           where id = $1 and attempts = $7 and replays = $8"#,
    )
    .bind(due.id)
    .bind(new_status)
    .bind(status)
    .bind(latency_ms)
    .bind(&attempted.error)
    .bind(wait.map(|w| w.as_secs_f64()))
    .bind(due.attempt)
    .bind(due.round)
    .execute(&mut *tx)
    .await?;
    match verdict {
        Verdict::Delivered => {
            sqlx::query("update webhook_endpoints set failing_since = null where id = $1 and failing_since is not null")
                .bind(due.endpoint_id)
                .execute(&mut *tx)
                .await?;
        }
        Verdict::Gone => {
            sqlx::query(
                "update webhook_endpoints set enabled = false, disabled_reason = 'the endpoint answered 410 Gone',
                        updated_at = now() where id = $1 and enabled",
            )
            .bind(due.endpoint_id)
            .execute(&mut *tx)
            .await?;
        }
        Verdict::Retry(_) | Verdict::Dead => {
            sqlx::query(
                r#"update webhook_endpoints
                   set failing_since = coalesce(failing_since, now()),
                       enabled = enabled and coalesce(failing_since, now()) > now() - make_interval(secs => $2),
                       disabled_reason = case
                           when enabled and coalesce(failing_since, now()) <= now() - make_interval(secs => $2)
                           then format('its deliveries failed for %s s without a success', $2::bigint)
                           else disabled_reason end,
                       updated_at = now()
                   where id = $1"#,
            )
            .bind(due.endpoint_id)
            .bind(disable_after.as_secs_f64())
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(verdict)
}

/// A delivery, as operators read it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub endpoint_id: Uuid,
    /// The event (`webhook-id`).
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub sequence: i32,
    /// PENDING, DELIVERED or DEAD.
    pub status: String,
    pub attempts: i32,
    pub replays: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_latency_ms: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

macro_rules! delivery_columns {
    () => {
        "id, endpoint_id, event_id, order_id, sequence, status, attempts, replays, \
                                next_attempt_at, last_status, last_latency_ms, last_error, created_at, delivered_at"
    };
}

fn delivery(row: &sqlx::postgres::PgRow) -> DeliveryView {
    DeliveryView {
        id: row.get("id"),
        endpoint_id: row.get("endpoint_id"),
        event_id: row.get("event_id"),
        order_id: row.get("order_id"),
        sequence: row.get("sequence"),
        status: row.get("status"),
        attempts: row.get("attempts"),
        replays: row.get("replays"),
        next_attempt_at: row.get("next_attempt_at"),
        last_status: row.get("last_status"),
        last_latency_ms: row.get("last_latency_ms"),
        last_error: row.get("last_error"),
        created_at: row.get("created_at"),
        delivered_at: row.get("delivered_at"),
    }
}

/// The endpoint's deliveries, newest first, of `status` if given.
pub async fn list(
    executor: impl PgExecutor<'_>,
    endpoint_id: Uuid,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "select ",
        delivery_columns!(),
        " from webhook_deliveries
         where endpoint_id = $1 and ($2::text is null or status = $2)
         order by id desc limit $3"
    ))
    .bind(endpoint_id)
    .bind(status)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(rows.iter().map(delivery).collect())
}

/// One attempt in the delivery log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub round: i32,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    /// The endpoint's answer, its first 1 KB.
    pub response: Option<String>,
    pub error: Option<String>,
}

/// A delivery with its attempts, oldest first.
pub async fn find(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<(DeliveryView, Vec<AttemptView>)>, sqlx::Error> {
    let Some(row) = sqlx::query(concat!(
        "select ",
        delivery_columns!(),
        " from webhook_deliveries where id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let attempts = sqlx::query(
        "select round, attempt, started_at, status_code, latency_ms, response, error from webhook_attempts
         where delivery_id = $1 order by round, attempt",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| AttemptView {
        round: row.get("round"),
        attempt: row.get("attempt"),
        started_at: row.get("started_at"),
        status_code: row.get("status_code"),
        latency_ms: row.get("latency_ms"),
        response: row.get("response"),
        error: row.get("error"),
    })
    .collect();
    Ok(Some((delivery(&row), attempts)))
}

/// Sends delivery `id` again (the same `webhook-id`), as a new round of the schedule; answers it.
pub async fn replay(executor: impl PgExecutor<'_>, id: i64) -> Result<Option<DeliveryView>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "update webhook_deliveries
         set status = 'PENDING', attempts = 0, replays = replays + 1, next_attempt_at = now()
         where id = $1 returning ",
        delivery_columns!(),
        ""
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.as_ref().map(delivery))
}

/// Sends the endpoint every event of its types made in `[from, to)` again: those it had as a new round, those it
/// never had (made before it, or while it was disabled) as new deliveries. Answers how many are on their way.
pub async fn replay_range(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let again = sqlx::query(
        r#"update webhook_deliveries d
           set status = 'PENDING', attempts = 0, replays = replays + 1, next_attempt_at = now()
           from order_events e
           where d.endpoint_id = $1 and e.event_id = d.event_id and e.created_at >= $2 and e.created_at < $3"#,
    )
    .bind(endpoint_id)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let new = sqlx::query(
        r#"insert into webhook_deliveries (endpoint_id, event_id, order_id, sequence)
           select w.id, e.event_id, e.order_id, e.sequence
           from order_events e join webhook_endpoints w on w.id = $1
           where e.created_at >= $2 and e.created_at < $3
             and (cardinality(w.event_types) = 0 or e.event_type = any(w.event_types))
           order by e.order_id, e.sequence
           on conflict (endpoint_id, event_id) do nothing"#,
    )
    .bind(endpoint_id)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(again + new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: Option<u16>, retry_after: Option<u64>) -> Attempted {
        Attempted {
            started_at: Utc::now(),
            status,
            latency: Duration::from_millis(5),
            response: None,
            error: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_2xx_delivers_a_410_disables_and_the_rest_follow_the_schedule() {
        let schedule = &RETRY_SCHEDULE;
        assert_eq!(
            verdict(&answered(Some(204), None), 1, schedule),
            Verdict::Delivered
        );
        assert_eq!(verdict(&answered(Some(410), None), 1, schedule), Verdict::Gone);
        assert_eq!(
            verdict(&answered(Some(500), None), 1, schedule),
            Verdict::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            verdict(&answered(None, None), 2, schedule),
            Verdict::Retry(Duration::from_secs(300)),
            "no answer is a failure"
        );
        assert_eq!(
            verdict(&answered(Some(503), Some(60)), 1, schedule),
            Verdict::Retry(Duration::from_secs(60)),
            "Retry-After is honoured when longer"
        );
        assert_eq!(
            verdict(&answered(Some(429), Some(1)), 2, schedule),
            Verdict::Retry(Duration::from_secs(300)),
            "but never sooner than the schedule"
        );
        assert_eq!(verdict(&answered(Some(500), None), 10, schedule), Verdict::Dead);
    }

    #[test]
    fn the_schedule_spans_about_three_days() {
        let total: Duration = RETRY_SCHEDULE.iter().sum();
        assert_eq!(
            total.as_secs(),
            5 + 300 + 1_800 + 7_200 + 18_000 + 36_000 + 50_400 + 72_000 + 86_400
        );
        assert!((70..80).contains(&(total.as_secs() / 3_600)));
    }
}
