//! The payment simulator is a product part: its Stripe-like behaviour has its own tests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::spawn_app;

async fn create(
    app: &crate::helpers::TestApp,
    key: &str,
    method: &str,
    amount: i64,
) -> reqwest::Result<reqwest::Response> {
    app.http
        .post(format!("{}/v1/payment_intents", app.paysim))
        .header("Idempotency-Key", key)
        .form(&[
            ("amount", amount.to_string()),
            ("currency", "usd".to_owned()),
            ("payment_method", method.to_owned()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[order_id]", key.to_owned()),
        ])
        .send()
        .await
}

async fn post(app: &crate::helpers::TestApp, path: &str, key: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}{path}", app.paysim))
        .header("Idempotency-Key", key)
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn authorize_capture_and_refund_move_money_as_stripe_does() {
    let app = spawn_app().await;
    let intent: Value = create(&app, "k1", "pm_card_visa", 500)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intent["status"], "requires_capture");
    assert_eq!(intent["amount_capturable"], 500);
    let id = intent["id"].as_str().unwrap();

    let (status, captured) = post(&app, &format!("/v1/payment_intents/{id}/capture"), "cap1", &[]).await;
    assert_eq!((status, captured["status"].as_str()), (200, Some("succeeded")));
    assert_eq!(captured["amount_received"], 500);

    let (status, error) = post(&app, &format!("/v1/payment_intents/{id}/cancel"), "void1", &[]).await;
    assert_eq!(status, 400, "a captured intent cannot be voided");
    assert_eq!(error["error"]["code"], "payment_intent_unexpected_state");

    let (status, refund) = post(&app, "/v1/refunds", "ref1", &[("payment_intent", id)]).await;
    assert_eq!((status, refund["amount"].as_i64()), (200, Some(500)));
    let (status, again) = post(&app, "/v1/refunds", "ref2", &[("payment_intent", id)]).await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (400, Some("charge_already_refunded"))
    );
}

#[tokio::test]
async fn idempotency_key_replays_and_rejects_other_parameters() {
    let app = spawn_app().await;
    let first: Value = create(&app, "same", "pm_card_visa", 700)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replay: Value = create(&app, "same", "pm_card_visa", 700)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = create(&app, "same", "pm_card_visa", 701).await.unwrap();

    assert_eq!(first, replay);
    assert_eq!(other.status(), 400);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"]["type"],
        "idempotency_error"
    );
    let ledger = app.ledger().await;
    assert_eq!(ledger.len(), 1);
}

#[tokio::test]
async fn declined_card_is_a_402_card_error_and_recorded() {
    let app = spawn_app().await;
    let response = create(&app, "dec", "pm_card_chargeDeclined", 300).await.unwrap();
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "card_error");
    assert_eq!(body["error"]["code"], "card_declined");
    assert_eq!(
        body["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
}

#[tokio::test]
async fn flaky_method_fails_twice_with_503_then_succeeds_and_stores_nothing_meanwhile() {
    let app = spawn_app().await;
    assert_eq!(
        create(&app, "fl", "pm_sim_flaky", 100).await.unwrap().status(),
        503
    );
    assert_eq!(
        create(&app, "fl", "pm_sim_flaky", 100).await.unwrap().status(),
        503
    );
    let third = create(&app, "fl", "pm_sim_flaky", 100).await.unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(third.json::<Value>().await.unwrap()["status"], "requires_capture");
}

#[tokio::test]
async fn lost_response_drops_the_connection_once_but_keeps_the_hold() {
    let app = spawn_app().await;
    let lost = create(&app, "lost", "pm_sim_lost_response", 100).await;
    let failed = match lost {
        Err(_) => true,
        Ok(response) => response.bytes().await.is_err(),
    };
    assert!(failed, "the first answer must not arrive");
    let replay = create(&app, "lost", "pm_sim_lost_response", 100).await.unwrap();
    assert_eq!(replay.status(), 200);
    let intent: Value = replay.json().await.unwrap();
    let ledger = app.ledger().await;
    assert_eq!(ledger.len(), 1, "one hold");
    assert_eq!(ledger[0]["id"], intent["id"]);
}

#[tokio::test]
async fn concurrent_request_with_a_key_in_flight_is_409() {
    let mut options = crate::helpers::Options::default();
    options.sim.slow_delay = Duration::from_millis(800);
    let app = crate::helpers::spawn_app_with(options).await;
    let slow = create(&app, "busy", "pm_sim_slow", 100);
    let quick = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        create(&app, "busy", "pm_sim_slow", 100).await
    };
    let (first, second) = tokio::join!(slow, quick);
    assert_eq!(first.unwrap().status(), 200);
    let second = second.unwrap();
    assert_eq!(second.status(), 409);
    assert_eq!(
        second.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_in_use"
    );
}

