//! Admission under load: past the saga backlog bound the API refuses new orders at once (503 problem+json with
//! `Retry-After`), writes nothing for them and counts them; the same Idempotency-Key is taken once a worker has
//! drained the backlog.

use std::time::Duration;

use orderflow_shared::admission::AdmissionSettings;
use serde_json::Value;

use crate::helpers::{Options, TestApp, eventually, order_body, spawn_app_with};

/// What `GET /admin/v1/queues` says of admission.
async fn admission(app: &TestApp) -> Value {
    app.admin_json("/admin/v1/queues").await["admission"].clone()
}

#[tokio::test]
async fn past_the_backlog_bound_orders_are_refused_with_nothing_written_and_the_same_key_is_taken_after_the_drain()
 {
    let app = spawn_app_with(Options {
        worker: false,
        admission: AdmissionSettings {
            max_backlog: Some(Duration::from_millis(300)),
            refresh: Duration::from_millis(50),
        },
        ..Options::default()
    })
    .await;
    app.put_sku("adm-tee", 10, 1500).await;
    // Arrange: an order no worker takes, so its first step's job waits past the bound.
    let waiting = app
        .create_order("adm-first", &[("adm-tee", 1)], "pm_card_visa")
        .await;
    eventually("admission to refuse", Duration::from_secs(10), || async {
        let view = admission(&app).await;
        (view["refusing"] == true).then_some(())
    })
    .await;

    // Act: a new order while the backlog is past the bound.
    let body = order_body("adm-second", &[("adm-tee", 2)], "pm_card_visa");
    let refused = app.post_order_with_key(&body, "adm-second-key").await;

    // Assert: 503, a problem naming the backlog, Retry-After in whole seconds; nothing written for it.
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:overloaded");
    assert!(
        problem["detail"].as_str().unwrap().contains("backlog"),
        "{problem}"
    );
    let (orders, keys): (i64, i64) = sqlx::query_as(
        "select (select count(*) from orders where customer_id = 'adm-second'), \
                (select count(*) from idempotency_keys where key = 'adm-second-key')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((orders, keys), (0, 0), "a refused order leaves nothing behind");
    let view = admission(&app).await;
    assert!(view["refused"].as_u64().unwrap() >= 1, "{view}");
    assert!(view["backlog_seconds"].as_f64().unwrap() > 0.3, "{view}");
    assert_eq!(view["max_backlog_seconds"], 0.3);
    let metrics = app.api_get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("orderflow_orders_refused_total{reason=\"saga_backlog\"}")),
        "the refusal is counted"
    );

    // A worker drains the backlog; then the same key is taken and its order runs to its end.
    app.start_worker();
    app.wait_for(waiting, &["FULFILLED"], Duration::from_secs(30))
        .await;
    eventually("admission to admit again", Duration::from_secs(10), || async {
        let view = admission(&app).await;
        (view["refusing"] == false).then_some(())
    })
    .await;
    let taken = app.post_order_with_key(&body, "adm-second-key").await;
    assert_eq!(taken.status(), 202);
    let order: Value = taken.json().await.unwrap();
    let id = order["id"].as_str().unwrap().parse().unwrap();
    app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;
    assert_eq!(app.sku("adm-tee").await["on_hand"], 7);
}

