//! The saga's outcomes end to end: money in the simulator's ledger, stock in the skus, the audit trail.

use std::time::Duration;

use orderflow_shared::flow::Step;

use crate::helpers::{Options, order_body, spawn_app, spawn_app_with, transitions};

#[tokio::test]
async fn happy_path_reaches_fulfilled_with_one_capture_and_committed_stock() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1999).await;
    app.put_sku("B", 5, 500).await;

    let id = app
        .create_order("happy", &[("A", 2), ("B", 1)], "pm_card_visa")
        .await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED");
    assert_eq!(order["total"], 2 * 1999 + 500);
    assert_eq!(order["payment"]["status"], "CAPTURED");
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(8), Some(0))
    );
    let b = app.sku("B").await;
    assert_eq!(
        (b["on_hand"].as_i64(), b["reserved"].as_i64()),
        (Some(4), Some(0))
    );
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "exactly one intent: {intents:?}");
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(intents[0]["amount_received"], 2 * 1999 + 500);
    assert_eq!(
        transitions(&app.events(id).await),
        ["->CREATED", "CREATED>RESERVED", "RESERVED>PAID", "PAID>FULFILLED"]
    );
}

#[tokio::test]
async fn declined_payment_cancels_releases_stock_and_captures_nothing() {
    let app = spawn_app().await;
    app.put_sku("A", 3, 1000).await;

    let id = app
        .create_order("declined", &[("A", 2)], "pm_card_chargeDeclined")
        .await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "payment_declined");
    assert_eq!(order["payment"]["status"], "DECLINED");
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["amount_received"], 0);
    assert_eq!(intents[0]["amount_capturable"], 0);
    assert_eq!(
        transitions(&app.events(id).await),
        [
            "->CREATED",
            "CREATED>RESERVED",
            "RESERVED>CANCELLING",
            "CANCELLING>CANCELLED"
        ]
    );
}

#[tokio::test]
async fn flaky_provider_is_retried_to_fulfilled_with_exactly_one_capture() {
    let app = spawn_app().await;
    app.put_sku("A", 3, 1000).await;

    let id = app.create_order("flaky", &[("A", 1)], "pm_sim_flaky").await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "one hold despite two 503s: {intents:?}");
    assert_eq!(intents[0]["amount_received"], 1000);
    let failed: i64 = sqlx::query_scalar(
        "select count(*) from saga_steps where order_id = $1 and step = 'pay' and status = 'FAILED'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(failed, 2, "the two 503s are in the step log");
}

#[tokio::test]
async fn lost_response_places_exactly_one_hold() {
    let app = spawn_app().await;
    app.put_sku("A", 3, 1000).await;

    let id = app
        .create_order("lost", &[("A", 1)], "pm_sim_lost_response")
        .await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED");
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1, "the retry reused the key: {intents:?}");
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(order["payment"]["provider_ref"], intents[0]["id"]);
}

#[tokio::test]
async fn inventory_commit_failure_after_the_hold_voids_it_and_restores_stock() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    fail::cfg("worker.commit.inventory", "return(commit-fails)").unwrap();

    let id = app
        .create_order("commit-fails", &[("A", 2)], "pm_card_visa")
        .await;
    let order = app.wait_terminal(id).await;
    fail::remove("worker.commit.inventory");

    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "inventory_commit_failed");
    assert_eq!(order["payment"]["status"], "VOIDED");
    let a = app.sku("A").await;
    assert_eq!(
        (a["on_hand"].as_i64(), a["reserved"].as_i64()),
        (Some(5), Some(0))
    );
    let intents = app.intents_of(id).await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["status"], "canceled", "the hold is voided");
    assert_eq!(intents[0]["amount_received"], 0);
}

#[tokio::test]
async fn slow_provider_still_completes() {
    let mut options = Options::default();
    options.sim.slow_delay = Duration::from_millis(700);
    let app = spawn_app_with(options).await;
    app.put_sku("A", 1, 1000).await;

    let id = app.create_order("slow", &[("A", 1)], "pm_sim_slow").await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED");
    assert_eq!(app.intents_of(id).await.len(), 1);
}

