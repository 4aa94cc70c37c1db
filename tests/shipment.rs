//! Fulfilment by shipment (issue 18): a sku's mode, an order's mode fixed at creation, a shipment order's saga
//! that stops in PAID with a multicapture hold (left alone by the reconciler, cancellable), and its shipments:
//! each captures exactly its units' value and takes them out of stock, the last one final.

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
    let order = app.wait_paid(id).await;
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
    // Nor is it stuck in the operators' eyes: it waits for the warehouse.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let stuck = app.admin_json("/admin/v1/sagas?stuck=true&stuck_after=1s").await;
    assert!(
        stuck["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != json!(id)),
        "{stuck}"
    );
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
    let waiting = app.wait_paid(later).await;
    assert_eq!(
        (&waiting["status"], &waiting["fulfilment"]),
        (&json!("PAID"), &json!("shipment"))
    );
}

/// The order's shipments as the API lists them.
async fn shipments(app: &TestApp, id: Uuid) -> Vec<Value> {
    app.get_json(&format!("{}/v1/orders/{id}/shipments", app.api))
        .await["shipments"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until shipment `shipment` of order `id` is `status`; returns it.
pub(crate) async fn wait_shipment(app: &TestApp, id: Uuid, shipment: &Value, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = shipments(app, id).await;
        if let Some(found) = now
            .iter()
            .find(|s| s["id"] == shipment["id"] && s["status"] == status)
        {
            return found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shipment never {status}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three shipment skus, and a PAID order of one, two and one of them (1,000 + 2 × 250 + 800 = 2,300).
pub(crate) async fn paid_shipment_order(app: &TestApp, customer: &str) -> Uuid {
    for (sku, price) in [("BOX", 1000), ("TAPE", 250), ("MUG", 800)] {
        app.put_shipment_sku(sku, 10, price).await;
    }
    let id = app
        .create_order(customer, &[("BOX", 1), ("TAPE", 2), ("MUG", 1)], "pm_card_visa")
        .await;
    app.wait_paid(id).await;
    id
}

#[tokio::test]
async fn shipping_two_of_three_lines_captures_their_value_and_shipping_the_rest_fulfils_the_order() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "ships-in-two").await;

    let first_body = json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 2}],
                            "carrier": "DHL", "tracking": "JD0001"});
    let (status, first) = app.ship(id, "ship-1", first_body.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        (&first["status"], &first["amount"]),
        (&json!("PENDING"), &json!(1500)),
        "{first}"
    );
    // The same key and body: the same shipment, not a second one.
    let (status, again) = app.ship(id, "ship-1", first_body).await;
    assert_eq!((status, &again["id"]), (202, &first["id"]), "{again}");
    let done = wait_shipment(&app, id, &first, "DONE").await;
    assert_eq!(done["final_capture"], false, "{done}");
    let order = app
        .wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;
    assert_eq!(order["current_step"], Value::Null, "waits for the rest: {order}");
    assert_eq!(order["payment"]["status"], "PARTIALLY_CAPTURED");
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (
            &intent["status"],
            &intent["amount_received"],
            &intent["amount_capturable"]
        ),
        (&json!("requires_capture"), &json!(1500), &json!(800)),
        "captured exactly the shipped lines: {intent}"
    );
    let (box_, tape, mug) = (app.sku("BOX").await, app.sku("TAPE").await, app.sku("MUG").await);
    assert_eq!((&box_["on_hand"], &box_["reserved"]), (&json!(9), &json!(0)));
    assert_eq!((&tape["on_hand"], &tape["reserved"]), (&json!(8), &json!(0)));
    assert_eq!(
        (&mug["on_hand"], &mug["reserved"]),
        (&json!(10), &json!(1)),
        "not shipped: still held"
    );

    // Over-shipping is refused and writes nothing: a line shipped whole, more than is left, a sku not ordered.
    for (key, lines) in [
        ("over-1", json!([{"sku": "BOX", "quantity": 1}])),
        ("over-2", json!([{"sku": "MUG", "quantity": 2}])),
    ] {
        let (status, problem) = app.ship(id, key, json!({"lines": lines})).await;
        assert_eq!(status, 409, "{problem}");
        assert_eq!(
            problem["type"], "urn:orderflow:problem:shipment-exceeds-order",
            "{problem}"
        );
    }
    let (status, problem) = app
        .ship(
            id,
            "not-a-line",
            json!({"lines": [{"sku": "SOCK", "quantity": 1}]}),
        )
        .await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("lines[0].sku")),
        "{problem}"
    );
    assert_eq!(
        shipments(&app, id).await.len(),
        1,
        "nothing written by the refusals"
    );

    let (status, last) = app
        .ship(id, "ship-2", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{last}");
    let last_done = wait_shipment(&app, id, &last, "DONE").await;
    assert_eq!(last_done["final_capture"], true, "{last_done}");
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (&order["status"], &order["payment"]["status"]),
        (&json!("FULFILLED"), &json!("CAPTURED")),
        "{order}"
    );
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["status"], &intent["amount_received"]),
        (&json!("succeeded"), &json!(2300)),
        "{intent}"
    );
    let events = app.events(id).await;
    assert_eq!(
        transitions(&events),
        [
            "->CREATED",
            "CREATED>RESERVED",
            "RESERVED>PAID",
            "PAID>PARTIALLY_FULFILLED",
            "PARTIALLY_FULFILLED>PARTIALLY_FULFILLED",
            "PARTIALLY_FULFILLED>FULFILLED"
        ]
    );
    let shipped: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "order.shipped")
        .map(|e| &e["shipment_id"])
        .collect();
    assert_eq!(
        shipped,
        [&first["id"], &last["id"]],
        "each order.shipped names its shipment"
    );
    assert_eq!(events.last().unwrap()["type"], "order.fulfilled");
    crate::invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

