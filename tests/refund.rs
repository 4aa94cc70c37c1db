//! Refunds (issue 18): captured money given back, by lines or by amount, never more than was captured (under
//! concurrency too), each refunded once by the provider under its own key; a refusal fails the refund and gives
//! back nothing; refunds and shipments asked for while another step runs are handed over when it ends.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, problem_type, spawn_app, spawn_app_with, spawn_worker_process};
use crate::invariants;
use crate::shipment::{paid_shipment_order, wait_shipment};

/// A FULFILLED auto order of one GIFT (1,000).
async fn fulfilled_gift_order(app: &TestApp, customer: &str) -> Uuid {
    app.put_sku("GIFT", 10, 1000).await;
    let id = app.create_order(customer, &[("GIFT", 1)], "pm_card_visa").await;
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    id
}

#[tokio::test]
async fn refunds_by_line_and_by_amount_give_back_at_most_what_was_captured() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "refunds").await;
    let (status, problem) = app
        .refund(
            id,
            "too-early",
            json!({"amount": 100, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("order-not-refundable")),
        "nothing is captured while it is PAID: {problem}"
    );

    // BOX (1,000) and two TAPE (250 each) ship: 1,500 captured.
    let (status, shipment) = app
        .ship(
            id,
            "ship-1",
            json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 2}]}),
        )
        .await;
    assert_eq!(status, 202, "{shipment}");
    wait_shipment(&app, id, &shipment, "DONE").await;
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;

    let by_line = json!({"lines": [{"sku": "TAPE", "quantity": 1}], "reason": "requested_by_customer",
                         "note": "arrived torn"});
    let (status, first) = app.refund(id, "tape", by_line.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        (&first["status"], &first["amount"], &first["lines"]),
        (
            &json!("PENDING"),
            &json!(250),
            &json!([{"sku": "TAPE", "quantity": 1}])
        ),
        "{first}"
    );
    let (status, again) = app.refund(id, "tape", by_line).await;
    assert_eq!((status, &again), (202, &first), "the same key replays the refund");
    let done = app.wait_refund(id, &first, "DONE").await;
    assert_eq!(done["note"], "arrived torn");
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 250);

    // By line: at most what was delivered and not refunded by line.
    let (status, problem) = app
        .refund(
            id,
            "mug",
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "reason": "duplicate"}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("refund-exceeds-delivered")),
        "MUG has not shipped: {problem}"
    );
    let (status, problem) = app
        .refund(
            id,
            "tapes",
            json!({"lines": [{"sku": "TAPE", "quantity": 2}], "reason": "duplicate"}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("refund-exceeds-delivered")),
        "one TAPE is left to refund by line: {problem}"
    );
    // By amount: at most what was captured and not refunded.
    let (status, problem) = app
        .refund(
            id,
            "over",
            json!({"amount": 1251, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("refund-exceeds-captured")),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("1251 asked")
            && detail.contains("1500 captured and 250 refunded")
            && detail.contains("at most 1250"),
        "the problem names asked, captured, refunded and what is left: {detail}"
    );
    let (status, rest) = app
        .refund(id, "rest", json!({"amount": 1250, "reason": "duplicate"}))
        .await;
    assert_eq!(status, 202, "{rest}");
    app.wait_refund(id, &rest, "DONE").await;
    let money = app.refunds(id).await;
    assert_eq!(
        (&money["captured"], &money["refunded"], &money["refundable"]),
        (&json!(1500), &json!(1500), &json!(0)),
        "{money}"
    );
    assert_eq!(money["refunds"].as_array().unwrap().len(), 2);
    let refunded = app.events_of(id, "order.refunded").await;
    assert_eq!(
        refunded
            .iter()
            .map(|e| e["refund_id"].clone())
            .collect::<Vec<_>>(),
        vec![first["id"].clone(), rest["id"].clone()],
        "one order.refunded per refund, naming it: {refunded:?}"
    );
    assert!(
        refunded
            .iter()
            .all(|e| e["from"] == "PARTIALLY_FULFILLED" && e["to"] == "PARTIALLY_FULFILLED"),
        "a refund leaves the status as it is: {refunded:?}"
    );
    let order = app.order(id).await;
    assert_eq!(order["status"], "PARTIALLY_FULFILLED", "{order}");
    assert_eq!(order["current_step"], Value::Null, "{order}");
    assert_eq!(
        (
            &order["payment"]["amount"],
            &order["payment"]["captured"],
            &order["payment"]["refunded"]
        ),
        (&json!(2300), &json!(1500), &json!(1500)),
        "the order's view shows its money: {order}"
    );

    // The last unit ships; then it, too, can be refunded by line.
    let (status, last) = app
        .ship(id, "ship-2", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{last}");
    app.wait_terminal(id).await;
    let (status, mug) = app
        .refund(
            id,
            "mug-2",
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{mug}");
    app.wait_refund(id, &mug, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["amount_received"], &intent["amount_refunded"]),
        (&json!(2300), &json!(2300)),
        "{intent}"
    );
    let order = app.order(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// Two refunds that together pass what was captured, sent while the order's lock is held so that both are in
/// before either is decided: one is accepted, the other refused, and the provider refunds the one.
#[tokio::test]
async fn two_refunds_that_together_pass_what_was_captured_cannot_both_be_accepted() {
    let app = spawn_app().await;
    let id = fulfilled_gift_order(&app, "two-at-once").await;
    let holder = app.hold_order(id).await;
    let send = |key: &'static str| {
        let (http, api) = (app.http.clone(), app.api.clone());
        tokio::spawn(async move {
            crate::helpers::post_refund(
                &http,
                &api,
                id,
                key,
                json!({"amount": 600, "reason": "requested_by_customer"}),
            )
            .await
        })
    };
    let (a, b) = (send("first"), send("second"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();
    let mut answers = vec![a.await.unwrap(), b.await.unwrap()];
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(
        answers.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![202, 409],
        "{answers:?}"
    );
    assert_eq!(answers[1].1["type"], problem_type("refund-exceeds-captured"));
    app.wait_refund(id, &answers[0].1, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["amount_received"], &intent["amount_refunded"]),
        (&json!(1000), &json!(600)),
        "{intent}"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&json!("FULFILLED"), &Value::Null),
        "{order}"
    );
    assert_eq!(app.events_of(id, "order.refunded").await.len(), 1);
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("GIFT", 10)]).await;
}

