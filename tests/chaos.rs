//! The chaos test: the API and three worker processes, over a thousand multi-line orders on a few hot skus with
//! every kind of payment (declines, flaky and lost responses, random provider faults) and some cancels by
//! customers, while a random worker is killed with SIGKILL every few seconds and restarted, and PostgreSQL
//! itself crashes once; each sku's stock is at two locations. Afterwards every order must be over, no unit
//! oversold or lost at any location, the stock ledger adding up, no hold left open, no
//! order charged twice or charged and cancelled, every transition recorded exactly once, and every event in
//! NATS JetStream exactly once and in order per order (each worker also runs the outbox relay, so relays die
//! mid-batch too). The API runs with admission control on, as shipped: an order refused past the saga backlog
//! bound is sent again with its Idempotency-Key. It reports the outbox lag sampled during the run and the refusals.
//!
//! After payment (issue 18) the mix goes on: about a quarter of the orders hold a shipment sku, so they wait in
//! PAID for the warehouse, which ships them in one or two shipments (and now and then cancels the rest after the
//! first); customer service refunds some finished orders (by amount, by line, and now and then two refunds at once
//! that together pass what was captured) and the warehouse takes some units back (restocked or written off, the
//! refund following). All of it under the same kills and crash; afterwards captured − refunded per order must be
//! what the provider's ledger says, shipped units what left stock, and no return or refund past what was
//! delivered or captured.
//!
//! Webhooks both ways (issue 19): the simulator's webhooks reach the API duplicated, reordered, delayed and
//! sometimes before the answer they belong to; some orders pay by 3-D Secure, which a stand-in customer completes,
//! abandons or ignores (the deadline then cancels), and some by a bank debit settled only by webhook; an impostor
//! sends forged, stale and unknown-order events, refused or changing nothing. Afterwards, besides the above: no
//! intent left that a customer or a bank could still complete, one capture per paid order, every provider event
//! applied.
//!
//! Short mode (default, ≤ 3 minutes, run by `.ci/run`): 1,000 orders at 25 per second. Soak mode:
//! `ORDERFLOW_CHAOS=soak`, with `ORDERFLOW_CHAOS_ORDERS` (default 10,000) orders at `ORDERFLOW_CHAOS_RATE` per
//! second (default 40) and a PostgreSQL crash every quarter of them. Runs on a
//! private cluster, since it crashes the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orderflow_shared::pgcluster::PrivateCluster;
use rand::Rng;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::helpers::{
    Killed, consume_stream, delete_stream, eventually, free_port, keyed_client, spawn_process,
};
use crate::invariants;

const NATS: &str = "nats://127.0.0.1:4222";
const SKUS: [&str; 4] = ["HOT-1", "HOT-2", "HOT-3", "HOT-4"];
/// Skus fulfilled by shipment: an order with one of them waits in PAID for the warehouse.
const BOXES: [&str; 2] = ["BOX-1", "BOX-2"];
/// Of the orders, the share with a shipment sku; of the finished ones, those customer service refunds and those
/// the warehouse takes units back of.
const SHIPMENT_SHARE: u32 = 25;
const REFUND_SHARE: u32 = 15;
const RETURN_SHARE: u32 = 10;
/// Units per sku for each order planned: about 70% of the orders find stock, the rest end out_of_stock.
const ON_HAND_PER_ORDER: f64 = 0.7;
const PRICE: i64 = 1250;
const WORKERS: usize = 3;
const CLIENTS: usize = 12;
/// Payment methods and their weights; slow authorizations keep steps in flight when a worker is killed; the
/// customer (`customer_acts`) completes, abandons or ignores a 3-D Secure, and bank debits settle by webhook.
const TOKENS: [(&str, u32); 8] = [
    ("pm_card_visa", 45),
    ("pm_card_chargeDeclined", 10),
    ("pm_sim_flaky", 10),
    ("pm_sim_lost_response", 10),
    ("pm_sim_slow", 15),
    ("pm_sim_requires_action", 5),
    ("pm_sim_processing", 3),
    ("pm_sim_processing_fails", 2),
];
/// The provider's webhook secret of the run.
const WEBHOOK_SECRET: &str = "whsec_chaos";
/// How long the saga waits for an asynchronous payment: a customer who never acts is cancelled after it.
const ASYNC_DEADLINE_SECS: &str = "8";

