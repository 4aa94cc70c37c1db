//! Returns (issue 18): delivered units that came back, restocked (ledger movements `order_return`) or written
//! off, with the refund of their value following in the same saga unless declined; never more than delivered.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, post_return, problem_type, spawn_app};
use crate::invariants;
use crate::shipment::{paid_shipment_order, wait_shipment};

/// The sku's `order_return` movements for the order.
async fn returned_movements(app: &TestApp, sku: &str, id: Uuid) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select location, on_hand_delta from stock_movements \
         where sku = $1 and order_id = $2 and reason = 'order_return' order by id",
    )
    .bind(sku)
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// A shipment order (BOX 1,000, TAPE 2 × 250, MUG 800) whose BOX and two TAPE shipped: 1,500 captured.
async fn partly_shipped(app: &TestApp, customer: &str) -> Uuid {
    let id = paid_shipment_order(app, customer).await;
    let (status, shipment) = app
        .ship(
            id,
            "ship-1",
            json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 2}]}),
        )
        .await;
    assert_eq!(status, 202, "{shipment}");
    wait_shipment(app, id, &shipment, "DONE").await;
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;
    id
}

#[tokio::test]
async fn a_restocked_return_puts_its_units_back_and_its_refund_follows() {
    let app = spawn_app().await;
    let id = partly_shipped(&app, "returns").await;
    assert_eq!(app.sku("TAPE").await["on_hand"], 8);

    let body = json!({"lines": [{"sku": "TAPE", "quantity": 1}], "restock": true, "note": "unopened"});
    let (status, answer) = app.return_units(id, "tape-back", body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let made = &answer["return"];
    assert_eq!(
        (&made["restock"], &made["lines"], &made["refund_declined"]),
        (
            &json!(true),
            &json!([{"sku": "TAPE", "quantity": 1, "location": "default"}]),
            &json!(false)
        ),
        "{answer}"
    );
    assert_eq!(
        (&answer["refund"]["amount"], &answer["refund"]["status"]),
        (&json!(250), &json!("PENDING")),
        "its refund follows: {answer}"
    );
    assert_eq!(made["refund_id"], answer["refund"]["id"]);
    let (status, again) = app.return_units(id, "tape-back", body).await;
    assert_eq!(
        (status, &again),
        (201, &answer),
        "the same key replays the return"
    );

    // Back in stock, as a movement of the order.
    assert_eq!(app.sku("TAPE").await["on_hand"], 9);
    assert_eq!(
        returned_movements(&app, "TAPE", id).await,
        vec![("default".to_owned(), 1)]
    );
    app.wait_refund(id, &answer["refund"], "DONE").await;
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 250);
    let returned = app.events_of(id, "order.returned").await;
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(
        (&returned[0]["from"], &returned[0]["to"]),
        (&json!("PARTIALLY_FULFILLED"), &json!("PARTIALLY_FULFILLED"))
    );

    // No more than was delivered and not returned: one TAPE left, MUG not shipped.
    let (status, problem) = app
        .return_units(
            id,
            "tapes",
            json!({"lines": [{"sku": "TAPE", "quantity": 2}], "restock": true}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("return-exceeds-delivered")),
        "{problem}"
    );
    let (status, problem) = app
        .return_units(
            id,
            "mug",
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "restock": true}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("return-exceeds-delivered")),
        "{problem}"
    );
    let listed = app.get_json(&format!("{}/v1/orders/{id}/returns", app.api)).await;
    assert_eq!(listed["returns"].as_array().unwrap().len(), 1, "{listed}");

    // The rest ships; the order ends with stock and money exact.
    let (status, last) = app
        .ship(id, "ship-2", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{last}");
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// Written off (no restock): nothing moves in stock. Declined (`"refund": false`): no refund. A unit refunded by
/// line before it came back is not refunded again.
#[tokio::test]
async fn a_return_written_off_moves_no_stock_and_a_declined_or_refunded_one_refunds_nothing_more() {
    let app = spawn_app().await;
    let id = partly_shipped(&app, "written-off").await;
    let box_before = app.sku("BOX").await["on_hand"].clone();

    let (status, answer) = app
        .return_units(
            id,
            "box-broken",
            json!({"lines": [{"sku": "BOX", "quantity": 1}], "restock": false, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["return"]["restock"], false);
    assert_eq!(app.sku("BOX").await["on_hand"], box_before, "nothing restocked");
    assert!(returned_movements(&app, "BOX", id).await.is_empty());
    app.wait_refund(id, &answer["refund"], "DONE").await;

    let (status, declined) = app
        .return_units(
            id,
            "tape-kept",
            json!({"lines": [{"sku": "TAPE", "quantity": 1}], "restock": true, "refund": false}),
        )
        .await;
    assert_eq!(status, 201, "{declined}");
    assert_eq!(
        (
            &declined["return"]["refund_declined"],
            &declined["return"]["refund_id"],
            &declined["refund"]
        ),
        (&json!(true), &Value::Null, &Value::Null),
        "{declined}"
    );
    assert_eq!(
        returned_movements(&app, "TAPE", id).await,
        vec![("default".to_owned(), 1)],
        "restocked without a refund"
    );

    // Both TAPEs are refunded by line; then the second comes back: its return refunds nothing more.
    let (status, by_line) = app
        .refund(
            id,
            "tape-refund",
            json!({"lines": [{"sku": "TAPE", "quantity": 2}], "reason": "duplicate"}),
        )
        .await;
    assert_eq!(status, 202, "{by_line}");
    app.wait_refund(id, &by_line, "DONE").await;
    let (status, after) = app
        .return_units(
            id,
            "tape-late",
            json!({"lines": [{"sku": "TAPE", "quantity": 1}], "restock": true}),
        )
        .await;
    assert_eq!(status, 201, "{after}");
    assert_eq!(after["refund"], Value::Null, "already refunded by line: {after}");
    // Refunded: the BOX (1,000) with its return, the two TAPEs (500) by line: all of the 1,500 captured.
    let money = app.refunds(id).await;
    assert_eq!(
        (&money["captured"], &money["refunded"]),
        (&json!(1500), &json!(1500)),
        "{money}"
    );
    assert_eq!(app.cancel(id).await.status(), 202, "cancel the MUG");
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// An auto order's units go back where they were taken from, or to the location named; checks and refusals.
#[tokio::test]
async fn an_auto_orders_return_goes_to_the_location_named_and_bad_requests_are_refused() {
    let app = spawn_app().await;
    app.put_sku("GIFT", 10, 1000).await;
    let store = app
        .http
        .put(format!("{}/v1/locations/store-1", app.api))
        .json(&json!({"name": "Store 1"}))
        .send()
        .await
        .unwrap();
    assert!(store.status().is_success());
    let id = app
        .create_order("auto-return", &[("GIFT", 3)], "pm_card_visa")
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");

    let reason = json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": true});
    let invalid = [
        (json!({"lines": [{"sku": "GIFT", "quantity": 1}]}), "restock"),
        (json!({"lines": [], "restock": true}), "lines"),
        (
            json!({"lines": [{"sku": "NOPE", "quantity": 1}], "restock": true}),
            "lines[0].sku",
        ),
        (
            json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": true, "location": "nowhere"}),
            "location",
        ),
        (
            json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": true, "reason": "broken"}),
            "reason",
        ),
        (
            json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": false, "location": "store-1"}),
            "location",
        ),
    ];
    for (n, (body, field)) in invalid.into_iter().enumerate() {
        let (status, problem) = app.return_units(id, &format!("bad-{n}"), body.clone()).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some(field)),
            "{body}: {problem}"
        );
    }
    let (status, _) = app.return_units(Uuid::now_v7(), "nobody", reason.clone()).await;
    assert_eq!(status, 404);
    let cancelled = app
        .create_order("auto-return", &[("GIFT", 1)], "pm_card_decline")
        .await;
    app.wait_terminal(cancelled).await;
    let (status, problem) = app.return_units(cancelled, "cancelled", reason.clone()).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("order-not-returnable")),
        "{problem}"
    );
    let token = crate::customer_tokens::token_for(&app, "auto-return").await;
    let customer = crate::helpers::client_with_key(&token, reqwest::Client::builder());
    let (status, _) = post_return(&customer, &app.api, id, "mine", reason.clone()).await;
    assert_eq!(status, 403);
    // A warehouse's key (fulfilment:write alone) records returns, but their refund is customer service's.
    let warehouse = crate::helpers::client_with_key(
        &crate::helpers::create_key(
            &app.pool,
            &[
                orderflow_shared::api_key::Scope::FulfilmentWrite,
                orderflow_shared::api_key::Scope::OrdersRead,
            ],
            100,
        )
        .await,
        reqwest::Client::builder(),
    );
    let (status, problem) = post_return(&warehouse, &app.api, id, "warehouse", reason.clone()).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("refunds:write"),
        "{problem}"
    );
    let written: i64 = sqlx::query_scalar("select count(*) from returns")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(written, 0, "no refused request wrote a return");

    let (status, default) = app.return_units(id, "to-default", reason).await;
    assert_eq!(status, 201, "{default}");
    assert_eq!(
        default["return"]["lines"][0]["location"], "default",
        "where it came from"
    );
    let (status, named) = app
        .return_units(
            id,
            "to-store",
            json!({"lines": [{"sku": "GIFT", "quantity": 2}], "restock": true, "location": "store-1"}),
        )
        .await;
    assert_eq!(status, 201, "{named}");
    assert_eq!(
        returned_movements(&app, "GIFT", id).await,
        vec![("default".to_owned(), 1), ("store-1".to_owned(), 2)]
    );
    app.wait_refund(id, &named["refund"], "DONE").await;
    app.wait_refund(id, &default["refund"], "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (&intent["amount_received"], &intent["amount_refunded"]),
        (&json!(3000), &json!(3000)),
        "{intent}"
    );
    // With its scope alone the warehouse records a return without its refund; here all 3 came back already.
    let (_, problem) = post_return(
        &warehouse,
        &app.api,
        id,
        "warehouse-none",
        json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": true, "refund": false}),
    )
    .await;
    assert_eq!(
        problem["type"],
        problem_type("return-exceeds-delivered"),
        "{problem}"
    );
    let (status, problem) = app
        .return_units(
            id,
            "more",
            json!({"lines": [{"sku": "GIFT", "quantity": 1}], "restock": true}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("return-exceeds-delivered")),
        "{problem}"
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("GIFT", 10)]).await;
}

