//! `POST /v1/provider/webhooks`: the payment provider's events, as Stripe sends them (and the simulator, which
//! sends them the same way). No API key: the `Stripe-Signature` header is the authentication, checked over the
//! raw body before anything of it is read (`orderflow_shared::stripe_signature`). A genuine event is recorded
//! once (`orderflow_shared::provider_event`) and answered at once; workers apply it under its order's lock.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use orderflow_shared::provider_event::{self, Incoming};
use orderflow_shared::stripe_signature::{self, SignatureError};
use serde::Serialize;

use crate::extract::WebhookBody;
use crate::{ApiError, AppState};

/// What the endpoint answers a genuine event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The event's id.
    pub id: String,
    /// Whether this event id was recorded before (a repeated delivery): then nothing was written.
    pub duplicate: bool,
}

/// Receives one event of the payment provider. Point a Stripe account's webhook endpoint here with its signing
/// secret in `ORDERFLOW_PROVIDER_WEBHOOK_SECRETS`. A forged, stale, future or unsigned request is refused (400)
/// and writes nothing; a repeated event is acknowledged and writes nothing.
#[utoipa::path(post, path = "/v1/provider/webhooks", operation_id = "receive_provider_webhook",
    request_body(content = String, content_type = "application/json", description = "A Stripe event object, at most 64 KB"),
    params(("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">`, one `v1` per secret")),
    responses(
        (status = 200, description = "Recorded, or recorded before (`duplicate`)", body = Receipt),
        (status = 400, description = "No, a malformed, a stale or a forged signature (`webhook-signature-invalid`); nothing was recorded", body = crate::error::Problem),
        (status = 413, description = "The body is over 64 KB", body = crate::error::Problem),
        (status = 422, description = "Signed, but not an event (the field is named)", body = crate::error::Problem),
    ))]
#[tracing::instrument(skip_all, fields(event = tracing::field::Empty))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    WebhookBody(body): WebhookBody,
) -> Result<Json<Receipt>, ApiError> {
    let settings = &state.provider_webhooks;
    let header =
        match headers.get(stripe_signature::HEADER) {
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::WebhookSignature(SignatureError::Malformed("the header is not ASCII"))
            })?),
            None => None,
        };
    let now = chrono::Utc::now().timestamp();
    stripe_signature::verify(header, &body, &settings.secrets, now, settings.tolerance_secs).map_err(
        |e| {
            tracing::warn!(error = %e, "provider webhook refused");
            ApiError::WebhookSignature(e)
        },
    )?;
    let event = Incoming::parse(&body)?;
    tracing::Span::current().record("event", event.id.as_str());
    let mut conn = state.pool.acquire().await?;
    let new = provider_event::record(&mut conn, &event).await?;
    Ok(Json(Receipt {
        id: event.id,
        duplicate: !new,
    }))
}
