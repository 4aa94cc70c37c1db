//! The payment provider's webhooks in: `POST /v1/provider/webhooks` takes only what its signature proves, records
//! each event once, and the worker applies it without a second writer of the payment: whichever of the
//! synchronous answer and the event comes first, the pay step does the work once.

use std::time::Duration;

use orderflow_shared::stripe_signature;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, TestApp, WEBHOOK_SECRET, spawn_app_with};

fn event(id: &str, kind: &str, order: Uuid) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": chrono::Utc::now().timestamp(),
        "livemode": false, "api_version": "2024-06-20",
        "data": {"object": {"id": "pi_unknown", "object": "payment_intent", "status": "requires_capture",
                            "metadata": {"order_id": order.to_string()}}},
    }))
    .unwrap()
}

async fn deliver(app: &TestApp, signature: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = app
        .anonymous
        .post(format!("{}/v1/provider/webhooks", app.api))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn recorded(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from provider_events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn only_a_genuine_fresh_event_is_recorded_and_only_once() {
    let app = spawn_app_with(Options {
        worker: false,
        webhooks: false,
        ..Default::default()
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let body = event("evt_genuine", "payment_intent.succeeded", Uuid::new_v4());
    let sign = |secrets: &[&str], t: i64| stripe_signature::sign(secrets, t, &body);

    let refusals: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("unsigned", None, body.clone()),
        ("another secret", Some(sign(&["whsec_forged"], now)), body.clone()),
        ("stale", Some(sign(&[WEBHOOK_SECRET], now - 400)), body.clone()),
        (
            "from the future",
            Some(sign(&[WEBHOOK_SECRET], now + 400)),
            body.clone(),
        ),
        (
            "a body changed after signing",
            Some(sign(&[WEBHOOK_SECRET], now)),
            event("evt_genuine", "payment_intent.canceled", Uuid::new_v4()),
        ),
        ("malformed", Some("t=soon,v1=abc".to_owned()), body.clone()),
        (
            "v0 only",
            Some(sign(&[WEBHOOK_SECRET], now).replace("v1=", "v0=")),
            body.clone(),
        ),
    ];
    for (what, signature, sent) in refusals {
        let (status, problem) = deliver(&app, signature.as_deref(), sent).await;
        assert_eq!(status, 400, "{what}: {problem}");
        assert_eq!(
            problem["type"], "urn:orderflow:problem:webhook-signature-invalid",
            "{what}"
        );
    }
    let oversize = vec![b' '; 65 * 1024];
    let (status, problem) = deliver(
        &app,
        Some(&stripe_signature::sign(&[WEBHOOK_SECRET], now, &oversize)),
        oversize,
    )
    .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (413, Some("urn:orderflow:problem:payload-too-large"))
    );
    let not_an_event = br#"{"object":"charge","id":"ch_1"}"#.to_vec();
    let (status, problem) = deliver(
        &app,
        Some(&stripe_signature::sign(&[WEBHOOK_SECRET], now, &not_an_event)),
        not_an_event,
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (422, Some("object")),
        "{problem}"
    );
    assert_eq!(recorded(&app).await, 0, "nothing refused was recorded");

    // Genuine: signed with the secret held, or among others as during a roll; a repeat is acknowledged.
    let (status, receipt) = deliver(
        &app,
        Some(&sign(&["whsec_next", WEBHOOK_SECRET], now)),
        body.clone(),
    )
    .await;
    assert_eq!(
        (status, receipt["duplicate"].as_bool()),
        (200, Some(false)),
        "{receipt}"
    );
    let (status, receipt) = deliver(&app, Some(&sign(&[WEBHOOK_SECRET], now - 200)), body.clone()).await;
    assert_eq!(
        (status, receipt["duplicate"].as_bool()),
        (200, Some(true)),
        "{receipt}"
    );
    assert_eq!(recorded(&app).await, 1);
}

/// A simulator whose webhooks reach the API with `tune`'s faults, the worker running (retries slow when
/// `slow_retries`, so only a wake-up makes a retried step come soon).
async fn faulty(tune: fn(&mut orderflow_paysim::SimConfig), slow_retries: bool) -> TestApp {
    let mut sim = orderflow_paysim::SimConfig::default();
    tune(&mut sim);
    spawn_app_with(Options {
        sim,
        tune: if slow_retries { slow } else { |_| {} },
        ..Default::default()
    })
    .await
}

fn slow(settings: &mut orderflow_shared::settings::WorkerSettings) {
    settings.retry_base_delay = Duration::from_secs(60);
    settings.retry_max_delay = Duration::from_secs(60);
}

/// Orders `n` orders paying with `token`, waits until each is FULFILLED and its events are all applied; checks
/// the simulator holds exactly one authorization and one capture for each, and each event once. Answers the
/// effects the events had.
async fn pay_through(app: &TestApp, n: usize, token: &str) -> Vec<String> {
    app.put_sku("widget", 1_000, 250).await;
    let bodies: Vec<Value> = (0..n)
        .map(|i| crate::helpers::order_body(&format!("c{i}"), &[("widget", 1)], token))
        .collect();
    let ids = app.create_orders(&bodies).await;
    for id in &ids {
        let order = app.wait_for(*id, &["FULFILLED"], Duration::from_secs(30)).await;
        assert_eq!(order["payment"]["status"], "CAPTURED", "{order}");
        let intents = app.intents_of(*id).await;
        assert_eq!(intents.len(), 1, "one authorization: {intents:?}");
        assert_eq!(
            (
                intents[0]["status"].as_str(),
                intents[0]["amount_received"].as_i64()
            ),
            (Some("succeeded"), Some(250)),
            "captured once"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (events, unapplied): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where applied_at is null) from provider_events where order_id = any($1)",
        )
        .bind(&ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        // Each order: authorized, then succeeded (the capture).
        if events == 2 * n as i64 && unapplied == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{events} events, {unapplied} unapplied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_type: Vec<(String, i64)> = sqlx::query_as(
        "select type, count(*) from provider_events where order_id = any($1) group by type order by type",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        per_type,
        [
            ("payment_intent.amount_capturable_updated".to_owned(), n as i64),
            ("payment_intent.succeeded".to_owned(), n as i64)
        ]
    );
    sqlx::query_scalar("select effect from provider_events where order_id = any($1) order by received_at")
        .bind(&ids)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_answer_first_makes_the_event_a_confirmation() {
    let app = faulty(|_| {}, false).await;
    let effects = pay_through(&app, 5, "pm_card_visa").await;
    assert!(effects.iter().all(|e| e == "recorded"), "{effects:?}");
}

#[tokio::test]
async fn the_event_first_changes_nothing_the_step_then_records() {
    let app = faulty(|sim| sim.webhook_early_rate = 1.0, false).await;
    let effects = pay_through(&app, 5, "pm_card_visa").await;
    assert!(effects.iter().all(|e| e == "recorded"), "{effects:?}");
}

#[tokio::test]
async fn an_event_delivered_twice_is_recorded_once() {
    let app = faulty(|sim| sim.webhook_duplicate_rate = 1.0, false).await;
    pay_through(&app, 5, "pm_card_visa").await;
}

#[tokio::test]
async fn events_out_of_order_change_nothing() {
    let app = faulty(|sim| sim.webhook_reorder_rate = 1.0, false).await;
    pay_through(&app, 5, "pm_card_visa").await;
}

/// The authorization's answer is lost (the provider holds the money, the worker saw the connection drop) and
/// the pay step's retry waits a minute: the event wakes it, so the order is paid in seconds, from the same hold.
#[tokio::test]
async fn the_event_of_a_lost_answer_wakes_the_waiting_pay_step() {
    let app = faulty(|_| {}, true).await;
    let effects = pay_through(&app, 1, "pm_sim_lost_response").await;
    assert_eq!(effects, ["woke_pay", "recorded"]);
}

/// The provider ends a waiting order's hold (its lifetime ran out) and says so by webhook: the payment's
/// `capture_before` comes forward to then, so the reconciler's hold check reports it, and the next shipment
/// authorizes again (issue 18's lapsed hold, `lapsed_hold`).
#[tokio::test]
async fn a_hold_the_provider_ends_is_noted_from_its_webhook() {
    let app = crate::helpers::spawn_app().await;
    let id = crate::shipment::paid_shipment_order(&app, "ended-by-webhook").await;
    app.wait_for_payment(id, "AUTHORIZED").await;
    let intent = app.intents_of(id).await[0]["id"].as_str().unwrap().to_owned();
    app.lapse(&intent).await;
    let noted = app
        .wait_until(id, Duration::from_secs(15), |o| {
            o["payment"]["capture_before"].is_string()
        })
        .await;
    let at =
        chrono::DateTime::parse_from_rfc3339(noted["payment"]["capture_before"].as_str().unwrap()).unwrap();
    assert!(at.with_timezone(&chrono::Utc) <= chrono::Utc::now(), "{noted}");
    let effect: String = sqlx::query_scalar(
        "select effect from provider_events where order_id = $1 and type = 'payment_intent.canceled'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(effect, "hold_ended");
    let holds = orderflow_worker::reconciler::check_holds(&app.runner("holds"))
        .await
        .unwrap();
    assert_eq!(holds.expiring, 1, "the reconciler reports the ended hold");
}
