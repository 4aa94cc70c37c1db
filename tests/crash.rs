//! Crashes: worker processes killed with SIGKILL (or aborting at a failpoint, which is the same to everyone
//! else) at the worst moments, and sagas whose job vanished. Each saga must finish without a second hold or a
//! second charge, on the surviving or the restarted worker, within seconds.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{Options, TestApp, eventually, pid_of_instance, spawn_app_with, spawn_worker_process};
use crate::invariants;

/// The recovery promise: sagas of a killed worker continue elsewhere within this.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

fn without_worker(slow_ms: u64) -> Options {
    Options {
        worker: false,
        sim: orderflow_paysim::SimConfig {
            slow_delay: Duration::from_millis(slow_ms),
            ..Default::default()
        },
        ..Options::default()
    }
}

/// The worker instance of the latest `step` attempt of the order, once one has started.
async fn started_by(app: &TestApp, id: Uuid, step: &str) -> Option<String> {
    sqlx::query_scalar(
        "select worker from saga_steps where order_id = $1 and step = $2 order by id desc limit 1",
    )
    .bind(id)
    .bind(step)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
    .flatten()
}

/// The instances that ran a SUCCEEDED `step` of the order.
async fn succeeded_by(app: &TestApp, id: Uuid, step: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select worker from saga_steps where order_id = $1 and step = $2 and status = 'SUCCEEDED'",
    )
    .bind(id)
    .bind(step)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Exactly one intent for the order, captured for the order's total: no second hold, no double charge.
async fn assert_charged_once(app: &TestApp, id: Uuid, order: &Value) {
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "one hold for {id}: {intents:?}");
    assert_eq!(intents[0]["status"], "succeeded", "{intents:?}");
    assert_eq!(intents[0]["amount_received"], order["total"], "{intents:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_payment_hands_the_saga_to_the_survivor_within_seconds() {
    let app = spawn_app_with(without_worker(1_500)).await;
    app.put_sku("K", 5, 1000).await;
    let env = [("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())];
    let mut workers = [
        spawn_worker_process(&app.database_url, &env),
        spawn_worker_process(&app.database_url, &env),
    ];

    let id = app.create_order("kill-mid-pay", &[("K", 2)], "pm_sim_slow").await;
    // The authorization takes 1.5 s at the provider: kill whoever is waiting for it.
    let instance = eventually("the pay step to start", Duration::from_secs(20), || {
        started_by(&app, id, "pay")
    })
    .await;
    let victim = workers
        .iter()
        .position(|w| w.pid() == pid_of_instance(&instance))
        .expect("the pay step runs in one of our workers");
    workers[victim].signal("KILL");
    let killed_at = Instant::now();
    assert!(workers[victim].wait_exit(Duration::from_secs(5)).await.is_some());

    let order = app
        .wait_for(id, &["PAID", "FULFILLED", "CANCELLED"], Duration::from_secs(30))
        .await;
    let recovery = killed_at.elapsed();
    println!("recovery after kill -9 mid-payment: {} ms", recovery.as_millis());
    assert_ne!(order["status"], "CANCELLED", "resumed, not compensated: {order}");
    assert!(recovery < RECOVERY_LIMIT, "took {recovery:?}");
    let survivor = &workers[1 - victim];
    let payers = succeeded_by(&app, id, "pay").await;
    assert_eq!(payers.len(), 1, "{payers:?}");
    assert_eq!(pid_of_instance(&payers[0]), survivor.pid());

    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    assert_charged_once(&app, id, &order).await;
    let sku = app.sku("K").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("K", 5)]).await;
}

