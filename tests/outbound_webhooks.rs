//! Order events delivered to merchants' webhook endpoints: signed as Standard Webhooks sign (checked with its own
//! library), at least once, in order per order, through a receiver that fails and dawdles; retries, DEAD, an
//! endpoint disabled by `410 Gone` or by failing too long, the delivery log and replay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{OPERATOR_TOKEN, Options, Receiver, TestApp, WebhookRequest, spawn_app_with};

/// Retries at once and then every 50–200 ms, 16 attempts; 2 s per attempt.
fn quick(settings: &mut orderflow_shared::settings::WorkerSettings) {
    settings.webhooks.retry_schedule = std::iter::once(Duration::ZERO)
        .chain([50, 100, 200].map(Duration::from_millis))
        .chain(std::iter::repeat_n(Duration::from_millis(200), 12))
        .collect();
    settings.webhooks.timeout = Duration::from_secs(2);
    settings.webhooks.poll_interval = Duration::from_millis(50);
}

/// Three attempts, and an endpoint failing for 3 s without a success is disabled.
fn hopeless(settings: &mut orderflow_shared::settings::WorkerSettings) {
    settings.webhooks.retry_schedule = vec![
        Duration::ZERO,
        Duration::from_millis(20),
        Duration::from_millis(20),
    ];
    settings.webhooks.disable_after = Duration::from_secs(3);
    settings.webhooks.poll_interval = Duration::from_millis(50);
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app
        .anonymous
        .request(method, format!("{}{path}", app.api))
        .bearer_auth(OPERATOR_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Makes an endpoint for `receiver`; answers its id and secret.
async fn endpoint(app: &TestApp, receiver: &Receiver, types: &[&str]) -> (String, String) {
    let (status, made) = admin(
        app,
        reqwest::Method::POST,
        "/admin/v1/webhook_endpoints",
        Some(json!({"url": receiver.url, "event_types": types, "description": "the tests' shop"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    (
        made["id"].as_str().unwrap().to_owned(),
        made["secret"].as_str().unwrap().to_owned(),
    )
}

fn id_of(request: &WebhookRequest) -> String {
    request.header("webhook-id").unwrap().to_owned()
}

/// Whether every event of `expected` (`event_id, order_id, sequence`) was acknowledged (a 200) at least once.
pub fn all_acknowledged(got: &[WebhookRequest], expected: &[(Uuid, Uuid, i32)]) -> bool {
    let acknowledged: HashSet<String> = got.iter().filter(|r| r.answered == 200).map(id_of).collect();
    expected
        .iter()
        .all(|(id, _, _)| acknowledged.contains(&id.to_string()))
}

/// What a merchant's endpoint must see of `expected` (`event_id, order_id, sequence`): every request verifying
/// with Standard Webhooks' own library under `secret` and carrying its event's CloudEvent; after dedupe by
/// `webhook-id` every event exactly once and nothing else; per order, the acknowledged sequence gap-free and no
/// attempt of event n+1 before event n was acknowledged.
pub fn delivered_once_in_order(got: &[WebhookRequest], expected: &[(Uuid, Uuid, i32)], secret: &str) {
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    for request in got {
        verifier
            .verify(&request.body, &request.headers)
            .unwrap_or_else(|e| panic!("{e:?}: {:?}", request.headers));
        let event = request.json();
        assert_eq!(
            event["id"].as_str(),
            request.header("webhook-id"),
            "webhook-id is the event id"
        );
        assert_eq!(event["specversion"], "1.0");
    }
    let wanted: HashSet<String> = expected.iter().map(|(id, _, _)| id.to_string()).collect();
    let deduped: HashSet<String> = got.iter().map(id_of).collect();
    assert_eq!(deduped, wanted, "every event once after dedupe, nothing else");
    let sequence_of: HashMap<String, (Uuid, i32)> = expected
        .iter()
        .map(|(id, order, sequence)| (id.to_string(), (*order, *sequence)))
        .collect();
    let mut by_order: BTreeMap<Uuid, Vec<(i32, &WebhookRequest)>> = BTreeMap::new();
    for request in got {
        let (order, sequence) = sequence_of[&id_of(request)];
        by_order.entry(order).or_default().push((sequence, request));
    }
    for (order, requests) in &by_order {
        let acknowledged: BTreeMap<i32, std::time::Instant> = requests
            .iter()
            .filter(|(_, r)| r.answered == 200)
            .fold(BTreeMap::new(), |mut first, (sequence, r)| {
                first.entry(*sequence).or_insert(r.at);
                first
            });
        let first = *acknowledged.keys().next().unwrap();
        let sequences: Vec<i32> = acknowledged.keys().copied().collect();
        assert_eq!(
            sequences,
            (first..first + sequences.len() as i32).collect::<Vec<_>>(),
            "order {order}: gap-free"
        );
        for (sequence, request) in requests {
            if let Some(previous) = acknowledged.get(&(sequence - 1)) {
                assert!(
                    request.at > *previous,
                    "order {order}: event {sequence} was sent before event {} was acknowledged",
                    sequence - 1
                );
            }
        }
    }
}

#[tokio::test]
async fn every_event_arrives_once_after_dedupe_in_order_per_order_and_verifies() {
    // Fails 30% of requests and takes up to 300 ms over a tenth of them.
    let receiver = Receiver::start(Arc::new(|_, _| {
        let status = if rand::random::<f64>() < 0.3 { 500 } else { 200 };
        let wait = if rand::random::<f64>() < 0.1 {
            Duration::from_millis(rand::random_range(0..300))
        } else {
            Duration::ZERO
        };
        (status, wait)
    }))
    .await;
    let app = spawn_app_with(Options {
        tune: quick,
        ..Default::default()
    })
    .await;
    let (_, secret) = endpoint(&app, &receiver, &[]).await;
    app.put_sku("widget", 1_000, 300).await;
    let bodies: Vec<Value> = (0..40)
        .map(|i| {
            let token = if i % 5 == 0 {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            };
            crate::helpers::order_body(&format!("c{i}"), &[("widget", 1)], token)
        })
        .collect();
    let orders = app.create_orders(&bodies).await;
    for order in &orders {
        app.wait_terminal(*order).await;
    }
    let expected: Vec<(Uuid, Uuid, i32)> =
        sqlx::query_as("select event_id, order_id, sequence from order_events where order_id = any($1)")
            .bind(&orders)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let got = receiver
        .wait_for("every event acknowledged", |got| all_acknowledged(got, &expected))
        .await;

    delivered_once_in_order(&got, &expected, &secret);
    let failures = got.iter().filter(|r| r.answered != 200).count();
    assert!(
        failures > 0,
        "the receiver failed some deliveries, which were retried"
    );
}

#[tokio::test]
async fn the_delivery_log_shows_each_attempt_and_a_replay_sends_the_same_webhook_id() {
    let receiver = Receiver::start(Arc::new(|n, _| (if n == 0 { 503 } else { 204 }, Duration::ZERO))).await;
    let app = spawn_app_with(Options {
        tune: quick,
        ..Default::default()
    })
    .await;
    let (endpoint_id, _) = endpoint(&app, &receiver, &["order.created"]).await;
    app.put_sku("widget", 10, 300).await;
    let order = app.create_order("c1", &[("widget", 1)], "pm_card_visa").await;
    app.wait_terminal(order).await;
    let got = receiver
        .wait_for("the acknowledged delivery", |got| {
            got.iter().any(|r| r.answered == 204)
        })
        .await;
    assert!(
        got.iter().all(|r| r.json()["type"] == "order.created"),
        "only the types it asked for"
    );
    let (status, list) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/admin/v1/webhook_endpoints/{endpoint_id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{list}");
    assert_eq!(
        (
            deliveries[0]["status"].as_str(),
            deliveries[0]["attempts"].as_i64(),
            deliveries[0]["last_status"].as_i64()
        ),
        (Some("DELIVERED"), Some(2), Some(204))
    );
    let id = deliveries[0]["id"].as_i64().unwrap();
    let (_, detail) = admin(
        &app,
        reqwest::Method::GET,
        &format!("/admin/v1/webhook_deliveries/{id}"),
        None,
    )
    .await;
    let codes: Vec<i64> = detail["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [503, 204], "{detail}");

    let (status, replayed) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/admin/v1/webhook_deliveries/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(
        (status, replayed["status"].as_str()),
        (200, Some("PENDING")),
        "{replayed}"
    );
    let again = receiver
        .wait_for("the replay", |got| {
            got.iter().filter(|r| r.answered == 204).count() == 2
        })
        .await;
    let ids: HashSet<String> = again.iter().map(id_of).collect();
    assert_eq!(ids.len(), 1, "the replay has the same webhook-id");

    // A range replay sends what the endpoint never had: the order's other events are not of its types, the
    // created event is sent again.
    let from = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let to = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, ranged) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/admin/v1/webhook_endpoints/{endpoint_id}/replay"),
        Some(json!({"from": from, "to": to})),
    )
    .await;
    assert_eq!(
        (status, ranged["deliveries"].as_u64()),
        (200, Some(1)),
        "{ranged}"
    );
    receiver
        .wait_for("the range replay", |got| {
            got.iter().filter(|r| r.answered == 204).count() == 3
        })
        .await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_failing_too_long_kills_deliveries_and_disables_it() {
    let gone = Receiver::start(Arc::new(|_, _| (410, Duration::ZERO))).await;
    let failing = Receiver::start(Arc::new(|_, _| (500, Duration::ZERO))).await;
    let app = spawn_app_with(Options {
        tune: hopeless,
        ..Default::default()
    })
    .await;
    let (gone_id, _) = endpoint(&app, &gone, &["order.created"]).await;
    let (failing_id, _) = endpoint(&app, &failing, &["order.created"]).await;
    app.put_sku("widget", 10, 300).await;
    app.create_order("c1", &[("widget", 1)], "pm_card_visa").await;
    gone.wait_for("the 410", |got| !got.is_empty()).await;
    failing.wait_for("the first attempt", |got| !got.is_empty()).await;
    let endpoint_now = |id: String| {
        let app = &app;
        async move {
            let (_, list) = admin(app, reqwest::Method::GET, "/admin/v1/webhook_endpoints", None).await;
            list["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == id)
                .unwrap()
                .clone()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (gone_now, failing_now) = (
            endpoint_now(gone_id.clone()).await,
            endpoint_now(failing_id.clone()).await,
        );
        if !gone_now["enabled"].as_bool().unwrap() && failing_now["dead"] == 1 {
            assert_eq!(gone_now["disabled_reason"], "the endpoint answered 410 Gone");
            assert_eq!(
                gone_now["pending"], 1,
                "its delivery waits for it to be enabled: {gone_now}"
            );
            assert!(
                failing_now["enabled"].as_bool().unwrap(),
                "DEAD, but not failing for long yet: {failing_now}"
            );
            assert!(failing_now["failing_since"].is_string(), "{failing_now}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{gone_now} {failing_now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        gone.received().len(),
        1,
        "nothing more to an endpoint that is gone"
    );
    // DEAD after the schedule's three attempts, each in the delivery log (an attempt a pooled connection lost on
    // the way counts, though the receiver never saw it), and nothing after.
    let attempts: i64 = sqlx::query_scalar(
        "select count(*) from webhook_attempts a join webhook_deliveries d on d.id = a.delivery_id \
         where d.endpoint_id = $1::text::uuid",
    )
    .bind(&failing_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 3, "DEAD after the schedule");
    let seen = failing.received().len();
    assert!((1..=3).contains(&seen), "{seen}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failing.received().len(), seen, "nothing after DEAD");
    // Failing past the window: the next failure disables it, saying why.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    app.create_order("c2", &[("widget", 1)], "pm_card_visa").await;
    failing
        .wait_for("the next event's attempt", |got| got.len() > seen)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let failing_now = endpoint_now(failing_id.clone()).await;
        if !failing_now["enabled"].as_bool().unwrap() {
            assert!(
                failing_now["disabled_reason"]
                    .as_str()
                    .unwrap()
                    .contains("failed"),
                "{failing_now}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failing_now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Enabled again, the waiting delivery resumes.
    let (status, enabled) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/admin/v1/webhook_endpoints/{gone_id}/enable"),
        None,
    )
    .await;
    assert_eq!(
        (status, enabled["enabled"].as_bool()),
        (200, Some(true)),
        "{enabled}"
    );
    gone.wait_for("the resumed delivery", |got| got.len() >= 2).await;
}

#[tokio::test]
async fn an_endpoint_is_refused_unless_https_or_to_this_machine_and_of_known_types() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    for (body, field) in [
        (json!({"url": "http://shop.example/hooks"}), "url"),
        (json!({"url": "https://user:pw@shop.example/"}), "url"),
        (json!({"url": "https://169.254.169.254/latest/meta-data"}), "url"),
        (json!({"url": "https://10.0.0.7/hooks"}), "url"),
        (
            json!({"url": "https://shop.example/", "event_types": ["order.teleported"]}),
            "event_types[0]",
        ),
    ] {
        let (status, problem) = admin(
            &app,
            reqwest::Method::POST,
            "/admin/v1/webhook_endpoints",
            Some(body),
        )
        .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some(field)),
            "{problem}"
        );
    }
    let viewer = app
        .anonymous
        .post(format!("{}/admin/v1/webhook_endpoints", app.api))
        .bearer_auth(crate::helpers::VIEWER_TOKEN)
        .json(&json!({"url": "https://shop.example/hooks"}))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 403);
    let count: i64 = sqlx::query_scalar("select count(*) from webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}