#[tokio::test]
async fn jobs_a_worker_holds_and_has_not_started_count_in_the_backlog() {
    // A worker that holds up to 8 jobs a queue and runs at most 2 batches at once: the jobs beyond those 2
    // batches wait in its hands, claimed (so not at any queue's head) and not started.
    let app = spawn_app_with(Options {
        tune: |settings| {
            settings.concurrency = 8;
            settings.fetch_size = 8;
            settings.step_batch = 2;
        },
        admission: AdmissionSettings {
            max_backlog: Some(Duration::from_millis(300)),
            refresh: Duration::from_millis(50),
        },
        ..Options::default()
    })
    .await;
    app.put_sku("held-tee", 100, 1500).await;

    // Act: 8 orders at once whose payments take the simulator's slow path (2 s each): 2 batches pay, the
    // other orders wait for a batch slot.
    let bodies: Vec<Value> = (0..8)
        .map(|n| order_body(&format!("held-{n}"), &[("held-tee", 1)], "pm_sim_slow"))
        .collect();
    let orders = app.create_orders(&bodies).await;

    // Assert: admission refuses while no queue has a job waiting in it, only in the worker's hands.
    let seen = eventually(
        "a refusal from held jobs alone",
        Duration::from_secs(20),
        || async {
            let queues = app.admin_json("/admin/v1/queues").await;
            let queues_list = queues["queues"].as_array().unwrap();
            let heads_empty = queues_list.iter().all(|queue| queue["pending"] == 0);
            let pay_claimed = queues_list
                .iter()
                .find(|queue| queue["queue"] == "orderflow.pay")
                .map(|queue| queue["running"].as_i64().unwrap())
                .unwrap();
            (queues["admission"]["refusing"] == true && heads_empty && pay_claimed > 4).then_some(queues)
        },
    )
    .await;
    assert!(
        seen["admission"]["backlog_seconds"].as_f64().unwrap() > 0.3,
        "{seen}"
    );
    let refused = app
        .post_order(&order_body("held-refused", &[("held-tee", 1)], "pm_card_visa"))
        .await;
    assert_eq!(refused.status(), 503, "a new order meets the held jobs' wait");

    // Once the held jobs have run, nothing waits and orders are taken again.
    for id in orders {
        app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;
    }
    eventually("admission to admit again", Duration::from_secs(10), || async {
        let view = admission(&app).await;
        (view["refusing"] == false && view["backlog_seconds"] == 0.0).then_some(())
    })
    .await;
    let taken = app
        .post_order_with_key(
            &order_body("held-after", &[("held-tee", 1)], "pm_card_visa"),
            "held-after-key",
        )
        .await;
    assert_eq!(taken.status(), 202);
}

#[tokio::test]
async fn a_report_counts_for_a_second_and_the_reports_of_workers_long_gone_are_deleted() {
    let app = spawn_app_with(Options {
        worker: false,
        admission: AdmissionSettings {
            max_backlog: Some(Duration::from_millis(300)),
            refresh: Duration::from_millis(50),
        },
        ..Options::default()
    })
    .await;
    let report = |worker: &'static str, seconds: f64, age_seconds: f64| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(
                "insert into worker_waits (worker, queue, wait_seconds, reported_at) \
                 values ($1, 'orderflow.commit', $2, now() - make_interval(secs => $3)) \
                 on conflict (worker, queue) do update \
                 set wait_seconds = excluded.wait_seconds, reported_at = excluded.reported_at",
            )
            .bind(worker)
            .bind(seconds)
            .bind(age_seconds)
            .execute(&pool)
            .await
            .unwrap();
        }
    };

    // A worker reports a commit job that has waited 5 s in its hands: new orders are refused.
    report("w-fresh", 5.0, 0.0).await;
    eventually(
        "admission to refuse on a report",
        Duration::from_secs(10),
        || async {
            let view = admission(&app).await;
            (view["refusing"] == true).then_some(())
        },
    )
    .await;
    // The same report two seconds old (its worker stopped reporting) counts no more.
    report("w-fresh", 5.0, 2.0).await;
    eventually("admission to admit again", Duration::from_secs(10), || async {
        let view = admission(&app).await;
        (view["refusing"] == false && view["backlog_seconds"] == 0.0).then_some(())
    })
    .await;

    // The reconciler's cleanup deletes the reports a minute old, and only those.
    report("w-gone", 5.0, 120.0).await;
    let deleted = orderflow_shared::admission::forget_stale_reports(&app.pool)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let left: Vec<String> = sqlx::query_scalar("select worker from worker_waits order by worker")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, ["w-fresh"]);
}
