//! Cancellation from every state: what it undoes, and what it refuses.

use std::time::Duration;

use crate::helpers::{Options, spawn_app, spawn_app_with};

#[tokio::test]
async fn cancel_while_created_holds_nothing_and_charges_nothing() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("A", 2, 1000).await;
    let id = app
        .create_order("cancel-created", &[("A", 1)], "pm_card_visa")
        .await;

    let response = app.cancel(id).await;
    assert_eq!(response.status(), 202);
    app.start_worker();
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "customer_request");
    assert_eq!(order["cancel_note"], "changed my mind");
    assert!(order["payment"].is_null());
    assert!(app.intents_of(id).await.is_empty());
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn cancel_while_reserved_and_paying_voids_the_hold() {
    let mut options = Options::default();
    options.sim.slow_delay = Duration::from_millis(1_500);
    let app = spawn_app_with(options).await;
    app.put_sku("A", 2, 1000).await;
    let id = app
        .create_order("cancel-reserved", &[("A", 1)], "pm_sim_slow")
        .await;
    // PENDING: the authorization is on its way to the (slow) provider.
    app.wait_for_payment(id, "PENDING").await;

    assert_eq!(app.cancel(id).await.status(), 202);
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "CANCELLED");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["status"], "canceled");
    assert_eq!(intents[0]["amount_received"], 0);
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn cancel_after_payment_voids_the_hold_and_releases_stock() {
    let app = spawn_app().await;
    app.put_sku("A", 2, 1000).await;
    fail::cfg("worker.commit.before", "return(cancel-paid)").unwrap();
    let id = app.create_order("cancel-paid", &[("A", 2)], "pm_card_visa").await;
    app.wait_for(id, &["PAID"], Duration::from_secs(10)).await;

    assert_eq!(app.cancel(id).await.status(), 202);
    let order = app.wait_terminal(id).await;
    fail::remove("worker.commit.before");

    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["payment"]["status"], "VOIDED");
    assert_eq!(app.intents_of(id).await[0]["status"], "canceled");
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(2), Some(0))
    );
}

#[tokio::test]
async fn cancel_after_capture_refunds_and_restocks() {
    let app = spawn_app().await;
    app.put_sku("A", 3, 1000).await;
    fail::cfg("worker.fulfil.before", "return(cancel-captured)").unwrap();
    let id = app
        .create_order("cancel-captured", &[("A", 2)], "pm_card_visa")
        .await;
    app.wait_for_payment(id, "CAPTURED").await;

    assert_eq!(app.cancel(id).await.status(), 202);
    let order = app.wait_terminal(id).await;
    fail::remove("worker.fulfil.before");

    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["payment"]["status"], "REFUNDED");
    let intent = &app.intents_of(id).await[0];
    assert_eq!(intent["amount_received"], 2000);
    assert_eq!(intent["amount_refunded"], 2000, "no net charge");
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(3), Some(0)),
        "committed units restocked"
    );
}

#[tokio::test]
async fn cancelling_a_fulfilled_order_is_a_conflict() {
    let app = spawn_app().await;
    app.put_sku("A", 1, 1000).await;
    let id = app
        .create_order("cancel-fulfilled", &[("A", 1)], "pm_card_visa")
        .await;
    app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;

    let response = app.cancel(id).await;

    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert_eq!(app.order(id).await["status"], "FULFILLED");
}

#[tokio::test]
async fn repeated_cancel_is_idempotent_and_logs_one_cancellation() {
    let app = spawn_app().await;
    app.put_sku("A", 1, 1000).await;
    fail::cfg("worker.commit.before", "return(cancel-twice)").unwrap();
    let id = app
        .create_order("cancel-twice", &[("A", 1)], "pm_card_visa")
        .await;
    app.wait_for(id, &["PAID"], Duration::from_secs(10)).await;

    assert_eq!(app.cancel(id).await.status(), 202);
    assert_eq!(app.cancel(id).await.status(), 202);
    app.wait_terminal(id).await;
    fail::remove("worker.commit.before");
    assert_eq!(app.cancel(id).await.status(), 202);

    let events = app.events(id).await;
    let cancellations = events.iter().filter(|e| e["to"] == "CANCELLING").count();
    assert_eq!(cancellations, 1, "{events:?}");
    assert_eq!(events.iter().filter(|e| e["to"] == "CANCELLED").count(), 1);
}

#[tokio::test]
async fn cancel_of_an_unknown_order_is_not_found() {
    let app = spawn_app().await;
    let response = app.cancel(uuid::Uuid::now_v7()).await;
    assert_eq!(response.status(), 404);
}
