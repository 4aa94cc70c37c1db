//! Stock held at several locations: a line is allocated by the documented policy (one location that can serve it,
//! first in allocation order; else split over the fewest), the reservation records where, and commit and release
//! act on exactly those locations; no location oversells under concurrency; transfers move units as a pair of
//! movements.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, order_body, spawn_app, spawn_app_without_worker};
use crate::invariants;

async fn put_location(app: &TestApp, code: &str, priority: i64) {
    let response = app
        .http
        .put(format!("{}/v1/locations/{code}", app.api))
        .json(&json!({"name": format!("{code} warehouse"), "priority": priority}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Sets the sku's `on_hand` at `location`.
async fn put_stock_at(app: &TestApp, sku: &str, location: &str, on_hand: i64) -> reqwest::Response {
    app.http
        .put(format!("{}/v1/skus/{sku}", app.api))
        .json(&json!({"on_hand": on_hand, "price": 100, "currency": "USD", "location": location}))
        .send()
        .await
        .unwrap()
}

/// (location, on_hand, reserved) of each location of the sku, as the API shows them.
async fn levels(app: &TestApp, sku: &str) -> Vec<(String, i64, i64)> {
    let body = app.sku(sku).await;
    body["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["location"].as_str().unwrap().to_owned(),
                l["on_hand"].as_i64().unwrap(),
                l["reserved"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn at(levels: &[(&str, i64, i64)]) -> Vec<(String, i64, i64)> {
    levels.iter().map(|(l, o, r)| ((*l).to_owned(), *o, *r)).collect()
}

/// (location, quantity, status) of the order's reservations of `sku`.
async fn held(app: &TestApp, id: Uuid, sku: &str) -> Vec<(String, i64, String)> {
    sqlx::query_as(
        "select location, quantity, status from reservations where order_id = $1 and sku = $2 order by location",
    )
    .bind(id)
    .bind(sku)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn transfer(app: &TestApp, sku: &str, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/skus/{sku}/transfers", app.api))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_line_is_allocated_by_the_policy_and_commit_and_release_act_on_those_locations() {
    let app = spawn_app().await;
    put_location(&app, "east", 10).await;
    put_location(&app, "west", 20).await;
    assert_eq!(
        put_stock_at(&app, "A", "east", 2).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(put_stock_at(&app, "A", "west", 5).await.status(), StatusCode::OK);
    // In allocation order: default (priority 0) first, then east and west.
    let codes: Vec<Value> = app.get_json(&format!("{}/v1/locations", app.api)).await["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["code"].clone())
        .collect();
    assert_eq!(codes, [json!("default"), json!("east"), json!("west")]);

    // 3 units: east cannot serve them alone, west can: all from west.
    let one = app.create_order("alloc", &[("A", 3)], "pm_card_visa").await;
    app.wait_for(one, &["FULFILLED"], Duration::from_secs(30)).await;
    assert_eq!(
        held(&app, one, "A").await,
        vec![("west".to_owned(), 3, "COMMITTED".to_owned())]
    );
    assert_eq!(levels(&app, "A").await, at(&[("east", 2, 0), ("west", 2, 0)]));

    // 4 units: no location alone; split over two, the larger first (a tie: allocation order), the rest from the
    // first that can serve it. Declined: released at exactly those locations.
    let two = app
        .create_order("alloc", &[("A", 4)], "pm_card_chargeDeclined")
        .await;
    app.wait_for(two, &["CANCELLED"], Duration::from_secs(30)).await;
    assert_eq!(
        held(&app, two, "A").await,
        vec![
            ("east".to_owned(), 2, "RELEASED".to_owned()),
            ("west".to_owned(), 2, "RELEASED".to_owned())
        ]
    );
    assert_eq!(levels(&app, "A").await, at(&[("east", 2, 0), ("west", 2, 0)]));

    // The order's view shows its line's allocation and what became of it.
    let view = app.order(two).await;
    assert_eq!(
        view["lines"][0]["allocations"],
        json!([
            {"location": "east", "quantity": 2, "status": "RELEASED"},
            {"location": "west", "quantity": 2, "status": "RELEASED"}
        ]),
        "{view}"
    );
    // The same split, committed: both locations give their units.
    let three = app.create_order("alloc", &[("A", 4)], "pm_card_visa").await;
    app.wait_for(three, &["FULFILLED"], Duration::from_secs(30)).await;
    assert_eq!(levels(&app, "A").await, at(&[("east", 0, 0), ("west", 0, 0)]));
    let sku = app.sku("A").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["available"].as_i64()),
        (Some(0), Some(0))
    );

    // The movements say where: per location, they add up to its stock.
    let movements = app.get_json(&format!("{}/v1/skus/A/movements", app.api)).await;
    let mut commits: Vec<(String, i64)> = movements["movements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == "order_commit")
        .map(|m| {
            (
                m["location"].as_str().unwrap().to_owned(),
                m["on_hand_delta"].as_i64().unwrap(),
            )
        })
        .collect();
    commits.sort();
    assert_eq!(
        commits,
        [
            ("east".to_owned(), -2),
            ("west".to_owned(), -3),
            ("west".to_owned(), -2)
        ]
    );
    let ended = invariants::ended_orders(&app.pool).await;
    invariants::ledger_adds_up(&app.pool, &ended).await;
}

#[tokio::test]
async fn a_hundred_orders_for_the_last_unit_at_each_of_two_locations_sell_exactly_two() {
    let app = spawn_app().await;
    put_location(&app, "east", 10).await;
    put_location(&app, "west", 20).await;
    put_stock_at(&app, "Q", "east", 1).await;
    put_stock_at(&app, "Q", "west", 1).await;
    let bodies: Vec<Value> = (0..100)
        .map(|n| order_body(&format!("c{n}"), &[("Q", 1)], "pm_card_visa"))
        .collect();
    let ids = app.create_orders(&bodies).await;
    let mut fulfilled = 0;
    for id in &ids {
        let order = app.wait_terminal(*id).await;
        if order["status"] == "FULFILLED" {
            fulfilled += 1;
        } else {
            assert_eq!(order["cancel_reason"], "out_of_stock", "{order}");
        }
    }
    assert_eq!(fulfilled, 2, "one unit at each location, no more");
    assert_eq!(levels(&app, "Q").await, at(&[("east", 0, 0), ("west", 0, 0)]));
    let oversold: i64 =
        sqlx::query_scalar("select count(*) from stock_levels where on_hand < 0 or reserved > on_hand")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(oversold, 0);
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("Q", 2)]).await;
}

#[tokio::test]
async fn multi_line_orders_in_opposite_order_across_locations_do_not_deadlock() {
    let app = spawn_app().await;
    put_location(&app, "east", 10).await;
    put_location(&app, "west", 20).await;
    for sku in ["X", "Y"] {
        put_stock_at(&app, sku, "east", 15).await;
        put_stock_at(&app, sku, "west", 15).await;
    }
    // Each order takes 2 of each sku; some lines must split over the two locations as stock runs down.
    let bodies: Vec<Value> = (0..20)
        .map(|n| match n % 2 {
            0 => order_body(&format!("c{n}"), &[("X", 2), ("Y", 2)], "pm_card_visa"),
            _ => order_body(&format!("c{n}"), &[("Y", 2), ("X", 2)], "pm_card_visa"),
        })
        .collect();
    let ids = app.create_orders(&bodies).await;
    for id in &ids {
        app.wait_terminal(*id).await;
    }
    let orders = invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("X", 30), ("Y", 30)]).await;
    // A deadlock would be retried by the step's next attempt and the orders would still end: none may be met.
    let deadlocked: i64 =
        sqlx::query_scalar("select count(*) from saga_steps where error ilike '%deadlock%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(deadlocked, 0, "a step attempt met a deadlock");
    let fulfilled = orders.values().filter(|o| o.status == "FULFILLED").count();
    assert_eq!(fulfilled, 15, "30 units of each, 2 per order");
}

#[tokio::test]
async fn a_transfer_moves_units_as_a_pair_of_movements_and_counts_once() {
    let app = spawn_app_without_worker().await;
    put_location(&app, "east", 10).await;
    put_location(&app, "west", 20).await;
    put_stock_at(&app, "T", "east", 5).await;
    let body = json!({"from": "east", "to": "west", "quantity": 3, "reason": "rebalance"});
    let first = transfer(&app, "T", "move-1", &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let answer: Value = first.json().await.unwrap();
    assert_eq!(
        (
            answer["from"].as_str(),
            answer["to"].as_str(),
            answer["quantity"].as_i64()
        ),
        (Some("east"), Some("west"), Some(3))
    );
    let again = transfer(&app, "T", "move-1", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        answer,
        "a repeat replays the first answer"
    );
    assert_eq!(levels(&app, "T").await, at(&[("east", 2, 0), ("west", 3, 0)]));
    assert_eq!(
        app.sku("T").await["on_hand"],
        5,
        "a transfer moves units, it adds none"
    );

    let movements = app.get_json(&format!("{}/v1/skus/T/movements", app.api)).await;
    let legs: Vec<(String, i64, Value)> = movements["movements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == "transfer")
        .map(|m| {
            (
                m["location"].as_str().unwrap().to_owned(),
                m["on_hand_delta"].as_i64().unwrap(),
                m["adjustment_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        legs,
        [
            ("east".to_owned(), -3, answer["id"].clone()),
            ("west".to_owned(), 3, answer["id"].clone())
        ]
    );

    // From a location with fewer free units than it moves: 409 naming the numbers, nothing written.
    let id = app.create_order("held", &[("T", 2)], "pm_card_visa").await;
    let mut conn = app.pool.acquire().await.unwrap();
    orderflow_shared::inventory::reserve_many(&mut conn, &[(id, vec![("T".to_owned(), 2)])])
        .await
        .unwrap();
    assert_eq!(
        levels(&app, "T").await,
        at(&[("east", 2, 2), ("west", 3, 0)]),
        "east holds the order"
    );
    let refused = transfer(
        &app,
        "T",
        "move-2",
        &json!({"from": "east", "to": "west", "quantity": 1, "reason": "x"}),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:stock-below-reserved");
    assert!(
        problem["detail"].as_str().unwrap().contains("at east"),
        "{problem}"
    );
    for (body, field) in [
        (
            json!({"from": "east", "to": "mars", "quantity": 1, "reason": "x"}),
            "to",
        ),
        (
            json!({"from": "east", "to": "east", "quantity": 1, "reason": "x"}),
            "to",
        ),
        (
            json!({"from": "east", "to": "west", "quantity": 0, "reason": "x"}),
            "quantity",
        ),
    ] {
        let response = transfer(&app, "T", "move-3", &body).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["field"], field, "{body}");
    }
    assert_eq!(
        levels(&app, "T").await,
        at(&[("east", 2, 2), ("west", 3, 0)]),
        "nothing written"
    );
    // And a set or an adjustment at a location that is not one.
    let response = put_stock_at(&app, "T", "mars", 1).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.json::<Value>().await.unwrap()["field"], "location");
}

#[tokio::test]
async fn drift_is_reported_per_location_and_for_a_skus_totals() {
    let app = spawn_app_without_worker().await;
    put_location(&app, "east", 10).await;
    put_stock_at(&app, "D", "east", 4).await;
    put_stock_at(&app, "D", "default", 1).await;
    assert_eq!(app.admin_json("/admin/v1/stock/drift").await["drift"], json!([]));

    // A location's stock changed without its movement (and the sku's total with it, as a bypass would).
    sqlx::query("update stock_levels set on_hand = on_hand + 2 where sku = 'D' and location = 'east'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update skus set on_hand = on_hand + 2 where sku = 'D'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.admin_json("/admin/v1/stock/drift").await["drift"],
        json!([{"sku": "D", "location": "east", "on_hand": 6, "reserved": 0, "ledger_on_hand": 4, "ledger_reserved": 0}])
    );
    // A sku's total changed alone (what a process from before locations would do): its row disagrees with its
    // locations' sum.
    sqlx::query("update skus set on_hand = on_hand + 1 where sku = 'D'")
        .execute(&app.pool)
        .await
        .unwrap();
    let drift = app.admin_json("/admin/v1/stock/drift").await["drift"].clone();
    let drift = drift.as_array().unwrap();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(
        drift.contains(&json!({"sku": "D", "location": "*", "on_hand": 8, "reserved": 0, "ledger_on_hand": 7, "ledger_reserved": 0})),
        "{drift:?}"
    );
}
