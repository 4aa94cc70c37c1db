//! One trace per order: the API takes the caller's `traceparent` (or starts a trace), stores it with the order
//! and every saga job carries it, so the worker's JSON log lines for the order's steps carry the same trace id.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Options, order_body, spawn_app_with, spawn_process};

#[tokio::test]
async fn the_callers_trace_id_follows_the_order_into_every_step_of_the_worker() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("T", 5, 100).await;
    let log = std::env::temp_dir().join(format!("orderflow-trace-{}.log", uuid::Uuid::new_v4().simple()));
    let _worker = spawn_process(
        "orderflow-worker",
        &app.database_url,
        &[
            ("ORDERFLOW_PAYMENTS_URL", &app.paysim),
            ("ORDERFLOW_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,sqlx=warn,apalis=warn"),
        ],
        Some(&log),
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .http
        .post(format!("{}/v1/orders", app.api))
        .header("Idempotency-Key", "traced")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&order_body("traced", &[("T", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let echoed = response.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(echoed.starts_with(&format!("00-{trace}-")), "{echoed}");
    let id: uuid::Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let _ = std::fs::remove_file(&log);
    for step in ["reserve", "pay", "commit", "fulfil"] {
        let traced = lines.iter().any(|line| {
            line["spans"].as_array().is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s["trace_id"] == trace && s["step"] == step && s["order_id"] == id.to_string())
            })
        });
        assert!(traced, "no {step} log line carries trace {trace}");
    }

    // Without a traceparent the API starts a trace of its own and says which.
    let response = app
        .http
        .post(format!("{}/v1/orders", app.api))
        .header("Idempotency-Key", "untraced")
        .json(&order_body("untraced", &[("T", 1)], "pm_card_visa"))
        .send()
        .await
        .unwrap();
    let header = response.headers()["traceparent"].to_str().unwrap().to_owned();
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored: String = sqlx::query_scalar("select trace_id from orders where id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(header.split('-').nth(1), Some(stored.as_str()));
}
