//! Idempotent order creation: replay, misuse of a key, a key still in flight, no key.

use std::time::Duration;

use serde_json::Value;

use orderflow_shared::api_key::{MAX_RATE, Scope};

use crate::helpers::{client_with_key, create_key, order_body, spawn_app};

/// The API without an in-process worker: orders stay as created.
async fn without_worker() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(crate::helpers::Options {
        worker: false,
        ..Default::default()
    })
    .await
}

async fn order_count(app: &crate::helpers::TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn same_key_and_body_replays_the_first_response() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    let body = order_body("idem", &[("A", 1)], "pm_card_visa");

    let first = app.post_order_with_key(&body, "key-replay").await;
    let (first_status, first_location) = (first.status(), first.headers()["location"].clone());
    let first_body: Value = first.json().await.unwrap();
    let second = app.post_order_with_key(&body, "key-replay").await;

    assert_eq!(first_status, 202);
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["location"], first_location);
    assert_eq!(
        second.json::<Value>().await.unwrap(),
        first_body,
        "the stored body, byte for byte in JSON"
    );
    assert_eq!(order_count(&app).await, 1);
}

#[tokio::test]
async fn same_key_with_another_body_is_rejected() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    let first = app
        .post_order_with_key(&order_body("idem", &[("A", 1)], "pm_card_visa"), "key-reused")
        .await;
    assert_eq!(first.status(), 202);

    let second = app
        .post_order_with_key(&order_body("idem", &[("A", 2)], "pm_card_visa"), "key-reused")
        .await;

    assert_eq!(second.status(), 422);
    let problem: Value = second.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:idempotency-key-reused");
    assert_eq!(order_count(&app).await, 1);
}

#[tokio::test]
async fn same_key_while_the_first_is_in_flight_is_a_conflict() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    fail::cfg("api.create_order.after_lock", "return(key-in-flight)").unwrap();
    let body = order_body("idem", &[("A", 1)], "pm_card_visa");

    let slow = app.post_order_with_key(&body, "key-in-flight");
    let quick = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.post_order_with_key(&body, "key-in-flight").await
    };
    let (first, second) = tokio::join!(slow, quick);
    fail::remove("api.create_order.after_lock");

    assert_eq!(first.status(), 202);
    assert_eq!(second.status(), 409);
    let problem: Value = second.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:idempotency-key-in-flight");
    let again = app.post_order_with_key(&body, "key-in-flight").await;
    assert_eq!(again.status(), 202, "once the first is done, a repeat replays it");
    assert_eq!(order_count(&app).await, 1);
}