/// The worker dies right after the provider authorized, before it recorded anything: the payment row says
/// PENDING, the provider holds the money. The next worker must ask again with the same key and go on.
#[tokio::test]
async fn a_worker_that_dies_after_the_authorization_is_resumed_by_its_successor_without_a_second_hold() {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_sku("K", 5, 1000).await;
    let env = [("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())];
    let failpoint = [
        ("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str()),
        ("FAILPOINTS", "worker.pay.after_authorize=return(die-after-auth)"),
    ];
    let mut first = spawn_worker_process(&app.database_url, &failpoint);

    let id = app
        .create_order("die-after-auth", &[("K", 1)], "pm_card_visa")
        .await;
    let status = first
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the failpoint aborts the worker");
    let died_at = Instant::now();
    assert!(!status.success());
    let payment: String = sqlx::query_scalar("select status from payments where order_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        payment, "PENDING",
        "the crash left the outcome unknown on our side"
    );
    assert_eq!(
        app.intents_of(id).await.len(),
        1,
        "while the provider holds the money"
    );

    // The restarted worker (a new process, a new name) must pick up its predecessor's job.
    let _second = spawn_worker_process(&app.database_url, &env);
    let order = app.wait_terminal(id).await;
    println!(
        "saga resumed and finished {} ms after the crash",
        died_at.elapsed().as_millis()
    );
    assert_eq!(order["status"], "FULFILLED", "{order}");
    assert_charged_once(&app, id, &order).await;
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("K", 5)]).await;
}

/// The worker dies after the capture went through, before it recorded it: the saga must end FULFILLED with the
/// stock committed once and the money captured once.
#[tokio::test]
async fn a_worker_that_dies_after_the_capture_is_finished_without_a_second_charge() {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_sku("K", 5, 1000).await;
    let env = [("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())];
    let failpoint = [
        ("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str()),
        (
            "FAILPOINTS",
            "worker.commit.after_capture=return(die-after-capture)",
        ),
    ];
    let mut first = spawn_worker_process(&app.database_url, &failpoint);

    let id = app
        .create_order("die-after-capture", &[("K", 2)], "pm_card_visa")
        .await;
    assert!(first.wait_exit(Duration::from_secs(20)).await.is_some());
    let intents = app.intents_of(id).await;
    assert_eq!(
        intents[0]["status"], "succeeded",
        "captured before the crash: {intents:?}"
    );
    assert_eq!(
        app.order(id).await["payment"]["status"],
        "AUTHORIZED",
        "not recorded yet"
    );

    let _second = spawn_worker_process(&app.database_url, &env);
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    assert_eq!(order["payment"]["status"], "CAPTURED");
    assert_charged_once(&app, id, &order).await;
    let sku = app.sku("K").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(3), Some(0)),
        "committed once"
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("K", 5)]).await;
}

/// SIGTERM: the worker stops taking jobs, finishes the step in flight (a 1.5 s authorization), hands nothing
/// half-done to anyone and exits 0.
#[tokio::test]
async fn sigterm_lets_the_step_in_flight_finish_and_exits_cleanly() {
    let app = spawn_app_with(without_worker(1_500)).await;
    app.put_sku("K", 5, 1000).await;
    let env = [("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())];
    let mut worker = spawn_worker_process(&app.database_url, &env);

    let id = app.create_order("sigterm", &[("K", 1)], "pm_sim_slow").await;
    let instance = eventually("the pay step to start", Duration::from_secs(20), || {
        started_by(&app, id, "pay")
    })
    .await;
    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits within the grace period");
    assert!(status.success(), "exit status {status:?}");

    let order = app.order(id).await;
    assert_eq!(order["status"], "PAID", "the step in flight finished: {order}");
    assert_eq!(succeeded_by(&app, id, "pay").await, vec![instance.clone()]);
    let held: i64 = sqlx::query_scalar(
        "select count(*) from apalis.jobs where status in ('Queued', 'Running') and lock_by like $1",
    )
    .bind(format!("%@{instance}#%"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "nothing left locked by the stopped worker");

    // The next step (commit) waits in the queue for the next worker.
    let _next = spawn_worker_process(&app.database_url, &env);
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED");
    assert_charged_once(&app, id, &order).await;
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("K", 5)]).await;
}

/// The job that should move a saga on is gone (deleted by hand, a bad cleanup): the reconciler notices and
/// resumes the saga from its step log.
#[tokio::test]
async fn a_saga_whose_job_vanished_is_resumed_by_the_reconciler() {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_sku("V", 5, 1000).await;
    let id = app.create_order("vanished", &[("V", 1)], "pm_card_visa").await;
    let deleted = sqlx::query("delete from apalis.jobs where id = (select job_id from orders where id = $1)")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 1);

    app.start_worker();
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED", "{order}");
    let (status, error): (String, String) = sqlx::query_as(
        "select status, error from saga_steps where order_id = $1 and step = 'reserve' order by id limit 1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(status, "FAILED");
    assert!(
        error.contains("reconciler") && error.contains("is gone"),
        "{error}"
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("V", 5)]).await;
}

/// A job that ended (Done) without moving its saga on is settled as a failed attempt and the step retried.
#[tokio::test]
async fn a_saga_whose_job_ended_without_moving_it_is_resumed() {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_sku("D", 5, 1000).await;
    let id = app.create_order("done-job", &[("D", 1)], "pm_card_visa").await;
    sqlx::query(
        "update apalis.jobs set status = 'Done', done_at = now() where id = (select job_id from orders where id = $1)",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();

    app.start_worker();
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED", "{order}");
    assert_eq!(app.sku("D").await["on_hand"], 4);
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("D", 5)]).await;
}

