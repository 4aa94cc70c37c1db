//! What the reconciler repairs on apalis's tables: jobs held by workers that are gone, queues with jobs due that
//! nobody was woken for, sagas whose job ended without moving them on, and Done rows past their retention.
//!
//! Worker names are `<queue>@<instance>#<generation>` (see `orderflow_worker::instance_name`), and each worker
//! process keeps a connection whose `application_name` is its instance. A fetched job's worker is gone when no
//! connection of its instance is open (the process died, even by `kill -9`: the kernel closes its sockets and
//! PostgreSQL ends their sessions at once) or when a later generation of the same queue worker registered (the
//! process restarted that queue worker). Neither test involves a clock, so a slow worker is never taken for a
//! dead one.

use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::queue::{JobStatus, StepJob};

/// A job taken back from a worker that is gone.
#[derive(Debug, Clone)]
pub struct RescuedJob {
    pub id: String,
    pub queue: String,
    /// The worker that held it.
    pub worker: String,
    /// `Pending` (runs again now) or `Killed` (it used up apalis's attempts; the reconciler settles its saga).
    pub status: JobStatus,
}

/// Puts the fetched jobs of gone workers back to Pending, on the given queues. A job that keeps losing its
/// worker (one that crashes the process, say) is marked Killed once it reaches its max_attempts, so it cannot
/// loop; its saga is then settled as a failed attempt. Claims rows with SKIP LOCKED: safe from many processes.
pub async fn rescue_orphaned_jobs(
    executor: impl PgExecutor<'_>,
    queues: &[&str],
) -> Result<Vec<RescuedJob>, sqlx::Error> {
    sqlx::query_as!(
        RescuedJob,
        r#"with live as (
               select distinct application_name from pg_stat_activity where application_name <> ''
           ),
           orphaned as (
               select j.id, j.lock_by
               from apalis.jobs j
               where j.status in ('Queued', 'Running')
                 and j.job_type = any($1)
                 and j.lock_by is not null
                 and (
                     substring(j.lock_by from '@([^@#]+)#[0-9]+$') not in (select application_name from live)
                     or exists (
                         select 1 from apalis.workers w
                         where w.worker_type = j.job_type
                           and substring(w.id from '^(.*)#[0-9]+$') = substring(j.lock_by from '^(.*)#[0-9]+$')
                           and substring(w.id from '#([0-9]+)$')::bigint
                               > substring(j.lock_by from '#([0-9]+)$')::bigint
                     )
                 )
               for update of j skip locked
           )
           update apalis.jobs j
           set status = case when j.attempts + 1 >= j.max_attempts then 'Killed' else 'Pending' end,
               done_at = case when j.attempts + 1 >= j.max_attempts then now() end,
               lock_by = null,
               lock_at = null,
               attempts = j.attempts + 1,
               last_result = jsonb_build_object('Err', 'its worker ' || orphaned.lock_by || ' is gone')
           from orphaned
           where j.id = orphaned.id
           returning j.id, j.job_type as queue, orphaned.lock_by as "worker!", j.status as "status: _""#,
        queues as &[&str]
    )
    .fetch_all(executor)
    .await
}

/// Wakes the workers of every queue that has a job due and waiting, with the notification apalis sends for a
/// new job: nothing is notified when a delayed retry comes due or a rescued job goes back to Pending, and an
/// idle queue's own timer (`ORDERFLOW_WORKER_POLL_MS`) may be slower than the reconciler. Returns the queues
/// woken.
pub async fn wake_due_queues(pool: &PgPool, queues: &[&str]) -> Result<u64, sqlx::Error> {
    let due = sqlx::query_scalar!(
        r#"select q.job_type as "job_type!"
           from unnest($1::text[]) as q(job_type)
           where exists (
               select 1 from apalis.jobs j
               where j.job_type = q.job_type and j.status = 'Pending' and j.run_at <= now()
           )"#,
        queues as &[&str]
    )
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let due: Vec<&str> = due.iter().map(String::as_str).collect();
    super::announce::notify(pool, &due).await?;
    Ok(u64::try_from(due.len()).unwrap_or(u64::MAX))
}

/// Puts back to Pending whatever this worker instance still holds: called at the end of a graceful shutdown,
/// when its steps have finished, so the next worker need not wait for the reconciler.
pub async fn release_jobs_of(executor: impl PgExecutor<'_>, instance: &str) -> Result<u64, sqlx::Error> {
    let released = sqlx::query!(
        r#"update apalis.jobs
           set status = 'Pending', lock_by = null, lock_at = null,
               last_result = jsonb_build_object('Err', 'released at shutdown by ' || lock_by)
           where status in ('Queued', 'Running')
             and substring(lock_by from '@([^@#]+)#[0-9]+$') = $1"#,
        instance
    )
    .execute(executor)
    .await?;
    Ok(released.rows_affected())
}

