//! The operators' dashboard at `/admin`: server-rendered HTML (askama templates, `crate::pages`), no front-end
//! build. Signing in with an admin token opens a server-side session (`crate::session`: a random id in an
//! HttpOnly, SameSite=Strict, Secure cookie scoped to `/admin`); the overview shows the queues and the stuck
//! sagas, a saga's page its timeline (steps, jobs, events, actions) and, for operators, the actions as buttons;
//! the keys page lists the API keys and lets operators create (the secret shown once) and revoke them.
//! Every form, sign-in and sign-out included, carries a CSRF token bound to the session (or the sign-in nonce).

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use orderflow_shared::admin::{self, SagaFilter};
use orderflow_shared::admin_session;
use orderflow_shared::api_key::{self, CreatedKey, NewKeyRequest, Scope};
use orderflow_shared::operator::{self, Action};
use orderflow_shared::queue::views as queue_views;
use orderflow_shared::settings::Role;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth;
use crate::session::{self, SignedIn};
use crate::{ApiError, AppState};
use crate::{pages, views};

/// The sign-in page, with a fresh sign-in nonce (its cookie) and the form's CSRF token bound to it.
fn sign_in_page(
    state: &AppState,
    request: &HeaderMap,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let nonce = admin_session::new_id();
    let csrf = state.dashboard.csrf(session::SIGN_IN_FORM, &nonce);
    let page = pages::render(&pages::SignIn {
        title: "Sign in",
        who: None,
        refresh: false,
        message,
        csrf: &csrf,
    });
    match page {
        Ok(page) => {
            let mut response = (status, page).into_response();
            session::set_cookie(
                &mut response,
                request,
                session::SIGN_IN_COOKIE,
                &nonce,
                Duration::from_secs(3600),
            );
            response
        }
        Err(error) => error.into_response(),
    }
}

/// `GET /admin`: the overview, or the sign-in form.
pub async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(sign_in_page(&state, &headers, StatusCode::OK, None));
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
        admission: &state.admission.view(),
        stuck: &stuck,
        stuck_after_secs: state.admin.stuck_after.as_secs(),
    })
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    token: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// `POST /admin/login`: checks the form's CSRF token and the admin token, opens a session and sets its cookie.
/// A client past its failed sign-ins waits (429); each failure is logged with the client's address.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<SignIn>,
) -> Result<Response, ApiError> {
    let client = session::client(extensions.get());
    if let Err(wait) = state.dashboard.sign_in_allowed(client) {
        tracing::warn!(%client, "dashboard sign-in refused: too many failures from this address");
        let mut response = sign_in_page(
            &state,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!("Too many failed sign-ins; try again in {wait} s.")),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    let nonce = auth::cookie(&headers, session::SIGN_IN_COOKIE).unwrap_or_default();
    if !state
        .dashboard
        .csrf_matches(session::SIGN_IN_FORM, &nonce, form.csrf.as_deref())
    {
        return Ok(sign_in_page(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            Some("The sign-in form was stale or forged; try again."),
        ));
    }
    let token = form.token.trim();
    let Some(admin) = auth::authenticate(&state, token) else {
        state.dashboard.sign_in_failed(client);
        tracing::warn!(%client, "dashboard sign-in failed: the token is not valid");
        return Ok(sign_in_page(
            &state,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid."),
        ));
    };
    let id = admin_session::new_id();
    admin_session::open(&state.pool, &id, token, &admin.name).await?;
    tracing::info!(%client, admin = %admin.name, "dashboard sign-in");
    let mut response = Redirect::to("/admin").into_response();
    session::set_cookie(
        &mut response,
        &headers,
        session::SESSION_COOKIE,
        &id,
        admin_session::LIFETIME,
    );
    session::set_cookie(
        &mut response,
        &headers,
        session::SIGN_IN_COOKIE,
        "",
        Duration::ZERO,
    );
    Ok(response)
}

/// `POST /admin/logout`: ends the session for good (its CSRF token checked) and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let who = signed_in_form(&state, &headers, Some(&form.csrf)).await?;
    admin_session::close(&state.pool, &who.id).await?;
    let mut response = Redirect::to("/admin").into_response();
    session::set_cookie(
        &mut response,
        &headers,
        session::SESSION_COOKIE,
        "",
        Duration::ZERO,
    );
    Ok(response)
}

/// `GET /admin/sagas/{id}`: one saga's timeline, with the actions for operators.
pub async fn saga(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(Redirect::to("/admin").into_response());
    };
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::BadRequest(format!("saga id {id:?} is not a UUID")))?;
    let detail = views::saga(&state.pool, id, state.admin.stuck_after).await?;
    let csrf = (who.role == Role::Operator).then_some(who.csrf.as_str());
    pages::render(&pages::Saga {
        title: &format!("Saga {id}"),
        who: Some(&who),
        refresh: false,
        detail: &detail,
        flash: flash.done.as_deref(),
        csrf,
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
    pub(crate) done: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    pub(crate) csrf: String,
}

/// `POST /admin/sagas/{id}/{action}`: an operator's button.
pub async fn saga_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let who = signed_in_form(&state, &headers, Some(&form.csrf)).await?;
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
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(Redirect::to("/admin").into_response());
    };
    keys_page(&state, &who, None, flash.done.as_deref()).await
}

async fn keys_page(
    state: &AppState,
    who: &SignedIn,
    created: Option<&CreatedKey>,
    flash: Option<&str>,
) -> Result<Response, ApiError> {
    let keys = api_key::list(&state.pool).await?;
    let csrf = (who.role == Role::Operator).then_some(who.csrf.as_str());
    pages::render(&pages::Keys {
        title: "API keys",
        who: Some(who),
        refresh: false,
        keys: &keys,
        created,
        flash,
        csrf,
        scopes: &Scope::ALL,
        default_rate: state.key_settings.default_rate,
    })
}

/// The signed-in admin who sent a dashboard form, its CSRF token checked against their session.
pub(crate) async fn signed_in_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<SignedIn, ApiError> {
    let Some(who) = session::signed_in(state, headers).await? else {
        return Err(ApiError::Unauthorized("sign in first".to_owned()));
    };
    if !state
        .dashboard
        .csrf_matches(session::SESSION_FORMS, &who.id, csrf)
    {
        return Err(ApiError::Forbidden(
            "the form is stale or forged; reload the page".to_owned(),
        ));
    }
    Ok(who)
}

/// The signed-in operator who sent a dashboard form to `action` (for the refusal of a viewer).
pub(crate) async fn operator_form(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
    action: &str,
) -> Result<SignedIn, ApiError> {
    let who = signed_in_form(state, headers, csrf).await?;
    who.must_operate(action)?;
    Ok(who)
}

/// What an operator does on the keys page.
const KEYS: &str = "manage API keys";

/// `POST /admin/keys`: an operator creates a key; the answer is the keys page with the secret, shown once.
/// The form's fields as pairs, since `scope` repeats (one per ticked box).
pub async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let who = operator_form(&state, &headers, field("csrf"), KEYS).await?;
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
        Ok(created) => keys_page(&state, &who, Some(&created), None).await,
        Err(ApiError::Validation { field, message }) => {
            let refused = format!("Not created: {field} {message}");
            let page = keys_page(&state, &who, None, Some(&refused)).await?;
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
    let who = operator_form(&state, &headers, Some(&form.csrf), KEYS).await?;
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
pub(crate) fn form_urlencoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
