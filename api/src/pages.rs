//! The dashboard's pages: askama templates (`api/templates/`), compiled with the code and escaping everything
//! they show by default. The dashboard's handlers (`routes::dashboard`) fill them from `crate::views`.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};
use orderflow_shared::admin::SagaSummary;
use orderflow_shared::api_key::{ApiKey, CreatedKey, Scope};
use orderflow_shared::queue::views::QueueStats;
use orderflow_shared::webhooks::delivery::{AttemptView, DeliveryView};
use orderflow_shared::webhooks::{Endpoint, EndpointView};

use crate::ApiError;
use crate::admission::AdmissionView;
use crate::session::SignedIn;
use crate::views::SagaDetail;

#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignIn<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    /// Why the last sign-in failed.
    pub message: Option<&'a str>,
    /// The form's CSRF token, bound to the sign-in nonce in its cookie.
    pub csrf: &'a str,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    /// The overview reloads itself every 5 s.
    pub refresh: bool,
    pub queues: &'a [QueueStats],
    pub admission: &'a AdmissionView,
    pub stuck: &'a [SagaSummary],
    pub stuck_after_secs: u64,
}

#[derive(Template)]
#[template(path = "saga.html")]
pub struct Saga<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    pub detail: &'a SagaDetail,
    /// The outcome of the last action, shown once after its redirect.
    pub flash: Option<&'a str>,
    /// The session's CSRF token, for operators (who see the actions); none for viewers.
    pub csrf: Option<&'a str>,
    /// The actions' buttons: (action, class, label).
    pub actions: &'a [(&'a str, &'a str, &'a str)],
}

#[derive(Template)]
#[template(path = "keys.html")]
pub struct Keys<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    pub keys: &'a [ApiKey],
    /// A key just created, its secret shown this once (the page answers the form; the secret is in no URL).
    pub created: Option<&'a CreatedKey>,
    /// The outcome of the last revocation, or why a creation was refused.
    pub flash: Option<&'a str>,
    /// The session's CSRF token, for operators (who may create and revoke); none for viewers.
    pub csrf: Option<&'a str>,
    pub scopes: &'a [Scope],
    pub default_rate: i32,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub struct Webhooks<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    pub endpoints: &'a [EndpointView],
    /// An endpoint just created, its secret shown this once.
    pub created: Option<&'a crate::routes::admin_webhooks::CreatedEndpoint>,
    pub flash: Option<&'a str>,
    /// The session's CSRF token, for operators; none for viewers.
    pub csrf: Option<&'a str>,
    pub event_types: &'a [&'a str],
}

#[derive(Template)]
#[template(path = "webhook.html")]
pub struct Webhook<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    pub endpoint: &'a Endpoint,
    pub deliveries: &'a [DeliveryView],
    pub flash: Option<&'a str>,
    pub csrf: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "webhook_delivery.html")]
pub struct WebhookDelivery<'a> {
    pub title: &'a str,
    pub who: Option<&'a SignedIn>,
    pub refresh: bool,
    pub delivery: &'a DeliveryView,
    pub attempts: &'a [AttemptView],
}

/// Renders a page as an HTML response.
pub fn render(page: &impl Template) -> Result<Response, ApiError> {
    let html = page.render().map_err(|e| {
        ApiError::Internal(anyhow::Error::new(e).context("failed to render a dashboard page"))
    })?;
    Ok(Html(html).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::Utc;
    use orderflow_shared::order::OrderStatus;
    use uuid::Uuid;

    use super::*;

    const HOSTILE: &str = "<script>alert(\"x\")</script>";

    #[test]
    fn what_a_page_shows_is_escaped() {
        let stuck = [SagaSummary {
            id: Uuid::now_v7(),
            status: OrderStatus::Paid,
            current_step: None,
            customer_id: HOSTILE.to_owned(),
            total: 100,
            currency: "USD".to_owned(),
            cancel_reason: None,
            last_error: Some(HOSTILE.to_owned()),
            created_at: Utc::now(),
            last_progress_at: Utc::now(),
            job_id: None,
            job_status: None,
        }];
        let who = SignedIn {
            admin: crate::auth::Admin {
                name: HOSTILE.to_owned(),
                role: orderflow_shared::settings::Role::Viewer,
            },
            id: "0".repeat(64),
            csrf: HOSTILE.to_owned(),
        };
        let refusing = AdmissionView {
            max_backlog_seconds: Some(1.0),
            backlog_seconds: Some(1.5),
            refusing: true,
            refused: 7,
        };
        let html = Overview {
            title: "Overview",
            who: Some(&who),
            refresh: true,
            queues: &[],
            admission: &refusing,
            stuck: &stuck,
            stuck_after_secs: 60,
        }
        .render()
        .unwrap();
        assert!(
            html.contains("REFUSING")
                && html.contains("saga backlog 1.50 s of a bound of 1.00 s; 7 orders refused"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
        let html = SignIn {
            title: "Sign in",
            who: None,
            refresh: false,
            message: Some(HOSTILE),
            csrf: HOSTILE,
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
    }
}
