//! Request extractors whose rejections are `ApiError`s, so every malformed input gets a problem body that names
//! the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, header, request::Parts};
use orderflow_shared::input::MAX_TEXT;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON body kept both as the raw value (for idempotency fingerprints) and as `T`.
pub struct JsonBody<T> {
    pub value: Value,
    pub parsed: T,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if media_type(req.headers()) != Some(MediaType::Json) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(unreadable)?;
        let value = parse_value(&bytes)?;
        let parsed = parse_as(&value)?;
        Ok(Self { value, parsed })
    }
}

/// A provider webhook's body as it came, unparsed (its signature is over these bytes), at most
/// `provider_event::MAX_BODY_BYTES` (the route's body limit).
pub struct WebhookBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for WebhookBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await.map_err(unreadable) {
            Ok(bytes) => Ok(Self(bytes)),
            Err(ApiError::PayloadTooLarge(_)) => Err(ApiError::PayloadTooLarge("64 KB")),
            Err(other) => Err(other),
        }
    }
}

/// An optional JSON body: an empty body without a `Content-Type` (or labelled JSON) is `None`; any other label,
/// or a body without one, is 415, so that a form a browser may send cross-site (`text/plain`,
/// `application/x-www-form-urlencoded`) is never taken for a request.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media_type = media_type(req.headers());
        if matches!(media_type, Some(MediaType::Other)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(unreadable)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if media_type.is_none() {
            return Err(ApiError::UnsupportedMediaType);
        }
        let value = parse_value(&bytes)?;
        Ok(Self(Some(parse_as(&value)?)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaType {
    Json,
    Other,
}

/// The request's `Content-Type`, as far as JSON bodies care: `None` without one.
fn media_type(headers: &axum::http::HeaderMap) -> Option<MediaType> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let json = value.to_str().ok().is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    Some(if json { MediaType::Json } else { MediaType::Other })
}

/// Why a body could not be read: past the body limit (413), stalled past the body timeout (408), or broken off.
fn unreadable(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::RequestTimeout;
        }
        cause = error.source();
    }
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("2 MB")
    } else {
        ApiError::MalformedBody(format!("failed to read the body: {rejection}"))
    }
}

fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::MalformedBody(format!("the body is not valid JSON: {e}")))
}

/// Deserializes with the path of the failing field (`lines[0].quantity`) in the error.
fn parse_as<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::validation(field, e.into_inner())
    })
}

/// A path parameter that must be a UUID.
pub struct OrderId(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let raw = params.get("id").map(String::as_str).unwrap_or_default();
        uuid::Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| ApiError::BadRequest(format!("order id {raw:?} is not a UUID")))
    }
}

/// The request's `Idempotency-Key`: required, 1 to `MAX_TEXT` visible ASCII characters, else 400.
pub fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".to_owned()))?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Idempotency-Key header must be visible ASCII".to_owned()))?;
    if key.is_empty() || key.len() > MAX_TEXT {
        return Err(ApiError::BadRequest(format!(
            "the Idempotency-Key header must be 1 to {MAX_TEXT} characters"
        )));
    }
    Ok(key)
}