/// Live sagas whose job no longer moves them on: it finished (Done, Killed, or Failed with no apalis attempt
/// left) or it is gone. Oldest first. A saga without a current step is not one: an order that waits for a client
/// ([`crate::order::OrderRow::waits`]: a shipment order in PAID, a FULFILLED order), which the index leaves out
/// too. Read without locks; `stranded_job` checks one again under the order lock.
/// The live statuses are spelled out, not bound: a literal list lets PostgreSQL use the partial index
/// `orders_live_updated_at_idx` in a generic plan; a unit test keeps it equal to `OrderStatus::LIVE`.
pub async fn stranded_sagas(executor: impl PgExecutor<'_>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select o.id from orders o left join apalis.jobs j on j.id = o.job_id
           where o.status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'FULFILLED', 'CANCELLING')
             and o.current_step is not null
             and (j.id is null or j.status in ('Done', 'Killed')
                  or (j.status = 'Failed' and j.attempts >= j.max_attempts))
           order by o.updated_at limit $1"#,
        limit
    )
    .fetch_all(executor)
    .await
}

/// The order's job as it is now, if it no longer moves the saga on: `Some((status or None if gone, the job's
/// attempt))`. `None` when the job is alive (pending, scheduled, running, or failed with apalis retries left).
pub async fn stranded_job(
    conn: &mut PgConnection,
    job_id: Option<&str>,
) -> Result<Option<DeadJob>, sqlx::Error> {
    let Some(job_id) = job_id else {
        return Ok(Some(DeadJob::default()));
    };
    let row = sqlx::query_as!(
        JobRow,
        r#"select status as "status: _", attempts, max_attempts, job, last_result from apalis.jobs where id = $1"#,
        job_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(JobRow {
        status,
        attempts,
        max_attempts,
        job: payload,
        last_result,
    }) = row
    else {
        return Ok(Some(DeadJob {
            id: Some(job_id.to_owned()),
            ..DeadJob::default()
        }));
    };
    let dead = matches!(status, JobStatus::Done | JobStatus::Killed)
        || (status == JobStatus::Failed && attempts >= max_attempts);
    if !dead {
        return Ok(None);
    }
    let attempt = serde_json::from_slice::<StepJob>(&payload)
        .map(|job| job.attempt)
        .ok();
    Ok(Some(DeadJob {
        id: Some(job_id.to_owned()),
        status: Some(status),
        attempt,
        last_result,
    }))
}

struct JobRow {
    status: JobStatus,
    attempts: i32,
    max_attempts: i32,
    job: Vec<u8>,
    last_result: Option<serde_json::Value>,
}

/// A job that ended without moving its saga on.
#[derive(Debug, Clone, Default)]
pub struct DeadJob {
    pub id: Option<String>,
    /// Its apalis status; `None` when the row is gone.
    pub status: Option<JobStatus>,
    /// The step attempt it carried.
    pub attempt: Option<u32>,
    pub last_result: Option<serde_json::Value>,
}

impl DeadJob {
    /// What happened, for the step log and `orders.last_error`.
    pub fn describe(&self) -> String {
        match (&self.id, &self.status) {
            (None, _) => "the saga has no job".to_owned(),
            (Some(id), None) => format!("job {id} is gone"),
            (Some(id), Some(status)) => match &self.last_result {
                Some(result) => format!(
                    "job {id} ended {} without moving the saga on ({result})",
                    status.as_str()
                ),
                None => format!("job {id} ended {} without moving the saga on", status.as_str()),
            },
        }
    }
}

/// Deletes up to `limit` Done jobs that finished more than `older_than` ago; returns how many it deleted. apalis
/// never deletes a job, so without this `apalis.jobs` and its indexes grow with every job ever run, and
/// every fetch and completion pays for it. Failed and Killed jobs stay for operators; a saga's own record of its
/// jobs (`saga_jobs`) stays too, and the admin views show a deleted job with no apalis status. For the
/// reconciler, a live saga whose current job was Done and is now gone is stranded either way.
pub async fn purge_done_jobs(
    executor: impl PgExecutor<'_>,
    older_than: std::time::Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query!(
        r#"delete from apalis.jobs where id in (
               select id from apalis.jobs
               where status = 'Done' and done_at < now() - make_interval(secs => $1)
               limit $2 for update skip locked)"#,
        older_than.as_secs_f64(),
        limit
    )
    .execute(executor)
    .await?
    .rows_affected();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use crate::order::OrderStatus;

    #[test]
    fn the_spelled_out_live_statuses_are_order_status_live() {
        let live: Vec<String> = OrderStatus::LIVE
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let spelled = format!("where o.status in ({})", live.join(", "));
        assert!(
            include_str!("upkeep.rs").contains(&spelled),
            "stranded_sagas does not say {spelled}"
        );
    }
}
