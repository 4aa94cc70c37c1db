//! Webhook deliveries, as Stripe makes them: every event of the account's log is POSTed as JSON to the
//! configured endpoint (`SimConfig::webhook_url`) with a `Stripe-Signature` header (one `v1` per configured
//! secret, a new `t` on every attempt), and retried until the endpoint answers 2xx. The retries wait
//! `SimConfig::webhook_retry` and double up to a minute (Stripe waits hours, over three days: shorter here so a
//! test or a soak sees a retry land), and end when `SimConfig::webhook_retry_window` has passed since the event.
//!
//! Stripe promises neither order nor a single delivery, and the fault knobs make both happen on purpose:
//! - `webhook_duplicate_rate`: the event is delivered twice, as two separate deliveries;
//! - `webhook_reorder_rate`: the event is held back and delivered after the next one (or after a second, if no
//!   other event comes);
//! - `webhook_early_rate`: the request that made the event answers only once the event's first delivery attempt
//!   has ended, so the receiver sees the event before the caller sees the answer;
//! - `webhook_delay`: each delivery waits a random time up to this before its first attempt.
//!
//! Deliveries run concurrently (as Stripe's do), at most [`IN_FLIGHT`] requests at once; each lives in memory
//! until it is acknowledged or its window ends, like everything else in the simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderflow_shared::stripe_signature;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::SimConfig;

/// At most this many delivery requests are open at once.
pub const IN_FLIGHT: usize = 64;
/// How long one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two attempts.
const RETRY_CAP: Duration = Duration::from_secs(60);
/// How long a held-back event waits for another to overtake it.
const REORDER_WAIT: Duration = Duration::from_secs(1);

struct Delivery {
    event: Arc<Value>,
    /// Told when the first attempt has ended (the early fault waits for it).
    attempted: Option<oneshot::Sender<()>>,
}

/// Where events are handed to be delivered; does nothing when no endpoint is configured.
#[derive(Clone, Default)]
pub(crate) struct Webhooks {
    queue: Option<mpsc::UnboundedSender<Delivery>>,
    early_rate: f64,
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

impl Webhooks {
    /// Starts the deliveries to `config.webhook_url`, if set, until the answered handle is aborted.
    pub(crate) fn start(config: &SimConfig) -> (Self, Option<JoinHandle<()>>) {
        let Some(url) = config.webhook_url.clone() else {
            return (Self::default(), None);
        };
        let (queue, received) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            url,
            config: config.clone(),
            http: reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .build()
                .unwrap_or_default(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        };
        let task = tokio::spawn(dispatcher.run(received));
        let webhooks = Self {
            queue: Some(queue),
            early_rate: config.webhook_early_rate,
        };
        (webhooks, Some(task))
    }

    /// Hands `events` over for delivery, in the order given.
    pub(crate) fn send(&self, events: Vec<Value>) {
        let Some(queue) = &self.queue else { return };
        for event in events {
            let _ = queue.send(Delivery {
                event: Arc::new(event),
                attempted: None,
            });
        }
    }

    /// Hands over the events a request made. With the early fault it waits until each event's first attempt has
    /// ended, so the request's answer comes after its webhooks.
    pub(crate) async fn send_for_request(&self, events: Vec<Value>) {
        let Some(queue) = &self.queue else { return };
        if events.is_empty() || !chance(self.early_rate) {
            return self.send(events);
        }
        let mut attempts = Vec::with_capacity(events.len());
        for event in events {
            let (attempted, ended) = oneshot::channel();
            let _ = queue.send(Delivery {
                event: Arc::new(event),
                attempted: Some(attempted),
            });
            attempts.push(ended);
        }
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, futures::future::join_all(attempts)).await;
    }
}

#[derive(Clone)]
struct Dispatcher {
    /// `config.webhook_url`, known to be set.
    url: String,
    config: SimConfig,
    http: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

impl Dispatcher {
    /// Takes events in the order they were made and starts their deliveries, holding one back now and then.
    async fn run(self, mut received: mpsc::UnboundedReceiver<Delivery>) {
        let mut held: Option<Delivery> = None;
        loop {
            let next = match &held {
                Some(_) => tokio::time::timeout(REORDER_WAIT, received.recv()).await,
                None => Ok(received.recv().await),
            };
            match next {
                Ok(Some(delivery)) => {
                    // An early event is delivered now: holding it back would hold up the request's answer.
                    let early = delivery.attempted.is_some();
                    if !early && held.is_none() && chance(self.config.webhook_reorder_rate) {
                        held = Some(delivery);
                        continue;
                    }
                    let overtaken = held.take();
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.deliver(delivery).await;
                        if let Some(overtaken) = overtaken {
                            this.deliver(overtaken).await;
                        }
                    });
                }
                Ok(None) => return,
                Err(_) => {
                    if let Some(overtaken) = held.take() {
                        let this = self.clone();
                        tokio::spawn(async move { this.deliver(overtaken).await });
                    }
                }
            }
        }
    }

    /// One delivery of an event, with its duplicate if the fault picks it.
    async fn deliver(&self, delivery: Delivery) {
        if chance(self.config.webhook_duplicate_rate) {
            let twin = Delivery {
                event: delivery.event.clone(),
                attempted: None,
            };
            let this = self.clone();
            tokio::spawn(async move { this.attempts(twin, Instant::now()).await });
        }
        self.attempts(delivery, Instant::now()).await;
    }

    /// Attempts `delivery` until a 2xx or the end of the retry window.
    async fn attempts(&self, mut delivery: Delivery, since: Instant) {
        let early = delivery.attempted.is_some();
        if !early && !self.config.webhook_delay.is_zero() {
            let delay = self.config.webhook_delay.mul_f64(rand::random::<f64>());
            tokio::time::sleep(delay).await;
        }
        let id = delivery.event["id"].as_str().unwrap_or_default().to_owned();
        let body = match serde_json::to_vec(&*delivery.event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(%id, error = %e, "failed to serialize a webhook event");
                return;
            }
        };
        let mut wait = self.config.webhook_retry.max(Duration::from_millis(10));
        for attempt in 1u32.. {
            let outcome = self.attempt(&body).await;
            if let Some(attempted) = delivery.attempted.take() {
                let _ = attempted.send(());
            }
            match outcome {
                Ok(()) => {
                    tracing::debug!(%id, attempt, "webhook delivered");
                    return;
                }
                Err(reason) if since.elapsed() + wait > self.config.webhook_retry_window => {
                    tracing::warn!(%id, attempt, %reason, "webhook not delivered; its retry window has ended");
                    return;
                }
                Err(reason) => {
                    tracing::info!(%id, attempt, %reason, retry_in = ?wait, "webhook delivery failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_CAP);
                }
            }
        }
    }

    async fn attempt(&self, body: &[u8]) -> Result<(), String> {
        let _permit = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
        let signature =
            stripe_signature::sign(&self.config.webhook_secrets, chrono::Utc::now().timestamp(), body);
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json; charset=utf-8")
            .header(stripe_signature::HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {}", response.status()))
        }
    }
}