struct Plan {
    orders: usize,
    /// Orders submitted per second (open loop), so that the chaos spreads over the whole run.
    rate: f64,
    /// Submitted-order counts at which PostgreSQL crashes.
    crashes: Vec<usize>,
    drain: Duration,
}

impl Plan {
    fn from_env() -> Self {
        if std::env::var("ORDERFLOW_CHAOS").as_deref() == Ok("soak") {
            let orders = std::env::var("ORDERFLOW_CHAOS_ORDERS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(10_000);
            let rate = std::env::var("ORDERFLOW_CHAOS_RATE")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(40.0);
            Self {
                orders,
                rate,
                crashes: vec![orders / 4, orders / 2, orders * 3 / 4],
                drain: Duration::from_secs(900),
            }
        } else {
            Self {
                orders: 1_000,
                rate: 25.0,
                crashes: vec![400],
                drain: Duration::from_secs(120),
            }
        }
    }
}

/// The real processes under test, restartable.
struct Fleet {
    url: String,
    paysim: String,
    /// Every worker also runs the outbox relay, to this test's own stream on the shared nats-server.
    stream: String,
    subjects: String,
    workers: Vec<Killed>,
}

impl Fleet {
    fn spawn_worker(&self) -> Killed {
        spawn_process(
            "orderflow-worker",
            &self.url,
            &[
                ("ORDERFLOW_PAYMENTS_URL", self.paysim.as_str()),
                ("ORDERFLOW_DB_MAX_CONNECTIONS", "14"),
                ("ORDERFLOW_NATS_URL", NATS),
                ("ORDERFLOW_NATS_STREAM", self.stream.as_str()),
                ("ORDERFLOW_NATS_SUBJECT_PREFIX", self.subjects.as_str()),
                ("ORDERFLOW_ASYNC_PAYMENT_DEADLINE_SECS", ASYNC_DEADLINE_SECS),
                // The merchant's endpoint fails a tenth of its requests: retried every second, not in minutes.
                (
                    "ORDERFLOW_WEBHOOK_RETRY_SCHEDULE",
                    "0,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
                ),
                ("ORDERFLOW_WEBHOOK_ALLOW_LOOPBACK", "true"),
            ],
            None,
        )
    }
}

/// The customers of 3-D Secure payments: each `requires_action` intent is completed (70%), abandoned (20%) or
/// left alone (10%, so the deadline cancels it), after up to two seconds, until `calm`. Answers how many of each.
async fn customer_acts(paysim: String, calm: Arc<AtomicBool>) -> [usize; 3] {
    let http = reqwest::Client::new();
    let mut seen = std::collections::HashSet::new();
    let mut acted = [0usize; 3];
    while !calm.load(Ordering::Relaxed) {
        let ledger: Option<Value> = match http.get(format!("{paysim}/v1/sim/ledger")).send().await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        for intent in ledger
            .as_ref()
            .and_then(|l| l["intents"].as_array())
            .into_iter()
            .flatten()
        {
            let Some(id) = intent["id"].as_str() else { continue };
            if intent["status"] != "requires_action" || !seen.insert(id.to_owned()) {
                continue;
            }
            let roll = rand::rng().random_range(0..10);
            let (kind, action) = match roll {
                0..7 => (0, Some("complete")),
                7..9 => (1, Some("abandon")),
                _ => (2, None),
            };
            acted[kind] += 1;
            if let Some(action) = action {
                let (http, url) = (
                    http.clone(),
                    format!("{paysim}/v1/sim/payment_intents/{id}/customer"),
                );
                let wait = Duration::from_millis(rand::rng().random_range(0..2_000));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = http.post(url).form(&[("action", action)]).send().await;
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    acted
}

/// Someone who is not the provider: a forged signature, a stale one and an event about no order of ours, sent
/// now and then until `calm`. The first two must be refused (400) and the last acknowledged; none may change an
/// order (checked by the invariants). Answers how many were sent.
async fn impostor(api: String, calm: Arc<AtomicBool>) -> usize {
    let http = reqwest::Client::new();
    let mut sent = 0;
    while !calm.load(Ordering::Relaxed) {
        let now = chrono::Utc::now().timestamp();
        let body = serde_json::to_vec(&json!({
            "id": format!("evt_impostor_{sent}"), "object": "event", "type": "payment_intent.succeeded",
            "created": now, "data": {"object": {"id": "pi_nobody", "object": "payment_intent",
                                                 "metadata": {"order_id": Uuid::new_v4().to_string()}}},
        }))
        .unwrap();
        let sign = orderflow_shared::stripe_signature::sign;
        for (signature, expected) in [
            (sign(&["whsec_forged"], now, &body), 400),
            (sign(&[WEBHOOK_SECRET], now - 600, &body), 400),
            (sign(&[WEBHOOK_SECRET], now, &body), 200),
        ] {
            let response = http
                .post(format!("{api}/v1/provider/webhooks"))
                .header("content-type", "application/json")
                .header("Stripe-Signature", signature)
                .body(body.clone())
                .send()
                .await;
            // The API may be unreachable for a moment (PostgreSQL's crash answers 503); any answer must be the
            // expected one or that.
            if let Ok(response) = response {
                let status = response.status().as_u16();
                assert!(
                    status == expected || status == 503,
                    "impostor's request answered {status}, not {expected}"
                );
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sent
}

fn random_order(rng: &mut impl Rng, i: usize) -> Value {
    let mut skus = SKUS.to_vec();
    let lines = rng.random_range(1..=3);
    let mut chosen = Vec::new();
    for _ in 0..lines {
        let sku = skus.remove(rng.random_range(0..skus.len()));
        chosen.push(json!({"sku": sku, "quantity": rng.random_range(1..=3)}));
    }
    if rng.random_range(0..100) < SHIPMENT_SHARE {
        let sku = BOXES[rng.random_range(0..BOXES.len())];
        chosen.push(json!({"sku": sku, "quantity": rng.random_range(1..=3)}));
    }
    let roll = rng.random_range(0..100);
    let mut acc = 0;
    let token = TOKENS
        .iter()
        .find(|(_, weight)| {
            acc += weight;
            roll < acc
        })
        .map_or("pm_card_visa", |(token, _)| token);
    json!({"customer_id": format!("chaos-{i}"), "currency": "USD", "lines": chosen, "payment_token": token})
}

/// Submits one order until the API accepts it (retrying 503s, in-flight 409s and refused connections with the
/// same Idempotency-Key, as a well-behaved client does). Returns its id.
/// Submits order `i` until it is accepted: a 409 (in flight) or a 503 (an outage, or admission control past its
/// backlog bound, counted in `overloaded`) is retried with the same Idempotency-Key.
async fn submit(http: &reqwest::Client, api: &str, i: usize, body: &Value, overloaded: &AtomicUsize) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = http
            .post(format!("{api}/v1/orders"))
            .header("Idempotency-Key", format!("chaos-{i}"))
            .json(body)
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => {
                let order: Value = r.json().await.unwrap();
                return order["id"].as_str().unwrap().parse().unwrap();
            }
            Ok(r) if r.status() == 503 => {
                let problem: Value = r.json().await.unwrap_or_default();
                if problem["type"] == "urn:orderflow:problem:overloaded" {
                    overloaded.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(r) if r.status() == 409 => {}
            Ok(r) => panic!(
                "order {i} refused: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "order {i} never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn chaos_kills_and_a_database_crash_leave_every_order_finished_and_every_invariant_intact() {
    let plan = Plan::from_env();
    let on_hand = (plan.orders as f64 * ON_HAND_PER_ORDER) as i64;
    let started = Instant::now();
    let cluster = Arc::new(PrivateCluster::start().unwrap());
    let url = cluster.url();

    let sim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paysim = format!("http://{}", sim.local_addr().unwrap());
    let addr = format!("127.0.0.1:{}", free_port());
    let api = format!("http://{addr}");
    // The provider's webhooks reach the API duplicated, reordered, delayed and now and then before the answer.
    let faults = orderflow_paysim::SimConfig {
        fault_rate: 0.05,
        lost_response_rate: 0.03,
        slow_delay: Duration::from_millis(500),
        webhook_url: Some(format!("{api}/v1/provider/webhooks")),
        webhook_secrets: vec![WEBHOOK_SECRET.to_owned()],
        webhook_duplicate_rate: 0.2,
        webhook_reorder_rate: 0.2,
        webhook_early_rate: 0.2,
        webhook_delay: Duration::from_millis(300),
        ..Default::default()
    };
    tokio::spawn(orderflow_paysim::run(sim, faults, std::future::pending()));
    let _api_process = spawn_process(
        "orderflow-api",
        &url,
        &[
            ("ORDERFLOW_API_ADDR", &addr),
            ("ORDERFLOW_DB_MAX_CONNECTIONS", "20"),
            ("ORDERFLOW_PROVIDER_WEBHOOK_SECRETS", WEBHOOK_SECRET),
        ],
        None,
    );
    let probe = reqwest::Client::new();
    eventually("the API to be ready", Duration::from_secs(60), || async {
        let ready = probe.get(format!("{api}/readyz")).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    let http = keyed_client(&url, Duration::from_secs(10)).await;
    // Each sku's stock is split over two locations, a third of it at the second, so lines are allocated from
    // both and split across them as the first runs out.
    let store = http
        .put(format!("{api}/v1/locations/store"))
        .json(&json!({"name": "Second location", "priority": 10}))
        .send()
        .await
        .unwrap();
    assert!(store.status().is_success());
    for sku in SKUS.iter().chain(&BOXES) {
        let fulfilment = if BOXES.contains(sku) { "shipment" } else { "auto" };
        for (location, units) in [("default", on_hand - on_hand / 3), ("store", on_hand / 3)] {
            let put = http
                .put(format!("{api}/v1/skus/{sku}"))
                .json(
                    &json!({"on_hand": units, "price": PRICE, "currency": "USD", "location": location,
                              "fulfilment": fulfilment}),
                )
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success());
        }
    }
    // A merchant's webhook endpoint, failing a tenth of its requests, receives every order event throughout.
    let merchant = crate::helpers::Receiver::start(Arc::new(|_, _| {
        (
            if rand::random::<f64>() < 0.1 { 500 } else { 200 },
            Duration::ZERO,
        )
    }))
    .await;
    let merchant_secret = {
        let pool = PgPool::connect(&url).await.unwrap();
        let server_secret =
            orderflow_shared::server_secret::load(&pool, orderflow_shared::webhooks::SERVER_SECRET)
                .await
                .unwrap();
        let request = orderflow_shared::webhooks::NewEndpoint {
            url: merchant.url.clone(),
            event_types: Vec::new(),
            description: Some("the chaos test's merchant".to_owned()),
        };
        let mut conn = pool.acquire().await.unwrap();
        let (_, secret) = orderflow_shared::webhooks::create(&mut conn, &request, "chaos", &server_secret)
            .await
            .unwrap();
        secret
    };
    let run_id = Uuid::new_v4().simple().to_string();
    let mut fleet = Fleet {
        url: url.clone(),
        paysim: paysim.clone(),
        stream: format!("CHAOS_{}", run_id.to_uppercase()),
        subjects: format!("chaos{run_id}"),
        workers: Vec::new(),
    };
    let stream = fleet.stream.clone();
    for _ in 0..WORKERS {
        let worker = fleet.spawn_worker();
        fleet.workers.push(worker);
    }
    let fleet = Arc::new(Mutex::new(fleet));

    // Chaos: kill -9 a random worker every 1.5–4 s and start a new one in its place; crash PostgreSQL at the
    // planned points.
    let submitted = Arc::new(AtomicUsize::new(0));
    let calm = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (fleet, calm, kills) = (fleet.clone(), calm.clone(), kills.clone());
        tokio::spawn(async move {
            while !calm.load(Ordering::Relaxed) {
                let pause = rand::rng().random_range(1_500..4_000);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let mut fleet = fleet.lock().await;
                let victim = rand::rng().random_range(0..fleet.workers.len());
                fleet.workers[victim].signal("KILL");
                let _ = fleet.workers[victim].wait_exit(Duration::from_secs(5)).await;
                fleet.workers[victim] = fleet.spawn_worker();
                kills.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The customers of 3-D Secure payments act until every order is over; an impostor sends webhooks meanwhile.
    let customers_done = Arc::new(AtomicBool::new(false));
    let customers = tokio::spawn(customer_acts(paysim.clone(), customers_done.clone()));
    let impostor = tokio::spawn(impostor(api.clone(), calm.clone()));
    let crasher = {
        let (cluster, submitted, crashes) = (cluster.clone(), submitted.clone(), plan.crashes.clone());
        tokio::spawn(async move {
            for at in crashes {
                while submitted.load(Ordering::Relaxed) < at {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || {
                    cluster.stop(true).unwrap();
                    std::thread::sleep(Duration::from_secs(2));
                    cluster.resume().unwrap();
                })
                .await
                .unwrap();
            }
        })
    };

    // The outbox lag (age of the oldest event not yet in JetStream), sampled every 200 ms.
    let lag_samples = {
        let (url, calm) = (url.clone(), calm.clone());
        tokio::spawn(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(1))
                .connect_lazy(&url)
                .unwrap();
            let mut samples = Vec::new();
            while !calm.load(Ordering::Relaxed) {
                let lag: Result<f64, _> = sqlx::query_scalar(
                    "select coalesce(extract(epoch from now() - min(created_at))::float8, 0) \
                     from order_events where published_at is null",
                )
                .fetch_one(&pool)
                .await;
                if let Ok(lag) = lag {
                    samples.push(lag);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };

    // Clients: submit every order (and cancel about one in twenty soon after); after payment, the warehouse and
    // customer service act on some (`AfterPayment`), each order's in a task of its own, reading the order's status
    // from the database.
    let next = Arc::new(AtomicUsize::new(0));
    let overloaded = Arc::new(AtomicUsize::new(0));
    let status = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)
        .unwrap();
    let follow_ups: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
    let done: Arc<Mutex<Done>> = Arc::new(Mutex::new(Done::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, api, next, submitted, overloaded) = (
                http.clone(),
                api.clone(),
                next.clone(),
                submitted.clone(),
                overloaded.clone(),
            );
            let (status, follow_ups, done) = (status.clone(), follow_ups.clone(), done.clone());
            let (total, rate) = (plan.orders, plan.rate);
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return accepted;
                    }
                    tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into())
                        .await;
                    let (body, cancel) = {
                        let mut rng = rand::rng();
                        (random_order(&mut rng, i), rng.random_range(0..20) == 0)
                    };
                    let id = submit(&http, &api, i, &body, &overloaded).await;
                    submitted.fetch_add(1, Ordering::Relaxed);
                    if cancel {
                        // A cancel is best effort: it may meet the outage or a fulfilled order.
                        let _ = http.post(format!("{api}/v1/orders/{id}/cancel")).send().await;
                    }
                    let after = AfterPayment::of(&body, &mut rand::rng());
                    if after != AfterPayment::default() {
                        let (http, api, status) = (http.clone(), api.clone(), status.clone());
                        let done = done.clone();
                        follow_ups.lock().await.push(tokio::spawn(async move {
                            after.run(&http, &api, &status, id, i, &done).await
                        }));
                    }
                    accepted.push(id);
                }
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await.unwrap());
    }
    for follow_up in std::mem::take(&mut *follow_ups.lock().await) {
        follow_up.await.unwrap();
    }
    let done = std::mem::take(&mut *done.lock().await);
    let submit_time = started.elapsed();
    crasher.await.unwrap();
    calm.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    let impostor_requests = impostor.await.unwrap();
    let mut lags = lag_samples.await.unwrap();
    lags.sort_by(f64::total_cmp);
    let lag_at = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };

    // Drain: every accepted order must end, with the restarted fleet and no more chaos.
    let pool = PgPool::connect(&url).await.unwrap();
    let deadline = Instant::now() + plan.drain;
    loop {
        let open: i64 = sqlx::query_scalar(
            "select (select count(*) from orders where status not in ('FULFILLED', 'CANCELLED')) \
                  + (select count(*) from refunds where status in ('PENDING', 'REFUNDING')) \
                  + (select count(*) from shipments where status in ('PENDING', 'CAPTURING'))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        if Instant::now() >= deadline {
            type Stuck = (Uuid, String, Option<String>, Option<String>, Option<String>);
            let stuck: Vec<Stuck> = sqlx::query_as(
                "select o.id, o.status, o.current_step, o.last_error, j.status from orders o \
                 left join apalis.jobs j on j.id = o.job_id \
                 where o.status not in ('FULFILLED', 'CANCELLED') limit 20",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            panic!("{open} orders not finished after {:?}: {stuck:#?}", plan.drain);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let duration = started.elapsed();
    customers_done.store(true, Ordering::Relaxed);
    let [completed, abandoned, ignored] = customers.await.unwrap();

    // The provider's events: all applied (the waiting ones too, now that every order is over); the impostor's
    // events about no order changed nothing.
    eventually(
        "the provider's events to be applied",
        Duration::from_secs(30),
        || async {
            let left: i64 =
                sqlx::query_scalar("select count(*) from provider_events where applied_at is null")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (left == 0).then_some(())
        },
    )
    .await;
    let effects: Vec<(String, i64)> =
        sqlx::query_as("select effect, count(*) from provider_events group by effect order by effect")
            .fetch_all(&pool)
            .await
            .unwrap();
    let impostors: Vec<(Option<String>,)> =
        sqlx::query_as("select effect from provider_events where id like 'evt_impostor_%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        impostors
            .iter()
            .all(|(effect,)| effect.as_deref() == Some("not_ours")),
        "an event about no order changes nothing: {impostors:?}"
    );

    // The merchant's endpoint: every event once after dedupe, verified, in order per order, through the kills
    // and the crash.
    let expected: Vec<(Uuid, Uuid, i32)> =
        sqlx::query_as("select event_id, order_id, sequence from order_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    let merchant_got = merchant
        .wait_for("every event at the merchant's endpoint", |got| {
            crate::outbound_webhooks::all_acknowledged(got, &expected)
        })
        .await;
    crate::outbound_webhooks::delivered_once_in_order(&merchant_got, &expected, &merchant_secret);
    let merchant_requests = merchant_got.len();

    // Every accepted order is there and over, and every invariant holds (stock, money, audit trail, step log).
    let initial: Vec<(&str, i64)> = SKUS.iter().chain(&BOXES).map(|sku| (*sku, on_hand)).collect();
    let by_id = invariants::all_hold(&pool, &http, &paysim, &initial).await;
    assert_eq!(
        by_id.len(),
        plan.orders,
        "one order per request, none lost, none doubled"
    );
    for id in &accepted {
        assert!(by_id.contains_key(id), "accepted order {id} is missing");
    }

    // The events in JetStream: each exactly once, in order per order, despite relays killed mid-batch.
    let events_total: i64 = sqlx::query_scalar("select count(*) from order_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        let left: i64 = sqlx::query_scalar("select count(*) from order_events where published_at is null")
            .fetch_one(&pool)
            .await
            .ok()?;
        (left == 0).then_some(())
    })
    .await;
    let received = consume_stream(NATS, &stream, events_total as usize).await;
    assert_eq!(
        received.len() as i64,
        events_total,
        "every event in JetStream once"
    );
    let mut next_sequence: HashMap<Uuid, i32> = HashMap::new();
    for r in &received {
        let expected = next_sequence.entry(r.event.data.order_id).or_insert(1);
        assert_eq!(
            r.event.data.sequence, *expected,
            "order {}: out of order or repeated",
            r.event.subject
        );
        *expected += 1;
    }
    delete_stream(NATS, &stream).await;

    let count = |wanted: &str| by_id.values().filter(|o| o.status == wanted).count();
    let reasons = |reason: &str| {
        by_id
            .values()
            .filter(|o| o.cancel_reason.as_deref() == Some(reason))
            .count()
    };
    let rescued: i64 = sqlx::query_scalar(
        "select count(*) from saga_steps where status = 'FAILED' and error like 'worker % is gone'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (shipments, refunds, returns): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from shipments where status = 'DONE'), \
                (select count(*) from refunds where status = 'DONE'), (select count(*) from returns)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        shipments > 0 && refunds > 0 && returns > 0,
        "the mix after payment happened: {shipments} shipments, {refunds} refunds, {returns} returns"
    );
    println!(
        "chaos after payment: shipments_done={shipments} refunds_done={refunds} returns={returns} \
         shipment_orders={} rests_cancelled={} refunds_refused={} concurrent_pairs={} returns_refused={}",
        done.shipment_orders,
        done.rests_cancelled,
        done.refunds_refused,
        done.concurrent_pairs,
        done.returns_refused
    );
    println!(
        "chaos: orders={} fulfilled={} cancelled={} (out_of_stock={} declined={} payment_failed={} customer={}) \
         worker_kills={} pg_crashes={} attempts_cut_by_kills={} refused_by_admission={} events={} \
         outbox_lag_p50={:.2}s p99={:.2}s max={:.2}s submit={:.1}s total={:.1}s invariants=held",
        by_id.len(),
        count("FULFILLED"),
        count("CANCELLED"),
        reasons("out_of_stock"),
        reasons("payment_declined"),
        reasons("payment_failed"),
        reasons("customer_request"),
        kills.load(Ordering::Relaxed),
        plan.crashes.len(),
        rescued,
        overloaded.load(Ordering::Relaxed),
        events_total,
        lag_at(0.5),
        lag_at(0.99),
        lag_at(1.0),
        submit_time.as_secs_f64(),
        duration.as_secs_f64(),
    );
    println!(
        "chaos webhooks: provider_events={effects:?} impostor_requests={impostor_requests} \
         three_d_secure completed={completed} abandoned={abandoned} ignored={ignored} payment_not_completed={} \
         merchant_requests={merchant_requests} merchant_events={}",
        reasons("payment_not_completed"),
        expected.len()
    );
    assert!(kills.load(Ordering::Relaxed) >= 3, "the chaos happened");
    assert!(
        completed > 0 && abandoned + ignored > 0,
        "the customers acted: {completed} {abandoned} {ignored}"
    );
    pool.close().await;
}

/// What the warehouse and customer service do with one order after payment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AfterPayment {
    /// A shipment order: ship it (one or two shipments), and maybe cancel the rest after the first.
    ship: bool,
    cancel_rest: bool,
    /// Once it is FULFILLED: refund some of it (and maybe two at once that together pass what is refundable).
    refund: bool,
    concurrent: bool,
    /// Once it is FULFILLED: take one unit back (restocked or written off).
    take_back: bool,
    restock: bool,
}

/// What the follow-ups saw, for the report.
#[derive(Debug, Default)]
struct Done {
    shipment_orders: usize,
    rests_cancelled: usize,
    refunds_refused: usize,
    concurrent_pairs: usize,
    returns_refused: usize,
}

/// Sends a request until it is answered for good: a 503 (the outage, a statement timeout), a 409 whose key is in
/// flight, a 429 and a refused connection are sent again with the same Idempotency-Key. The status and answer.
async fn send(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
        {
            let status = r.status().as_u16();
            let answer: Value = r.json().await.unwrap_or_default();
            let in_flight = answer["type"] == "urn:orderflow:problem:idempotency-key-in-flight";
            if !(status == 503 || status == 429 || in_flight) {
                return (status, answer);
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A GET answered 200 (sent again through the outage and any 503); its body.
async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
            && let Ok(body) = r.json::<Value>().await
        {
            return body;
        }
        assert!(Instant::now() < deadline, "GET {url} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order's status, polled from the database every 250 ms until `until` holds; tolerates the outage.
async fn wait_status(pool: &PgPool, id: Uuid, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let status: Result<String, _> = sqlx::query_scalar("select status from orders where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await;
        if let Ok(status) = status
            && until(&status)
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never got where the follow-up waits"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl AfterPayment {
    fn of(body: &Value, rng: &mut impl Rng) -> Self {
        let ship = body["lines"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| BOXES.iter().any(|b| l["sku"] == *b)));
        Self {
            ship,
            cancel_rest: ship && rng.random_range(0..10) == 0,
            refund: rng.random_range(0..100) < REFUND_SHARE,
            concurrent: rng.random_range(0..4) == 0,
            take_back: rng.random_range(0..100) < RETURN_SHARE,
            restock: rng.random_bool(0.5),
        }
    }

    async fn run(
        self,
        http: &reqwest::Client,
        api: &str,
        pool: &PgPool,
        id: Uuid,
        i: usize,
        done: &Mutex<Done>,
    ) {
        let order_url = format!("{api}/v1/orders/{id}");
        if self.ship {
            let status = wait_status(pool, id, |s| matches!(s, "PAID" | "CANCELLED" | "CANCELLING")).await;
            if status != "PAID" {
                return;
            }
            done.lock().await.shipment_orders += 1;
            // The order's lines, split in two shipments: the first takes some units of each line (at least one in
            // all), the second the rest.
            let order = get_json(http, &order_url).await;
            let lines = order["lines"].as_array().cloned().unwrap_or_default();
            let (mut first, mut second) = (Vec::new(), Vec::new());
            for line in &lines {
                let quantity = line["quantity"].as_i64().unwrap_or(0);
                let now = rand::rng().random_range(0..=quantity);
                if now > 0 {
                    first.push(json!({"sku": line["sku"], "quantity": now}));
                }
                if quantity > now {
                    second.push(json!({"sku": line["sku"], "quantity": quantity - now}));
                }
            }
            if first.is_empty() {
                std::mem::swap(&mut first, &mut second);
            }
            for (n, shipment) in [first, second].into_iter().enumerate() {
                if shipment.is_empty() {
                    continue;
                }
                let (status, answer) = send(
                    http,
                    &format!("{order_url}/shipments"),
                    &format!("chaos-{i}-ship-{n}"),
                    &json!({"lines": shipment}),
                )
                .await;
                // A customer's cancel may have got there first.
                if status != 202 {
                    assert_eq!(status, 409, "shipment of order {i}: {answer}");
                    break;
                }
                wait_status(pool, id, |s| s != "PAID").await;
                if n == 0 && self.cancel_rest {
                    let (status, _) = send(
                        http,
                        &format!("{order_url}/cancel"),
                        &format!("chaos-{i}-rest"),
                        &json!({}),
                    )
                    .await;
                    if status == 202 {
                        done.lock().await.rests_cancelled += 1;
                        break;
                    }
                }
            }
        }
        if !(self.refund || self.take_back) {
            return;
        }
        if wait_status(pool, id, |s| matches!(s, "FULFILLED" | "CANCELLED")).await != "FULFILLED" {
            return;
        }
        if self.take_back {
            let order = get_json(http, &order_url).await;
            // One unit of a line of which some left stock (an order whose rest was cancelled may have lines none
            // of which shipped).
            let line = order["lines"].as_array().and_then(|lines| {
                lines
                    .iter()
                    .find(|l| {
                        l["allocations"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|a| a["shipped"] != 0))
                    })
                    .cloned()
            });
            if let Some(line) = line {
                let (status, answer) = send(
                    http,
                    &format!("{order_url}/returns"),
                    &format!("chaos-{i}-return"),
                    &json!({"lines": [{"sku": line["sku"], "quantity": 1}], "restock": self.restock}),
                )
                .await;
                if status != 201 {
                    assert_eq!(status, 409, "return of order {i}: {answer}");
                    done.lock().await.returns_refused += 1;
                }
            }
        }
        if self.refund {
            let money = get_json(http, &format!("{order_url}/refunds")).await;
            let refundable = money["refundable"].as_i64().unwrap_or(0);
            if refundable < 2 {
                return;
            }
            let url = format!("{order_url}/refunds");
            if self.concurrent {
                // Two refunds of 60% each: together they pass what is refundable, so at least one is refused.
                let amount = refundable * 6 / 10;
                let body = json!({"amount": amount, "reason": "duplicate"});
                let (key_a, key_b) = (format!("chaos-{i}-refund-a"), format!("chaos-{i}-refund-b"));
                let (a, b) = tokio::join!(send(http, &url, &key_a, &body), send(http, &url, &key_b, &body));
                let accepted = [a.0, b.0].iter().filter(|s| **s == 202).count();
                assert!(
                    accepted <= 1,
                    "order {i}: both of two refunds past what is refundable: {a:?} {b:?}"
                );
                let mut done = done.lock().await;
                done.concurrent_pairs += 1;
                done.refunds_refused += 2 - accepted;
            } else {
                let amount = rand::rng().random_range(1..=refundable / 2);
                let (status, answer) = send(
                    http,
                    &url,
                    &format!("chaos-{i}-refund"),
                    &json!({"amount": amount, "reason": "requested_by_customer"}),
                )
                .await;
                if status != 202 {
                    assert_eq!(status, 409, "refund of order {i}: {answer}");
                    done.lock().await.refunds_refused += 1;
                }
            }
        }
    }
}
