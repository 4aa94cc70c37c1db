//! What operators do to a saga (the admin API, the dashboard and the CLI all come here): retry its current step
//! now, compensate it, or resolve a parked one. [`act`] locks the order, checks that its state allows the
//! action, carries it out and records who did it with what outcome (`admin_actions`), in one transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::flow::{self, Step};
use crate::order::{self, CancelReason, Move, OrderStatus, Transition, TransitionError};
use crate::queue::{JobStatus, NextJob, upkeep, views};
use crate::settings::Role;
use crate::step_log;

/// What an operator can do to a saga. Persisted in `admin_actions` by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the current step now (a parked saga: its compensation again).
    Retry,
    /// Cancel the saga: compensations release the stock and void or refund.
    Compensate,
    /// Close a parked saga as CANCELLED after it was repaired by hand.
    Resolve,
}

impl Action {
    pub const ALL: [Action; 3] = [Self::Retry, Self::Compensate, Self::Resolve];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Compensate => "compensate",
            Self::Resolve => "resolve",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == value)
    }
}

/// Who acts: an admin token's owner and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("saga {0} does not exist")]
    NotFound(Uuid),
    /// The caller may read but not act.
    #[error("{0} is a viewer; retry, compensate and resolve need an operator token")]
    ViewerCannotAct(String),
    /// The saga's state does not allow the action; says why.
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

impl From<sqlx::Error> for ActionError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transition(TransitionError::Database(error))
    }
}

/// Carries out `action` on saga `id` for `who` and records it, in one transaction; returns what was done.
#[tracing::instrument(skip_all, fields(order_id = %id, action = action.as_str(), actor = who.name), err)]
pub async fn act(
    pool: &PgPool,
    id: Uuid,
    action: Action,
    who: &Operator,
    note: Option<&str>,
) -> Result<String, ActionError> {
    if who.role != Role::Operator {
        return Err(ActionError::ViewerCannotAct(who.name.clone()));
    }
    let mut tx = pool.begin().await?;
    let outcome = act_in(&mut tx, id, action, who, note).await;
    // A refused action lets go of the order's lock before the answer goes.
    let outcome = crate::db::finish(tx, outcome, true).await?;
    tracing::info!(order_id = %id, action = action.as_str(), actor = who.name, outcome, "operator action");
    Ok(outcome)
}

/// [`act`]'s work inside its transaction, which it leaves to its caller to end.
async fn act_in(
    tx: &mut PgConnection,
    id: Uuid,
    action: Action,
    who: &Operator,
    note: Option<&str>,
) -> Result<String, ActionError> {
    let order = order::lock(&mut *tx, id)
        .await?
        .ok_or(ActionError::NotFound(id))?;
    let by = format!("{} {} by {}", action.as_str(), id, who.name);
    let outcome = match (action, order.status) {
        (Action::Retry, OrderStatus::NeedsAttention) => {
            let step = flow::resume(order.status, order.current_step, false, order.fulfilment)
                .unwrap_or(Step::FIRST_COMPENSATION);
            let attempt = step_log::last_attempt(&mut *tx, id, step).await? + 1;
            let resume = Move {
                transition: Some(Transition::Resume),
                next: Some(NextJob {
                    attempt,
                    ..NextJob::first(step)
                }),
                ..Move::new(&order)
            };
            order::advance(tx, &[resume]).await?;
            format!("resumed the compensation: {step} attempt {attempt} queued")
        }
        (Action::Retry, status) if OrderStatus::LIVE.contains(&status) => {
            let Some(step) = flow::current_step(tx, &order).await? else {
                return Err(ActionError::NotAllowed(format!(
                    "saga {id} has no step to retry: it is {} with nothing on its way (it waits for its shipments or refunds)",
                    order.status
                )));
            };
            if let Some(job_id) = order.job_id.as_deref() {
                let orphaned = running_job_is_orphaned(tx, id, job_id, step).await?;
                views::supersede_job(&mut *tx, job_id, &by, orphaned).await?;
            }
            let attempt = step_log::last_attempt(&mut *tx, id, step).await? + 1;
            let retry = Move {
                next: Some(NextJob {
                    attempt,
                    ..NextJob::first(step)
                }),
                ..Move::new(&order)
            };
            order::advance(tx, &[retry]).await?;
            format!("{step} attempt {attempt} queued to run now")
        }
        (Action::Compensate, OrderStatus::Paid) if crate::shipment::in_flight(&mut *tx, id).await? => {
            return Err(ActionError::NotAllowed(format!(
                "saga {id} has a shipment being captured: compensate it once that ends"
            )));
        }
        (Action::Compensate, OrderStatus::Created | OrderStatus::Reserved | OrderStatus::Paid) => {
            if let Some(job_id) = order.job_id.as_deref() {
                views::supersede_job(&mut *tx, job_id, &by, false).await?;
            }
            flow::start_cancellation(tx, &order, CancelReason::OperatorRequest, None).await?;
            format!("compensation started: {} queued", Step::FIRST_COMPENSATION)
        }
        (Action::Resolve, OrderStatus::NeedsAttention) => {
            let resolve = Move {
                transition: Some(Transition::Resolve),
                ..Move::new(&order)
            };
            order::advance(tx, &[resolve]).await?;
            "marked CANCELLED after manual repair".to_owned()
        }
        (Action::Retry, status) => {
            return Err(ActionError::NotAllowed(format!(
                "saga {id} is {status}: there is nothing to retry"
            )));
        }
        (Action::Compensate, status) => {
            return Err(ActionError::NotAllowed(format!(
                "saga {id} is {status}: only CREATED, RESERVED or PAID sagas can be compensated"
            )));
        }
        (Action::Resolve, status) => {
            return Err(ActionError::NotAllowed(format!(
                "saga {id} is {status}: only a NEEDS_ATTENTION saga can be resolved"
            )));
        }
    };
    record(&mut *tx, id, action, who, &outcome, note).await?;
    Ok(outcome)
}

/// Whether the saga's job may be superseded although a worker fetched it: only if that worker is gone. A job
/// running on a live worker refuses the retry (two jobs must never drive one saga).
async fn running_job_is_orphaned(
    conn: &mut PgConnection,
    order_id: Uuid,
    job_id: &str,
    step: Step,
) -> Result<bool, ActionError> {
    let dead = upkeep::stranded_job(conn, Some(job_id)).await?;
    let job = views::jobs_of_order(&mut *conn, order_id)
        .await?
        .into_iter()
        .find(|j| j.id == job_id);
    let running_on = job
        .filter(|j| matches!(j.status, Some(JobStatus::Queued | JobStatus::Running)))
        .and_then(|j| j.worker);
    match running_on {
        Some(worker) if dead.is_none() => {
            if views::worker_alive(&mut *conn, &worker).await? {
                return Err(ActionError::NotAllowed(format!(
                    "{step} is running now on {worker}; retry once it has finished or failed"
                )));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An operator's action on a saga, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordedAction {
    pub action: String,
    pub actor: String,
    pub role: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

async fn record(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    action: Action,
    who: &Operator,
    outcome: &str,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into admin_actions (order_id, action, actor, role, outcome, detail) values ($1, $2, $3, $4, $5, $6)",
        order_id,
        action.as_str(),
        who.name,
        who.role.as_str(),
        outcome,
        note
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// The actions operators took on the saga, oldest first.
pub async fn actions_of(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Vec<RecordedAction>, sqlx::Error> {
    sqlx::query_as!(
        RecordedAction,
        "select action, actor, role, outcome, detail, created_at as at from admin_actions where order_id = $1 order by id",
        order_id
    )
    .fetch_all(executor)
    .await
}
