//! Asynchronous payment methods: the customer's 3-D Secure (`requires_action`) and a bank debit
//! (`processing`). The order waits RESERVED with its stock held, its pay step scheduled at the deadline and no
//! worker held; the provider's webhook ends the wait, or at the deadline the step asks the provider and decides.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{Options, TestApp, spawn_app_with};

/// The worker waits a minute for an asynchronous payment, and holds the stock at most 30 s from any answer.
fn minute(settings: &mut orderflow_shared::settings::WorkerSettings) {
    settings.async_payment_deadline = Duration::from_secs(60);
    settings.async_payment_max_hold = Duration::from_secs(30);
}

/// The worker waits 3 s.
fn short(settings: &mut orderflow_shared::settings::WorkerSettings) {
    settings.async_payment_deadline = Duration::from_secs(3);
}

async fn app(tune: fn(&mut orderflow_shared::settings::WorkerSettings), webhooks: bool) -> TestApp {
    let app = spawn_app_with(Options {
        tune,
        webhooks,
        sim: orderflow_paysim::SimConfig {
            processing_delay: Duration::from_millis(1_000),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.put_sku("widget", 10, 400).await;
    app
}

async fn on_hand_available(app: &TestApp) -> (i64, i64) {
    let sku = app.get_json(&format!("{}/v1/skus/widget", app.api)).await;
    (
        sku["on_hand"].as_i64().unwrap(),
        sku["available"].as_i64().unwrap(),
    )
}

/// The pay step's job while it waits: Pending, due this many seconds from now.
async fn waiting_job_due_in(app: &TestApp, order: Uuid) -> f64 {
    sqlx::query_scalar(
        r#"select extract(epoch from j.run_at - now())::float8
           from orders o join apalis.jobs j on j.id = o.job_id
           where o.id = $1 and o.current_step = 'pay' and j.status = 'Pending'"#,
    )
    .bind(order)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn customer(app: &TestApp, intent: &str, action: &str) -> Value {
    let response = app
        .http
        .post(format!("{}/v1/sim/payment_intents/{intent}/customer", app.paysim))
        .form(&[("action", action)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_payment_the_customer_completes_is_paid_when_its_event_arrives() {
    let app = app(minute, true).await;
    let id = app
        .create_order("c1", &[("widget", 2)], "pm_sim_requires_action")
        .await;
    // The view reads the order and its payment in two statements: wait for both to show the wait.
    let held_for = |order: &Value| {
        order["reserved_until"].as_str().map_or(i64::MAX, |until| {
            (chrono::DateTime::parse_from_rfc3339(until)
                .unwrap()
                .with_timezone(&chrono::Utc)
                - chrono::Utc::now())
            .num_seconds()
        })
    };
    let waiting = app
        .wait_until(id, Duration::from_secs(10), |o| {
            o["payment"]["status"] == "REQUIRES_ACTION" && held_for(o) <= 31
        })
        .await;
    assert_eq!(waiting["status"], "RESERVED", "{waiting}");
    assert_eq!(
        waiting["error_code"],
        Value::Null,
        "waiting is not an error: {waiting}"
    );
    // The stock is held, within the bound (not the reservation's 900 s), and no worker waits: the step's next
    // attempt is at the deadline.
    assert!(
        held_for(&waiting) >= 20,
        "held {} s: {waiting}",
        held_for(&waiting)
    );
    let due = waiting_job_due_in(&app, id).await;
    assert!(due > 40.0, "the pay step waits for the deadline: due in {due} s");
    assert_eq!(on_hand_available(&app).await, (10, 8));
    let stuck = orderflow_shared::admin::stuck_count(&app.pool, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(stuck, 0, "a payment waiting for its customer is not stuck");

    let intent = waiting["payment"]["provider_ref"].as_str().unwrap().to_owned();
    customer(&app, &intent, "complete").await;
    // The webhook wakes the step long before its deadline.
    let done = app.wait_for(id, &["FULFILLED"], Duration::from_secs(15)).await;
    assert_eq!(done["payment"]["status"], "CAPTURED", "{done}");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["amount_received"], 800);
    assert_eq!(on_hand_available(&app).await, (8, 8));
}

#[tokio::test]
async fn an_abandoned_authentication_cancels_the_order_and_frees_the_stock() {
    let app = app(minute, true).await;
    let id = app
        .create_order("c1", &[("widget", 3)], "pm_sim_requires_action")
        .await;
    let waiting = app.wait_for_payment(id, "REQUIRES_ACTION").await;
    customer(
        &app,
        waiting["payment"]["provider_ref"].as_str().unwrap(),
        "abandon",
    )
    .await;
    let cancelled = app.wait_for(id, &["CANCELLED"], Duration::from_secs(15)).await;
    assert_eq!(
        (
            cancelled["cancel_reason"].as_str(),
            cancelled["payment"]["decline_code"].as_str()
        ),
        (
            Some("payment_declined"),
            Some("payment_intent_authentication_failure")
        ),
        "{cancelled}"
    );
    assert_eq!(on_hand_available(&app).await, (10, 10));
    let intents = app.intents_of(id).await;
    assert_eq!(intents[0]["amount_received"], 0, "no money taken");
    assert_eq!(
        intents[0]["status"], "canceled",
        "the declined intent is closed: no other card can be tried on it for a cancelled order"
    );
}

/// No event and no customer: at the deadline the step asks the provider, finds it still waiting, and cancels;
/// the compensation cancels the intent, so the customer cannot complete a payment for a cancelled order.
#[tokio::test]
async fn a_customer_who_never_acts_is_cancelled_at_the_deadline_and_the_intent_with_it() {
    let app = app(short, true).await;
    let id = app
        .create_order("c1", &[("widget", 1)], "pm_sim_requires_action")
        .await;
    let cancelled = app.wait_for(id, &["CANCELLED"], Duration::from_secs(20)).await;
    assert_eq!(cancelled["cancel_reason"], "payment_not_completed", "{cancelled}");
    assert_eq!(cancelled["payment"]["status"], "VOIDED", "{cancelled}");
    let intents = app.intents_of(id).await;
    assert_eq!(intents[0]["status"], "canceled", "{intents:?}");
    assert_eq!(on_hand_available(&app).await, (10, 10));
}

#[tokio::test]
async fn a_bank_debit_settles_by_its_webhook_alone() {
    let app = app(minute, true).await;
    let paid = app
        .create_order("c1", &[("widget", 1)], "pm_sim_processing")
        .await;
    let failed = app
        .create_order("c2", &[("widget", 1)], "pm_sim_processing_fails")
        .await;
    app.wait_for_payment(paid, "PROCESSING").await;
    let done = app.wait_for(paid, &["FULFILLED"], Duration::from_secs(15)).await;
    assert_eq!(done["payment"]["status"], "CAPTURED", "{done}");
    let cancelled = app
        .wait_for(failed, &["CANCELLED"], Duration::from_secs(15))
        .await;
    assert_eq!(
        (
            cancelled["cancel_reason"].as_str(),
            cancelled["payment"]["decline_code"].as_str()
        ),
        (Some("payment_declined"), Some("insufficient_funds")),
        "{cancelled}"
    );
    assert_eq!(on_hand_available(&app).await, (9, 9));
}

/// Webhooks lost altogether: the deadline still asks the provider, which settled meanwhile.
#[tokio::test]
async fn without_webhooks_the_deadline_asks_the_provider_and_decides() {
    let app = app(short, false).await;
    let id = app
        .create_order("c1", &[("widget", 1)], "pm_sim_processing")
        .await;
    app.wait_for_payment(id, "PROCESSING").await;
    let done = app.wait_for(id, &["FULFILLED"], Duration::from_secs(20)).await;
    assert_eq!(done["payment"]["status"], "CAPTURED", "{done}");
    let intents = app.intents_of(id).await;
    assert_eq!(
        (intents.len(), intents[0]["amount_received"].as_i64()),
        (1, Some(400))
    );
}

async fn slow_debits(
    tune: fn(&mut orderflow_shared::settings::WorkerSettings),
    settles_in: Duration,
) -> TestApp {
    let app = spawn_app_with(Options {
        tune,
        sim: orderflow_paysim::SimConfig {
            processing_delay: settles_in,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    app.put_sku("widget", 10, 400).await;
    app
}

/// A bank debit slower than the deadline is waited for, not cancelled: the provider could not cancel it, so a
/// cancelled order would still be paid.
#[tokio::test]
async fn a_bank_debit_slower_than_the_deadline_is_waited_for_not_cancelled() {
    let app = slow_debits(short, Duration::from_secs(6)).await;
    let id = app
        .create_order("c1", &[("widget", 1)], "pm_sim_processing")
        .await;
    app.wait_for_payment(id, "PROCESSING").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let past = app.order(id).await;
    assert_eq!(
        (past["status"].as_str(), past["payment"]["status"].as_str()),
        (Some("RESERVED"), Some("PROCESSING")),
        "past the 3 s deadline, still waiting: {past}"
    );
    let done = app.wait_for(id, &["FULFILLED"], Duration::from_secs(20)).await;
    assert_eq!(done["payment"]["status"], "CAPTURED", "{done}");
}

/// A customer cancels while their bank debit is processing: the debit cannot be cancelled, so the compensation
/// retries until it has settled, then voids it; no money stays taken.
#[tokio::test]
async fn a_cancel_during_a_bank_debit_voids_it_once_it_has_settled() {
    let app = slow_debits(minute, Duration::from_secs(2)).await;
    let id = app
        .create_order("c1", &[("widget", 2)], "pm_sim_processing")
        .await;
    app.wait_for_payment(id, "PROCESSING").await;
    assert_eq!(app.cancel(id).await.status(), 202);
    let cancelled = app.wait_for(id, &["CANCELLED"], Duration::from_secs(30)).await;
    assert_eq!(cancelled["payment"]["status"], "VOIDED", "{cancelled}");
    let intents = app.intents_of(id).await;
    assert_eq!(
        (
            intents[0]["status"].as_str(),
            intents[0]["amount_received"].as_i64()
        ),
        (Some("canceled"), Some(0)),
        "{intents:?}"
    );
    assert_eq!(on_hand_available(&app).await, (10, 10));
}
