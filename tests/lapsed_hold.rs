//! The lapsed hold (issue 18, part 7): a shipment after the order's authorization lapsed authorizes what is left to
//! capture again and captures from the new hold; refunds then draw on both intents, each within what it captured;
//! a declined re-authorization fails the shipment with its reason kept for operators, and a cancel releases the
//! rest; the reconciler reads when waiting holds lapse and counts those that lapse soon.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::shipment::{paid_shipment_order, wait_shipment};

/// The order's intents at the simulator as `(status, amount, received, capturable, refunded)`, oldest first.
async fn money_at_provider(app: &TestApp, id: Uuid) -> Vec<(String, i64, i64, i64, i64)> {
    app.intents_of(id)
        .await
        .iter()
        .map(|i| {
            (
                i["status"].as_str().unwrap().to_owned(),
                i["amount"].as_i64().unwrap(),
                i["amount_received"].as_i64().unwrap(),
                i["amount_capturable"].as_i64().unwrap(),
                i["amount_refunded"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, i64, i64, i64, i64)]) -> Vec<(String, i64, i64, i64, i64)> {
    rows.iter()
        .map(|(s, a, r, c, f)| ((*s).to_owned(), *a, *r, *c, *f))
        .collect()
}

#[tokio::test]
async fn a_shipment_after_the_hold_lapsed_authorizes_what_is_left_and_refunds_draw_on_both_holds() {
    let app = spawn_app().await;
    // BOX 1,000 + TAPE 2 × 250 + MUG 800 = 2,300.
    let id = paid_shipment_order(&app, "lapsed-then-shipped").await;
    let (status, first) = app
        .ship(id, "box", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{first}");
    wait_shipment(&app, id, &first, "DONE").await;
    let old = app.intents_of(id).await[0].clone();
    app.lapse(old["id"].as_str().unwrap()).await;

    // The capture finds the hold gone: what is left (1,300) is authorized again and the tape is captured from it.
    let (status, second) = app
        .ship(id, "tape", json!({"lines": [{"sku": "TAPE", "quantity": 2}]}))
        .await;
    assert_eq!(status, 202, "{second}");
    let done = wait_shipment(&app, id, &second, "DONE").await;
    assert_eq!(done["amount"], 500, "{done}");
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| {
            o["payment"]["status"] == "PARTIALLY_CAPTURED" && o["payment"]["authorization"] == 2
        })
        .await;
    let payment = &order["payment"];
    assert_eq!(
        (
            &order["status"],
            &payment["amount"],
            &payment["captured"],
            &payment["replaces"]
        ),
        (
            &json!("PARTIALLY_FULFILLED"),
            &json!(1300),
            &json!(1500),
            &old["id"]
        ),
        "{order}"
    );
    assert_ne!(payment["provider_ref"], old["id"], "{order}");
    assert_eq!(
        money_at_provider(&app, id).await,
        owned(&[
            ("succeeded", 2300, 1000, 0, 0),
            ("requires_capture", 1300, 500, 800, 0)
        ]),
        "the old hold keeps what it captured; the new one holds what is left"
    );
    let money = app.refunds(id).await;
    assert_eq!(money["refundable"], 1500, "captured on both intents: {money}");

    // A refund of 1,200 spans both: all the first intent captured, then 200 of the second.
    let (status, refund) = app
        .refund(
            id,
            "back-1",
            json!({"amount": 1200, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    app.wait_refund(id, &refund, "DONE").await;
    assert_eq!(
        money_at_provider(&app, id).await,
        owned(&[
            ("succeeded", 2300, 1000, 0, 1000),
            ("requires_capture", 1300, 500, 800, 200)
        ]),
        "each intent gave back at most what it captured, the oldest first"
    );

    // The last shipment is the final capture, from the new hold.
    let (status, last) = app
        .ship(id, "mug", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{last}");
    let done = wait_shipment(&app, id, &last, "DONE").await;
    assert_eq!(done["final_capture"], true, "{done}");
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (
            &order["status"],
            &order["payment"]["status"],
            &order["payment"]["captured"],
            &order["payment"]["refunded"]
        ),
        (
            &json!("FULFILLED"),
            &json!("CAPTURED"),
            &json!(2300),
            &json!(1200)
        ),
        "{order}"
    );
    // The rest refunded: what is left on each intent, nothing more.
    let (status, rest) = app
        .refund(
            id,
            "back-2",
            json!({"amount": 1100, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{rest}");
    app.wait_refund(id, &rest, "DONE").await;
    assert_eq!(
        money_at_provider(&app, id).await,
        owned(&[
            ("succeeded", 2300, 1000, 0, 1000),
            ("succeeded", 1300, 1300, 0, 1300)
        ])
    );
    let (status, over) = app
        .refund(
            id,
            "back-3",
            json!({"amount": 1, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(
        (status, &over["type"]),
        (409, &json!("urn:orderflow:problem:refund-exceeds-captured")),
        "{over}"
    );
    assert_eq!(app.events_of(id, "order.shipped").await.len(), 3);
    for (sku, on_hand) in [("BOX", 9), ("TAPE", 8), ("MUG", 9)] {
        let row = app.sku(sku).await;
        assert_eq!(
            (row["on_hand"].as_i64(), row["reserved"].as_i64()),
            (Some(on_hand), Some(0)),
            "{sku}"
        );
    }
    let refunds = app.refunds(id).await;
    let parts: Vec<(&str, i64)> = refunds["refunds"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["payment_intent"].as_str().unwrap(),
                p["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    let new = order["payment"]["provider_ref"].as_str().unwrap();
    assert_eq!(
        parts,
        vec![(old["id"].as_str().unwrap(), 1000), (new, 200)],
        "{refunds}"
    );
    crate::invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10)],
    )
    .await;
}

#[tokio::test]
async fn a_declined_reauthorization_fails_the_shipment_for_operators_and_a_cancel_releases_the_rest() {
    let app = spawn_app().await;
    app.put_shipment_sku("BOX", 10, 1000).await;
    app.put_shipment_sku("MUG", 10, 800).await;
    let id = app
        .create_order(
            "card-expired",
            &[("BOX", 1), ("MUG", 1)],
            "pm_sim_reauth_declined",
        )
        .await;
    app.wait_paid(id).await;
    let (status, first) = app
        .ship(id, "box", json!({"lines": [{"sku": "BOX", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{first}");
    wait_shipment(&app, id, &first, "DONE").await;
    let old = app.intents_of(id).await[0].clone();
    app.lapse(old["id"].as_str().unwrap()).await;

    let (status, second) = app
        .ship(id, "mug", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{second}");
    let failed = wait_shipment(&app, id, &second, "FAILED").await;
    let why = "authorization lapsed; re-authorization declined: card_declined";
    assert_eq!(failed["failure"], why, "{failed}");
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| o["current_step"].is_null())
        .await;
    let payment = &order["payment"];
    assert_eq!(
        (
            &order["status"],
            &payment["status"],
            &payment["authorization"],
            &payment["decline_code"],
            &payment["replaces"],
            &payment["captured"]
        ),
        (
            &json!("PARTIALLY_FULFILLED"),
            &json!("DECLINED"),
            &json!(2),
            &json!("card_declined"),
            &old["id"],
            &json!(1000)
        ),
        "the order stays where it was, its payment says why: {order}"
    );
    assert_eq!(
        app.sku("MUG").await["reserved"],
        1,
        "the unit stays held for the operator"
    );
    // Operators find it by its reason.
    let listed = app
        .admin_json("/admin/v1/sagas?error=authorization%20lapsed")
        .await;
    let ids: Vec<&str> = listed["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.to_string().as_str()], "{listed}");
    let failed_event = app.events_of(id, "order.shipment_failed").await.remove(0);
    assert_eq!(failed_event["shipment_id"], second["id"], "{failed_event}");

    // The warehouse tries again: a new authorization (the third), declined as well.
    let (status, third) = app
        .ship(id, "mug-again", json!({"lines": [{"sku": "MUG", "quantity": 1}]}))
        .await;
    assert_eq!(status, 202, "{third}");
    wait_shipment(&app, id, &third, "FAILED").await;
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| {
            o["payment"]["authorization"] == 3 && o["current_step"].is_null()
        })
        .await;
    assert_eq!(order["payment"]["status"], "DECLINED", "{order}");

    // The reconciler counts it among the orders an operator must see to.
    let found = orderflow_worker::reconciler::check_holds(&app.runner("holds"))
        .await
        .unwrap();
    assert_eq!(found.declined, 1);

    // Cancelling releases the mug; no hold is open anywhere, and the box's 1,000 stays captured.
    let cancel = app.cancel(id).await;
    assert!(cancel.status().is_success(), "{}", cancel.status());
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (&order["status"], &order["payment"]["captured"]),
        (&json!("FULFILLED"), &json!(1000)),
        "{order}"
    );
    let mug = app.sku("MUG").await;
    assert_eq!(
        (mug["on_hand"].as_i64(), mug["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let intents = money_at_provider(&app, id).await;
    assert_eq!(
        intents[0],
        ("succeeded".to_owned(), 1800, 1000, 0, 0),
        "{intents:?}"
    );
    assert!(
        intents.iter().all(|i| i.0 != "requires_capture"),
        "no hold left open: {intents:?}"
    );
    assert_eq!(intents.len(), 3, "two declined re-authorizations: {intents:?}");
    assert_eq!(
        order["payment"]["status"], "CAPTURED",
        "what shipped is all it takes: {order}"
    );
    let found = orderflow_worker::reconciler::check_holds(&app.runner("holds"))
        .await
        .unwrap();
    assert_eq!(found, Default::default(), "nothing waits any more");
    crate::invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("BOX", 10), ("MUG", 10)]).await;
}

#[tokio::test]
async fn the_reconciler_reads_when_waiting_holds_lapse_and_counts_those_that_lapse_soon() {
    let app = spawn_app().await;
    let waiting = paid_shipment_order(&app, "waits-long").await;
    app.put_sku("DIGITAL", 10, 500).await;
    let auto = app
        .create_order("auto-one", &[("DIGITAL", 1)], "pm_card_visa")
        .await;
    app.wait_terminal(auto).await;

    // The simulator's holds last seven days: a warning of eight covers the waiting order's, one of a day none.
    let mut runner = app.runner("holds");
    runner.settings.hold_warning = Duration::from_secs(8 * 86_400);
    let found = orderflow_worker::reconciler::check_holds(&runner).await.unwrap();
    assert_eq!(
        (found.expiring, found.declined),
        (1, 0),
        "the waiting order's hold; not the auto order's"
    );
    let order = app.order(waiting).await;
    let intent = &app.intents_of(waiting).await[0];
    let charge = app
        .get_json(&format!(
            "{}/v1/charges/{}",
            app.paysim,
            intent["latest_charge"].as_str().unwrap()
        ))
        .await;
    let lapses = chrono::DateTime::from_timestamp(
        charge["payment_method_details"]["card"]["capture_before"]
            .as_i64()
            .unwrap(),
        0,
    )
    .unwrap();
    let read: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(order["payment"]["capture_before"].clone()).unwrap();
    assert_eq!(read, lapses, "{order}");
    assert!(
        app.order(auto).await["payment"]["capture_before"].is_null(),
        "an auto order's hold is not read"
    );

    runner.settings.hold_warning = Duration::from_secs(86_400);
    let found = orderflow_worker::reconciler::check_holds(&runner).await.unwrap();
    assert_eq!(found.expiring, 0, "seven days off: no warning yet");

    // Once nothing waits, nothing is counted.
    let (status, all) = app
        .ship(
            waiting,
            "all",
            json!({"lines": [{"sku": "BOX", "quantity": 1}, {"sku": "TAPE", "quantity": 2},
                             {"sku": "MUG", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 202, "{all}");
    wait_shipment(&app, waiting, &all, "DONE").await;
    app.wait_terminal(waiting).await;
    runner.settings.hold_warning = Duration::from_secs(8 * 86_400);
    let found = orderflow_worker::reconciler::check_holds(&runner).await.unwrap();
    assert_eq!(found.expiring, 0, "a shipped order's hold is done with");
    crate::invariants::all_hold(
        &app.pool,
        &app.http,
        &app.paysim,
        &[("BOX", 10), ("TAPE", 10), ("MUG", 10), ("DIGITAL", 10)],
    )
    .await;
}