/// An app without an in-process worker, a shipment sku CRATE (5 at 700), a worker process with `failpoint` armed
/// for `customer`, and that customer's order of 3 CRATEs, reserved and authorized (PAID, waiting).
async fn paid_crate_order(failpoint: &str, customer: &str) -> (TestApp, Uuid, crate::helpers::Killed) {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_shipment_sku("CRATE", 5, 700).await;
    let armed = format!("{failpoint}=return({customer})");
    let with_failpoint = [
        ("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str()),
        ("FAILPOINTS", armed.as_str()),
    ];
    let worker = spawn_worker_process(&app.database_url, &with_failpoint);
    let id = app.create_order(customer, &[("CRATE", 3)], "pm_card_visa").await;
    app.wait_paid(id).await;
    (app, id, worker)
}

/// A worker killed in the middle of a shipment of two of an order's three units, before the capture went out or
/// after the provider captured and before anything was recorded: the next worker captures under the shipment's
/// key, so the provider takes the shipment's value once (a partial capture, which a second one would add to),
/// its units leave stock once and one `order.shipped` is written; the last unit ships after it, final.
async fn a_shipment_survives_a_worker_killed(failpoint: &str, customer: &str) {
    let (app, id, mut first) = paid_crate_order(failpoint, customer).await;
    let ship = |key: &'static str, quantity: i64| {
        app.ship(
            id,
            key,
            serde_json::json!({"lines": [{"sku": "CRATE", "quantity": quantity}]}),
        )
    };
    assert_eq!(ship("crate-two", 2).await.0, 202);
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the worker died at {failpoint}"
    );
    let received = app.intents_of(id).await[0]["amount_received"].clone();
    let expected_before = if failpoint.ends_with("after_capture") {
        1400
    } else {
        0
    };
    assert_eq!(
        received, expected_before,
        "what the provider took before the crash"
    );
    assert_eq!(
        app.sku("CRATE").await["on_hand"],
        5,
        "nothing left stock before the capture was recorded"
    );

    let _second = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| {
            o["status"] == "PARTIALLY_FULFILLED"
        })
        .await;
    assert_eq!(order["payment"]["status"], "PARTIALLY_CAPTURED", "{order}");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["amount_received"], 1400, "captured once: {intents:?}");
    let sku = app.sku("CRATE").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(3), Some(1)),
        "shipped once"
    );
    let shipped = app.events_of(id, "order.shipped").await.len();
    assert_eq!(shipped, 1, "one order.shipped");

    assert_eq!(ship("crate-last", 1).await.0, 202);
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (order["status"].as_str(), order["payment"]["status"].as_str()),
        (Some("FULFILLED"), Some("CAPTURED")),
        "{order}"
    );
    assert_charged_once(&app, id, &order).await;
    let done: i64 = sqlx::query_scalar("select count(*) from shipments where status = 'DONE'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(done, 2);
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("CRATE", 5)]).await;
}

#[tokio::test]
async fn a_worker_killed_before_a_shipments_capture_is_finished_by_the_next_shipping_once() {
    a_shipment_survives_a_worker_killed("worker.ship.before_capture", "die-before-ship-capture").await;
}

#[tokio::test]
async fn a_worker_killed_after_a_shipments_capture_is_finished_by_the_next_without_a_second_capture() {
    a_shipment_survives_a_worker_killed("worker.ship.after_capture", "die-after-ship-capture").await;
}

