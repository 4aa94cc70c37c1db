//! Every worker process delivers order events to merchants' webhook endpoints (`orderflow_shared::webhooks`):
//! it fans new events out (one process at a time does), claims the deliveries due (each the earliest undelivered
//! one of its order to its endpoint) for its free slots, at most `concurrency` attempts out at once, and records
//! each attempt as it ends, refilling its slot. Several processes share the deliveries (`skip locked`, and a
//! lease per attempt).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderflow_shared::settings::WebhookSettings;
use orderflow_shared::webhooks::{self, delivery};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Events fanned out per round.
const FAN_OUT_PAGE: i64 = 500;

/// Resolves an endpoint's host name to the addresses a delivery may go to (`webhooks::allowed_address`): a name
/// that resolves into the network OrderFlow runs in (a private or link-local address, this machine unless
/// allowed) fails the attempt instead. Literal addresses were checked when the endpoint was made.
struct PublicOnly {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = found
                .into_iter()
                .filter(|addr| webhooks::allowed_address(addr.ip(), allow_loopback))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address a webhook may be sent to").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Delivers until `stopped`: up to `concurrency` attempts out at once, each recorded as soon as it ends and its
/// slot refilled, so one slow endpoint holds one slot, not the others' deliveries.
pub async fn run(pool: PgPool, settings: WebhookSettings, mut stopped: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        // A redirect is a failure, as at Stripe and Svix: the endpoint's URL is the one to fix.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("OrderFlow-Webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(PublicOnly {
            allow_loopback: settings.allow_loopback,
        }))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "failed to build the webhook client; no deliveries from this process");
            return;
        }
    };
    let settings = Arc::new(settings);
    let mut server_secret: Option<Arc<Vec<u8>>> = None;
    let mut in_flight: JoinSet<()> = JoinSet::new();
    loop {
        let more = match start_attempts(&pool, &http, &settings, &mut server_secret, &mut in_flight).await {
            Ok(more) => more,
            Err(error) => {
                tracing::warn!(%error, "webhook round failed; retrying");
                false
            }
        };
        if *stopped.borrow() {
            break;
        }
        if more {
            continue;
        }
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    // Attempts out finish (each within the timeout) and are recorded; a worker killed instead leaves them to
    // their leases.
    while in_flight.join_next().await.is_some() {}
}

/// Fans new events out and starts attempts for the deliveries due, as many as there are free slots; answers
/// whether there may be more to do at once.
async fn start_attempts(
    pool: &PgPool,
    http: &reqwest::Client,
    settings: &Arc<WebhookSettings>,
    server_secret: &mut Option<Arc<Vec<u8>>>,
    in_flight: &mut JoinSet<()>,
) -> Result<bool, sqlx::Error> {
    let read = delivery::fan_out(&mut *pool.acquire().await?, FAN_OUT_PAGE).await?;
    let free = settings.concurrency.saturating_sub(in_flight.len());
    if free == 0 {
        return Ok(false);
    }
    let lease = settings.timeout + Duration::from_secs(30);
    let due = delivery::claim(pool, i64::try_from(free).unwrap_or(16), lease).await?;
    if due.is_empty() {
        return Ok(read as i64 == FAN_OUT_PAGE);
    }
    let secret = match server_secret {
        Some(secret) => secret.clone(),
        None => {
            let loaded =
                Arc::new(orderflow_shared::server_secret::load(pool, webhooks::SERVER_SECRET).await?);
            *server_secret = Some(loaded.clone());
            loaded
        }
    };
    let ids: Vec<uuid::Uuid> = due.iter().map(|d| d.event_id).collect();
    let mut events: HashMap<uuid::Uuid, Vec<u8>> = orderflow_shared::outbox::by_event_ids(pool, &ids)
        .await?
        .into_iter()
        .filter_map(|event| Some((event.event_id, serde_json::to_vec(&event.to_cloud_event()).ok()?)))
        .collect();
    for due in due {
        let body = events.remove(&due.event_id);
        let key = webhooks::secret(&secret, due.endpoint_id, due.generation);
        let (pool, http, settings) = (pool.clone(), http.clone(), settings.clone());
        in_flight.spawn(async move {
            let attempted = match &body {
                Some(body) => attempt(&http, &due, &key, body, settings.allow_loopback).await,
                None => failed(chrono::Utc::now(), Duration::ZERO, "the event is gone".to_owned()),
            };
            match delivery::record(&pool, &due, &attempted, &settings.retry_schedule, settings.disable_after).await
            {
                Ok(verdict) => {
                    tracing::debug!(delivery = due.id, event = %due.event_id, attempt = due.attempt, ?verdict, "webhook attempt");
                    metrics::counter!("orderflow_webhook_attempts_total", "outcome" => match verdict {
                        delivery::Verdict::Delivered => "delivered",
                        delivery::Verdict::Retry(_) => "retry",
                        delivery::Verdict::Dead => "dead",
                        delivery::Verdict::Gone => "gone",
                    })
                    .increment(1);
                }
                // Its lease runs out and it is attempted again: at least once.
                Err(error) => tracing::warn!(delivery = due.id, %error, "failed to record a webhook attempt"),
            }
        });
    }
    // More at once only while the fan-out has a backlog and a slot is free.
    Ok(read as i64 == FAN_OUT_PAGE && in_flight.len() < settings.concurrency)
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
    allow_loopback: bool,
) -> delivery::Attempted {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    // A literal address is not resolved, so the resolver does not see it: checked here, as the setting is now.
    let literal = reqwest::Url::parse(&due.url).ok().and_then(|url| {
        url.host_str()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .and_then(|host| host.parse::<std::net::IpAddr>().ok())
    });
    if literal.is_some_and(|ip| !webhooks::allowed_address(ip, allow_loopback)) {
        let refused = "the endpoint's address is not one a webhook may be sent to".to_owned();
        return failed(started_at, Duration::ZERO, refused);
    }
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