/// The statements that queue jobs (order creation, `order::advance`) write apalis's row themselves, payload built
/// in SQL by the queue's one job SQL: it must read back as the `StepJob` the worker decodes, with the order's
/// trace, the asked delay, apalis's columns, and the order pointing at it.
#[tokio::test]
async fn an_enqueued_job_is_the_step_job_apalis_hands_the_worker() {
    use orderflow_shared::flow::Step;
    use orderflow_shared::order::{self, Move};
    use orderflow_shared::queue::{self, NextJob, StepJob};

    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("A", 5, 100).await;
    let id = app.create_order("payload", &[("A", 1)], "pm_card_visa").await;
    let trace: String = sqlx::query_scalar("select trace_id from orders where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();

    // The order was written with its first job in one statement (order creation): the order names it, and it is
    // the reserve step's job for this order, attempt 1, with the order's trace.
    let (first_id, step, queue, payload, status, listed): (String, String, String, Vec<u8>, String, i64) =
        sqlx::query_as(
            r#"select o.job_id, o.current_step, j.job_type, j.job, j.status,
                      (select count(*) from saga_jobs s where s.job_id = o.job_id and s.step = 'reserve' and s.attempt = 1)
               from orders o join apalis.jobs j on j.id = o.job_id where o.id = $1"#,
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let first: StepJob = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (first.order_id, first.attempt, first.trace.map(|t| t.to_string())),
        (id, 1, Some(trace.clone()))
    );
    assert_eq!(
        (step.as_str(), queue.as_str(), status.as_str(), listed),
        ("reserve", "orderflow.reserve", "Pending", 1),
        "first job {first_id}"
    );

    let mut tx = app.pool.begin().await.unwrap();
    let locked = order::lock(&mut tx, id).await.unwrap().unwrap();
    let retry = NextJob {
        step: Step::Pay,
        attempt: 3,
        delay: Some(Duration::from_secs(90)),
        trace: None,
    };
    let queued = Move {
        next: Some(retry),
        ..Move::new(&locked)
    };
    order::advance(&mut tx, &[queued]).await.unwrap();
    tx.commit().await.unwrap();
    let job_id: String = sqlx::query_scalar("select job_id from orders where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(job_id, first_id, "the order names its new job");

    type Row = (String, Vec<u8>, String, i32, i32, f64, Option<String>);
    let (queue, payload, status, attempts, max_attempts, delay, lock_by): Row = sqlx::query_as(
        r#"select job_type, job, status, attempts, max_attempts,
                  extract(epoch from run_at - now())::float8, lock_by
           from apalis.jobs where id = $1"#,
    )
    .bind(&job_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let decoded: StepJob = serde_json::from_slice(&payload).unwrap();
    assert_eq!(decoded.order_id, id);
    assert_eq!(decoded.attempt, 3);
    assert_eq!(decoded.trace.map(|t| t.to_string()), Some(trace.clone()));
    assert_eq!(
        (queue.as_str(), status.as_str(), attempts, max_attempts, lock_by),
        ("orderflow.pay", "Pending", 0, queue::APALIS_MAX_ATTEMPTS, None)
    );
    assert!((88.0..=90.5).contains(&delay), "run_at is {delay} s away");

    let (order_job, listed): (Option<String>, i64) = sqlx::query_as(
        "select job_id, (select count(*) from saga_jobs where job_id = $2 and step = 'pay' and attempt = 3) \
         from orders where id = $1 and current_step = 'pay'",
    )
    .bind(id)
    .bind(&job_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((order_job.as_deref(), listed), (Some(job_id.as_str()), 1));

    // The API's first job carries the trace the API set, and a worker started now runs the saga from it.
    app.start_worker();
    assert_eq!(app.wait_terminal(id).await["status"], "FULFILLED");
}

#[tokio::test]
async fn a_worker_runs_only_the_steps_it_is_given_and_another_takes_the_rest() {
    let app = spawn_app_with(Options {
        tune: |settings| settings.steps = vec![Step::Reserve],
        ..Options::default()
    })
    .await;
    app.put_sku("S", 10, 100).await;
    let ids = app
        .create_orders(
            &(0..4)
                .map(|i| order_body(&format!("steps-{i}"), &[("S", 1)], "pm_card_visa"))
                .collect::<Vec<_>>(),
        )
        .await;
    for id in &ids {
        app.wait_for(*id, &["RESERVED"], Duration::from_secs(20)).await;
    }
    // Past a few of the reserve-only worker's polls, nothing has run the pay step: its jobs wait in their queue.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in &ids {
        assert_eq!(app.order(*id).await["status"], "RESERVED");
    }
    let waiting: i64 = sqlx::query_scalar(
        "select count(*) from apalis.jobs where job_type = 'orderflow.pay' and status = 'Pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 4);

    // A worker with every step finishes the sagas.
    app.start_worker_with(|_| {});
    for id in &ids {
        assert_eq!(app.wait_terminal(*id).await["status"], "FULFILLED");
    }
}
