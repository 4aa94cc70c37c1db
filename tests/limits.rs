//! The API's bounds on what one client can hold: a request head must arrive in time, a body must keep coming,
//! a request has a deadline, connections are capped, and a request waiting on a row lock or a slow statement
//! gives up with 503 instead of holding a connection.

use std::time::{Duration, Instant};

use orderflow_shared::settings::ServerLimits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{OPERATOR_TOKEN, Options, TestApp, order_body, spawn_app_with};

async fn app_with(limits: ServerLimits) -> TestApp {
    spawn_app_with(Options {
        worker: false,
        limits,
        ..Options::default()
    })
    .await
}

fn address(app: &TestApp) -> String {
    app.api.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `within` passes); whether it closed, and what it sent.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (false, String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(0) | Err(_)) => return (true, String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn clients_that_trickle_headers_or_send_nothing_are_closed_after_the_header_timeout() {
    let app = app_with(ServerLimits {
        header_read_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    })
    .await;
    let addr = address(&app);
    // Half trickle a header a byte at a time, half send nothing at all.
    let mut tricklers = Vec::new();
    let mut silent = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            tricklers.push(stream);
        } else {
            silent.push(stream);
        }
    }
    let started = Instant::now();
    let trickle = async {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for stream in &mut tricklers {
                let _ = stream.write_all(b"X").await;
            }
        }
    };
    trickle.await;
    for stream in tricklers.iter_mut().chain(silent.iter_mut()) {
        let (closed, _) = closed_within(stream, Duration::from_secs(3)).await;
        assert!(
            closed,
            "a connection still open {:?} after connecting",
            started.elapsed()
        );
    }
    // A client that sends its request in time is served as ever.
    assert_eq!(app.api_get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_body_that_stops_coming_is_408_and_a_slow_request_is_503_while_its_order_is_still_made() {
    let app = app_with(ServerLimits {
        body_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(600),
        ..ServerLimits::default()
    })
    .await;
    app.put_sku("A", 5, 100).await;

    // Headers promise 200 bytes; 20 come, then nothing.
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nIdempotency-Key: stalled\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"customer_id\": \"st",
        app.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (_, answer) = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");

    // The failpoint holds the key's lock for a second: past the request's 600 ms.
    let _scenario = fail::FailScenario::setup();
    fail::cfg("api.create_order.after_lock", "return(slow)").unwrap();
    let slow = app
        .post_order_with_key(&order_body("slow", &[("A", 1)], "pm_card_visa"), "slow")
        .await;
    assert_eq!(slow.status(), 503);
    assert_eq!(slow.headers()["content-type"], "application/problem+json");
    assert!(slow.headers().contains_key("retry-after"));
    // The handler ran on: the order exists, and a retry with the key replays it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fail::remove("api.create_order.after_lock");
    let retry = app
        .post_order_with_key(&order_body("slow", &[("A", 1)], "pm_card_visa"), "slow")
        .await;
    assert_eq!(retry.status(), 202);
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = app_with(ServerLimits {
        max_connections: 2,
        ..ServerLimits::default()
    })
    .await;
    let addr = address(&app);
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            buffer[..n].starts_with(b"HTTP/1.1 200"),
            "kept alive after its answer"
        );
        held.push(stream);
    }
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buffer = [0u8; 1024];
    let waited = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buffer)).await;
    assert!(
        waited.is_err(),
        "a third connection is not served while two are held"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buffer))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn a_request_waiting_on_a_locked_row_gives_up_with_503_and_retry_after() {
    let app = app_with(ServerLimits {
        lock_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    })
    .await;
    app.put_sku("A", 5, 100).await;
    let id = app.create_order("locked", &[("A", 1)], "pm_card_visa").await;
    let holder = app.hold_order(id).await;
    let started = Instant::now();
    let cancel = app.cancel(id).await;
    assert_eq!(cancel.status(), 503, "{:?}", cancel.text().await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after the lock timeout, not later"
    );
    let admin = app
        .http
        .post(format!("{}/admin/v1/sagas/{id}/compensate", app.api))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 503);
    assert!(admin.headers().contains_key("retry-after"));
    holder.rollback().await.unwrap();
    let cancel = app.cancel(id).await;
    assert_eq!(cancel.status(), 202, "served once the row is free");
    let body: Value = cancel.json().await.unwrap();
    assert_eq!(body["status"], "CANCELLING");
}

/// `statement_timeout` ends an API statement that runs too long (503); the worker's connections have none, since
/// its steps may wait on the provider inside a transaction's reach.
#[tokio::test]
async fn a_statement_past_the_apis_statement_timeout_is_503_and_the_workers_pool_has_none() {
    let app = app_with(ServerLimits {
        statement_timeout: Duration::from_millis(300),
        lock_timeout: Duration::from_secs(30),
        ..ServerLimits::default()
    })
    .await;
    app.put_sku("A", 5, 100).await;
    let id = app.create_order("slow", &[("A", 1)], "pm_card_visa").await;
    let holder = app.hold_order(id).await;
    let started = Instant::now();
    let cancel = app.cancel(id).await;
    assert_eq!(cancel.status(), 503);
    assert!(cancel.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended by the statement timeout, not the 30 s lock timeout"
    );
    holder.rollback().await.unwrap();
    // The test's pool connects as the worker does.
    let worker_timeout: String = sqlx::query_scalar("show statement_timeout")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(worker_timeout, "0");
}
