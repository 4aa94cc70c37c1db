//! The operators' dashboard at `/admin`: server-rendered HTML (askama templates, `crate::pages`), no front-end
//! build. Sign in with an admin token
//! (kept in an HttpOnly, SameSite=Strict cookie scoped to `/admin`); the overview shows the queues and the stuck
//! sagas, a saga's page its timeline (steps, jobs, events, actions) and, for operators, the actions as buttons.
//! Forms carry a CSRF token derived from the session, on top of the SameSite cookie.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use orderflow_shared::admin::{self, SagaFilter};
use orderflow_shared::operator::{self, Action};
use orderflow_shared::queue::views as queue_views;
use orderflow_shared::settings::Role;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{self, Admin};
use crate::{ApiError, AppState};
use crate::{pages, views};

pub const SESSION_COOKIE: &str = "orderflow_admin";

fn csrf_token(session: &str) -> String {
    let digest = Sha256::digest(format!("orderflow-csrf:{session}").as_bytes());
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The signed-in admin and their session token, from the cookie.
fn session(state: &AppState, headers: &HeaderMap) -> Option<(Admin, String)> {
    let token = auth::cookie(headers, SESSION_COOKIE)?;
    auth::authenticate(state, &token).map(|admin| (admin, token))
}

fn sign_in_page(message: Option<&str>) -> Result<Response, ApiError> {
    pages::render(&pages::SignIn {
        title: "Sign in",
        who: None,
        refresh: false,
        message,
    })
}

/// `GET /admin`: the overview, or the sign-in form.
pub async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some((who, _)) = session(&state, &headers) else {
        return sign_in_page(None);
    };
    let queues = queue_views::queue_stats(&state.pool).await?;
    let stuck = admin::sagas(
        &mut *state.pool.acquire().await?,
        &SagaFilter {
            stuck_after: Some(state.admin.stuck_after),
            limit: 100,
            ..SagaFilter::default()
        },
    )
    .await?;
    pages::render(&pages::Overview {
        title: "Overview",
        who: Some(&who),
        refresh: true,
        queues: &queues,
        stuck: &stuck,
        stuck_after_secs: state.admin.stuck_after.as_secs(),
    })
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /admin/login`: checks the token and sets the session cookie.
pub async fn login(State(state): State<AppState>, Form(form): Form<SignIn>) -> Response {
    let token = form.token.trim();
    if auth::authenticate(&state, token).is_none() {
        return match sign_in_page(Some("That token is not valid.")) {
            Ok(page) => (StatusCode::UNAUTHORIZED, page).into_response(),
            Err(error) => error.into_response(),
        };
    }
    let cookie = format!("{SESSION_COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=43200");
    let mut response = Redirect::to("/admin").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /admin/logout`.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/admin").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("orderflow_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// `GET /admin/sagas/{id}`: one saga's timeline, with the actions for operators.
pub async fn saga(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some((who, token)) = session(&state, &headers) else {
        return Ok(Redirect::to("/admin").into_response());
    };
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("saga id {id:?} is not a UUID")))?;
    let detail = views::saga(&state.pool, id, state.admin.stuck_after).await?;
    let csrf = (who.role == Role::Operator).then(|| csrf_token(&token));
    pages::render(&pages::Saga {
        title: &format!("Saga {id}"),
        who: Some(&who),
        refresh: false,
        detail: &detail,
        flash: flash.done.as_deref(),
        csrf: csrf.as_deref(),
        actions: &[
            ("retry", "primary", "Retry now"),
            ("compensate", "danger", "Compensate (cancel)"),
            ("resolve", "", "Resolve (repaired by hand)"),
        ],
    })
}

/// The outcome of the last action, shown once after the redirect.
#[derive(Debug, Deserialize)]
pub struct Flash {
    done: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// `POST /admin/sagas/{id}/{action}`: an operator's button.
pub async fn saga_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let Some((who, token)) = session(&state, &headers) else {
        return Err(ApiError::Unauthorized("sign in first".to_owned()));
    };
    if form.csrf != csrf_token(&token) {
        return Err(ApiError::Forbidden(
            "the form is stale or forged; reload the page".to_owned(),
        ));
    }
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("saga id {id:?} is not a UUID")))?;
    let action = Action::parse(&action).ok_or(ApiError::NotFound {
        what: "action",
        id: action.clone(),
    })?;
    let message = match operator::act(
        &state.pool,
        id,
        action,
        &who.operator(),
        Some("from the dashboard"),
    )
    .await
    {
        Ok(outcome) => format!("{}: {outcome}", action.as_str()),
        Err(error) => match ApiError::from(error) {
            ApiError::Conflict { detail, .. } => format!("{} refused: {detail}", action.as_str()),
            other => return Err(other),
        },
    };
    let query: String = form_urlencoded(&message);
    Ok(Redirect::to(&format!("/admin/sagas/{id}?done={query}")).into_response())
}

/// Percent-encodes a query value (spaces as `+`).
fn form_urlencoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