#[tokio::test]
async fn a_request_whose_client_hangs_up_still_completes_and_its_retry_replays_it() {
    // pm_sim_slow answers after 2 s; the client gives up after 300 ms, as a killed worker would.
    let app = spawn_app().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung_up = impatient
        .post(format!("{}/v1/payment_intents", app.paysim))
        .header("Idempotency-Key", "hang-up")
        .form(&[
            ("amount", "700"),
            ("currency", "usd"),
            ("payment_method", "pm_sim_slow"),
            ("capture_method", "manual"),
            ("confirm", "true"),
            ("metadata[order_id]", "hang-up"),
        ])
        .send()
        .await;
    assert!(hung_up.is_err(), "the client timed out");

    // While the provider still works on it, the key is in use; once it is done, a retry gets its result.
    let during = create(&app, "hang-up", "pm_sim_slow", 700).await.unwrap();
    assert_eq!(during.status(), 409);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let after = create(&app, "hang-up", "pm_sim_slow", 700).await.unwrap();
    assert_eq!(after.status(), 200);
    let intent: Value = after.json().await.unwrap();
    assert_eq!(intent["status"], "requires_capture");
    let ledger = app.get_json(&format!("{}/v1/sim/ledger", app.paysim)).await;
    let intents = ledger["intents"].as_array().unwrap();
    assert_eq!(
        intents.len(),
        1,
        "one hold, made by the first request: {intents:?}"
    );
    assert_eq!(intents[0]["id"], intent["id"]);
}

#[tokio::test]
async fn an_amount_over_eight_digits_is_refused_as_stripe_refuses_it() {
    let app = spawn_app().await;
    let response = create(
        &app,
        "too-large",
        "pm_card_visa",
        orderflow_paysim::MAX_AMOUNT + 1,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "amount_too_large", "{body}");
    let fine = create(&app, "largest", "pm_card_visa", orderflow_paysim::MAX_AMOUNT)
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    // The API never sends one: an order's total is capped at the same figure.
    assert_eq!(
        orderflow_shared::money::MAX_ORDER_TOTAL,
        orderflow_paysim::MAX_AMOUNT
    );
}

