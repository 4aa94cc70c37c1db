//! The stock ledger and adjustments: every change of a sku's stock is a movement that adds up to its counts, a
//! relative adjustment under an Idempotency-Key counts once however often it is sent, and drift (a change made
//! without its movement) is reported by the reconciler's check, its metric and the admin view.

use std::time::Duration;

use futures::future::join_all;
use orderflow_shared::api_key::Scope;
use orderflow_shared::inventory;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Options, TestApp, client_with_key, create_key, eventually, spawn_app, spawn_app_with,
    spawn_app_without_worker,
};

/// `POST /v1/skus/{sku}/adjustments` with `key` as its Idempotency-Key.
async fn adjust(app: &TestApp, sku: &str, key: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(format!("{}/v1/skus/{sku}/adjustments", app.api))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Every movement of `sku`, walking the pages `limit` at a time.
async fn all_movements(app: &TestApp, sku: &str, limit: usize) -> Vec<Value> {
    let mut movements = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(cursor) => format!("?limit={limit}&after={cursor}"),
            None => format!("?limit={limit}"),
        };
        let response = app.api_get(&format!("/v1/skus/{sku}/movements{query}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.unwrap();
        let items = page["movements"].as_array().unwrap();
        assert!(items.len() <= limit);
        movements.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => return movements,
        }
    }
}

