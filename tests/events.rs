//! The outbox: every transition reaches NATS JetStream once and in order per order, through relay crashes, a
//! NATS outage and competing relays; and the polling feed serves the same events.
//! Tests use the real nats-server at 127.0.0.1:4222 (each on its own stream), or a private one they may stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use orderflow_shared::outbox::CloudEvent;
use orderflow_shared::settings::RelaySettings;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{
    Killed, Options, Received, TestApp, consume_stream as consume_all, delete_stream, eventually, free_port,
    spawn_app_with, spawn_worker_process,
};

const NATS: &str = "nats://127.0.0.1:4222";

/// A relay on its own stream and subjects, so tests running at once do not see each other's events.
fn relay_to(nats_url: &str) -> RelaySettings {
    let id = Uuid::new_v4().simple().to_string();
    RelaySettings {
        nats_url: nats_url.to_owned(),
        stream: format!("TEST_{}", id.to_uppercase()),
        subject_prefix: format!("t{id}"),
        page_size: 50,
        idle_interval: Duration::from_millis(50),
    }
}

fn with_relay(relay: &RelaySettings) -> Options {
    Options {
        relay: Some(relay.clone()),
        ..Options::default()
    }
}

async fn event_count(app: &TestApp) -> usize {
    let n: i64 = sqlx::query_scalar("select count(*) from order_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    n as usize
}

async fn unpublished(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from order_events where published_at is null")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn wait_all_published(app: &TestApp, timeout: Duration) {
    eventually("every event to be published", timeout, || async {
        (unpublished(app).await == 0).then_some(())
    })
    .await;
}

/// Each DB event exactly once in the stream, per order in sequence order, with the id as Nats-Msg-Id.
async fn assert_stream_matches_outbox(app: &TestApp, relay: &RelaySettings, received: &[Received]) {
    let events: Vec<(Uuid, Uuid, i32, String)> =
        sqlx::query_as("select event_id, order_id, sequence, event_type from order_events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(received.len(), events.len(), "every event once, none twice");
    let ids: HashSet<Uuid> = received.iter().map(|r| r.event.id).collect();
    assert_eq!(ids.len(), received.len(), "no event delivered twice");
    let mut per_order: HashMap<String, Vec<i32>> = HashMap::new();
    for r in received {
        assert_eq!(r.msg_id, r.event.id.to_string(), "Nats-Msg-Id is the event id");
        let kind = r.event.event_type.strip_prefix("order.").unwrap();
        assert_eq!(r.subject, format!("{}.{kind}", relay.subject_prefix));
        assert_eq!(r.event.specversion, "1.0");
        assert_eq!(r.event.subject, r.event.data.order_id.to_string());
        per_order
            .entry(r.event.subject.clone())
            .or_default()
            .push(r.event.data.sequence);
    }
    for (order, sequences) in &per_order {
        let expected: Vec<i32> = (1..=sequences.len() as i32).collect();
        assert_eq!(
            sequences, &expected,
            "order {order}: events in order, none missing"
        );
    }
    for (event_id, _, _, _) in &events {
        assert!(ids.contains(event_id), "event {event_id} reached the stream");
    }
}

async fn create_mixed_orders(app: &TestApp, prefix: &str, n: usize) -> Vec<Uuid> {
    let tokens = [
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "pm_sim_flaky",
        "pm_card_visa",
    ];
    let mut ids = Vec::new();
    for i in 0..n {
        let id = app
            .create_order(&format!("{prefix}-{i}"), &[("E", 1)], tokens[i % tokens.len()])
            .await;
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn every_transition_reaches_jetstream_once_and_in_order_per_order() {
    let relay = relay_to(NATS);
    let app = spawn_app_with(with_relay(&relay)).await;
    app.put_sku("E", 100, 500).await;

    let ids = create_mixed_orders(&app, "js", 24).await;
    for id in ids.iter().step_by(6) {
        app.cancel(*id).await;
    }
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    wait_all_published(&app, Duration::from_secs(20)).await;
    let received = consume_all(NATS, &relay.stream, event_count(&app).await).await;

    assert_stream_matches_outbox(&app, &relay, &received).await;
    let paid = received
        .iter()
        .find(|r| r.event.event_type == "order.paid")
        .expect("some order paid");
    assert_eq!(paid.event.data.from.as_deref(), Some("RESERVED"));
    assert_eq!(paid.event.data.to, "PAID");
    assert_eq!(paid.event.data.total, 500);
    delete_stream(NATS, &relay.stream).await;
}

/// The relay's process dies after JetStream stored a batch and before the batch was marked published: the next
/// relay sends it again, JetStream drops the copies, and consumers see each event once.
#[tokio::test]
async fn a_relay_killed_mid_batch_resumes_without_loss_or_visible_duplicates() {
    let relay = relay_to(NATS);
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("E", 100, 500).await;
    let ids = create_mixed_orders(&app, "kill", 12).await;
    let env = |failpoint: Option<&'static str>| {
        let mut env = vec![
            ("ORDERFLOW_PAYMENTS_URL", app.paysim.clone()),
            ("ORDERFLOW_NATS_URL", NATS.to_owned()),
            ("ORDERFLOW_NATS_STREAM", relay.stream.clone()),
            ("ORDERFLOW_NATS_SUBJECT_PREFIX", relay.subject_prefix.clone()),
        ];
        if let Some(failpoint) = failpoint {
            env.push(("FAILPOINTS", failpoint.to_owned()));
        }
        env
    };
    let spawn = |env: Vec<(&'static str, String)>| -> Killed {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_worker_process(&app.database_url, &env)
    };

    let mut first = spawn(env(Some("relay.after_publish=return")));
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the failpoint aborts the relay's process");
    assert!(!status.success());
    let client = async_nats::connect(NATS).await.unwrap();
    let stored_before = jetstream::new(client)
        .get_stream(&relay.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages;
    assert!(stored_before > 0, "the batch reached JetStream");
    assert_eq!(
        unpublished(&app).await as usize,
        event_count(&app).await,
        "but none was marked published"
    );

    let _second = spawn(env(None));
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    wait_all_published(&app, Duration::from_secs(30)).await;
    let received = consume_all(NATS, &relay.stream, event_count(&app).await).await;

    assert_stream_matches_outbox(&app, &relay, &received).await;
    delete_stream(NATS, &relay.stream).await;
}

/// A nats-server of the test's own, on a free port with its own store, which the test may stop and restart.
struct PrivateNats {
    port: u16,
    dir: std::path::PathBuf,
    process: Option<Killed>,
}

impl PrivateNats {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("orderflow-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = Self {
            port: free_port(),
            dir,
            process: None,
        };
        nats.resume();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .or_else(|_| {
                std::process::Command::new("/usr/sbin/nats-server")
                    .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
                    .arg(&self.dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .expect("nats-server is installed");
        self.process = Some(Killed(child));
    }

    fn stop(&mut self) {
        self.process = None;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn while_nats_is_down_events_wait_in_the_outbox_and_flush_when_it_returns() {
    let mut nats = PrivateNats::start();
    let relay = relay_to(&nats.url());
    let app = spawn_app_with(with_relay(&relay)).await;
    app.put_sku("E", 100, 500).await;
    let before = create_mixed_orders(&app, "up", 4).await;
    for id in &before {
        app.wait_terminal(*id).await;
    }
    wait_all_published(&app, Duration::from_secs(30)).await;

    nats.stop();
    let during = create_mixed_orders(&app, "down", 6).await;
    for id in &during {
        let order = app.wait_terminal(*id).await;
        assert_ne!(order["status"], "CREATED", "the saga does not wait for NATS");
    }
    assert!(unpublished(&app).await > 0, "events wait in the outbox");
    let ready = app.get_json(&format!("{}/readyz", app.api)).await;
    assert!(ready["outbox"]["unpublished"].as_i64().unwrap() > 0, "{ready}");
    assert!(ready["outbox"]["lag_seconds"].as_f64().unwrap() > 0.0, "{ready}");
    let metrics = app.api_get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("orderflow_outbox_lag_seconds "), "{metrics}");
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orderflow_outbox_lag_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(lag > 0.0);

    nats.resume();
    wait_all_published(&app, Duration::from_secs(60)).await;
    let received = consume_all(&nats.url(), &relay.stream, event_count(&app).await).await;
    assert_stream_matches_outbox(&app, &relay, &received).await;
    let ready = app.get_json(&format!("{}/readyz", app.api)).await;
    assert_eq!(ready["outbox"]["unpublished"], 0);
    assert!(
        ready["outbox"]["published_per_second"].as_f64().unwrap() > 0.0,
        "{ready}"
    );
}

/// Two relays against one database: one leads and publishes, the other waits; when the leader stops, the other
/// takes over. Nothing is published twice.
#[tokio::test]
async fn two_relays_at_once_do_not_double_publish_and_the_second_takes_over() {
    let relay = relay_to(NATS);
    let app = spawn_app_with(Options::default()).await;
    app.put_sku("E", 100, 500).await;
    let options = app.pool.connect_options().as_ref().clone();
    let stats = [
        Arc::new(orderflow_worker::relay::RelayStats::default()),
        Arc::new(orderflow_worker::relay::RelayStats::default()),
    ];
    let (stop_first, first_stopped) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(orderflow_worker::relay::run(
        options.clone(),
        relay.clone(),
        stats[0].clone(),
        first_stopped,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::spawn(orderflow_worker::relay::run(
        options,
        relay.clone(),
        stats[1].clone(),
        app.stopped(),
    ));

    let ids = create_mixed_orders(&app, "two", 16).await;
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    wait_all_published(&app, Duration::from_secs(20)).await;
    let published = |i: usize| stats[i].published.load(Ordering::Relaxed);
    assert_eq!(
        (published(0) as usize, published(1)),
        (event_count(&app).await, 0),
        "the first leads alone"
    );

    stop_first.send(true).unwrap();
    first.await.unwrap();
    let more = create_mixed_orders(&app, "after", 4).await;
    for id in &more {
        app.wait_terminal(*id).await;
    }
    wait_all_published(&app, Duration::from_secs(20)).await;

    let total = event_count(&app).await as u64;
    assert!(published(1) > 0, "the second took over");
    assert_eq!(
        published(0) + published(1),
        total,
        "each event published by exactly one relay"
    );
    let duplicates =
        stats[0].duplicates.load(Ordering::Relaxed) + stats[1].duplicates.load(Ordering::Relaxed);
    assert_eq!(duplicates, 0, "nothing was sent twice");
    let received = consume_all(NATS, &relay.stream, total as usize).await;
    assert_stream_matches_outbox(&app, &relay, &received).await;
    delete_stream(NATS, &relay.stream).await;
}

#[tokio::test]
async fn the_events_feed_pages_through_every_event_with_a_stable_cursor() {
    let app = spawn_app_with(Options::default()).await;
    app.put_sku("E", 100, 500).await;
    let ids = create_mixed_orders(&app, "feed", 5).await;
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    let total = event_count(&app).await;

    // The feed holds back events of transactions younger than one still running (a worker's or the API's
    // bookkeeping may be in flight even with every saga over), so an empty page means "not yet", not "never":
    // read on until every event came or the deadline passed.
    let mut cursor = String::new();
    let mut seen: Vec<CloudEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < total && tokio::time::Instant::now() < deadline {
        let page = app
            .get_json(&format!("{}/v1/events?limit=4&after={cursor}", app.api))
            .await;
        let events: Vec<CloudEvent> = serde_json::from_value(page["events"].clone()).unwrap();
        let next = page["next_cursor"].as_str().unwrap().to_owned();
        if events.is_empty() {
            assert_eq!(next, cursor, "an empty page hands back the same cursor");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert!(events.len() <= 4);
        seen.extend(events);
        cursor = next;
    }
    let after_the_end = app
        .get_json(&format!("{}/v1/events?limit=4&after={cursor}", app.api))
        .await;
    assert_eq!(
        after_the_end["events"],
        serde_json::json!([]),
        "nothing after the last"
    );
    assert_eq!(after_the_end["next_cursor"], cursor.as_str());

    assert_eq!(seen.len(), total, "every event once");
    let unique: HashSet<Uuid> = seen.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), total);
    let mut last: HashMap<Uuid, i32> = HashMap::new();
    for event in &seen {
        let previous = last.insert(event.data.order_id, event.data.sequence).unwrap_or(0);
        assert_eq!(
            event.data.sequence,
            previous + 1,
            "per order in sequence: {event:?}"
        );
        assert_eq!(event.source, orderflow_shared::outbox::SOURCE);
    }
    // A new event appears after the cursor already held.
    let id = app.create_order("feed-late", &[("E", 1)], "pm_card_visa").await;
    app.wait_terminal(id).await;
    // The feed shows an event once no transaction older than the one that wrote it is still running (so that a
    // cursor never skips one that commits later): a completion or claim in flight beside the last step holds the
    // last event back for a moment after the order reads FULFILLED.
    let mut page = Value::Null;
    for _ in 0..100 {
        page = app
            .get_json(&format!("{}/v1/events?after={cursor}", app.api))
            .await;
        if page["events"].as_array().is_some_and(|events| events.len() >= 4) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let late: Vec<Value> = page["events"].as_array().unwrap().clone();
    assert_eq!(
        late.len(),
        4,
        "created, reserved, paid, fulfilled of the new order: {page}"
    );
    assert!(late.iter().all(|e| e["subject"] == id.to_string()));
}

#[tokio::test]
async fn the_events_feed_rejects_a_bad_cursor_or_limit_naming_the_parameter() {
    let app = spawn_app_with(Options::default()).await;
    for (query, field) in [
        ("after=yesterday", "after"),
        ("after=12", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
    ] {
        let response = app.api_get(&format!("/v1/events?{query}")).await;
        assert_eq!(response.status(), 422, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
}

/// The relay's throughput: `RELAY_BENCH_EVENTS` (default 50,000) unpublished events, one relay, timed until the
/// outbox is empty. A measurement, not a check: run it with
/// `cargo nextest run --cargo-profile release --run-ignored only -E 'test(relay_throughput)' --no-capture`
/// (`ORDERFLOW_RELAY_PAGE_SIZE` to try another page size).
#[tokio::test]
#[ignore = "benchmark; run on purpose"]
async fn relay_throughput() {
    let events: i64 = std::env::var("RELAY_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let page_size: i64 = std::env::var("ORDERFLOW_RELAY_PAGE_SIZE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    // Five events per order, as a full saga writes them.
    let orders = events / 5;
    sqlx::query(
        "insert into orders (id, customer_id, currency, total, status, payment_token) \
         select gen_random_uuid(), 'bench', 'USD', 1000, 'FULFILLED', 'pm_card_visa' from generate_series(1, $1)",
    )
    .bind(orders)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into order_events (event_id, order_id, sequence, event_type, from_status, to_status) \
         select gen_random_uuid(), o.id, s, 'order.paid', 'RESERVED', 'PAID' \
         from orders o cross join generate_series(1, 5) s order by o.id, s",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut relay = relay_to(NATS);
    relay.page_size = page_size;
    let stats = Arc::new(orderflow_worker::relay::RelayStats::default());
    let started = std::time::Instant::now();
    tokio::spawn(orderflow_worker::relay::run(
        app.pool.connect_options().as_ref().clone(),
        relay.clone(),
        stats.clone(),
        app.stopped(),
    ));
    wait_all_published(&app, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();

    let published = stats.published.load(Ordering::Relaxed);
    println!(
        "relay: {published} events in {:.2} s = {:.0} events/s (page size {page_size})",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(published as i64, orders * 5);
    delete_stream(NATS, &relay.stream).await;
}
