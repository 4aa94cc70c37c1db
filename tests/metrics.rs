//! `/metrics`: Prometheus text with HTTP latency by route and status, step durations by outcome, compensations
//! by reason, queue depth and age, stuck sagas and the outbox; and the worker process's own endpoint.

use std::time::Duration;

use crate::helpers::{Options, eventually, free_port, spawn_app, spawn_app_with, spawn_worker_process};

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(page: &str, prefix: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_cover_http_steps_compensations_queues_stuck_sagas_and_the_outbox() {
    let app = spawn_app().await;
    app.put_sku("M", 10, 100).await;
    let paid = app.create_order("m1", &[("M", 1)], "pm_card_visa").await;
    let declined = app
        .create_order("m2", &[("M", 1)], "pm_card_chargeDeclined")
        .await;
    app.wait_terminal(paid).await;
    app.wait_terminal(declined).await;

    let response = app.api_get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let page = response.text().await.unwrap();

    let posted = sample(
        &page,
        r#"orderflow_http_request_duration_seconds_count{method="POST",route="/v1/orders",status="202"}"#,
    );
    assert_eq!(posted, Some(2.0), "{page}");
    assert!(page.contains(r#"orderflow_http_request_duration_seconds_bucket{method="PUT",route="/v1/skus/{sku}",status="201",le="0.005"}"#));
    assert!(page.contains("# TYPE orderflow_http_request_duration_seconds histogram"));
    assert_eq!(
        sample(
            &page,
            r#"orderflow_saga_step_duration_seconds_count{step="fulfil",outcome="ok"}"#
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &page,
            r#"orderflow_saga_step_duration_seconds_count{step="pay",outcome="ok"}"#
        ) >= Some(2.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"orderflow_compensations_total{reason="payment_declined"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"orderflow_queue_jobs{queue="orderflow.reserve",state="pending"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &page,
            r#"orderflow_queue_oldest_pending_seconds{queue="orderflow.pay"}"#
        ),
        Some(0.0)
    );
    assert_eq!(sample(&page, "orderflow_stuck_sagas "), Some(0.0));
    assert_eq!(
        sample(&page, "orderflow_outbox_unpublished_events "),
        Some(8.0),
        "4 + 4 events, no relay here"
    );
    assert!(page.contains("# HELP orderflow_outbox_lag_seconds"));
}

#[tokio::test]
async fn stuck_sagas_and_waiting_jobs_show_in_the_gauges() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("W", 10, 100).await;
    for i in 0..3 {
        app.create_order(&format!("w{i}"), &[("W", 1)], "pm_card_visa")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let page = app.api_get("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(
            &page,
            r#"orderflow_queue_jobs{queue="orderflow.reserve",state="pending"}"#
        ),
        Some(3.0)
    );
    assert!(
        sample(
            &page,
            r#"orderflow_queue_oldest_pending_seconds{queue="orderflow.reserve"}"#
        ) >= Some(1.0)
    );
    assert_eq!(
        sample(&page, "orderflow_stuck_sagas "),
        Some(3.0),
        "the test threshold is 1 s"
    );
}

#[tokio::test]
async fn a_worker_process_serves_its_own_metrics() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("P", 10, 100).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let _worker = spawn_worker_process(
        &app.database_url,
        &[
            ("ORDERFLOW_PAYMENTS_URL", &app.paysim),
            ("ORDERFLOW_WORKER_METRICS_ADDR", &addr),
        ],
    );
    let id = app.create_order("p1", &[("P", 1)], "pm_card_visa").await;
    app.wait_terminal(id).await;

    let page = eventually("the worker's metrics", Duration::from_secs(10), || async {
        let response = app.http.get(format!("http://{addr}/metrics")).send().await.ok()?;
        response.text().await.ok()
    })
    .await;
    assert_eq!(
        sample(
            &page,
            r#"orderflow_saga_step_duration_seconds_count{step="commit",outcome="ok"}"#
        ),
        Some(1.0),
        "{page}"
    );
}
