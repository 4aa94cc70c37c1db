//! `ApiError`: the one place that maps failures to HTTP statuses and RFC 9457 problem bodies. Client errors
//! name what is wrong; server errors say nothing of their cause to the client and log it instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_shared::api_key::CreateKeyError;
use orderflow_shared::idempotency::KeyError;
use orderflow_shared::input::FieldError;
use orderflow_shared::inventory::adjustment::AdjustError;
use orderflow_shared::operator::ActionError;
use orderflow_shared::order::create::CreateError;
use orderflow_shared::order::{CancelError, TransitionError};
use orderflow_shared::refund::RefundError;
use orderflow_shared::returns::ReturnError;
use orderflow_shared::shipment::ShipError;
use orderflow_shared::{db, inventory};
use serde::Serialize;

/// Problem types are URNs: stable identifiers clients can match on, documented in docs/API.md.
const TYPE_PREFIX: &str = "urn:orderflow:problem:";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not JSON of the expected shape.
    #[error("{0}")]
    MalformedBody(String),
    /// A field has a value the API does not accept.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    /// The request conflicts with the resource's state.
    #[error("{detail}")]
    Conflict { slug: &'static str, detail: String },
    /// An `If-Match` that does not match the resource's current version: nothing was written.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInFlight,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The body is longer than the API takes (axum's default limit, 2 MB).
    #[error("the body is larger than the {0} the API takes here")]
    PayloadTooLarge(&'static str),
    /// A provider webhook whose signature does not hold: nothing was recorded.
    #[error("{0}")]
    WebhookSignature(orderflow_shared::stripe_signature::SignatureError),
    /// The body stopped arriving for longer than the body timeout.
    #[error("the request body stopped arriving")]
    RequestTimeout,
    /// No or an unknown admin token.
    #[error("{0}")]
    Unauthorized(String),
    /// No API key on a `/v1` route.
    #[error("an API key is required: Authorization: Bearer ofk_…")]
    KeyRequired,
    /// A malformed, an unknown or a revoked API key on a `/v1` route.
    #[error("{0}")]
    KeyInvalid(&'static str),
    /// The API key lacks the scope the route needs.
    #[error("this API key lacks the scope {0}")]
    MissingScope(orderflow_shared::api_key::Scope),
    /// A customer token on a route it never reaches (the feed, the catalogue's writes, minting tokens).
    #[error(
        "a customer token cannot use {0}: it reaches its customer's orders and, if its key may, the catalogue's reads"
    )]
    TokenCannot(orderflow_shared::api_key::Scope),
    /// The API key made more requests than its rate allows; retry after this many seconds.
    #[error("this API key is over its rate; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A valid token whose role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The saga backlog is past the bound new orders are admitted at (`orderflow_shared::admission`).
    #[error(
        "the saga backlog is {:.1} s, past the {:.1} s this service takes new orders at; nothing was written: retry after {} s with the same Idempotency-Key",
        .0.backlog.as_secs_f64(), .0.max_backlog.as_secs_f64(), .0.retry_after_secs
    )]
    Overloaded(orderflow_shared::admission::Refusal),
    /// PostgreSQL is unreachable or refusing work for now; the client may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.to_string(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::MalformedBody(_) | Self::BadRequest(_) | Self::WebhookSignature(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Validation { .. } | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized(_) | Self::KeyRequired | Self::KeyInvalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::MissingScope(_) | Self::TokenCannot(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::MalformedBody(_) => "malformed-body",
            Self::Validation { .. } => "validation-error",
            Self::BadRequest(_) => "bad-request",
            Self::NotFound { .. } => "not-found",
            Self::Conflict { slug, .. } => slug,
            Self::PreconditionFailed(_) => "precondition-failed",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::IdempotencyKeyInFlight => "idempotency-key-in-flight",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::WebhookSignature(_) => "webhook-signature-invalid",
            Self::RequestTimeout => "request-timeout",
            Self::Unauthorized(_) | Self::KeyRequired | Self::KeyInvalid(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::MissingScope(_) | Self::TokenCannot(_) => "insufficient-scope",
            Self::RateLimited { .. } => "rate-limited",
            Self::Overloaded(_) => "overloaded",
            Self::Unavailable(_) => "service-unavailable",
            Self::Internal(_) => "internal-error",
        }
    }
}

