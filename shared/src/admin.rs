//! What operators read: sagas (stuck or not), filtered and paged, and how the admin views parse durations. A
//! saga's own story comes from its owners (`step_log`, `queue::views`, `events`, `operator`); what operators do
//! is `operator`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::flow::Step;
use crate::input::{self, FieldError};
use crate::order::{CancelReason, OrderStatus};
use crate::queue::{JobStatus, views};

/// Filters of the saga list.
#[derive(Debug, Clone, Default)]
pub struct SagaFilter {
    pub status: Option<OrderStatus>,
    pub step: Option<Step>,
    /// Created more than this long ago.
    pub older_than: Option<Duration>,
    /// `last_error` contains this (case-insensitive).
    pub error: Option<String>,
    /// Only sagas not over (live or NEEDS_ATTENTION) without progress for longer than this.
    pub stuck_after: Option<Duration>,
    /// The last id of the previous page.
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// The saga list's query as operators send it (`GET /admin/v1/sagas`); empty values count as absent.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct SagaQuery {
    /// Order status (upper case).
    pub status: Option<String>,
    /// Current step (`reserve`, `pay`, `commit`, `fulfil`, `release_inventory`, `cancel_payment`, `ship`,
    /// `release_rest`).
    pub step: Option<String>,
    /// Created longer ago than this (`90s`, `5m`, `2h`, `1d`).
    pub older_than: Option<String>,
    /// `last_error` contains this text.
    pub error: Option<String>,
    /// `true`: only sagas not over without progress for longer than `stuck_after`.
    pub stuck: Option<String>,
    /// The stuck threshold; default `ORDERFLOW_STUCK_AFTER_SECS` (60 s).
    pub stuck_after: Option<String>,
    /// The `next_cursor` of the previous page.
    pub after: Option<String>,
    /// 1–100, default 50.
    pub limit: Option<String>,
}

impl SagaQuery {
    /// The filter the query asks for; `default_stuck_after` when it names no threshold.
    pub fn filter(&self, default_stuck_after: Duration) -> Result<SagaFilter, FieldError> {
        let stuck = match given(&self.stuck) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(FieldError::new(
                    "stuck",
                    format!("{other:?} is not true or false"),
                ));
            }
        };
        let stuck_after = duration("stuck_after", given(&self.stuck_after))?.unwrap_or(default_stuck_after);
        Ok(SagaFilter {
            status: given(&self.status)
                .map(|s| input::one_of("status", s, &OrderStatus::ALL, OrderStatus::as_str))
                .transpose()?,
            step: given(&self.step)
                .map(|s| input::one_of("step", s, &Step::ALL, Step::name))
                .transpose()?,
            older_than: duration("older_than", given(&self.older_than))?,
            error: given(&self.error)
                .map(|text| input::filter_text("error", text))
                .transpose()?,
            stuck_after: stuck.then_some(stuck_after),
            after: input::id_cursor(given(&self.after))?,
            limit: input::limit(self.limit.as_deref(), 50, 100)?,
        })
    }
}

/// A query value, if given and not empty.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn duration(field: &str, raw: Option<&str>) -> Result<Option<Duration>, FieldError> {
    raw.map(|raw| {
        parse_duration(raw).ok_or_else(|| {
            FieldError::new(
                field,
                format!("{raw:?} is not a duration such as 90s, 5m, 2h or 1d, of at most 3650d"),
            )
        })
    })
    .transpose()
}

/// A saga in a list.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaSummary {
    pub id: Uuid,
    pub status: OrderStatus,
    pub current_step: Option<Step>,
    pub customer_id: String,
    pub total: i64,
    pub currency: String,
    pub cancel_reason: Option<CancelReason>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The saga's last progress (a transition or a step handing over).
    pub last_progress_at: DateTime<Utc>,
    /// The job that should move it on.
    #[serde(skip)]
    pub job_id: Option<String>,
    /// That job's apalis status (none once its row is purged).
    pub job_status: Option<JobStatus>,
}

/// A page of sagas, oldest first, with their jobs' statuses.
pub async fn sagas(conn: &mut PgConnection, filter: &SagaFilter) -> Result<Vec<SagaSummary>, sqlx::Error> {
    let mut sagas = sqlx::query_as!(
        SagaSummary,
        r#"select o.id, o.status as "status: _", o.current_step as "current_step: _", o.customer_id, o.total,
                  o.currency, o.cancel_reason as "cancel_reason: _", o.last_error, o.created_at,
                  o.updated_at as last_progress_at, o.job_id, null::text as "job_status: _"
           from orders o
           where ($1::text is null or o.status = $1)
             and ($2::text is null or o.current_step = $2)
             and ($3::float8 is null or o.created_at < now() - make_interval(secs => $3))
             and ($4::text is null or o.last_error ilike '%' || $4 || '%')
             and ($5::float8 is null or (
                   o.status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'FULFILLED', 'CANCELLING',
                                'NEEDS_ATTENTION')
                   and o.current_step is not null
                   and o.updated_at < now() - make_interval(secs => $5)
                   and not exists (select 1 from payments p
                                   where p.order_id = o.id and p.status in ('REQUIRES_ACTION', 'PROCESSING'))))
             and ($6::uuid is null or o.id > $6)
           order by o.id
           limit $7"#,
        filter.status.map(OrderStatus::as_str),
        filter.step.map(Step::name),
        filter.older_than.map(|d| d.as_secs_f64()),
        filter.error.as_deref(),
        filter.stuck_after.map(|d| d.as_secs_f64()),
        filter.after,
        filter.limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let job_ids: Vec<&str> = sagas.iter().filter_map(|s| s.job_id.as_deref()).collect();
    let statuses = views::job_statuses(&mut *conn, &job_ids).await?;
    for saga in &mut sagas {
        saga.job_status = saga.job_id.as_deref().and_then(|id| statuses.get(id)).copied();
    }
    Ok(sagas)
}

/// Live sagas (or parked ones) without progress for longer than `after`. An order with no current step is not
/// stuck: a shipment order waits for the warehouse, a FULFILLED one for nothing (with a refund on its way, it
/// has one). Nor is one whose payment waits for the customer or the provider: its deadline bounds the wait.
pub async fn stuck_count(executor: impl PgExecutor<'_>, after: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "stuck!" from orders
           where status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'FULFILLED', 'CANCELLING',
                            'NEEDS_ATTENTION')
             and current_step is not null
             and updated_at < now() - make_interval(secs => $1)
             and not exists (select 1 from payments p
                             where p.order_id = orders.id and p.status in ('REQUIRES_ACTION', 'PROCESSING'))"#,
        after.as_secs_f64()
    )
    .fetch_one(executor)
    .await
}

/// The longest duration a filter takes (ten years): longer ones are refused, not sent to PostgreSQL to overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3_650 * 86_400);

/// Parses `90`, `90s`, `5m`, `2h`, `1d` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds <= MAX_DURATION.as_secs()).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        for bad in ["", "m", "5 minutes", "-5m", "1.5h", "5w"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
