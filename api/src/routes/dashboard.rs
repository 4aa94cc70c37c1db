//! The operators' dashboard at `/admin`: server-rendered HTML (askama templates, `crate::pages`), no front-end
//! build. Sign in with an admin token
//! (kept in an HttpOnly, SameSite=Strict cookie scoped to `/admin`); the overview shows the queues and the stuck
//! sagas, a saga's page its timeline (steps, jobs, events, actions) and, for operators, the actions as buttons;
//! the keys page lists the API keys and lets operators create (the secret shown once) and revoke them.
//! Forms carry a CSRF token derived from the session, on top of the SameSite cookie.

use std::fmt::Write as _;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use orderflow_shared::admin::{self, SagaFilter};
use orderflow_shared::api_key::{self, CreatedKey, NewKeyRequest, Scope};
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
    let (who, _) = signed_in_form(&state, &headers, Some(&form.csrf))?;
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

/// `GET /admin/keys`: the API keys; for operators the forms to create and revoke them.
pub async fn keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some((who, token)) = session(&state, &headers) else {
        return Ok(Redirect::to("/admin").into_response());
    };
    keys_page(&state, &who, &token, None, flash.done.as_deref()).await
}

async fn keys_page(
    state: &AppState,
    who: &Admin,
    token: &str,
    created: Option<&CreatedKey>,
    flash: Option<&str>,
) -> Result<Response, ApiError> {
    let keys = api_key::list(&state.pool).await?;
    let csrf = (who.role == Role::Operator).then(|| csrf_token(token));
    pages::render(&pages::Keys {
        title: "API keys",
        who: Some(who),
        refresh: false,
        keys: &keys,
        created,
        flash,
        csrf: csrf.as_deref(),
        scopes: &Scope::ALL,
        default_rate: state.key_settings.default_rate,
    })
}

/// The signed-in admin who sent a dashboard form, and their session, its CSRF token checked.
fn signed_in_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(Admin, String), ApiError> {
    let Some((who, token)) = session(state, headers) else {
        return Err(ApiError::Unauthorized("sign in first".to_owned()));
    };
    if csrf != Some(csrf_token(&token).as_str()) {
        return Err(ApiError::Forbidden(
            "the form is stale or forged; reload the page".to_owned(),
        ));
    }
    Ok((who, token))
}

/// The signed-in operator who sent a dashboard form about keys.
fn operator_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(Admin, String), ApiError> {
    let (who, token) = signed_in_form(state, headers, csrf)?;
    who.must_operate("manage API keys")?;
    Ok((who, token))
}

/// `POST /admin/keys`: an operator creates a key; the answer is the keys page with the secret, shown once.
/// The form's fields as pairs, since `scope` repeats (one per ticked box).
pub async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (who, token) = operator_form(&state, &headers, field("csrf"))?;
    let rate = match field("rate_per_second").map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i32>()
            .map(Some)
            .map_err(|_| format!("the rate {text:?} is not a whole number")),
    };
    let request = rate.map(|rate_per_second| NewKeyRequest {
        name: field("name").unwrap_or_default().to_owned(),
        scopes: fields
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect(),
        rate_per_second,
    });
    let outcome = match request {
        Ok(request) => {
            let mut conn = state.pool.acquire().await?;
            api_key::create(
                &mut conn,
                &request,
                state.key_settings.default_rate,
                &who.name,
                who.role,
            )
            .await
            .map_err(ApiError::from)
        }
        Err(message) => Err(ApiError::validation("rate_per_second", message)),
    };
    match outcome {
        Ok(created) => keys_page(&state, &who, &token, Some(&created), None).await,
        Err(ApiError::Validation { field, message }) => {
            let refused = format!("Not created: {field} {message}");
            let page = keys_page(&state, &who, &token, None, Some(&refused)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(other) => Err(other),
    }
}

/// `POST /admin/keys/{id}/revoke`: an operator's button.
pub async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let (who, _) = operator_form(&state, &headers, Some(&form.csrf))?;
    let not_found = || ApiError::NotFound {
        what: "key",
        id: id.clone(),
    };
    let key_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let key = api_key::revoke(&state.pool, key_id, &who.name, who.role)
        .await?
        .ok_or_else(not_found)?;
    let message = format!("Revoked {} ({})", key.name, key.hint);
    Ok(Redirect::to(&format!("/admin/keys?done={}", form_urlencoded(&message))).into_response())
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