/// An RFC 9457 problem details body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For validation errors: the offending field, as a path into the request (`lines[0].quantity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                "an internal error occurred; it has been logged".to_owned()
            }
            Self::Unavailable(error) => {
                tracing::warn!(%error, "database unavailable");
                "the database is unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        };
        let field = match &self {
            Self::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let problem = Problem {
            problem_type: format!("{TYPE_PREFIX}{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            field,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let challenge = match &self {
            // RFC 6750: no error code when no credentials came; `invalid_token` for a key that is not one.
            Self::KeyRequired => Some("Bearer realm=\"orderflow\""),
            Self::KeyInvalid(_) => Some("Bearer realm=\"orderflow\", error=\"invalid_token\""),
            Self::Unauthorized(_) => Some("Bearer realm=\"orderflow-admin\""),
            Self::MissingScope(scope) | Self::TokenCannot(scope) => {
                // RFC 6750: a valid token without the scope the resource needs.
                let value =
                    format!("Bearer realm=\"orderflow\", error=\"insufficient_scope\", scope=\"{scope}\"");
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                None
            }
            _ => None,
        };
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Overloaded(refusal) => Some(refusal.retry_after_secs),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if db::is_transient(&error) {
            return Self::Unavailable(error);
        }
        if let sqlx::Error::Database(e) = &error
            && matches!(
                e.constraint(),
                Some(inventory::RESERVED_LE_ON_HAND | inventory::RESERVED_LE_ON_HAND_AT_LOCATION)
            )
        {
            return Self::Conflict {
                slug: "stock-below-reserved",
                detail: "on_hand cannot be set below the units currently reserved at the location".to_owned(),
            };
        }
        Self::Internal(anyhow::Error::new(error).context("database error"))
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::Database(e) => e.into(),
            TransitionError::Invalid(e) => Self::Conflict {
                slug: "invalid-transition",
                detail: e.to_string(),
            },
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::Validation {
            field: error.field,
            message: error.message,
        }
    }
}

impl From<CreateError> for ApiError {
    fn from(error: CreateError) -> Self {
        match error {
            CreateError::Invalid(e) => e.into(),
            CreateError::Key(e) => e.into(),
            CreateError::Render(e) => {
                Self::Internal(anyhow::Error::new(e).context("failed to render the order"))
            }
            CreateError::Database(e) => e.into(),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::InFlight => Self::IdempotencyKeyInFlight,
            KeyError::Reused => Self::IdempotencyKeyReused,
        }
    }
}

impl From<AdjustError> for ApiError {
    fn from(error: AdjustError) -> Self {
        match error {
            AdjustError::NoSuchSku(sku) => Self::NotFound { what: "sku", id: sku },
            AdjustError::NoSuchLocation(e) => e.into(),
            AdjustError::BelowReserved { .. } => Self::Conflict {
                slug: "stock-below-reserved",
                detail: error.to_string(),
            },
            AdjustError::AboveMaximum { .. } => Self::Conflict {
                slug: "stock-above-maximum",
                detail: error.to_string(),
            },
            AdjustError::Key(e) => e.into(),
            AdjustError::Render(e) => {
                Self::Internal(anyhow::Error::new(e).context("failed to render the adjustment"))
            }
            AdjustError::Database(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(error: CancelError) -> Self {
        match error {
            CancelError::NotFound(id) => Self::NotFound {
                what: "order",
                id: id.to_string(),
            },
            CancelError::Fulfilled(_) => Self::Conflict {
                slug: "order-fulfilled",
                detail: error.to_string(),
            },
            CancelError::Shipping(..) => Self::Conflict {
                slug: "order-shipping",
                detail: error.to_string(),
            },
            CancelError::Refunding(_) => Self::Conflict {
                slug: "order-refunding",
                detail: error.to_string(),
            },
            CancelError::Invalid(e) => e.into(),
            CancelError::Transition(e) => e.into(),
        }
    }
}

impl From<RefundError> for ApiError {
    fn from(error: RefundError) -> Self {
        match error {
            RefundError::Invalid(e) => e.into(),
            RefundError::Key(e) => e.into(),
            RefundError::NotFound(id) => Self::NotFound {
                what: "order",
                id: id.to_string(),
            },
            RefundError::NotRefundable(..) => Self::Conflict {
                slug: "order-not-refundable",
                detail: error.to_string(),
            },
            RefundError::ExceedsCaptured(_) => Self::Conflict {
                slug: "refund-exceeds-captured",
                detail: error.to_string(),
            },
            RefundError::ExceedsDelivered(_) => Self::Conflict {
                slug: "refund-exceeds-delivered",
                detail: error.to_string(),
            },
            RefundError::Releasing(_) => Self::Conflict {
                slug: "order-releasing",
                detail: error.to_string(),
            },
            RefundError::Render(e) => {
                Self::Internal(anyhow::Error::new(e).context("failed to render the refund"))
            }
            RefundError::Transition(e) => e.into(),
            RefundError::Database(e) => e.into(),
        }
    }
}

impl From<ReturnError> for ApiError {
    fn from(error: ReturnError) -> Self {
        match error {
            ReturnError::Invalid(e) => e.into(),
            ReturnError::Key(e) => e.into(),
            ReturnError::NotFound(id) => Self::NotFound {
                what: "order",
                id: id.to_string(),
            },
            ReturnError::NotReturnable(..) => Self::Conflict {
                slug: "order-not-returnable",
                detail: error.to_string(),
            },
            ReturnError::ExceedsDelivered(_) => Self::Conflict {
                slug: "return-exceeds-delivered",
                detail: error.to_string(),
            },
            ReturnError::Refund(e) => e.into(),
            ReturnError::Render(e) => {
                Self::Internal(anyhow::Error::new(e).context("failed to render the return"))
            }
            ReturnError::Transition(e) => e.into(),
            ReturnError::Database(e) => e.into(),
        }
    }
}

impl From<ShipError> for ApiError {
    fn from(error: ShipError) -> Self {
        match error {
            ShipError::Invalid(e) => e.into(),
            ShipError::Key(e) => e.into(),
            ShipError::NotFound(id) => Self::NotFound {
                what: "order",
                id: id.to_string(),
            },
            ShipError::NotShippable(..) => Self::Conflict {
                slug: "order-not-shippable",
                detail: error.to_string(),
            },
            ShipError::TooMany(_) => Self::Conflict {
                slug: "shipment-exceeds-order",
                detail: error.to_string(),
            },
            ShipError::Render(e) => {
                Self::Internal(anyhow::Error::new(e).context("failed to render the shipment"))
            }
            ShipError::Transition(e) => e.into(),
            ShipError::Database(e) => e.into(),
        }
    }
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        match error {
            ActionError::NotFound(id) => Self::NotFound {
                what: "saga",
                id: id.to_string(),
            },
            ActionError::ViewerCannotAct(_) => Self::Forbidden(error.to_string()),
            ActionError::NotAllowed(detail) => Self::Conflict {
                slug: "action-not-allowed",
                detail,
            },
            ActionError::Transition(e) => e.into(),
        }
    }
}

impl From<CreateKeyError> for ApiError {
    fn from(error: CreateKeyError) -> Self {
        match error {
            CreateKeyError::Invalid(e) => e.into(),
            CreateKeyError::Database(e) => e.into(),
        }
    }
}

/// Makes any error answer that is not already a problem or a dashboard page one: axum's own rejections (405
/// with its `Allow` header, 413 past the body limit, a path that is not UTF-8, a repeated query parameter)
/// answer in plain text. Their text becomes the problem's `detail`; their headers stay.
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let labelled = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || labelled {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejections are a sentence; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_owned(),
    };
    let slug = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation-error",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::SERVICE_UNAVAILABLE => "service-unavailable",
        _ if status.is_server_error() => "internal-error",
        _ => "bad-request",
    };
    let problem = Problem {
        problem_type: format!("{TYPE_PREFIX}{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        field: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // The request ran out of time (the whole-request timeout): worth retrying, with its Idempotency-Key.
        parts
            .headers
            .entry(header::RETRY_AFTER)
            .or_insert(HeaderValue::from_static("1"));
    }
    Response::from_parts(parts, axum::body::Body::from(body))
}