/// A return lands while another step is the order's (the app's worker runs everything but refund, so a refund is
/// the order's step): the return keeps that step and its job, and its own refund waits and runs after it. Then,
/// with everything refunded by amount, a return whose refund does not fit is refused whole: nothing restocked.
#[tokio::test]
async fn a_return_keeps_the_step_that_runs_and_a_refused_refund_undoes_the_whole_return() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        tune: |settings| {
            settings
                .steps
                .retain(|s| *s != orderflow_shared::flow::Step::Refund)
        },
        ..crate::helpers::Options::default()
    })
    .await;
    let id = partly_shipped(&app, "keeps-step").await;
    let (status, first) = app
        .refund(
            id,
            "part",
            json!({"amount": 100, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    let step_and_job = || async {
        sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "select current_step, job_id from orders where id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = step_and_job().await;
    assert_eq!(before.0.as_deref(), Some("refund"));

    let (status, answer) = app
        .return_units(
            id,
            "box-back",
            json!({"lines": [{"sku": "BOX", "quantity": 1}], "restock": true}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        step_and_job().await,
        before,
        "the return kept the order's step and its job"
    );
    assert_eq!(app.sku("BOX").await["on_hand"], 10, "restocked");

    let _refunds = crate::helpers::spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    app.wait_refund(id, &first, "DONE").await;
    app.wait_refund(id, &answer["refund"], "DONE").await;
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 1100);

    // The 400 left is refunded by amount; a TAPE's return with its refund (250) no longer fits.
    let (status, rest) = app
        .refund(
            id,
            "rest",
            json!({"amount": 400, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{rest}");
    app.wait_refund(id, &rest, "DONE").await;
    let (status, problem) = app
        .return_units(
            id,
            "tape-back",
            json!({"lines": [{"sku": "TAPE", "quantity": 1}], "restock": true}),
        )
        .await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &problem_type("refund-exceeds-captured")),
        "{problem}"
    );
    assert_eq!(app.sku("TAPE").await["on_hand"], 8, "nothing restocked");
    assert!(returned_movements(&app, "TAPE", id).await.is_empty());
    let listed = app.get_json(&format!("{}/v1/orders/{id}/returns", app.api)).await;
    assert_eq!(listed["returns"].as_array().unwrap().len(), 1, "{listed}");
    // Declined, the same return goes through.
    let (status, declined) = app
        .return_units(
            id,
            "tape-back-2",
            json!({"lines": [{"sku": "TAPE", "quantity": 1}], "restock": true, "refund": false}),
        )
        .await;
    assert_eq!(status, 201, "{declined}");
    assert_eq!(app.sku("TAPE").await["on_hand"], 9);
    assert_eq!(app.cancel(id).await.status(), 202, "cancel the MUG");
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
    invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

/// Two returns of the same last units, sent while the order's lock is held so that both are in before either is
/// decided: one is recorded, the other refused, and the units come back once.
#[tokio::test]
async fn two_returns_of_the_same_units_at_once_take_them_back_once() {
    let app = spawn_app().await;
    let id = partly_shipped(&app, "two-returns").await;
    let holder = app.hold_order(id).await;
    let send = |key: &'static str| {
        let (http, api) = (app.http.clone(), app.api.clone());
        tokio::spawn(async move {
            let body = json!({"lines": [{"sku": "TAPE", "quantity": 2}], "restock": true});
            post_return(&http, &api, id, key, body).await
        })
    };
    let (a, b) = (send("first"), send("second"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.rollback().await.unwrap();
    let mut answers = vec![a.await.unwrap(), b.await.unwrap()];
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(
        answers.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![201, 409],
        "{answers:?}"
    );
    assert_eq!(answers[1].1["type"], problem_type("return-exceeds-delivered"));
    assert_eq!(app.sku("TAPE").await["on_hand"], 10, "both units back, once");
    assert_eq!(
        returned_movements(&app, "TAPE", id).await,
        vec![("default".to_owned(), 2)]
    );
    app.wait_refund(id, &answers[0].1["refund"], "DONE").await;
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 500);
}
