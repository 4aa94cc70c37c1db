//! The admin API under `/admin/v1`: queues, sagas (stuck or not) and one saga's whole story, for viewers; and
//! for operators the actions retry, compensate and resolve, each recorded with who and when.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use orderflow_shared::admin::{self, AdminAction, QueueStats, SagaFilter, SagaJob, SagaSummary, StepAttempt};
use orderflow_shared::jobs::{self, Step, StepJob};
use orderflow_shared::order::{self, CancelReason, OrderStatus, Transition};
use orderflow_shared::{events, recovery};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Admin;
use crate::extract::{OptionalJson, OrderId, limit_param};
use crate::routes::orders::{EventView, OrderView, load_view};
use crate::{ApiError, AppState};

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueList {
    pub queues: Vec<QueueStats>,
}

#[utoipa::path(get, path = "/admin/v1/queues", security(("bearer" = [])), responses(
    (status = 200, description = "Per queue: pending, scheduled, running, failed and dead jobs, oldest pending age", body = QueueList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
))]
pub async fn queues(State(state): State<AppState>, _admin: Admin) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(QueueList {
        queues: admin::queues(&state.pool).await?,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct SagaParams {
    /// Order status (upper case).
    pub status: Option<String>,
    /// Current step (`reserve`, `pay`, `commit`, `fulfil`, `release_inventory`, `cancel_payment`).
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SagaList {
    pub sagas: Vec<SagaSummary>,
    pub next_cursor: Option<String>,
}

fn duration_param(field: &str, raw: Option<&str>) -> Result<Option<Duration>, ApiError> {
    raw.map(|raw| {
        admin::parse_duration(raw).ok_or_else(|| {
            ApiError::validation(
                field,
                format!("{raw:?} is not a duration such as 90s, 5m, 2h or 1d"),
            )
        })
    })
    .transpose()
}

/// Parses and checks the list's parameters.
pub(crate) fn saga_filter(
    params: &SagaParams,
    default_stuck_after: Duration,
) -> Result<SagaFilter, ApiError> {
    let status = params
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            OrderStatus::parse(s)
                .map(|s| s.as_str().to_owned())
                .ok_or_else(|| {
                    let known: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::validation("status", format!("{s:?} is not one of {}", known.join(", ")))
                })
        })
        .transpose()?;
    let step = params
        .step
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            Step::parse(s).map(|s| s.name().to_owned()).ok_or_else(|| {
                let known: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
                ApiError::validation("step", format!("{s:?} is not one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let stuck = match params.stuck.as_deref() {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::validation(
                "stuck",
                format!("{other:?} is not true or false"),
            ));
        }
    };
    let stuck_after =
        duration_param("stuck_after", params.stuck_after.as_deref())?.unwrap_or(default_stuck_after);
    let limit = limit_param(params.limit.as_deref(), 50, 100)?;
    let after = params
        .after
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|raw| {
            Uuid::parse_str(raw)
                .map_err(|_| ApiError::validation("after", format!("{raw:?} is not a cursor")))
        })
        .transpose()?;
    Ok(SagaFilter {
        status,
        step,
        older_than: duration_param("older_than", params.older_than.as_deref())?,
        error: params.error.clone().filter(|e| !e.is_empty()),
        stuck_after: stuck.then_some(stuck_after),
        after,
        limit,
    })
}