/// The provider refuses a refund (here: 800 of the 1,000 were refunded at the provider directly, so 500 is more
/// than it has left): the refund fails, nothing more is refunded, `order.refund_failed` names it, and a FAILED
/// refund no longer counts against what is refundable.
#[tokio::test]
async fn a_refund_the_provider_refuses_fails_and_gives_back_nothing() {
    let app = spawn_app().await;
    let id = fulfilled_gift_order(&app, "refused").await;
    let intent = app.intents_of(id).await[0]["id"].as_str().unwrap().to_owned();
    let outside = app
        .http
        .post(format!("{}/v1/refunds", app.paysim))
        .header("Idempotency-Key", "by-hand")
        .form(&[("payment_intent", intent.as_str()), ("amount", "800")])
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), 200);

    let (status, refund) = app
        .refund(
            id,
            "too-much",
            json!({"amount": 500, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    let failed = app.wait_refund(id, &refund, "FAILED").await;
    assert!(
        failed["failure"].as_str().is_some_and(|f| !f.is_empty()),
        "the provider's words are kept: {failed}"
    );
    assert_eq!(
        app.intents_of(id).await[0]["amount_refunded"],
        800,
        "nothing more"
    );
    let events = app.events_of(id, "order.refund_failed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["refund_id"], refund["id"]);
    let money = app.refunds(id).await;
    assert_eq!(
        (&money["refunded"], &money["refundable"]),
        (&json!(0), &json!(1000)),
        "{money}"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&json!("FULFILLED"), &Value::Null),
        "{order}"
    );
}

#[tokio::test]
async fn refund_requests_are_checked_and_a_refused_one_writes_nothing() {
    let app = spawn_app().await;
    let id = fulfilled_gift_order(&app, "checked").await;
    let reason = "requested_by_customer";
    let invalid = [
        (json!({"reason": reason}), "amount"),
        (
            json!({"amount": 100, "lines": [{"sku": "GIFT", "quantity": 1}], "reason": reason}),
            "lines",
        ),
        (json!({"amount": 0, "reason": reason}), "amount"),
        (json!({"amount": 100, "reason": "changed_mind"}), "reason"),
        (json!({"amount": 100}), "reason"),
        (
            json!({"lines": [{"sku": "NOPE", "quantity": 1}], "reason": reason}),
            "lines[0].sku",
        ),
        (
            json!({"lines": [{"sku": "GIFT", "quantity": 0}], "reason": reason}),
            "lines[0].quantity",
        ),
        (
            json!({"amount": 100, "reason": reason, "note": "x".repeat(501)}),
            "note",
        ),
    ];
    for (n, (body, field)) in invalid.into_iter().enumerate() {
        let (status, problem) = app.refund(id, &format!("bad-{n}"), body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert!(
            problem.to_string().contains(field),
            "{body}: the problem names {field}: {problem}"
        );
    }
    let (status, problem) = app
        .refund(id, "typo", json!({"amount": 100, "reason": reason, "amuont": 5}))
        .await;
    assert!(matches!(status, 400 | 422), "an unknown field: {problem}");
    let (status, _) = app
        .refund(Uuid::now_v7(), "nobody", json!({"amount": 100, "reason": reason}))
        .await;
    assert_eq!(status, 404);
    let no_key = app
        .http
        .post(format!("{}/v1/orders/{id}/refunds", app.api))
        .json(&json!({"amount": 100, "reason": reason}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);

    // A cancelled order gave its money back with its cancellation.
    let cancelled = app
        .create_order("checked", &[("GIFT", 1)], "pm_card_decline")
        .await;
    app.wait_terminal(cancelled).await;
    let (status, problem) = app
        .refund(cancelled, "cancelled", json!({"amount": 100, "reason": reason}))
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("order-not-refundable")),
        "{problem}"
    );

    // A customer's token reads its order's refunds but refunds nothing.
    let token = crate::customer_tokens::token_for(&app, "checked").await;
    let customer = crate::helpers::client_with_key(&token, reqwest::Client::builder());
    let refused = customer
        .post(format!("{}/v1/orders/{id}/refunds", app.api))
        .header("Idempotency-Key", "mine")
        .json(&json!({"amount": 100, "reason": reason}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let listed = customer
        .get(format!("{}/v1/orders/{id}/refunds", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    let written: i64 = sqlx::query_scalar("select count(*) from refunds")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(written, 0, "no refused request wrote a refund");
    let money = app.refunds(id).await;
    assert_eq!(
        (&money["captured"], &money["refunded"], &money["refundable"]),
        (&json!(1000), &json!(0), &json!(1000)),
        "{money}"
    );
}

/// The last shipment queues fulfil; refunds asked while fulfil waits to run (the app's worker runs everything but
/// fulfil) wait for it: fulfil, once a worker runs it, ends the order FULFILLED and hands over to the refunds,
/// which run oldest first, one after the other.
#[tokio::test]
async fn refunds_asked_while_fulfil_waits_run_after_it_oldest_first() {
    let app = spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings
                .steps
                .retain(|s| *s != orderflow_shared::flow::Step::Fulfil)
        },
        ..crate::helpers::Options::default()
    })
    .await;
    let id = paid_shipment_order(&app, "after-fulfil").await;
    let everything = json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 2},
                                      {"sku": "MUG", "quantity": 1}]});
    let (status, shipment) = app.ship(id, "all", everything).await;
    assert_eq!(status, 202, "{shipment}");
    wait_shipment(&app, id, &shipment, "DONE").await;
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| o["current_step"] == "fulfil")
        .await;
    assert_eq!(order["status"], "PARTIALLY_FULFILLED", "{order}");
    let mut asked = Vec::new();
    for (key, amount) in [("first", 300), ("second", 200), ("third", 100)] {
        let (status, refund) = app
            .refund(
                id,
                key,
                json!({"amount": amount, "reason": "requested_by_customer"}),
            )
            .await;
        assert_eq!((status, &refund["status"]), (202, &json!("PENDING")), "{refund}");
        asked.push(refund);
    }
    assert_eq!(
        app.order(id).await["current_step"],
        "fulfil",
        "the refunds wait for fulfil"
    );

    let _fulfils = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    for refund in &asked {
        app.wait_refund(id, refund, "DONE").await;
    }
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&json!("FULFILLED"), &Value::Null),
        "{order}"
    );
    let events: Vec<Value> = app.events(id).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let fulfilled = kinds.iter().position(|k| *k == "order.fulfilled").unwrap();
    let refunded: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "order.refunded")
        .map(|e| &e["refund_id"])
        .collect();
    assert_eq!(
        refunded,
        asked.iter().map(|r| &r["id"]).collect::<Vec<_>>(),
        "refunded oldest first"
    );
    assert!(
        kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == "order.refunded")
            .all(|(i, _)| i > fulfilled),
        "fulfil, then the refunds: {kinds:?}"
    );
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["amount_received"], &intent["amount_refunded"]),
        (&json!(2300), &json!(600)),
        "{intent}"
    );
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// An order has one step at a time. Here the app's worker runs everything but refund: a refund is accepted and
/// becomes the order's step; a shipment asked for meanwhile waits for it (no ship job), and a cancel of the rest is
/// refused while the refund is on its way. A worker that runs refunds then refunds it and hands over to ship,
/// which captures the shipment.
#[tokio::test]
async fn a_shipment_asked_while_a_refund_runs_is_shipped_when_the_refund_ends() {
    let app = spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings
                .steps
                .retain(|s| *s != orderflow_shared::flow::Step::Refund)
        },
        ..crate::helpers::Options::default()
    })
    .await;
    let id = paid_shipment_order(&app, "hand-over").await;
    let (status, first) = app
        .ship(id, "box", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{first}");
    wait_shipment(&app, id, &first, "DONE").await;
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;

    let (status, refund) = app
        .refund(
            id,
            "half-box",
            json!({"amount": 500, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    assert_eq!(app.order(id).await["current_step"], "refund");
    let cancel = app.cancel(id).await;
    assert_eq!(cancel.status(), 409);
    let problem: Value = cancel.json().await.unwrap();
    assert_eq!(problem["type"], problem_type("order-refunding"), "{problem}");
    let (status, second) = app
        .ship(id, "mug", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{second}");
    // The app's worker runs ship: had the shipment queued a job, it would be captured by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let order = app.order(id).await;
    assert_eq!(order["current_step"], "refund", "the shipment waits: {order}");
    let waiting = app
        .get_json(&format!("{}/v1/orders/{id}/shipments", app.api))
        .await;
    assert_eq!(
        waiting["shipments"][1]["status"], "PENDING",
        "no ship job while the refund is the order's step: {waiting}"
    );

    let _refunds = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    app.wait_refund(id, &refund, "DONE").await;
    wait_shipment(&app, id, &second, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["amount_received"], &intent["amount_refunded"]),
        (&json!(1800), &json!(500)),
        "{intent}"
    );
    // Then the cancel of the rest goes through; the refund of what shipped stays.
    assert_eq!(app.cancel(id).await.status(), 202);
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}
