//! Request extractors whose rejections are `ApiError`s, so every malformed input gets a problem body that names
//! the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts};
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
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::MalformedBody(format!("failed to read the body: {e}")))?;
        let value = parse_value(&bytes)?;
        let parsed = parse_as(&value)?;
        Ok(Self { value, parsed })
    }
}

/// An optional JSON body: an empty body is `None`.
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::MalformedBody(format!("failed to read the body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        let value = parse_value(&bytes)?;
        Ok(Self(Some(parse_as(&value)?)))
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