#[utoipa::path(get, path = "/admin/v1/sagas", params(SagaParams), security(("bearer" = [])), responses(
    (status = 200, description = "Sagas oldest first", body = SagaList),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 422, description = "A parameter is invalid; `field` names it", body = crate::error::Problem),
))]
pub async fn sagas(
    State(state): State<AppState>,
    _admin: Admin,
    Query(params): Query<SagaParams>,
) -> Result<Json<SagaList>, ApiError> {
    let filter = saga_filter(&params, state.admin.stuck_after)?;
    let sagas = admin::sagas(&state.pool, &filter).await?;
    let next_cursor = (sagas.len() as i64 == filter.limit)
        .then(|| sagas.last().map(|s| s.id.to_string()))
        .flatten();
    Ok(Json(SagaList { sagas, next_cursor }))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrentJob {
    pub id: String,
    pub status: Option<String>,
    pub worker: Option<String>,
    /// Whether the worker holding it is still connected (false: the reconciler will take it back).
    pub worker_alive: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaDetail {
    pub order: OrderView,
    /// Not over and without progress for longer than the stuck threshold.
    pub stuck: bool,
    pub last_progress_at: DateTime<Utc>,
    /// The job that should move the saga on.
    pub current_job: Option<CurrentJob>,
    pub steps: Vec<StepAttempt>,
    pub jobs: Vec<SagaJob>,
    pub events: Vec<EventView>,
    pub actions: Vec<AdminAction>,
}

pub(crate) async fn saga_detail(state: &AppState, id: Uuid) -> Result<SagaDetail, ApiError> {
    let order = load_view(&state.pool, id).await?;
    let row = order::find(&state.pool, id).await?.ok_or(ApiError::NotFound {
        what: "saga",
        id: id.to_string(),
    })?;
    let jobs = admin::jobs(&state.pool, id).await?;
    let current_job = match row.job_id.as_deref() {
        None => None,
        Some(job_id) => {
            let job = jobs.iter().find(|j| j.id == job_id);
            let worker = job.and_then(|j| j.worker.clone());
            let worker_alive = match &worker {
                Some(w) => Some(admin::worker_alive(&state.pool, w).await?),
                None => None,
            };
            Some(CurrentJob {
                id: job_id.to_owned(),
                status: job.and_then(|j| j.status.clone()),
                worker,
                worker_alive,
            })
        }
    };
    let over = row.status().is_terminal();
    let stuck = !over
        && (Utc::now() - row.updated_at)
            .to_std()
            .is_ok_and(|age| age > state.admin.stuck_after);
    Ok(SagaDetail {
        order,
        stuck,
        last_progress_at: row.updated_at,
        current_job,
        steps: admin::steps(&state.pool, id).await?,
        jobs,
        events: events::for_order(&state.pool, id)
            .await?
            .into_iter()
            .map(EventView::from)
            .collect(),
        actions: admin::actions(&state.pool, id).await?,
    })
}

#[utoipa::path(get, path = "/admin/v1/sagas/{id}", security(("bearer" = [])), responses(
    (status = 200, description = "The saga: order, steps with attempts, timings, errors and workers, jobs, events, operator actions", body = SagaDetail),
    (status = 401, description = "No or an unknown admin token", body = crate::error::Problem),
    (status = 404, description = "No such saga", body = crate::error::Problem),
))]
pub async fn saga(
    State(state): State<AppState>,
    _admin: Admin,
    OrderId(id): OrderId,
) -> Result<Json<SagaDetail>, ApiError> {
    Ok(Json(saga_detail(&state, id).await?))
}

