//! The outbox relay: publishes `order_events` rows to NATS JetStream as CloudEvents and marks them published.
//!
//! - **One publisher at a time.** Every worker process with `ORDERFLOW_NATS_URL` runs a relay, but only the one
//!   holding a PostgreSQL advisory lock publishes; the others wait to take over (within a second of the leader's
//!   death, when PostgreSQL ends its session and frees the lock). The leader reads and marks events on the very
//!   connection that holds the lock, so a leader that lost its session cannot mark anything.
//! - **At least once, deduplicated.** Each event is published with its event id as `Nats-Msg-Id`, and marked
//!   published only after JetStream acknowledged it. A relay that dies between the two re-sends the batch, and
//!   JetStream's duplicate window drops the copies: consumers see each event once.
//! - **In order per order.** A batch goes out in waves: each wave holds at most one event per order, and an order
//!   whose event failed sends nothing more in this batch. So an event never reaches the stream before the one
//!   that precedes it for the same order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use orderflow_shared::outbox::{self, OutboxEvent};
use orderflow_shared::settings::RelaySettings;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

/// The advisory lock whose holder is the one publishing relay ("orderflw").
const LEADER_LOCK: i64 = 0x6f72_6465_7266_6c77;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the stream remembers message ids to drop re-sends.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(300);

/// What one relay did, for logs and tests.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events JetStream stored (acknowledged and not a duplicate).
    pub published: AtomicU64,
    /// Re-sends JetStream recognised and dropped.
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
}

/// Runs the relay until `stopped`. Never returns an error: NATS or PostgreSQL trouble is logged and retried with
/// backoff, and events wait in the outbox meanwhile.
pub async fn run(
    options: PgConnectOptions,
    settings: RelaySettings,
    stats: Arc<RelayStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let client = match async_nats::ConnectOptions::new()
        .name("orderflow-relay")
        .retry_on_initial_connect()
        .connect(settings.nats_url.as_str())
        .await
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, url = settings.nats_url, "cannot use ORDERFLOW_NATS_URL; the relay is off");
            return;
        }
    };
    let jetstream = jetstream::new(client);
    let mut relay = Relay {
        options,
        settings,
        stats,
        jetstream,
        conn: None,
        stream_ready: false,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let wait = match relay.step().await {
            Ok(Step::Busy) => {
                backoff = Duration::from_millis(200);
                Duration::ZERO
            }
            Ok(Step::Idle) => {
                backoff = Duration::from_millis(200);
                relay.settings.idle_interval
            }
            Ok(Step::Follower) => relay.settings.idle_interval.max(Duration::from_millis(500)),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), ?backoff, "relay: retrying later");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        if wait.is_zero() && !*stopped.borrow() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|stop| *stop) => break,
        }
    }
    if let Some(conn) = relay.conn.take() {
        let _ = conn.close().await;
    }
}

enum Step {
    /// Published a full batch; there may be more.
    Busy,
    /// Nothing (more) to publish.
    Idle,
    /// Another relay leads.
    Follower,
}

struct Relay {
    options: PgConnectOptions,
    settings: RelaySettings,
    stats: Arc<RelayStats>,
    jetstream: jetstream::Context,
    /// The connection holding the leader lock, once this relay leads.
    conn: Option<PgConnection>,
    stream_ready: bool,
}

impl Relay {
    async fn step(&mut self) -> anyhow::Result<Step> {
        if self.conn.is_none() {
            let mut conn = PgConnection::connect_with(&self.options)
                .await
                .context("relay: cannot reach PostgreSQL")?;
            let leader = sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "leader!""#, LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if !leader {
                let _ = conn.close().await;
                return Ok(Step::Follower);
            }
            tracing::info!("relay: leading; publishing the outbox to NATS");
            self.conn = Some(conn);
        }
        if !self.stream_ready {
            self.ensure_stream().await?;
            self.stream_ready = true;
        }
        let result = self.publish_batch().await;
        if let Err(error) = &result
            && error.downcast_ref::<sqlx::Error>().is_some()
        {
            // The session (and with it the lock) may be gone: lead again only after taking the lock again.
            self.conn = None;
        }
        result
    }

    async fn ensure_stream(&self) -> anyhow::Result<()> {
        let config = jetstream::stream::Config {
            name: self.settings.stream.clone(),
            subjects: vec![format!("{}.>", self.settings.subject_prefix)],
            duplicate_window: DUPLICATE_WINDOW,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.jetstream
            .get_or_create_stream(config)
            .await
            .with_context(|| format!("relay: cannot create or open stream {}", self.settings.stream))?;
        Ok(())
    }

    async fn publish_batch(&mut self) -> anyhow::Result<Step> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::Follower);
        };
        let events = outbox::unpublished(conn, self.settings.page_size).await?;
        if events.is_empty() {
            return Ok(Step::Idle);
        }
        let full = events.len() as i64 >= self.settings.page_size;
        let (acked, failure) = publish_in_waves(&self.jetstream, &self.settings, &self.stats, events).await;
        // Test builds: die after JetStream stored the batch and before it is marked published.
        crate::failpoints::abort("relay.after_publish", None);
        if !acked.is_empty() {
            outbox::mark_published(conn, &acked).await?;
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        match failure {
            Some(error) => Err(error),
            None if full => Ok(Step::Busy),
            None => Ok(Step::Idle),
        }
    }
}

/// Publishes `events` (in id order) wave by wave, at most one event per order in flight. Returns the ids
/// JetStream acknowledged and the first failure, if any.
async fn publish_in_waves(
    jetstream: &jetstream::Context,
    settings: &RelaySettings,
    stats: &RelayStats,
    events: Vec<OutboxEvent>,
) -> (Vec<i64>, Option<anyhow::Error>) {
    let mut queues: Vec<VecDeque<OutboxEvent>> = Vec::new();
    let mut index: HashMap<uuid::Uuid, usize> = HashMap::new();
    for event in events {
        let slot = *index.entry(event.order_id).or_insert_with(|| {
            queues.push(VecDeque::new());
            queues.len() - 1
        });
        queues[slot].push_back(event);
    }
    let mut acked = Vec::new();
    let mut failure = None;
    loop {
        let wave: Vec<OutboxEvent> = queues.iter_mut().filter_map(VecDeque::pop_front).collect();
        if wave.is_empty() {
            return (acked, failure);
        }
        let mut pending = Vec::with_capacity(wave.len());
        for event in &wave {
            let payload = match serde_json::to_vec(&event.to_cloud_event()) {
                Ok(payload) => payload,
                Err(error) => return (acked, Some(error.into())),
            };
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(event.event_id.to_string());
            pending.push(jetstream.send_publish(event.subject(&settings.subject_prefix), publish));
        }
        let sent = futures::future::join_all(pending).await;
        let acks = futures::future::join_all(sent.into_iter().map(|sent| async move {
            match sent {
                Ok(ack) => ack.await.map_err(anyhow::Error::from),
                Err(error) => Err(anyhow::Error::from(error)),
            }
        }))
        .await;
        for (event, ack) in wave.iter().zip(acks) {
            match ack {
                Ok(ack) => {
                    acked.push(event.id);
                    let counter = if ack.duplicate {
                        &stats.duplicates
                    } else {
                        &stats.published
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    // Hold back the rest of this order's events: they must not overtake this one.
                    if let Some(slot) = index.get(&event.order_id) {
                        queues[*slot].clear();
                    }
                    if failure.is_none() {
                        failure = Some(error.context(format!("relay: publishing event {}", event.event_id)));
                    }
                }
            }
        }
    }
}