#[tokio::test]
async fn a_multicapture_hold_is_captured_in_parts_and_the_final_capture_releases_the_rest() {
    let app = spawn_app().await;
    let created = app
        .http
        .post(format!("{}/v1/payment_intents", app.paysim))
        .header("Idempotency-Key", "multi")
        .form(&[
            ("amount", "1000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("capture_method", "manual"),
            ("confirm", "true"),
            (
                "payment_method_options[card][request_multicapture]",
                "if_available",
            ),
        ])
        .send()
        .await
        .unwrap();
    let intent: Value = created.json().await.unwrap();
    let id = intent["id"].as_str().unwrap().to_owned();
    let capture = format!("/v1/payment_intents/{id}/capture");

    let (status, first) = post(
        &app,
        &capture,
        "c1",
        &[("amount_to_capture", "300"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (
            first["status"].as_str(),
            first["amount_received"].as_i64(),
            first["amount_capturable"].as_i64()
        ),
        (Some("requires_capture"), Some(300), Some(700))
    );
    // A repeat of the key replays the part; it does not capture again.
    let (_, again) = post(
        &app,
        &capture,
        "c1",
        &[("amount_to_capture", "300"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(again, first);
    let (status, refused) = post(
        &app,
        &capture,
        "c2",
        &[("amount_to_capture", "800"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(status, 400, "more than is left: {refused}");
    let (status, last) = post(&app, &capture, "c3", &[("amount_to_capture", "200")]).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(
        (
            last["status"].as_str(),
            last["amount_received"].as_i64(),
            last["amount_capturable"].as_i64()
        ),
        (Some("succeeded"), Some(500), Some(0)),
        "the final capture releases the 500 left"
    );

    // Without multicapture, a part is refused.
    let plain: Value = create(&app, "plain", "pm_card_visa", 1000)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plain_capture = format!("/v1/payment_intents/{}/capture", plain["id"].as_str().unwrap());
    let (status, refused) = post(
        &app,
        &plain_capture,
        "p1",
        &[("amount_to_capture", "300"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "parameter_invalid");
}

/// A multicapture intent: its captured parts are refundable while the rest is still held, never more than it
/// received; a cancel releases the rest and keeps what it captured (`succeeded`), which stays refundable.
#[tokio::test]
async fn a_partly_captured_hold_refunds_what_it_captured_and_its_cancel_keeps_it() {
    let app = spawn_app().await;
    let intent: Value = app
        .http
        .post(format!("{}/v1/payment_intents", app.paysim))
        .header("Idempotency-Key", "multi-refund")
        .form(&[
            ("amount", "1000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("capture_method", "manual"),
            ("confirm", "true"),
            (
                "payment_method_options[card][request_multicapture]",
                "if_available",
            ),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = intent["id"].as_str().unwrap().to_owned();
    let refund = |key: &'static str, amount: &'static str| {
        let id = id.clone();
        let app = &app;
        async move {
            post(
                app,
                "/v1/refunds",
                key,
                &[
                    ("payment_intent", &id),
                    ("amount", amount),
                    ("reason", "requested_by_customer"),
                ],
            )
            .await
        }
    };
    let (status, early) = refund("r0", "100").await;
    assert_eq!(status, 400, "nothing captured yet: {early}");
    let (status, part) = post(
        &app,
        &format!("/v1/payment_intents/{id}/capture"),
        "part",
        &[("amount_to_capture", "400"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(status, 200, "{part}");
    let (status, first) = refund("r1", "300").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["amount"].as_i64(), first["reason"].as_str()),
        (Some(300), Some("requested_by_customer"))
    );
    assert!(first["id"].as_str().is_some_and(|r| r.starts_with("re_")));
    assert_eq!(refund("r1", "300").await.1, first, "a repeat replays the refund");
    let (status, over) = refund("r2", "101").await;
    assert_eq!(status, 400, "100 left to refund: {over}");
    let (status, bad) = post(
        &app,
        "/v1/refunds",
        "r3",
        &[
            ("payment_intent", &id),
            ("amount", "10"),
            ("reason", "changed_mind"),
        ],
    )
    .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("parameter_invalid_string"))
    );
    let (status, cancelled) = post(&app, &format!("/v1/payment_intents/{id}/cancel"), "rest", &[]).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        (
            cancelled["status"].as_str(),
            cancelled["amount_received"].as_i64(),
            cancelled["amount_capturable"].as_i64()
        ),
        (Some("succeeded"), Some(400), Some(0)),
        "the rest released, what was captured kept"
    );
    let (status, last) = refund("r4", "100").await;
    assert_eq!((status, last["amount"].as_i64()), (200, Some(100)), "{last}");
    let intent = app
        .get_json(&format!("{}/v1/payment_intents/{id}", app.paysim))
        .await;
    assert_eq!(intent["amount_refunded"].as_i64(), Some(400));
}

#[tokio::test]
async fn a_hold_not_captured_in_its_lifetime_is_cancelled_by_the_provider() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        sim: orderflow_paysim::SimConfig {
            hold_lifetime: Duration::from_secs(1),
            ..Default::default()
        },
        worker: false,
        ..Default::default()
    })
    .await;
    let intent: Value = create(&app, "lapse", "pm_card_visa", 400)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = intent["id"].as_str().unwrap().to_owned();
    assert_eq!(intent["status"], "requires_capture");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let lapsed = app
        .get_json(&format!("{}/v1/payment_intents/{id}", app.paysim))
        .await;
    assert_eq!(
        (
            lapsed["status"].as_str(),
            lapsed["cancellation_reason"].as_str(),
            lapsed["amount_capturable"].as_i64()
        ),
        (Some("canceled"), Some("automatic"), Some(0))
    );
    let (status, error) = post(&app, &format!("/v1/payment_intents/{id}/capture"), "late", &[]).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "payment_intent_unexpected_state");
}

/// An authorized intent names its charge, which says when the hold lapses (`capture_before`, Stripe's
/// `payment_method_details.card`), also inline with `expand[]=latest_charge`; a declined one has none.
#[tokio::test]
async fn an_authorized_intent_names_its_charge_and_when_its_hold_lapses() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        sim: orderflow_paysim::SimConfig {
            hold_lifetime: Duration::from_secs(3_600),
            ..Default::default()
        },
        worker: false,
        ..Default::default()
    })
    .await;
    let before = chrono::Utc::now().timestamp();
    let intent: Value = create(&app, "charged", "pm_card_visa", 700)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = intent["id"].as_str().unwrap().to_owned();
    let charge_id = intent["latest_charge"].as_str().unwrap().to_owned();
    assert!(charge_id.starts_with("ch_"), "{intent}");
    let charge = app
        .get_json(&format!("{}/v1/charges/{charge_id}", app.paysim))
        .await;
    let capture_before = charge["payment_method_details"]["card"]["capture_before"]
        .as_i64()
        .unwrap();
    assert!(
        (before + 3_600..=chrono::Utc::now().timestamp() + 3_600).contains(&capture_before),
        "the hold lapses an hour after the authorization: {charge}"
    );
    assert_eq!(
        (&charge["payment_intent"], &charge["captured"]),
        (&json!(id), &json!(false)),
        "{charge}"
    );
    let expanded = app
        .get_json(&format!(
            "{}/v1/payment_intents/{id}?expand[]=latest_charge",
            app.paysim
        ))
        .await;
    assert_eq!(expanded["latest_charge"], charge, "{expanded}");
    let (status, captured) = post(&app, &format!("/v1/payment_intents/{id}/capture"), "take", &[]).await;
    assert_eq!(status, 200, "{captured}");
    let charge = app
        .get_json(&format!("{}/v1/charges/{charge_id}", app.paysim))
        .await;
    assert_eq!(
        (&charge["captured"], &charge["amount_captured"]),
        (&json!(true), &json!(700))
    );

    let declined = create(&app, "declined-charge", "pm_card_chargeDeclined", 700)
        .await
        .unwrap();
    let body: Value = declined.json().await.unwrap();
    assert_eq!(
        body["error"]["payment_intent"]["latest_charge"],
        Value::Null,
        "{body}"
    );
    let missing = app
        .http
        .get(format!("{}/v1/charges/ch_nope", app.paysim))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// `POST /v1/sim/payment_intents/{id}/lapse` ends a hold's lifetime now: an uncaptured one is `canceled`
/// (`automatic`), a partly captured one `succeeded` keeping what was captured; either refuses a capture after.
/// `pm_sim_reauth_declined` authorizes an order's first intent and declines every later one (`expired_card`).
#[tokio::test]
async fn a_hold_can_be_lapsed_now_and_a_card_can_decline_its_reauthorization() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    let multicapture = [(
        "payment_method_options[card][request_multicapture]",
        "if_available",
    )];
    let intent: Value = create(&app, "lapse-now", "pm_card_visa", 900)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let untouched = intent["id"].as_str().unwrap().to_owned();
    let (status, lapsed) = post(
        &app,
        &format!("/v1/sim/payment_intents/{untouched}/lapse"),
        "l1",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{lapsed}");
    assert_eq!(
        (
            lapsed["status"].as_str(),
            lapsed["cancellation_reason"].as_str(),
            lapsed["amount_capturable"].as_i64()
        ),
        (Some("canceled"), Some("automatic"), Some(0))
    );

    let form = |key: &str, method: &str| {
        let mut form = vec![
            ("amount", "1000".to_owned()),
            ("currency", "usd".to_owned()),
            ("payment_method", method.to_owned()),
            ("capture_method", "manual".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[order_id]", "order-7".to_owned()),
        ];
        form.extend(multicapture.iter().map(|(k, v)| (*k, (*v).to_owned())));
        (key.to_owned(), form)
    };
    let send = |(key, form): (String, Vec<(&'static str, String)>)| {
        app.http
            .post(format!("{}/v1/payment_intents", app.paysim))
            .header("Idempotency-Key", key)
            .form(&form)
            .send()
    };
    let first = send(form("first", "pm_sim_reauth_declined")).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let held = first["id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &app,
        &format!("/v1/payment_intents/{held}/capture"),
        "part",
        &[("amount_to_capture", "400"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(status, 200);
    let (_, lapsed) = post(&app, &format!("/v1/sim/payment_intents/{held}/lapse"), "l2", &[]).await;
    assert_eq!(
        (
            lapsed["status"].as_str(),
            lapsed["amount_received"].as_i64(),
            lapsed["amount_capturable"].as_i64()
        ),
        (Some("succeeded"), Some(400), Some(0)),
        "what was captured stays: {lapsed}"
    );
    let (status, refused) = post(
        &app,
        &format!("/v1/payment_intents/{held}/capture"),
        "late",
        &[("amount_to_capture", "100"), ("final_capture", "false")],
    )
    .await;
    assert_eq!(
        (status, refused["error"]["payment_intent"]["status"].as_str()),
        (400, Some("succeeded")),
        "{refused}"
    );

    let again = send(form("second", "pm_sim_reauth_declined")).await.unwrap();
    assert_eq!(again.status(), 402);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (
            again["error"]["code"].as_str(),
            again["error"]["decline_code"].as_str()
        ),
        (Some("card_declined"), Some("expired_card")),
        "{again}"
    );
    let (status, missing) = post(&app, "/v1/sim/payment_intents/pi_nope/lapse", "l3", &[]).await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("resource_missing"))
    );
}

/// A simulator with webhooks to `receiver` (secrets `whsec_old` and `whsec_new`, as during a roll), tuned by
/// `tune`, and no worker: only the test's own requests make events.
async fn hooked(
    receiver: &crate::helpers::Receiver,
    tune: fn(&mut orderflow_paysim::SimConfig),
) -> crate::helpers::TestApp {
    let mut sim = orderflow_paysim::SimConfig {
        webhook_url: Some(receiver.url.clone()),
        webhook_secrets: vec!["whsec_old".to_owned(), "whsec_new".to_owned()],
        webhook_retry: Duration::from_millis(50),
        ..Default::default()
    };
    tune(&mut sim);
    crate::helpers::spawn_app_with(crate::helpers::Options {
        sim,
        worker: false,
        ..Default::default()
    })
    .await
}

/// `(type, the intent it is about)` of an event.
fn about(event: &Value) -> (String, String) {
    let object = &event["data"]["object"];
    let intent = match object["object"].as_str() {
        Some("charge") => &object["payment_intent"],
        _ => &object["id"],
    };
    (
        event["type"].as_str().unwrap().to_owned(),
        intent.as_str().unwrap().to_owned(),
    )
}

async fn intent_id(response: reqwest::Result<reqwest::Response>) -> String {
    let body: Value = response.unwrap().json().await.unwrap();
    let intent = body.get("error").map_or(&body, |error| &error["payment_intent"]);
    intent["id"].as_str().unwrap().to_owned()
}

/// Every change of an intent is an event, in the account's log in the order of the changes and POSTed to the
/// endpoint with a `Stripe-Signature` that verifies under either secret of a roll.
#[tokio::test]
async fn every_change_of_an_intent_is_an_event_delivered_signed_as_stripe_signs() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |_| {}).await;
    let captured = intent_id(create(&app, "a", "pm_card_visa", 500).await).await;
    post(
        &app,
        &format!("/v1/payment_intents/{captured}/capture"),
        "cap-a",
        &[],
    )
    .await;
    post(
        &app,
        "/v1/refunds",
        "ref-a",
        &[("payment_intent", &captured), ("amount", "200")],
    )
    .await;
    let declined = intent_id(create(&app, "b", "pm_card_chargeDeclined", 500).await).await;
    let voided = intent_id(create(&app, "c", "pm_card_visa", 300).await).await;
    post(
        &app,
        &format!("/v1/payment_intents/{voided}/cancel"),
        "void-c",
        &[],
    )
    .await;

    let got = receiver.wait_for("six events", |got| got.len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 6, "one delivery per event");
    let now = chrono::Utc::now().timestamp();
    for delivery in &got {
        let signature = delivery.header("stripe-signature");
        for secret in ["whsec_old", "whsec_new"] {
            orderflow_shared::stripe_signature::verify(signature, &delivery.body, &[secret], now, 300)
                .unwrap_or_else(|e| panic!("{e}: {signature:?} under {secret}"));
        }
        assert!(
            delivery
                .header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        let event = delivery.json();
        assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
        assert_eq!(
            (event["object"].as_str(), event["livemode"].as_bool()),
            (Some("event"), Some(false))
        );
        assert!((event["created"].as_i64().unwrap() - now).abs() < 60, "{event}");
    }
    let mut delivered: Vec<(String, String)> = got.iter().map(|d| about(&d.json())).collect();
    delivered.sort();
    let mut expected = vec![
        (
            "payment_intent.amount_capturable_updated".to_owned(),
            captured.clone(),
        ),
        ("payment_intent.succeeded".to_owned(), captured.clone()),
        ("charge.refunded".to_owned(), captured.clone()),
        ("payment_intent.payment_failed".to_owned(), declined.clone()),
        (
            "payment_intent.amount_capturable_updated".to_owned(),
            voided.clone(),
        ),
        ("payment_intent.canceled".to_owned(), voided.clone()),
    ];
    expected.sort();
    assert_eq!(delivered, expected);
    let refunded = got
        .iter()
        .map(|d| d.json())
        .find(|e| e["type"] == "charge.refunded")
        .unwrap();
    assert_eq!(
        (
            refunded["data"]["object"]["object"].as_str(),
            refunded["data"]["object"]["amount_refunded"].as_i64()
        ),
        (Some("charge"), Some(200))
    );
    let failed = got
        .iter()
        .map(|d| d.json())
        .find(|e| e["type"] == "payment_intent.payment_failed")
        .unwrap();
    assert_eq!(
        failed["data"]["object"]["last_payment_error"]["code"],
        "card_declined"
    );

    // The log: newest first, in the order of the changes, each event as it was delivered.
    let log = app.get_json(&format!("{}/v1/events?limit=100", app.paysim)).await;
    let listed: Vec<Value> = log["data"].as_array().unwrap().clone();
    assert_eq!(
        (log["object"].as_str(), log["has_more"].as_bool(), listed.len()),
        (Some("list"), Some(false), 6)
    );
    let of_captured: Vec<String> = listed
        .iter()
        .map(about)
        .filter(|(_, intent)| *intent == captured)
        .map(|(kind, _)| kind)
        .collect();
    assert_eq!(
        of_captured,
        [
            "charge.refunded",
            "payment_intent.succeeded",
            "payment_intent.amount_capturable_updated"
        ]
    );
    for event in &listed {
        let one = app
            .get_json(&format!(
                "{}/v1/events/{}",
                app.paysim,
                event["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(&one, event);
        assert!(
            got.iter().any(|d| d.json() == *event),
            "delivered as logged: {event}"
        );
    }
    let filtered = app
        .get_json(&format!(
            "{}/v1/events?type=payment_intent.*&limit=100",
            app.paysim
        ))
        .await;
    assert_eq!(filtered["data"].as_array().unwrap().len(), 5);
    let refunds = app
        .get_json(&format!("{}/v1/events?type=charge.refunded", app.paysim))
        .await;
    assert_eq!(refunds["data"].as_array().unwrap().len(), 1);
    let page = app.get_json(&format!("{}/v1/events?limit=4", app.paysim)).await;
    assert_eq!(
        (page["has_more"].as_bool(), page["data"].as_array().unwrap().len()),
        (Some(true), 4)
    );
    let after = page["data"][3]["id"].as_str().unwrap();
    let rest = app
        .get_json(&format!(
            "{}/v1/events?limit=4&starting_after={after}",
            app.paysim
        ))
        .await;
    assert_eq!(rest["has_more"].as_bool(), Some(false));
    assert_eq!(rest["data"].as_array().unwrap(), &listed[4..]);
    for bad in ["limit=0", "limit=101", "limit=x", "starting_after=evt_nope"] {
        let response = app
            .http
            .get(format!("{}/v1/events?{bad}", app.paysim))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_refused_delivery_is_retried_until_the_endpoint_acknowledges_it() {
    let receiver = crate::helpers::Receiver::start(std::sync::Arc::new(|n, _| {
        (if n < 2 { 500 } else { 200 }, Duration::ZERO)
    }))
    .await;
    let app = hooked(&receiver, |_| {}).await;
    create(&app, "retried", "pm_card_visa", 500).await.unwrap();
    let got = receiver.wait_for("three attempts", |got| got.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "no attempt after the 2xx");
    let ids: Vec<Value> = got.iter().map(|d| d.json()["id"].clone()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event, attempted three times: {ids:?}"
    );
    let now = chrono::Utc::now().timestamp();
    for attempt in &got {
        orderflow_shared::stripe_signature::verify(
            attempt.header("stripe-signature"),
            &attempt.body,
            &["whsec_new"],
            now,
            300,
        )
        .unwrap();
    }
}

#[tokio::test]
async fn the_duplicate_fault_delivers_each_event_twice() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |sim| sim.webhook_duplicate_rate = 1.0).await;
    for key in ["d1", "d2", "d3"] {
        create(&app, key, "pm_card_visa", 500).await.unwrap();
    }
    let got = receiver.wait_for("six deliveries", |got| got.len() >= 6).await;
    let mut counts = std::collections::BTreeMap::new();
    for delivery in &got {
        *counts
            .entry(delivery.json()["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{counts:?}"
    );
}

#[tokio::test]
async fn the_reorder_fault_delivers_an_event_after_the_next_one() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |sim| sim.webhook_reorder_rate = 1.0).await;
    let first = intent_id(create(&app, "first", "pm_card_visa", 500).await).await;
    let second = intent_id(create(&app, "second", "pm_card_visa", 500).await).await;
    let got = receiver.wait_for("two deliveries", |got| got.len() >= 2).await;
    let order: Vec<String> = got.iter().map(|d| about(&d.json()).1).collect();
    assert_eq!(
        order,
        [second, first],
        "the first event was held back behind the second"
    );
}

#[tokio::test]
async fn the_early_fault_delivers_the_event_before_the_request_answers() {
    // The receiver takes 300 ms to acknowledge: an answer that waited for the delivery comes after it.
    let receiver =
        crate::helpers::Receiver::start(std::sync::Arc::new(|_, _| (200, Duration::from_millis(300)))).await;
    let app = hooked(&receiver, |sim| sim.webhook_early_rate = 1.0).await;
    let started = std::time::Instant::now();
    let intent = intent_id(create(&app, "early", "pm_card_visa", 500).await).await;
    let answered = std::time::Instant::now();
    let got = receiver.received();
    assert_eq!(got.len(), 1, "the webhook came before the answer");
    assert_eq!(
        about(&got[0].json()),
        ("payment_intent.amount_capturable_updated".to_owned(), intent)
    );
    assert!(got[0].at < answered && answered - started >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_delay_fault_spreads_deliveries_out() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |sim| sim.webhook_delay = Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    for n in 0..6 {
        create(&app, &format!("late{n}"), "pm_card_visa", 500)
            .await
            .unwrap();
    }
    let got = receiver.wait_for("six deliveries", |got| got.len() >= 6).await;
    // Six uniform delays up to 2 s: all of them under 100 ms has a chance of 0.05^6.
    let last = got.iter().map(|d| d.at).max().unwrap();
    assert!(
        last - started > Duration::from_millis(100),
        "{:?}",
        last - started
    );
}

/// A hold nobody asks about still lapses on the provider's clock, announced as Stripe announces an expired
/// authorization.
#[tokio::test]
async fn a_hold_that_lapses_unasked_is_announced_cancelled() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |sim| sim.hold_lifetime = Duration::from_secs(1)).await;
    let intent = intent_id(create(&app, "unasked", "pm_card_visa", 500).await).await;
    let got = receiver
        .wait_for("the cancellation", |got| {
            got.iter().any(|d| d.json()["type"] == "payment_intent.canceled")
        })
        .await;
    let cancelled = got
        .iter()
        .map(|d| d.json())
        .find(|e| e["type"] == "payment_intent.canceled")
        .unwrap();
    let object = &cancelled["data"]["object"];
    assert_eq!(
        (
            object["id"].as_str(),
            object["cancellation_reason"].as_str(),
            object["amount_capturable"].as_i64()
        ),
        (Some(intent.as_str()), Some("automatic"), Some(0))
    );
}

/// `pm_sim_requires_action` waits for the customer, who completes or abandons at the simulator's stand-in;
/// off-session it is declined, as Stripe declines what would need a customer who is not there.
#[tokio::test]
async fn an_authentication_waits_for_the_customer_and_is_announced() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |_| {}).await;
    let waiting: Value = create(&app, "3ds", "pm_sim_requires_action", 500)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            waiting["status"].as_str(),
            waiting["amount_capturable"].as_i64(),
            waiting["next_action"]["type"].as_str()
        ),
        (Some("requires_action"), Some(0), Some("use_stripe_sdk"))
    );
    let id = waiting["id"].as_str().unwrap().to_owned();
    let act = |action: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let response = app
                .http
                .post(format!("{}/v1/sim/payment_intents/{id}/customer", app.paysim))
                .form(&[("action", action)])
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, done) = act("complete").await;
    assert_eq!(
        (
            status,
            done["status"].as_str(),
            done["amount_capturable"].as_i64()
        ),
        (200, Some("requires_capture"), Some(500))
    );
    assert!(done["latest_charge"].as_str().unwrap().starts_with("ch_"));
    let (status, again) = act("abandon").await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (400, Some("payment_intent_unexpected_state"))
    );
    let got = receiver.wait_for("two events", |got| got.len() >= 2).await;
    let mut kinds: Vec<String> = got
        .iter()
        .map(|d| d.json()["type"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "payment_intent.amount_capturable_updated",
            "payment_intent.requires_action"
        ]
    );

    let abandoned = intent_id(create(&app, "3ds-abandoned", "pm_sim_requires_action", 500).await).await;
    let response = app
        .http
        .post(format!(
            "{}/v1/sim/payment_intents/{abandoned}/customer",
            app.paysim
        ))
        .form(&[("action", "abandon")])
        .send()
        .await
        .unwrap();
    let failed: Value = response.json().await.unwrap();
    assert_eq!(
        (
            failed["status"].as_str(),
            failed["last_payment_error"]["code"].as_str()
        ),
        (
            Some("requires_payment_method"),
            Some("payment_intent_authentication_failure")
        )
    );

    let (status, declined) = post(
        &app,
        "/v1/payment_intents",
        "3ds-off-session",
        &[
            ("amount", "500"),
            ("currency", "usd"),
            ("payment_method", "pm_sim_requires_action"),
            ("capture_method", "manual"),
            ("confirm", "true"),
            ("off_session", "true"),
        ],
    )
    .await;
    assert_eq!(
        (status, declined["error"]["decline_code"].as_str()),
        (402, Some("authentication_required"))
    );
}

/// A bank debit stays `processing` and settles on the provider's clock, announced by its events.
#[tokio::test]
async fn a_bank_debit_settles_later_either_way() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = hooked(&receiver, |sim| sim.processing_delay = Duration::from_millis(500)).await;
    let paid = intent_id(create(&app, "debit", "pm_sim_processing", 500).await).await;
    let refused = intent_id(create(&app, "debit-refused", "pm_sim_processing_fails", 500).await).await;
    let now = app
        .get_json(&format!("{}/v1/payment_intents/{paid}", app.paysim))
        .await;
    assert_eq!(now["status"], "processing");
    let got = receiver.wait_for("four events", |got| got.len() >= 4).await;
    let mut seen: Vec<(String, String)> = got.iter().map(|d| about(&d.json())).collect();
    seen.sort();
    let mut expected = vec![
        ("payment_intent.processing".to_owned(), paid.clone()),
        (
            "payment_intent.amount_capturable_updated".to_owned(),
            paid.clone(),
        ),
        ("payment_intent.processing".to_owned(), refused.clone()),
        ("payment_intent.payment_failed".to_owned(), refused.clone()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let settled = app
        .get_json(&format!("{}/v1/payment_intents/{paid}", app.paysim))
        .await;
    assert_eq!(
        (settled["status"].as_str(), settled["amount_capturable"].as_i64()),
        (Some("requires_capture"), Some(500))
    );
    let failed = app
        .get_json(&format!("{}/v1/payment_intents/{refused}", app.paysim))
        .await;
    assert_eq!(failed["last_payment_error"]["code"], "insufficient_funds");
}