/// What an operator can do to a saga.
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Compensate => "compensate",
            Self::Resolve => "resolve",
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ActionRequest {
    /// Why, for the record.
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionResult {
    pub action: String,
    pub actor: String,
    /// What was done.
    pub outcome: String,
    pub order: OrderView,
}

/// Carries out `action` on the saga for `who` and records it, in one transaction. 409 when the saga's state
/// does not allow it.
pub(crate) async fn act(
    state: &AppState,
    id: Uuid,
    action: Action,
    who: &Admin,
    note: Option<&str>,
) -> Result<String, ApiError> {
    who.require_operator()?;
    let conflict = |detail: String| ApiError::Conflict {
        slug: "action-not-allowed",
        detail,
    };
    let mut tx = state.pool.begin().await?;
    let row = order::lock(&mut tx, id).await?.ok_or(ApiError::NotFound {
        what: "saga",
        id: id.to_string(),
    })?;
    let by = format!("{} {} by {}", action.as_str(), id, who.name);
    let status = row.status();
    let outcome = match (action, status) {
        (Action::Retry, OrderStatus::NeedsAttention) => {
            let step = row
                .current_step
                .as_deref()
                .and_then(Step::parse)
                .filter(|s| s.is_compensation())
                .unwrap_or(Step::ReleaseInventory);
            order::transition(&mut tx, &row, Transition::Resume, Some(step.name()), None).await?;
            let attempt = recovery::last_logged_attempt(&mut *tx, id, step.name()).await? + 1;
            enqueue_now(&mut tx, step, id, attempt).await?;
            format!(
                "resumed the compensation: {} attempt {attempt} queued",
                step.name()
            )
        }
        (Action::Retry, s) if OrderStatus::LIVE.contains(&s) => {
            let step = recovery::current_step(&mut tx, &row).await?;
            if let Some(job_id) = row.job_id.as_deref() {
                let current = recovery::stranded_job(&mut tx, Some(job_id)).await?;
                let job = admin::jobs(&mut *tx, id)
                    .await?
                    .into_iter()
                    .find(|j| j.id == job_id);
                let running_on = job
                    .filter(|j| matches!(j.status.as_deref(), Some("Queued" | "Running")))
                    .and_then(|j| j.worker);
                let orphaned = match &running_on {
                    Some(worker) if current.is_none() => {
                        if admin::worker_alive(&mut *tx, worker).await? {
                            return Err(conflict(format!(
                                "{} is running now on {worker}; retry once it has finished or failed",
                                step.name()
                            )));
                        }
                        true
                    }
                    _ => false,
                };
                admin::supersede_job(&mut *tx, job_id, &by, orphaned).await?;
            }
            let attempt = recovery::last_logged_attempt(&mut *tx, id, step.name()).await? + 1;
            enqueue_now(&mut tx, step, id, attempt).await?;
            format!("{} attempt {attempt} queued to run now", step.name())
        }
        (Action::Compensate, OrderStatus::Created | OrderStatus::Reserved | OrderStatus::Paid) => {
            if let Some(job_id) = row.job_id.as_deref() {
                admin::supersede_job(&mut *tx, job_id, &by, false).await?;
            }
            order::transition(
                &mut tx,
                &row,
                Transition::StartCancel(CancelReason::OperatorRequest),
                Some(Step::ReleaseInventory.name()),
                None,
            )
            .await?;
            enqueue_now(&mut tx, Step::ReleaseInventory, id, 1).await?;
            "compensation started: release_inventory queued".to_owned()
        }
        (Action::Resolve, OrderStatus::NeedsAttention) => {
            order::transition(&mut tx, &row, Transition::Resolve, None, None).await?;
            "marked CANCELLED after manual repair".to_owned()
        }
        (Action::Retry, s) => return Err(conflict(format!("saga {id} is {s}: there is nothing to retry"))),
        (Action::Compensate, s) => {
            return Err(conflict(format!(
                "saga {id} is {s}: only CREATED, RESERVED or PAID sagas can be compensated"
            )));
        }
        (Action::Resolve, s) => {
            return Err(conflict(format!(
                "saga {id} is {s}: only a NEEDS_ATTENTION saga can be resolved"
            )));
        }
    };
    admin::record_action(
        &mut *tx,
        id,
        action.as_str(),
        &who.name,
        who.role.as_str(),
        &outcome,
        note,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(order_id = %id, action = action.as_str(), actor = who.name, outcome, "operator action");
    Ok(outcome)
}

async fn enqueue_now(
    conn: &mut sqlx::PgConnection,
    step: Step,
    order_id: Uuid,
    attempt: u32,
) -> Result<(), ApiError> {
    let job = StepJob {
        order_id,
        attempt,
        trace: None,
    };
    jobs::enqueue(conn, step, job, None).await?;
    Ok(())
}

async fn act_json(
    state: AppState,
    admin: Admin,
    id: Uuid,
    action: Action,
    body: Option<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    let note = body
        .and_then(|b| b.note)
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > 500) {
        return Err(ApiError::validation("note", "must be at most 500 characters"));
    }
    let outcome = act(&state, id, action, &admin, note.as_deref()).await?;
    Ok(Json(ActionResult {
        action: action.as_str().to_owned(),
        actor: admin.name,
        outcome,
        order: load_view(&state.pool, id).await?,
    }))
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/retry", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "The current step (or a parked saga's compensation) queued to run now", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "Nothing to retry, or the step is running now", body = crate::error::Problem),
))]
pub async fn retry(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act_json(state, admin, id, Action::Retry, body).await
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/compensate", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "CANCELLING with reason operator_request; compensations queued", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "The saga is already cancelling or over", body = crate::error::Problem),
))]
pub async fn compensate(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act_json(state, admin, id, Action::Compensate, body).await
}

#[utoipa::path(post, path = "/admin/v1/sagas/{id}/resolve", request_body(content = Option<ActionRequest>), security(("bearer" = [])), responses(
    (status = 200, description = "A NEEDS_ATTENTION saga closed as CANCELLED after manual repair", body = ActionResult),
    (status = 403, description = "A viewer token", body = crate::error::Problem),
    (status = 409, description = "The saga does not need attention", body = crate::error::Problem),
))]
pub async fn resolve(
    State(state): State<AppState>,
    admin: Admin,
    OrderId(id): OrderId,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> Result<Json<ActionResult>, ApiError> {
    act_json(state, admin, id, Action::Resolve, body).await
}