#[tokio::test]
async fn a_shipment_is_refused_for_an_auto_order_a_missing_order_bad_fields_and_a_customer_token() {
    let app = spawn_app().await;
    app.put_sku("EBOOK", 5, 900).await;
    let auto = app.create_order("auto", &[("EBOOK", 1)], "pm_card_visa").await;
    app.wait_terminal(auto).await;
    let (status, problem) = app
        .ship(
            auto,
            "auto-1",
            json!({"lines": [{"sku": "EBOOK", "quantity": 1}]}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("urn:orderflow:problem:order-not-shippable")),
        "{problem}"
    );

    let nobody = Uuid::now_v7();
    let (status, _) = app
        .ship(
            nobody,
            "nobody",
            json!({"lines": [{"sku": "EBOOK", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 404);
    for (body, field) in [
        (json!({"lines": []}), "lines"),
        (
            json!({"lines": [{"sku": "EBOOK", "quantity": 0}]}),
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"sku": "EBOOK", "quantity": 1}], "location": "no place"}),
            "location",
        ),
    ] {
        let (status, problem) = app.ship(auto, "bad", body).await;
        assert_eq!((status, &problem["field"]), (422, &json!(field)), "{problem}");
    }
    let (status, _) = app.ship(auto, "extra", json!({"lines": [], "gift": true})).await;
    assert_eq!(status, 422);
    let no_key = app
        .http
        .post(format!("{}/v1/orders/{auto}/shipments", app.api))
        .json(&json!({"lines": [{"sku": "EBOOK", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);

    // A customer's token reads its order's shipments but ships nothing.
    let token = crate::customer_tokens::token_for(&app, "auto").await;
    let customer = crate::helpers::client_with_key(&token, reqwest::Client::builder());
    let refused = customer
        .post(format!("{}/v1/orders/{auto}/shipments", app.api))
        .header("Idempotency-Key", "mine")
        .json(&json!({"lines": [{"sku": "EBOOK", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let listed = customer
        .get(format!("{}/v1/orders/{auto}/shipments", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(shipments(&app, auto).await.len(), 0);
}

#[tokio::test]
async fn a_capture_the_provider_refuses_fails_the_shipment_and_nothing_ships() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "refused").await;
    // The hold is voided behind OrderFlow's back (as an expired one would be): no capture can succeed.
    let intent = app.intents_of(id).await[0]["id"].as_str().unwrap().to_owned();
    let voided = app
        .http
        .post(format!("{}/v1/payment_intents/{intent}/cancel", app.paysim))
        .send()
        .await
        .unwrap();
    assert!(voided.status().is_success(), "{}", voided.status());

    let (status, shipment) = app
        .ship(id, "doomed", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{shipment}");
    let failed = wait_shipment(&app, id, &shipment, "FAILED").await;
    assert!(
        failed["failure"].as_str().is_some_and(|f| !f.is_empty()),
        "{failed}"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&json!("PAID"), &Value::Null),
        "{order}"
    );
    assert_eq!(order["payment"]["status"], "AUTHORIZED", "nothing captured");
    assert_eq!(
        app.intents_of(id).await.len(),
        1,
        "a hold cancelled before its time did not lapse: it is not authorized again"
    );
    assert_eq!(
        order["error_code"],
        Value::Null,
        "it waits for shipments, held up by nothing: {order}"
    );
    let box_ = app.sku("BOX").await;
    assert_eq!(
        (&box_["on_hand"], &box_["reserved"]),
        (&json!(10), &json!(1)),
        "nothing shipped, still held"
    );
    let events = app.events(id).await;
    let last = events.last().unwrap();
    assert_eq!(
        (&last["type"], &last["shipment_id"]),
        (&json!("order.shipment_failed"), &shipment["id"]),
        "{last}"
    );
    assert_eq!(transitions(&events).last().unwrap(), "PAID>PAID");
}

#[tokio::test]
async fn two_shipments_of_the_same_units_at_once_ship_them_once() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "racing").await;
    let body = json!({"lines": [{"sku": "TAPE", "quantity": 2}]});
    // Both requests wait on the order's row lock, held here, and race for it once it is let go.
    let holder = app.hold_order(id).await;
    let first = tokio::spawn({
        let (http, api, body) = (app.http.clone(), app.api.clone(), body.clone());
        async move { crate::helpers::post_shipment(&http, &api, id, "race-a", body).await }
    });
    let second = tokio::spawn({
        let (http, api) = (app.http.clone(), app.api.clone());
        async move { crate::helpers::post_shipment(&http, &api, id, "race-b", body).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{a:?} {b:?}");
    let (accepted, refused) = if a.0 == 202 { (a.1, b.1) } else { (b.1, a.1) };
    assert_eq!(
        refused["type"], "urn:orderflow:problem:shipment-exceeds-order",
        "{refused}"
    );
    assert_eq!(shipments(&app, id).await.len(), 1);
    wait_shipment(&app, id, &accepted, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(intent["amount_received"], 500, "{intent}");
    assert_eq!(app.sku("TAPE").await["on_hand"], 8);
}

/// Three shipments sent at once, one line each: they run one after another (a ship job is queued only when none
/// runs; the one that runs queues the next), each captures its line, and the last is the final capture.
#[tokio::test]
async fn shipments_sent_at_once_run_one_after_another_and_only_the_last_capture_is_final() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "three-at-once").await;
    let sent =
        futures::future::join_all([("BOX", 1), ("TAPE", 2), ("MUG", 1)].map(|(sku, quantity)| {
            app.ship(id, sku, json!({"lines": [{"sku": sku, "quantity": quantity}]}))
        }))
        .await;
    assert!(sent.iter().all(|(status, _)| *status == 202), "{sent:?}");
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (&order["status"], &order["payment"]["status"]),
        (&json!("FULFILLED"), &json!("CAPTURED")),
        "{order}"
    );
    let all = shipments(&app, id).await;
    assert!(all.iter().all(|s| s["status"] == "DONE"), "{all:?}");
    let finals = all.iter().filter(|s| s["final_capture"] == true).count();
    assert_eq!(finals, 1, "one final capture: {all:?}");
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["status"], &intent["amount_received"]),
        (&json!("succeeded"), &json!(2300)),
        "{intent}"
    );
    let events = app.events(id).await;
    assert_eq!(events.iter().filter(|e| e["type"] == "order.shipped").count(), 3);
    crate::invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// A line held at two locations ships from the one the shipment names first, then in allocation order, split
/// over both when it must; each location's stock drops by exactly what shipped from it.
#[tokio::test]
async fn a_shipment_takes_units_from_the_location_it_names_first_then_in_allocation_order() {
    let app = spawn_app().await;
    let west = app
        .http
        .put(format!("{}/v1/locations/west", app.api))
        .json(&json!({"name": "West warehouse", "priority": 10}))
        .send()
        .await
        .unwrap();
    assert!(west.status().is_success());
    for (location, units) in [("default", 2), ("west", 2)] {
        let (status, _) = put_sku_with(
            &app,
            "LAMP",
            units,
            json!({"location": location, "fulfilment": "shipment"}),
        )
        .await;
        assert!(status == 200 || status == 201);
    }
    let id = app
        .create_order("two-places", &[("LAMP", 4)], "pm_card_visa")
        .await;
    app.wait_paid(id).await;

    let (status, first) = app
        .ship(
            id,
            "west-first",
            json!({"lines": [{"sku": "LAMP", "quantity": 1}], "location": "west"}),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        first["lines"],
        json!([{"sku": "LAMP", "quantity": 1, "location": "west"}])
    );
    wait_shipment(&app, id, &first, "DONE").await;
    let (status, rest) = app
        .ship(id, "the-rest", json!({"lines": [{"sku": "LAMP", "quantity": 3}]}))
        .await;
    assert_eq!(status, 202, "{rest}");
    assert_eq!(
        rest["lines"],
        json!([
            {"sku": "LAMP", "quantity": 2, "location": "default"},
            {"sku": "LAMP", "quantity": 1, "location": "west"}
        ]),
        "allocation order (default first), split over both"
    );
    app.wait_terminal(id).await;
    let lamp = app.sku("LAMP").await;
    let at: Vec<(Value, Value, Value)> = lamp["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["location"].clone(), l["on_hand"].clone(), l["reserved"].clone()))
        .collect();
    assert_eq!(
        at,
        [
            (json!("default"), json!(0), json!(0)),
            (json!("west"), json!(0), json!(0))
        ],
        "{lamp}"
    );
    crate::invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("LAMP", 4)]).await;
}

/// A partly shipped order cancelled: what shipped stays shipped and captured; the units not shipped go back to
/// stock, the rest of the hold is released, and the order ends FULFILLED. Nothing ships after that.
#[tokio::test]
async fn cancelling_a_partly_shipped_order_releases_the_rest_and_keeps_what_shipped() {
    let app = spawn_app().await;
    let id = paid_shipment_order(&app, "changed-mind").await;
    let (status, first) = app
        .ship(
            id,
            "part",
            json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;

    assert_eq!(app.cancel(id).await.status(), 202);
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (&order["status"], &order["payment"]["status"]),
        (&json!("FULFILLED"), &json!("CAPTURED")),
        "{order}"
    );
    assert_eq!(
        order["cancel_reason"],
        Value::Null,
        "fulfilled, not cancelled: {order}"
    );
    // Repeating the cancel of a fulfilled order is the usual 409.
    assert_eq!(app.cancel(id).await.status(), 409);
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (
            &intent["status"],
            &intent["amount_received"],
            &intent["amount_capturable"]
        ),
        (&json!("succeeded"), &json!(1250), &json!(0)),
        "captured what shipped (refundable), released the rest: {intent}"
    );
    // Each line says what shipped and what went back.
    let allocations: Vec<(Value, Value, Value, Value)> = order["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let a = &l["allocations"][0];
            (
                l["sku"].clone(),
                a["shipped"].clone(),
                a["cancelled"].clone(),
                a["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        allocations,
        [
            (json!("BOX"), json!(1), json!(0), json!("COMMITTED")),
            (json!("TAPE"), json!(1), json!(1), json!("COMMITTED")),
            (json!("MUG"), json!(0), json!(1), json!("RELEASED"))
        ],
        "{order}"
    );
    for (sku, on_hand) in [("BOX", 9), ("TAPE", 9), ("MUG", 10)] {
        let now = app.sku(sku).await;
        assert_eq!(
            (&now["on_hand"], &now["reserved"]),
            (&json!(on_hand), &json!(0)),
            "{sku}: {now}"
        );
    }
    let (status, problem) = app
        .ship(id, "too-late", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("urn:orderflow:problem:order-not-shippable")),
        "{problem}"
    );
    assert_eq!(
        transitions(&app.events(id).await),
        [
            "->CREATED",
            "CREATED>RESERVED",
            "RESERVED>PAID",
            "PAID>PARTIALLY_FULFILLED",
            "PARTIALLY_FULFILLED>FULFILLED"
        ]
    );
    // What was captured stays refundable after the rest was released.
    let (status, refund) = app
        .refund(
            id,
            "all-back",
            json!({"amount": 1250, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    app.wait_refund(id, &refund, "DONE").await;
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 1250);
    crate::invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// While the release of the rest waits to run (no worker takes release_rest here), a shipment is refused: the
/// order was cancelled. While a shipment waits to be captured (no worker takes ship), a cancel is refused.
#[tokio::test]
async fn a_cancel_waits_for_a_shipment_on_its_way_and_nothing_ships_once_the_rest_is_cancelled() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings
                .steps
                .retain(|s| *s != orderflow_shared::flow::Step::ReleaseRest)
        },
        ..crate::helpers::Options::default()
    })
    .await;
    let id = paid_shipment_order(&app, "waits").await;
    let (status, first) = app
        .ship(id, "first", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{first}");
    wait_shipment(&app, id, &first, "DONE").await;
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;

    assert_eq!(app.cancel(id).await.status(), 202);
    assert_eq!(
        app.cancel(id).await.status(),
        202,
        "a repeat while it waits is harmless"
    );
    let (status, problem) = app
        .ship(id, "after", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("urn:orderflow:problem:order-not-shippable")),
        "{problem}"
    );
    assert_eq!(app.order(id).await["current_step"], "release_rest");
    assert_eq!(app.sku("MUG").await["reserved"], 1, "not released yet");
    // A refund waits for the release too.
    let (status, problem) = app
        .refund(
            id,
            "while-releasing",
            json!({"amount": 100, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("urn:orderflow:problem:order-releasing")),
        "{problem}"
    );
}

#[tokio::test]
async fn a_cancel_while_a_shipment_is_on_its_way_is_refused() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings
                .steps
                .retain(|s| *s != orderflow_shared::flow::Step::Ship)
        },
        ..crate::helpers::Options::default()
    })
    .await;
    let id = paid_shipment_order(&app, "on-its-way").await;
    let (status, pending) = app
        .ship(id, "pending", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(
        (status, &pending["status"]),
        (202, &json!("PENDING")),
        "{pending}"
    );
    let refused = app.cancel(id).await;
    assert_eq!(refused.status(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:orderflow:problem:order-shipping",
        "{problem}"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["cancel_note"]),
        (&json!("PAID"), &Value::Null),
        "nothing written: {order}"
    );
}
