//! PostgreSQL goes away and comes back, under the real API and worker processes: the API answers 503 problems
//! meanwhile, the worker backs off, and both carry on by themselves afterwards, with nothing accepted lost.
//! Runs on a private cluster, since it crashes the server.

use std::time::Duration;

use orderflow_shared::pgcluster::PrivateCluster;
use serde_json::{Value, json};

use crate::helpers::{eventually, free_port, keyed_client, order_body, spawn_process};
use crate::invariants;

async fn post_order(
    http: &reqwest::Client,
    api: &str,
    key: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{api}/v1/orders"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
}

async fn status_of(http: &reqwest::Client, api: &str, id: &str) -> Option<String> {
    let response = http.get(format!("{api}/v1/orders/{id}")).send().await.ok()?;
    let order: Value = response.json().await.ok()?;
    order["status"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn during_a_database_outage_the_api_answers_503_and_everything_recovers_by_itself() {
    let cluster = PrivateCluster::start().unwrap();
    let url = cluster.url();
    let logs = tempdir();
    let sim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paysim = format!("http://{}", sim.local_addr().unwrap());
    tokio::spawn(orderflow_paysim::run(
        sim,
        Default::default(),
        std::future::pending(),
    ));
    let addr = format!("127.0.0.1:{}", free_port());
    let api = format!("http://{addr}");
    let mut api_process = spawn_process("orderflow-api", &url, &[("ORDERFLOW_API_ADDR", &addr)], None);
    let worker_log = logs.join("worker.log");
    let mut worker = spawn_process(
        "orderflow-worker",
        &url,
        &[
            ("ORDERFLOW_PAYMENTS_URL", &paysim),
            ("RUST_LOG", "info,sqlx=warn"),
        ],
        Some(&worker_log),
    );
    let probe = reqwest::Client::new();
    eventually("the API to be ready", Duration::from_secs(30), || async {
        let ready = probe.get(format!("{api}/readyz")).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    let http = keyed_client(&url, Duration::from_secs(15)).await;
    let sku = http
        .put(format!("{api}/v1/skus/O"))
        .json(&json!({"on_hand": 10, "price": 500, "currency": "USD"}))
        .send()
        .await
        .unwrap();
    assert!(sku.status().is_success());
    let before: Value = post_order(
        &http,
        &api,
        "before",
        &order_body("o1", &[("O", 1)], "pm_card_visa"),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let before = before["id"].as_str().unwrap().to_owned();

    // Crash PostgreSQL.
    cluster.stop(true).unwrap();
    let during = order_body("o2", &[("O", 2)], "pm_card_visa");
    let refused = post_order(&http, &api, "during", &during).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert!(
        problem["type"].as_str().unwrap().ends_with("service-unavailable"),
        "{problem}"
    );
    let read = http
        .get(format!("{api}/v1/orders/{before}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 503, "reads fail cleanly too");
    tokio::time::sleep(Duration::from_secs(4)).await;

    cluster.resume().unwrap();
    // The client retries its refused request with the same key until it is accepted.
    let accepted = eventually(
        "the API to accept orders again",
        Duration::from_secs(30),
        || async {
            let response = post_order(&http, &api, "during", &during).await.ok()?;
            response.status().is_success().then_some(response)
        },
    )
    .await;
    let during_id = accepted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [&before, &during_id] {
        let status = eventually("the order to finish", Duration::from_secs(60), || async {
            status_of(&http, &api, id)
                .await
                .filter(|s| s == "FULFILLED" || s == "CANCELLED")
        })
        .await;
        assert_eq!(status, "FULFILLED", "order {id}");
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    invariants::all_hold(&pool, &http, &paysim, &[("O", 10)]).await;
    pool.close().await;

    // Nobody was restarted, and the worker backed off instead of spinning while the server was down.
    assert!(api_process.is_running() && worker.is_running());
    let log = std::fs::read_to_string(&worker_log).unwrap();
    let restarts = log.matches("queue worker stopped; restarting it").count();
    println!("queue worker restarts during the outage: {restarts}");
    assert!(restarts >= 1, "the worker noticed the outage:\n{log}");
    assert!(
        restarts <= 6 * 6,
        "six queues with doubling delays restart a few times each, not {restarts}"
    );
    drop(worker);
    drop(api_process);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&logs);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