#[tokio::test]
async fn many_concurrent_requests_with_one_key_create_one_order() {
    let app = spawn_app().await;
    app.put_sku("A", 50, 1000).await;
    let body = order_body("idem", &[("A", 1)], "pm_card_visa");

    let responses =
        futures::future::join_all((0..20).map(|_| app.post_order_with_key(&body, "key-race"))).await;

    let mut ids = std::collections::HashSet::new();
    for response in responses {
        match response.status().as_u16() {
            202 => {
                ids.insert(
                    response.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "every accepted response names the same order");
    assert_eq!(order_count(&app).await, 1);
}

/// Creation reads a key's record in the same statement that takes its lock, so a request that commits the same
/// key just before the lock is won is not seen by that read. The test plays that other request with a
/// transaction of its own (it writes the key without the API's lock, as such a request has released it): the
/// API's insert of the key waits for it, fails on the key once it commits, and the request replays its record.
#[tokio::test]
async fn a_key_committed_after_the_first_read_is_replayed_not_created_twice() {
    let app = without_worker().await;
    app.put_sku("A", 5, 1000).await;
    let body = order_body("idem", &[("A", 1)], "pm_card_visa");
    let earlier = app
        .post_order_with_key(&order_body("other", &[("A", 1)], "pm_card_visa"), "key-other")
        .await;
    let earlier: Value = earlier.json().await.unwrap();
    let earlier_id: uuid::Uuid = earlier["id"].as_str().unwrap().parse().unwrap();
    let stored = serde_json::json!({"id": earlier_id, "stored": "by the other request"});
    let key = orderflow_shared::api_key::hash(&app.key);
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query(
        "insert into idempotency_keys (caller, key, request_hash, order_id, response_status, response_body) \
         select 'key:' || id, 'key-late', $1, $2, 202, $3 from api_keys where secret_hash = $4",
    )
    .bind(orderflow_shared::idempotency::fingerprint(&body))
    .bind(earlier_id)
    .bind(&stored)
    .bind(key)
    .execute(&mut *other)
    .await
    .unwrap();

    let request = app.post_order_with_key(&body, "key-late");
    let commit_later = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        other.commit().await.unwrap();
    };
    let (response, ()) = tokio::join!(request, commit_later);

    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["location"],
        format!("/v1/orders/{earlier_id}").as_str()
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        stored,
        "the other request's answer"
    );
    assert_eq!(order_count(&app).await, 1, "no second order");
}

/// The creation response is built before the insert (so its idempotency record is written in the same
/// statement): it must be the order exactly as stored.
#[tokio::test]
async fn the_creation_response_is_the_order_as_stored() {
    let app = without_worker().await;
    app.put_sku("A", 5, 1000).await;
    app.put_sku("B", 5, 250).await;

    let response = app
        .post_order_with_key(
            &order_body("asis", &[("A", 1), ("B", 3)], "pm_card_visa"),
            "key-asis",
        )
        .await;
    assert_eq!(response.status(), 202);
    let created: Value = response.json().await.unwrap();
    let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let read = app.order(id).await;

    assert_eq!(created, read, "timestamps included");
    assert_eq!(created["status"], "CREATED");
    assert_eq!(created["total"], 1750);
    assert_eq!(created["current_step"], "reserve");
}

#[tokio::test]
async fn missing_key_is_a_bad_request() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;

    let response = app
        .http
        .post(format!("{}/v1/orders", app.api))
        .json(&order_body("idem", &[("A", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("Idempotency-Key"),
        "{problem}"
    );
    assert_eq!(order_count(&app).await, 0);
}

/// A client that hangs up while its request is inside the database transaction (a failpoint holds it there for
/// a second) does not cut the handler short: it runs detached from the connection, commits, and leaves no pooled
/// connection inside a transaction. (Cut inside `Pool::begin`, sqlx 0.9.0 would leave one holding its locks,
/// launchbadge/sqlx#4393; the chaos test met it as an Idempotency-Key "in flight" for minutes.)
#[tokio::test]
async fn a_client_hanging_up_mid_request_does_not_cut_the_handler_short() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("api.create_order.after_lock", "return(hang-up)").unwrap();
    let app = without_worker().await;
    app.put_sku("H", 10, 100).await;
    let impatient = client_with_key(
        &app.key,
        reqwest::Client::builder().timeout(Duration::from_millis(300)),
    );
    let gave_up = impatient
        .post(format!("{}/v1/orders", app.api))
        .header("Idempotency-Key", "hang-up")
        .json(&order_body("hang-up", &[("H", 1)], "pm_card_visa"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client hung up");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let stored: i64 = sqlx::query_scalar("select count(*) from idempotency_keys where key = 'hang-up'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the handler ran to its commit");
    let open: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() \
         and state like 'idle in transaction%' and pid <> pg_backend_pid()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(open, 0, "no connection left inside a transaction");
    let replay = app
        .http
        .post(format!("{}/v1/orders", app.api))
        .header("Idempotency-Key", "hang-up")
        .json(&order_body("hang-up", &[("H", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202, "the retry gets the first answer");
}

/// POSTs `body` with Idempotency-Key `key` as API key `api_key`; the status and the order id it answers with.
async fn post_as(
    app: &crate::helpers::TestApp,
    api_key: &str,
    key: &str,
    body: &Value,
) -> (u16, Option<String>) {
    let response = app
        .anonymous
        .post(format!("{}/v1/orders", app.api))
        .bearer_auth(api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["id"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn two_callers_may_use_the_same_key_and_each_replays_only_its_own() {
    let app = without_worker().await;
    app.put_sku("A", 10, 1000).await;
    let shop = create_key(&app.pool, &[Scope::OrdersWrite], MAX_RATE).await;
    let app_store = create_key(&app.pool, &[Scope::OrdersWrite], MAX_RATE).await;
    let body = order_body("same", &[("A", 1)], "pm_card_visa");

    let (status, first) = post_as(&app, &shop, "checkout-1", &body).await;
    assert_eq!(status, 202);
    let (status, other) = post_as(&app, &app_store, "checkout-1", &body).await;
    assert_eq!(
        status, 202,
        "another caller's key of the same name is another key"
    );
    assert_ne!(first, other, "two orders");
    let (status, again) = post_as(&app, &shop, "checkout-1", &body).await;
    assert_eq!(
        (status, again),
        (202, first.clone()),
        "the first caller's repeat replays its own order"
    );
    let changed = order_body("same", &[("A", 2)], "pm_card_visa");
    assert_eq!(
        post_as(&app, &app_store, "checkout-1", &changed).await.0,
        422,
        "misuse is per caller too"
    );
    assert_eq!(order_count(&app).await, 2);
}

#[tokio::test]
async fn a_key_past_its_retention_is_purged_and_may_be_used_again() {
    let app = without_worker().await;
    app.put_sku("A", 10, 1000).await;
    let old = app
        .post_order_with_key(&order_body("old", &[("A", 1)], "pm_card_visa"), "reused-tomorrow")
        .await;
    assert_eq!(old.status(), 202);
    let recent = app
        .post_order_with_key(&order_body("new", &[("A", 1)], "pm_card_visa"), "kept")
        .await;
    assert_eq!(recent.status(), 202);
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '25 hours' where key = 'reused-tomorrow'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let retention = orderflow_shared::settings::WorkerSettings::default().idempotency_retention;
    assert_eq!(retention, Duration::from_secs(86_400), "24 h by default");
    let purged = orderflow_shared::idempotency::purge_expired(&app.pool, retention, 100)
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the record past its retention");
    let keys: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["kept"]);
    assert_eq!(order_count(&app).await, 2, "the orders stay");

    let reused = app
        .post_order_with_key(&order_body("old", &[("A", 3)], "pm_card_visa"), "reused-tomorrow")
        .await;
    assert_eq!(
        reused.status(),
        202,
        "another body under the purged key is a new order"
    );
    assert_eq!(order_count(&app).await, 3);
}

/// The worker's reconciler does the purge: a record past the retention goes, a recent one stays.
#[tokio::test]
async fn the_reconciler_purges_keys_past_their_retention() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        worker: false,
        ..crate::helpers::Options::default()
    })
    .await;
    app.put_sku("A", 10, 1000).await;
    for key in ["old", "recent"] {
        let response = app
            .post_order_with_key(&order_body(key, &[("A", 1)], "pm_card_visa"), key)
            .await;
        assert_eq!(response.status(), 202);
    }
    sqlx::query("update idempotency_keys set created_at = now() - interval '2 hours' where key = 'old'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_worker_with(|settings| {
        settings.idempotency_retention = Duration::from_secs(3_600);
        settings.purge_interval = Duration::from_millis(200);
    });
    crate::helpers::eventually(
        "the reconciler to purge the old key",
        Duration::from_secs(15),
        || async {
            let keys: Vec<String> = sqlx::query_scalar("select key from idempotency_keys order by key")
                .fetch_all(&app.pool)
                .await
                .unwrap();
            (keys == ["recent"]).then_some(())
        },
    )
    .await;
}

/// A request that answers without committing (a replay, a refusal) ends its transaction before it answers. A
/// dropped transaction's rollback waits for the pool's own task, and until it runs the key's lock stays taken:
/// the caller's next request with the key, sent at once, was told the first was still in flight (409; seen in
/// CI as `customer_tokens` failing once). Called here without HTTP, on the test's one thread, so that the next
/// request's statement goes out before any other task runs, as it could on a loaded machine.
#[tokio::test]
async fn a_request_that_commits_nothing_lets_go_of_its_key_before_it_answers() {
    use orderflow_shared::idempotency::KeyError;
    use orderflow_shared::inventory::adjustment::{self, Adjusting, AdjustmentRequest};
    use orderflow_shared::order::create::{self, CreateError, Creation};
    use orderflow_shared::order::request::CreateOrderRequest;
    use orderflow_shared::queue::announce::Announcer;

    let app = without_worker().await;
    app.put_sku("A", 10, 1000).await;
    let announcer = Announcer::start(&app.pool);
    let body = order_body("quick", &[("A", 1)], "pm_card_visa");
    let order = serde_json::from_value::<CreateOrderRequest>(body.clone())
        .unwrap()
        .validate()
        .unwrap();
    let fingerprint = orderflow_shared::idempotency::fingerprint(&body);
    let creation = Creation {
        order: &order,
        caller: "test:quick",
        key: "checkout-1",
        fingerprint: &fingerprint,
        trace: orderflow_shared::telemetry::TraceId::random(),
    };
    let respond = |o: &create::NewOrder| Ok(serde_json::json!({"id": o.id}));
    let first = create::create(&app.pool, &announcer, &creation, respond)
        .await
        .unwrap();
    for repeat in 1..=50 {
        let again = create::create(&app.pool, &announcer, &creation, respond)
            .await
            .unwrap_or_else(|e| panic!("repeat {repeat}: {e}"));
        assert!(again.replayed);
        assert_eq!(again.order_id, first.order_id, "repeat {repeat}");
    }
    let other_fingerprint = orderflow_shared::idempotency::fingerprint(&serde_json::json!({"other": 1}));
    let reuse = Creation {
        fingerprint: &other_fingerprint,
        ..creation.clone()
    };
    for attempt in 1..=20 {
        let refused = create::create(&app.pool, &announcer, &reuse, respond).await;
        assert!(
            matches!(refused, Err(CreateError::Key(KeyError::Reused))),
            "reuse {attempt}: {refused:?}"
        );
    }

    // An adjustment of sku A as the API checks it, and its fingerprint.
    let checked = |body: serde_json::Value| {
        let valid = serde_json::from_value::<AdjustmentRequest>(body.clone())
            .unwrap()
            .validate()
            .unwrap();
        (valid, adjustment::fingerprint("A", &body))
    };
    let (valid, fingerprint) = checked(serde_json::json!({"delta": 5, "reason": "delivery PO-1"}));
    let request = Adjusting {
        sku: "A",
        adjustment: &valid,
        caller: "test:quick",
        key: "delivery-1",
        fingerprint: &fingerprint,
    };
    let respond = |a: &adjustment::Adjusted| Ok(serde_json::json!({"id": a.id}));
    let first = adjustment::adjust(&app.pool, &request, respond).await.unwrap();
    for repeat in 1..=50 {
        let again = adjustment::adjust(&app.pool, &request, respond)
            .await
            .unwrap_or_else(|e| panic!("adjustment repeat {repeat}: {e}"));
        assert!(again.replayed);
        assert_eq!(again.body, first.body, "adjustment repeat {repeat}");
    }
    // A refusal stores nothing, and its retry with the key is refused for the same reason, not as in flight.
    let (too_many_valid, too_many_fingerprint) =
        checked(serde_json::json!({"delta": -1_000, "reason": "count correction"}));
    let too_many = Adjusting {
        adjustment: &too_many_valid,
        key: "correction-1",
        fingerprint: &too_many_fingerprint,
        ..request
    };
    for attempt in 1..=20 {
        let refused = adjustment::adjust(&app.pool, &too_many, respond).await;
        assert!(
            matches!(refused, Err(adjustment::AdjustError::BelowReserved { .. })),
            "refusal {attempt}: {refused:?}"
        );
    }
}
