//! Fulfilment by shipment (issue 18, first part): a sku's mode, an order's mode fixed at creation, and a shipment
//! order's saga that stops in PAID with a multicapture hold, left alone by the reconciler and cancellable.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{OPERATOR_TOKEN, TestApp, spawn_app, transitions};

/// PUTs a sku with `fields` added to its stock and price; returns the status and the answer.
async fn put_sku_with(app: &TestApp, sku: &str, on_hand: i64, fields: Value) -> (u16, Value) {
    let mut body = json!({"on_hand": on_hand, "price": 1000, "currency": "USD"});
    body.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let response = app
        .http
        .put(format!("{}/v1/skus/{sku}", app.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// The order's saga steps as logged, `step:STATUS` in order.
async fn attempts(app: &TestApp, id: Uuid) -> Vec<String> {
    sqlx::query_scalar("select step || ':' || status from saga_steps where order_id = $1 order by id")
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// Jobs of the order that are still to run (pending, fetched or running).
async fn live_jobs(app: &TestApp, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "select count(*) from apalis.jobs where status in ('Pending', 'Queued', 'Running') \
         and convert_from(job, 'UTF8')::jsonb ->> 'order_id' = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_skus_fulfilment_is_set_kept_when_absent_and_checked() {
    let app = spawn_app().await;
    let (status, created) = put_sku_with(&app, "NEW", 5, json!({})).await;
    assert_eq!(
        (status, &created["fulfilment"]),
        (201, &json!("auto")),
        "{created}"
    );

    let (status, shipped) = put_sku_with(&app, "NEW", 5, json!({"fulfilment": "shipment"})).await;
    assert_eq!(
        (status, &shipped["fulfilment"]),
        (200, &json!("shipment")),
        "{shipped}"
    );
    // A set that does not name the mode keeps it.
    let (status, kept) = put_sku_with(&app, "NEW", 7, json!({})).await;
    assert_eq!(
        (status, &kept["fulfilment"], &kept["on_hand"]),
        (200, &json!("shipment"), &json!(7))
    );
    assert_eq!(app.sku("NEW").await["fulfilment"], "shipment");
    let (status, created) = put_sku_with(&app, "SHIPS", 1, json!({"fulfilment": "shipment"})).await;
    assert_eq!(
        (status, &created["fulfilment"]),
        (201, &json!("shipment")),
        "{created}"
    );

    for bad in [json!("Shipment"), json!("manual"), json!(""), json!(1)] {
        let (status, problem) = put_sku_with(&app, "NEW", 7, json!({"fulfilment": bad})).await;
        assert_eq!(status, 422, "{bad}: {problem}");
        assert!(
            problem.to_string().contains("fulfilment"),
            "the problem names the field: {problem}"
        );
    }
    assert_eq!(app.sku("NEW").await["on_hand"], 7, "a refused set wrote nothing");
}

#[tokio::test]
async fn a_shipment_order_waits_in_paid_with_a_multicapture_hold_until_it_is_cancelled() {
    let app = spawn_app().await;
    app.put_sku("DIGITAL", 10, 500).await;
    let (status, _) = put_sku_with(&app, "BOX", 4, json!({"fulfilment": "shipment"})).await;
    assert_eq!(status, 201);

    // Any shipment sku makes a shipment order.
    let id = app
        .create_order("ships", &[("DIGITAL", 1), ("BOX", 2)], "pm_card_visa")
        .await;
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| {
            o["status"] == "PAID" && o["payment"]["status"] == "AUTHORIZED"
        })
        .await;
    assert_eq!(order["fulfilment"], "shipment", "{order}");
    assert_eq!(order["current_step"], Value::Null, "nothing runs: {order}");
    let total = 500 + 2 * 1000;
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "requires_capture");
    assert_eq!(intents[0]["amount_capturable"], total);
    assert_eq!(intents[0]["amount_received"], 0);
    assert_eq!(
        intents[0]["payment_method_options"]["card"]["request_multicapture"],
        "if_available"
    );
    assert_eq!(app.sku("BOX").await["reserved"], 2);
    assert_eq!(app.sku("DIGITAL").await["reserved"], 1);

    // Waiting is not stranded, and a reservation's deadline no longer applies once PAID: reconciler passes
    // leave the order, its hold and its stock as they are, even with the deadline long past.
    sqlx::query("update orders set reserved_until = now() - interval '1 hour' where id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let runner = app.runner("shipment-test");
    for _ in 0..3 {
        let pass = orderflow_worker::reconciler::pass(&runner).await.unwrap();
        assert_eq!(
            (pass.settled_sagas, pass.expired_reservations),
            (0, 0),
            "{pass:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = app.order(id).await;
    assert_eq!(
        (&still["status"], &still["current_step"]),
        (&json!("PAID"), &Value::Null),
        "{still}"
    );
    assert_eq!(attempts(&app, id).await, ["reserve:SUCCEEDED", "pay:SUCCEEDED"]);
    assert_eq!(live_jobs(&app, id).await, 0);
    assert_eq!(app.intents_of(id).await[0]["status"], "requires_capture");

    // An operator has no step to retry on it.
    let retry = app
        .http
        .post(format!("{}/admin/v1/sagas/{id}/retry", app.api))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"note": "retry a waiting order"}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 409);
    let problem: Value = retry.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("waits for its shipments"),
        "{problem}"
    );

    // The customer cancels: the units go back and the hold is voided, nothing captured.
    assert_eq!(app.cancel(id).await.status(), 202);
    let cancelled = app.wait_terminal(id).await;
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["payment"]["status"], "VOIDED");
    for sku in ["BOX", "DIGITAL"] {
        assert_eq!(app.sku(sku).await["reserved"], 0, "{sku}");
    }
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["status"], &intent["amount_received"]),
        (&json!("canceled"), &json!(0))
    );
    assert_eq!(
        transitions(&app.events(id).await),
        [
            "->CREATED",
            "CREATED>RESERVED",
            "RESERVED>PAID",
            "PAID>CANCELLING",
            "CANCELLING>CANCELLED"
        ]
    );
}

#[tokio::test]
async fn an_auto_order_is_unchanged_and_keeps_the_mode_it_was_created_with() {
    let app = spawn_app().await;
    app.put_sku("SOON", 5, 700).await;
    let id = app.create_order("auto", &[("SOON", 1)], "pm_card_visa").await;
    // The sku ships from now on; the order placed before does not.
    let (status, _) = put_sku_with(&app, "SOON", 5, json!({"fulfilment": "shipment"})).await;
    assert_eq!(status, 200);
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (&order["status"], &order["fulfilment"]),
        (&json!("FULFILLED"), &json!("auto")),
        "{order}"
    );
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        intent["payment_method_options"]["card"]["request_multicapture"],
        "never"
    );
    assert_eq!(
        (&intent["status"], &intent["amount_received"]),
        (&json!("succeeded"), &json!(700))
    );
    assert_eq!(
        transitions(&app.events(id).await),
        ["->CREATED", "CREATED>RESERVED", "RESERVED>PAID", "PAID>FULFILLED"]
    );

    // An order placed after the change is a shipment order.
    let later = app.create_order("later", &[("SOON", 1)], "pm_card_visa").await;
    let waiting = app
        .wait_until(later, Duration::from_secs(30), |o| {
            o["payment"]["status"] == "AUTHORIZED"
        })
        .await;
    assert_eq!(
        (&waiting["status"], &waiting["fulfilment"]),
        (&json!("PAID"), &json!("shipment"))
    );
}