/// (reason, on_hand delta, reserved delta) of each movement.
fn moves(movements: &[Value]) -> Vec<(String, i64, i64)> {
    movements
        .iter()
        .map(|m| {
            (
                m["reason"].as_str().unwrap().to_owned(),
                m["on_hand_delta"].as_i64().unwrap(),
                m["reserved_delta"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_change_of_stock_is_a_movement_and_the_movements_add_up_to_the_counts() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    let sold = app.create_order("ledger", &[("A", 2)], "pm_card_visa").await;
    app.wait_for(sold, &["FULFILLED"], Duration::from_secs(30)).await;
    let declined = app
        .create_order("ledger", &[("A", 3)], "pm_card_chargeDeclined")
        .await;
    app.wait_for(declined, &["CANCELLED"], Duration::from_secs(30))
        .await;
    let delivery = adjust(
        &app,
        "A",
        "delivery-1",
        &json!({"delta": 5, "reason": "delivery PO-1"}),
    )
    .await;
    assert_eq!(delivery.status(), StatusCode::CREATED);
    let adjustment: Value = delivery.json().await.unwrap();
    app.put_sku("A", 20, 1000).await;

    let movements = all_movements(&app, "A", 100).await;
    let expected = [
        ("stock_count", 10, 0),
        ("order_reserve", 0, 2),
        ("order_commit", -2, -2),
        ("order_reserve", 0, 3),
        ("order_release", 0, -3),
        ("adjustment", 5, 0),
        ("stock_count", 7, 0),
    ];
    assert_eq!(
        moves(&movements),
        expected.map(|(r, o, h)| (r.to_owned(), o, h)).to_vec()
    );
    let order_of = |i: usize| {
        movements[i]["order_id"]
            .as_str()
            .map(|s| s.parse::<Uuid>().unwrap())
    };
    assert_eq!([order_of(1), order_of(2)], [Some(sold), Some(sold)]);
    assert_eq!([order_of(3), order_of(4)], [Some(declined), Some(declined)]);
    assert_eq!(movements[1]["actor"], "saga");
    assert_eq!(movements[5]["adjustment_id"], adjustment["id"]);
    assert!(movements[5]["actor"].as_str().unwrap().starts_with("key:"));
    let ids: Vec<i64> = movements.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");

    let stock = app.sku("A").await;
    let on_hand: i64 = movements
        .iter()
        .map(|m| m["on_hand_delta"].as_i64().unwrap())
        .sum();
    let reserved: i64 = movements
        .iter()
        .map(|m| m["reserved_delta"].as_i64().unwrap())
        .sum();
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(on_hand), Some(reserved))
    );
    assert_eq!(on_hand, 20);
    assert_eq!(app.admin_json("/admin/v1/stock/drift").await["drift"], json!([]));
}

#[tokio::test]
async fn movements_page_on_a_cursor_and_are_never_changed() {
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 1, 1000).await;
    for n in 1..=6 {
        let response = adjust(
            &app,
            "A",
            &format!("k{n}"),
            &json!({"delta": n, "reason": "delivery"}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let whole = all_movements(&app, "A", 500).await;
    assert_eq!(whole.len(), 7);
    assert_eq!(
        all_movements(&app, "A", 2).await,
        whole,
        "pages of two walk the same movements"
    );
    // A page from the last cursor holds what came since: nothing, then the next movement.
    let last = whole.last().unwrap()["id"].as_i64().unwrap();
    let since = app
        .get_json(&format!("{}/v1/skus/A/movements?after={last}", app.api))
        .await;
    assert_eq!(since["movements"], json!([]));
    assert_eq!(since["next_cursor"], Value::Null);
    adjust(&app, "A", "k7", &json!({"delta": -1, "reason": "broken"})).await;
    let since = app
        .get_json(&format!("{}/v1/skus/A/movements?after={last}", app.api))
        .await;
    assert_eq!(
        moves(since["movements"].as_array().unwrap()),
        vec![("adjustment".to_owned(), -1, 0)]
    );

    for (query, field) in [
        ("?after=x", "after"),
        ("?after=-1", "after"),
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
    ] {
        let response = app.api_get(&format!("/v1/skus/A/movements{query}")).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(response.json::<Value>().await.unwrap()["field"], field, "{query}");
    }
    assert_eq!(
        app.api_get("/v1/skus/nope/movements").await.status(),
        StatusCode::NOT_FOUND
    );

    // Append-only: the database refuses to change or delete a movement, whoever asks.
    for statement in [
        "update stock_movements set on_hand_delta = 100",
        "delete from stock_movements",
        "truncate stock_movements",
    ] {
        let refused = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
        assert!(
            refused.to_string().contains("append-only"),
            "{statement}: {refused}"
        );
    }
    assert_eq!(all_movements(&app, "A", 500).await.len(), 8);
}

#[tokio::test]
async fn a_delivery_retried_with_its_key_beside_concurrent_orders_counts_once() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    let delivery = json!({"delta": 5, "reason": "delivery PO-7"});
    // Eight orders and three sends of one delivery at once (a client retrying a send whose answer it lost),
    // then two more sends once the first has committed.
    let bodies: Vec<Value> = (0..8)
        .map(|n| crate::helpers::order_body(&format!("c{n}"), &[("A", 1)], "pm_card_visa"))
        .collect();
    let orders = join_all(bodies.iter().map(|body| app.post_order(body)));
    let sends = join_all((0..3).map(|_| adjust(&app, "A", "delivery-7", &delivery)));
    let (orders, sends) = tokio::join!(orders, sends);
    let mut ids = Vec::new();
    for response in orders {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    let mut answers = Vec::new();
    for response in sends {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        match status {
            StatusCode::CREATED => answers.push(body),
            StatusCode::CONFLICT => {
                assert_eq!(body["type"], "urn:orderflow:problem:idempotency-key-in-flight")
            }
            other => panic!("a send of the delivery: {other} {body}"),
        }
    }
    for _ in 0..2 {
        let again = adjust(&app, "A", "delivery-7", &delivery).await;
        assert_eq!(again.status(), StatusCode::CREATED);
        answers.push(again.json().await.unwrap());
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every answer is the first one: {answers:?}"
    );
    for id in ids {
        app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;
    }

    let stock = app.sku("A").await;
    assert_eq!(
        (stock["on_hand"].as_i64(), stock["reserved"].as_i64()),
        (Some(10 + 5 - 8), Some(0))
    );
    let adjustments: i64 = sqlx::query_scalar("select count(*) from stock_adjustments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(adjustments, 1, "one delivery, however often it was sent");
    let ended = crate::invariants::ended_orders(&app.pool).await;
    crate::invariants::ledger_adds_up(&app.pool, &ended).await;
}

#[tokio::test]
async fn an_adjustment_below_the_reserved_units_is_refused_naming_the_numbers() {
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 5, 1000).await;
    // An order holds 4 units (its reservation made by the reserve step's own function; no worker runs on).
    let id = app.create_order("held", &[("A", 4)], "pm_card_visa").await;
    let mut conn = app.pool.acquire().await.unwrap();
    inventory::reserve_many(&mut conn, &[(id, vec![("A".to_owned(), 4)])])
        .await
        .unwrap();
    let before = all_movements(&app, "A", 100).await;

    let refused = adjust(&app, "A", "breakage", &json!({"delta": -2, "reason": "broken"})).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:stock-below-reserved");
    let detail = problem["detail"].as_str().unwrap();
    for number in ["on_hand 5", "-2", "would be 3", "4 units reserved"] {
        assert!(detail.contains(number), "{number:?} in {detail:?}");
    }
    assert_eq!(all_movements(&app, "A", 100).await, before, "nothing written");
    assert_eq!(app.sku("A").await["on_hand"], 5);
    // Refused requests are not stored: the key may be sent again, with what fits.
    let fits = adjust(&app, "A", "breakage", &json!({"delta": -1, "reason": "broken"})).await;
    assert_eq!(fits.status(), StatusCode::CREATED);
    let body: Value = fits.json().await.unwrap();
    assert_eq!(
        (
            body["stock"]["on_hand"].as_i64(),
            body["stock"]["available"].as_i64()
        ),
        (Some(4), Some(0))
    );
    let too_many = adjust(
        &app,
        "A",
        "too-many",
        &json!({"delta": 1_000_000_000, "reason": "typo"}),
    )
    .await;
    assert_eq!(too_many.status(), StatusCode::CONFLICT);
    assert_eq!(
        too_many.json::<Value>().await.unwrap()["type"],
        "urn:orderflow:problem:stock-above-maximum"
    );
}

#[tokio::test]
async fn an_adjustment_key_is_the_callers_and_means_one_request() {
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 5, 1000).await;
    app.put_sku("B", 5, 1000).await;
    let body = json!({"delta": 1, "reason": "delivery"});
    assert_eq!(adjust(&app, "A", "k", &body).await.status(), StatusCode::CREATED);

    let reused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            response.json::<Value>().await.unwrap()["type"],
            "urn:orderflow:problem:idempotency-key-reused"
        );
    };
    // Another body, another sku, or an order with the key: another request.
    reused(adjust(&app, "A", "k", &json!({"delta": 2, "reason": "delivery"})).await).await;
    reused(adjust(&app, "B", "k", &body).await).await;
    reused(
        app.post_order_with_key(&crate::helpers::order_body("c", &[("A", 1)], "pm_card_visa"), "k")
            .await,
    )
    .await;
    // And an order's key is not an adjustment's.
    assert_eq!(
        app.post_order_with_key(&crate::helpers::order_body("c", &[("A", 1)], "pm_card_visa"), "o")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    reused(adjust(&app, "A", "o", &body).await).await;

    // Another caller's key of the same name is its own.
    let other = client_with_key(
        &create_key(&app.pool, &[Scope::CatalogWrite, Scope::CatalogRead], 100).await,
        reqwest::Client::builder(),
    );
    let theirs = other
        .post(format!("{}/v1/skus/A/adjustments", app.api))
        .header("Idempotency-Key", "k")
        .json(&json!({"delta": 3, "reason": "delivery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert_eq!(app.sku("A").await["on_hand"], 5 + 1 + 3);

    // What is refused before anything is written.
    let cases = [
        (
            "A",
            Some("k2"),
            json!({"delta": 0, "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "A",
            Some("k2"),
            json!({"delta": 1, "reason": "x", "location": "paris"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "A",
            Some("k2"),
            json!({"delta": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "A",
            Some("k2"),
            json!({"delta": 1, "reason": "x", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "A",
            None,
            json!({"delta": 1, "reason": "x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "nope",
            Some("k2"),
            json!({"delta": 1, "reason": "x"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "bad sku!",
            Some("k2"),
            json!({"delta": 1, "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (sku, key, body, status) in cases {
        let mut request = app
            .http
            .post(format!("{}/v1/skus/{sku}/adjustments", app.api))
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{sku} {body}");
    }
    assert_eq!(
        app.sku("A").await["on_hand"],
        9,
        "nothing written by the refused ones"
    );
}

/// While a request holds its Idempotency-Key (its transaction-scoped lock on the key, held here by the test's
/// own transaction, the very lock an adjustment takes first), a second request with the key is 409 in flight and
/// writes nothing; once the first lets go, the key is free and the adjustment is made once.
#[tokio::test]
async fn an_adjustment_whose_key_is_in_flight_is_409_and_writes_nothing() {
    let app = spawn_app_without_worker().await;
    app.put_sku("A", 5, 1000).await;
    let body = json!({"delta": 2, "reason": "delivery"});
    // The caller's scope of keys, as the API records it.
    assert_eq!(
        adjust(&app, "A", "first", &body).await.status(),
        StatusCode::CREATED
    );
    let caller: String = sqlx::query_scalar("select caller from idempotency_keys where key = 'first'")
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let mut holder = app.pool.begin().await.unwrap();
    let held: bool = sqlx::query_scalar(
        "select pg_try_advisory_xact_lock(\
             hashtextextended('orderflow.idempotency:' || char_length($1) || ':' || $1 || ':' || $2, 0))",
    )
    .bind(&caller)
    .bind("busy")
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    assert!(held);
    for _ in 0..3 {
        let response = adjust(&app, "A", "busy", &body).await;
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            response.json::<Value>().await.unwrap()["type"],
            "urn:orderflow:problem:idempotency-key-in-flight"
        );
    }
    assert_eq!(
        app.sku("A").await["on_hand"],
        7,
        "nothing written while in flight"
    );
    holder.rollback().await.unwrap();

    let made = adjust(&app, "A", "busy", &body).await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let replayed = adjust(&app, "A", "busy", &body).await;
    assert_eq!(replayed.status(), StatusCode::CREATED);
    assert_eq!(app.sku("A").await["on_hand"], 9, "made once");
    let records: i64 = sqlx::query_scalar("select count(*) from stock_adjustments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(records, 2);
}

#[tokio::test]
async fn a_change_made_without_its_movement_is_reported_as_drift() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.put_sku("A", 5, 1000).await;
    app.put_sku("B", 5, 1000).await;
    app.start_worker_with(|settings| settings.ledger_check_interval = Duration::from_millis(200));
    assert_eq!(app.admin_json("/admin/v1/stock/drift").await["drift"], json!([]));

    // A unit appears on the sku's total without a movement or a location (what a process from before the ledger,
    // or a hand-written UPDATE, does): the total is not its locations' sum.
    sqlx::query("update skus set on_hand = on_hand + 1 where sku = 'B'")
        .execute(&app.pool)
        .await
        .unwrap();
    let report = app.admin_json("/admin/v1/stock/drift").await;
    assert_eq!(
        report["drift"],
        json!([{"sku": "B", "location": "*", "on_hand": 6, "reserved": 0, "ledger_on_hand": 5, "ledger_reserved": 0}])
    );
    eventually(
        "the reconciler's gauge counts the drifting sku",
        Duration::from_secs(10),
        || async {
            let metrics = app.api_get("/metrics").await.text().await.unwrap();
            metrics
                .lines()
                .any(|line| line == "orderflow_stock_ledger_drift 1")
                .then_some(())
        },
    )
    .await;

    // Undone by hand, the ledger adds up again.
    sqlx::query("update skus set on_hand = on_hand - 1 where sku = 'B'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.admin_json("/admin/v1/stock/drift").await["drift"], json!([]));
    eventually("the gauge is back to 0", Duration::from_secs(10), || async {
        let metrics = app.api_get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .any(|line| line == "orderflow_stock_ledger_drift 0")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_database_takes_exactly_the_reasons_the_code_knows() {
    let app = spawn_app_without_worker().await;
    let check: String = sqlx::query_scalar(
        "select pg_get_constraintdef(oid) from pg_constraint where conname = 'stock_movements_reason_valid'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let mut named: Vec<&str> = check.split('\'').skip(1).step_by(2).collect();
    let mut known: Vec<&str> = orderflow_shared::inventory::ledger::MovementReason::ALL
        .iter()
        .map(|reason| reason.as_str())
        .collect();
    named.sort_unstable();
    known.sort_unstable();
    assert_eq!(named, known, "{check}");
}
