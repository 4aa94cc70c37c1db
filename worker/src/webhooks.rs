//! Every worker process delivers order events to merchants' webhook endpoints (`orderflow_shared::webhooks`):
//! each round it fans new events out (one process at a time does), claims the deliveries due (each the earliest
//! undelivered one of its order to its endpoint), POSTs them at once, at most `concurrency`, and records each
//! attempt. Several processes share the deliveries (`skip locked`, and a lease per attempt).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use orderflow_shared::settings::WebhookSettings;
use orderflow_shared::webhooks::{self, delivery};
use sqlx::PgPool;
use tokio::sync::watch;

/// Events fanned out per round.
const FAN_OUT_PAGE: i64 = 500;

/// Delivers until `stopped`.
pub async fn run(pool: PgPool, settings: WebhookSettings, mut stopped: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        // A redirect is a failure, as at Stripe and Svix: the endpoint's URL is the one to fix.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("OrderFlow-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "failed to build the webhook client; no deliveries from this process");
            return;
        }
    };
    let mut server_secret: Option<Vec<u8>> = None;
    loop {
        let busy = match round(&pool, &http, &settings, &mut server_secret).await {
            Ok(busy) => busy,
            Err(error) => {
                tracing::warn!(%error, "webhook round failed; retrying");
                false
            }
        };
        if *stopped.borrow() {
            return;
        }
        if !busy {
            tokio::select! {
                _ = tokio::time::sleep(settings.poll_interval) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }
}

/// One round; answers whether there may be more to do at once.
async fn round(
    pool: &PgPool,
    http: &reqwest::Client,
    settings: &WebhookSettings,
    server_secret: &mut Option<Vec<u8>>,
) -> Result<bool, sqlx::Error> {
    let read = delivery::fan_out(&mut *pool.acquire().await?, FAN_OUT_PAGE).await?;
    let lease = settings.timeout + Duration::from_secs(30);
    let limit = i64::try_from(settings.concurrency).unwrap_or(16);
    let due = delivery::claim(pool, limit, lease).await?;
    if due.is_empty() {
        return Ok(read as i64 == FAN_OUT_PAGE);
    }
    let secret = match server_secret {
        Some(secret) => secret.clone(),
        None => {
            let loaded = orderflow_shared::server_secret::load(pool, webhooks::SERVER_SECRET).await?;
            *server_secret = Some(loaded.clone());
            loaded
        }
    };
    let ids: Vec<uuid::Uuid> = due.iter().map(|d| d.event_id).collect();
    let events: HashMap<uuid::Uuid, Vec<u8>> = orderflow_shared::outbox::by_event_ids(pool, &ids)
        .await?
        .into_iter()
        .filter_map(|event| Some((event.event_id, serde_json::to_vec(&event.to_cloud_event()).ok()?)))
        .collect();
    let attempts = due.iter().map(|due| {
        let body = events.get(&due.event_id);
        let key = webhooks::secret(&secret, due.endpoint_id, due.generation);
        async move {
            let attempted = match body {
                Some(body) => attempt(http, due, &key, body).await,
                None => failed(chrono::Utc::now(), Duration::ZERO, "the event is gone".to_owned()),
            };
            (due, attempted)
        }
    });
    let done: Vec<_> = futures::future::join_all(attempts).await;
    for (due, attempted) in &done {
        let verdict = delivery::record(
            pool,
            due,
            attempted,
            &settings.retry_schedule,
            settings.disable_after,
        )
        .await?;
        tracing::debug!(delivery = due.id, event = %due.event_id, attempt = due.attempt, ?verdict, "webhook attempt");
        metrics::counter!("orderflow_webhook_attempts_total", "outcome" => match verdict {
            delivery::Verdict::Delivered => "delivered",
            delivery::Verdict::Retry(_) => "retry",
            delivery::Verdict::Dead => "dead",
            delivery::Verdict::Gone => "gone",
        })
        .increment(1);
    }
    Ok(true)
}

fn failed(
    started_at: chrono::DateTime<chrono::Utc>,
    latency: Duration,
    error: String,
) -> delivery::Attempted {
    delivery::Attempted {
        started_at,
        status: None,
        latency,
        response: None,
        error: Some(error),
        retry_after: None,
    }
}

/// One signed POST of `body` to the delivery's endpoint.
async fn attempt(
    http: &reqwest::Client,
    due: &delivery::Due,
    secret: &str,
    body: &[u8],
) -> delivery::Attempted {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let id = due.event_id.to_string();
    let timestamp = started_at.timestamp();
    let Some(signature) = webhooks::sign(secret, &id, timestamp, body) else {
        return failed(
            started_at,
            Duration::ZERO,
            "the endpoint's secret does not decode".to_owned(),
        );
    };
    let sent = http
        .post(&due.url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => return failed(started_at, started.elapsed(), error.to_string()),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.min(86_400)));
    // At most an excerpt of the answer is read: an endpoint cannot make the worker hold a large body.
    let mut response = response;
    let mut excerpt = Vec::new();
    while excerpt.len() < delivery::RESPONSE_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            _ => break,
        }
    }
    excerpt.truncate(delivery::RESPONSE_EXCERPT);
    delivery::Attempted {
        started_at,
        status: Some(status),
        latency: started.elapsed(),
        response: Some(String::from_utf8_lossy(&excerpt).into_owned()),
        error: None,
        retry_after,
    }
}