/// A worker killed in the middle of a refund of 500 of the 1,400 two shipped units captured, before the refund
/// went out or after the provider refunded and before anything was recorded: the next worker asks under the
/// refund's key, so the provider refunds 500 once (a second refund would add to it) and one `order.refunded` is
/// written; the order then ships its last unit and ends with money and stock exact.
async fn a_refund_survives_a_worker_killed(failpoint: &str, customer: &str) {
    let (app, id, mut first) = paid_crate_order(failpoint, customer).await;
    let (status, _) = app
        .ship(
            id,
            "crate-two",
            serde_json::json!({"lines": [{"sku": "CRATE", "quantity": 2}]}),
        )
        .await;
    assert_eq!(status, 202);
    app.wait_until(id, Duration::from_secs(30), |o| {
        o["status"] == "PARTIALLY_FULFILLED"
    })
    .await;
    let (status, refund) = app
        .refund(
            id,
            "part-back",
            serde_json::json!({"amount": 500, "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the worker died at {failpoint}"
    );
    let expected_before = if failpoint.ends_with("after_call") { 500 } else { 0 };
    assert_eq!(
        app.intents_of(id).await[0]["amount_refunded"],
        expected_before,
        "what the provider refunded before the crash"
    );

    let _second = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    app.wait_refund(id, &refund, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (
            intent["amount_received"].as_i64(),
            intent["amount_refunded"].as_i64()
        ),
        (Some(1400), Some(500)),
        "refunded once: {intent}"
    );
    let refunded = app.events_of(id, "order.refunded").await.len();
    assert_eq!(refunded, 1, "one order.refunded");

    let (status, _) = app
        .ship(
            id,
            "crate-last",
            serde_json::json!({"lines": [{"sku": "CRATE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 202);
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("CRATE", 5)]).await;
}

#[tokio::test]
async fn a_worker_killed_before_a_refund_is_asked_is_finished_by_the_next_refunding_once() {
    a_refund_survives_a_worker_killed("worker.refund.before_call", "die-before-refund").await;
}

#[tokio::test]
async fn a_worker_killed_after_a_refund_is_finished_by_the_next_without_a_second_refund() {
    a_refund_survives_a_worker_killed("worker.refund.after_call", "die-after-refund").await;
}

/// A worker killed before its refund of a FULFILLED order went out: the order keeps its step (refund) with its
/// job taken by a dead worker, and the next worker refunds it once; the order stays FULFILLED.
#[tokio::test]
async fn a_worker_killed_refunding_a_fulfilled_order_is_finished_by_the_next_refunding_once() {
    let app = spawn_app_with(without_worker(0)).await;
    app.put_sku("GIFT", 5, 1000).await;
    let armed = "worker.refund.before_call=return(die-refunding-fulfilled)";
    let mut first = spawn_worker_process(
        &app.database_url,
        &[
            ("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str()),
            ("FAILPOINTS", armed),
        ],
    );
    let id = app
        .create_order("die-refunding-fulfilled", &[("GIFT", 2)], "pm_card_visa")
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
    let (status, refund) = app
        .refund(
            id,
            "one-gift",
            serde_json::json!({"lines": [{"sku": "GIFT", "quantity": 1}], "reason": "requested_by_customer"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the worker died refunding"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&serde_json::json!("FULFILLED"), &serde_json::json!("refund")),
        "a FULFILLED order with a refund on its way has a step: {order}"
    );
    assert_eq!(app.intents_of(id).await[0]["amount_refunded"], 0);

    let _second = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    app.wait_refund(id, &refund, "DONE").await;
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (
            intent["amount_received"].as_i64(),
            intent["amount_refunded"].as_i64()
        ),
        (Some(2000), Some(1000)),
        "refunded once: {intent}"
    );
    let order = app.order(id).await;
    assert_eq!(
        (&order["status"], &order["current_step"]),
        (&serde_json::json!("FULFILLED"), &serde_json::Value::Null),
        "{order}"
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("GIFT", 5)]).await;
}

/// A worker killed after a partly shipped order's cancel gave back the units not shipped, before the rest of the
/// hold was released: the next worker releases it under the order's key and ends the order FULFILLED, charged
/// exactly what shipped.
#[tokio::test]
async fn a_worker_killed_while_releasing_the_rest_of_a_partly_shipped_order_is_finished_by_the_next() {
    let (app, id, mut first) = paid_crate_order("worker.release_rest.before_release", "die-releasing").await;
    let (status, _) = app
        .ship(
            id,
            "one-crate",
            serde_json::json!({"lines": [{"sku": "CRATE", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, 202);
    app.wait_until(id, Duration::from_secs(30), |o| {
        o["status"] == "PARTIALLY_FULFILLED"
    })
    .await;
    assert_eq!(app.cancel(id).await.status(), 202);
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the worker died releasing the rest"
    );
    assert_eq!(
        app.intents_of(id).await[0]["status"],
        "requires_capture",
        "the hold's rest not released yet"
    );
    let sku = app.sku("CRATE").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(4), Some(0)),
        "the units not shipped went back with the attempt, before the call: {sku}"
    );

    let _second = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    let intent = &app.intents_of(id).await[0];
    assert_eq!(
        (intent["status"].as_str(), intent["amount_received"].as_i64()),
        (Some("succeeded"), Some(700)),
        "{intent}"
    );
    let sku = app.sku("CRATE").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(4), Some(0)),
        "{sku}"
    );
    invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("CRATE", 5)]).await;
}

/// A worker killed after a shipment found the hold lapsed and authorized what was left again, before the capture
/// from the new hold: the next worker asks the re-authorization again under the same key (a replay: one new hold,
/// not two) and captures the shipment from it once; the last unit then ships, final, from the same hold.
#[tokio::test]
async fn a_worker_killed_after_a_reauthorization_is_finished_by_the_next_with_one_new_hold() {
    let (app, id, mut first) =
        paid_crate_order("worker.ship.after_reauthorize", "die-after-reauthorize").await;
    let ship = |key: &'static str| {
        app.ship(
            id,
            key,
            serde_json::json!({"lines": [{"sku": "CRATE", "quantity": 1}]}),
        )
    };
    assert_eq!(ship("crate-one").await.0, 202);
    app.wait_until(id, Duration::from_secs(30), |o| {
        o["status"] == "PARTIALLY_FULFILLED"
    })
    .await;
    let old = app.intents_of(id).await[0]["id"].as_str().unwrap().to_owned();
    app.lapse(&old).await;

    assert_eq!(ship("crate-two").await.0, 202);
    assert!(
        first.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the worker died after the re-authorization"
    );
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 2, "{intents:?}");
    assert_eq!(
        (
            intents[1]["status"].as_str(),
            intents[1]["amount"].as_i64(),
            intents[1]["amount_received"].as_i64()
        ),
        (Some("requires_capture"), Some(1400), Some(0)),
        "what was left authorized again, nothing captured from it yet: {intents:?}"
    );

    let _second = spawn_worker_process(
        &app.database_url,
        &[("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str())],
    );
    let order = app
        .wait_until(id, Duration::from_secs(30), |o| {
            o["payment"]["authorization"] == 2 && o["payment"]["status"] == "PARTIALLY_CAPTURED"
        })
        .await;
    assert_eq!(order["payment"]["provider_ref"], intents[1]["id"], "{order}");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 2, "one new hold: {intents:?}");
    assert_eq!(intents[1]["amount_received"], 700, "captured once: {intents:?}");

    assert_eq!(ship("crate-last").await.0, 202);
    let order = app.wait_terminal(id).await;
    assert_eq!(
        (order["status"].as_str(), order["payment"]["captured"].as_i64()),
        (Some("FULFILLED"), Some(2100)),
        "{order}"
    );
    let intents = app.intents_of(id).await;
    let taken: Vec<(Option<&str>, Option<i64>)> = intents
        .iter()
        .map(|i| (i["status"].as_str(), i["amount_received"].as_i64()))
        .collect();
    assert_eq!(
        taken,
        vec![(Some("succeeded"), Some(700)), (Some("succeeded"), Some(1400))]
    );
    let sku = app.sku("CRATE").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(2), Some(0))
    );
    crate::invariants::all_hold(&app.pool, &app.http, &app.paysim, &[("CRATE", 5)]).await;
}
