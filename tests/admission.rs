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
