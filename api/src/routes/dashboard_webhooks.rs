//! The dashboard's webhook pages: the endpoints (operators make, enable and disable them; the secret is shown
//! once), one endpoint's deliveries with a replay button each and a range replay, and one delivery's attempts.
//! Each handler calls the function of `orderflow_shared::webhooks` the admin API calls.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use orderflow_shared::events::EventType;
use orderflow_shared::settings::Role;
use orderflow_shared::webhooks::{self, NewEndpoint, delivery};
use serde::Deserialize;
use uuid::Uuid;

use crate::routes::admin_webhooks::CreatedEndpoint;
use crate::routes::dashboard::{ActionForm, Flash, form_urlencoded, operator_form};
use crate::session::{self, SignedIn};
use crate::{ApiError, AppState, pages};

/// `GET /admin/webhooks`: the endpoints; for operators the form to make one and the buttons to enable or
/// disable each.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(Redirect::to("/admin").into_response());
    };
    list_page(&state, &who, None, flash.done.as_deref()).await
}

async fn list_page(
    state: &AppState,
    who: &SignedIn,
    created: Option<&CreatedEndpoint>,
    flash: Option<&str>,
) -> Result<Response, ApiError> {
    let endpoints = webhooks::list(&state.pool).await?;
    let event_types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    pages::render(&pages::Webhooks {
        title: "Webhooks",
        who: Some(who),
        refresh: false,
        endpoints: &endpoints,
        created,
        flash,
        csrf: (who.role == Role::Operator).then_some(who.csrf.as_str()),
        event_types: &event_types,
    })
}

/// What an operator does on the webhook pages.
const ENDPOINTS: &str = "manage webhook endpoints";

/// `POST /admin/webhooks`: an operator makes an endpoint; the answer is the page with its secret, shown once.
/// The form's fields as pairs, since `event_type` repeats (one per ticked box).
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let who = operator_form(&state, &headers, field("csrf"), ENDPOINTS).await?;
    let request = NewEndpoint {
        url: field("url").unwrap_or_default().trim().to_owned(),
        event_types: fields
            .iter()
            .filter(|(k, _)| k == "event_type")
            .map(|(_, v)| v.clone())
            .collect(),
        description: field("description")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
    };
    if let Err(refused) = request.validate(state.webhook_allow_loopback) {
        let message = format!("Not created: {refused}");
        let page = list_page(&state, &who, None, Some(&message)).await?;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
    }
    let server_secret = orderflow_shared::server_secret::load(&state.pool, webhooks::SERVER_SECRET).await?;
    let mut conn = state.pool.acquire().await?;
    let (endpoint, secret) = webhooks::create(&mut conn, &request, &who.name, &server_secret).await?;
    list_page(&state, &who, Some(&CreatedEndpoint { endpoint, secret }), None).await
}

fn not_found(what: &'static str, id: &str) -> ApiError {
    ApiError::NotFound {
        what,
        id: id.to_owned(),
    }
}

/// `POST /admin/webhooks/{id}/{enable|disable}`: an operator's button.
pub async fn set_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    let who = operator_form(&state, &headers, Some(&form.csrf), ENDPOINTS).await?;
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return Err(not_found("action", &action)),
    };
    let endpoint_id = Uuid::parse_str(&id).map_err(|_| not_found("webhook endpoint", &id))?;
    let reason = format!("{}: disabled from the dashboard", who.name);
    let endpoint = webhooks::set_enabled(&state.pool, endpoint_id, enabled, Some(&reason))
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    let message = format!(
        "{} {}",
        if enabled { "Enabled" } else { "Disabled" },
        endpoint.url
    );
    Ok(Redirect::to(&format!("/admin/webhooks?done={}", form_urlencoded(&message))).into_response())
}

/// `GET /admin/webhooks/{id}`: one endpoint's newest deliveries.
pub async fn endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, ApiError> {
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(Redirect::to("/admin").into_response());
    };
    let endpoint_id = Uuid::parse_str(&id).map_err(|_| not_found("webhook endpoint", &id))?;
    let endpoint = webhooks::find(&state.pool, endpoint_id)
        .await?
        .ok_or_else(|| not_found("webhook endpoint", &id))?;
    let deliveries = delivery::list(&state.pool, endpoint_id, None, 100).await?;
    pages::render(&pages::Webhook {
        title: "Webhook endpoint",
        who: Some(&who),
        refresh: false,
        endpoint: &endpoint,
        deliveries: &deliveries,
        flash: flash.done.as_deref(),
        csrf: (who.role == Role::Operator).then_some(who.csrf.as_str()),
    })
}

/// `GET /admin/webhooks/deliveries/{id}`: one delivery's attempts.
pub async fn delivery(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(who) = session::signed_in(&state, &headers).await? else {
        return Ok(Redirect::to("/admin").into_response());
    };
    let delivery_id: i64 = id.parse().map_err(|_| not_found("webhook delivery", &id))?;
    let mut conn = state.pool.acquire().await?;
    let (delivery, attempts) = delivery::find(&mut conn, delivery_id)
        .await?
        .ok_or_else(|| not_found("webhook delivery", &id))?;
    pages::render(&pages::WebhookDelivery {
        title: "Webhook delivery",
        who: Some(&who),
        refresh: false,
        delivery: &delivery,
        attempts: &attempts,
    })
}

/// `POST /admin/webhooks/deliveries/{id}/replay`: an operator's button.
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ApiError> {
    operator_form(&state, &headers, Some(&form.csrf), ENDPOINTS).await?;
    let delivery_id: i64 = id.parse().map_err(|_| not_found("webhook delivery", &id))?;
    let replayed = delivery::replay(&state.pool, delivery_id)
        .await?
        .ok_or_else(|| not_found("webhook delivery", &id))?;
    let message = format!("Delivery {} is on its way again", replayed.id);
    Ok(Redirect::to(&format!(
        "/admin/webhooks/{}?done={}",
        replayed.endpoint_id,
        form_urlencoded(&message)
    ))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct RangeForm {
    csrf: String,
    from: String,
    to: String,
}

/// `POST /admin/webhooks/{id}/replay`: an operator replays a time range of the endpoint's events.
pub async fn replay_range(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RangeForm>,
) -> Result<Response, ApiError> {
    operator_form(&state, &headers, Some(&form.csrf), ENDPOINTS).await?;
    let endpoint_id = Uuid::parse_str(&id).map_err(|_| not_found("webhook endpoint", &id))?;
    let time = |field: &str, text: &str| {
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| ApiError::validation(field, "must be an RFC 3339 time such as 2026-12-05T00:00:00Z"))
    };
    let (from, to) = (time("from", &form.from)?, time("to", &form.to)?);
    if to <= from || to - from > chrono::Duration::days(31) {
        return Err(ApiError::validation(
            "to",
            "must be after `from`, by at most 31 days",
        ));
    }
    if webhooks::find(&state.pool, endpoint_id).await?.is_none() {
        return Err(not_found("webhook endpoint", &id));
    }
    let mut conn = state.pool.acquire().await?;
    let replayed = delivery::replay_range(&mut conn, endpoint_id, from, to).await?;
    let message = format!("{replayed} deliveries on their way");
    Ok(Redirect::to(&format!(
        "/admin/webhooks/{id}?done={}",
        form_urlencoded(&message)
    ))
    .into_response())
}
