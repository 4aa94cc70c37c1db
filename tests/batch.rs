//! Steps run for many orders at once (`orderflow_worker::runner`): the same outcomes as one order at a time,
//! first come first served on stock, idempotent when a batch runs again, an order named twice run once, and a
//! batch that fails before its commit run again order by order. The batches are driven by hand here (no worker
//! running) so each one's make-up is known.

use orderflow_shared::flow::Step;
use orderflow_shared::queue::StepJob;
use orderflow_worker::Runner;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_without_worker};

fn runner(app: &TestApp) -> Runner {
    app.runner("batch-test")
}

fn jobs(ids: &[Uuid]) -> Vec<StepJob> {
    ids.iter()
        .map(|&order_id| StepJob {
            order_id,
            attempt: 1,
            trace: None,
        })
        .collect()
}

async fn statuses(app: &TestApp, ids: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(app.order(*id).await["status"].as_str().unwrap().to_owned());
    }
    out
}

/// The step-log rows of `step` for the orders, as (status, count).
async fn step_log(pool: &PgPool, step: &str, ids: &[Uuid]) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select status, count(*) from saga_steps where step = $1 and order_id = any($2) group by status order by status",
    )
    .bind(step)
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The pending jobs of `queue` for the orders, as the payloads apalis hands the worker.
async fn queued(pool: &PgPool, queue: &str, ids: &[Uuid]) -> Vec<StepJob> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "select job from apalis.jobs where job_type = $1 and status = 'Pending' \
         and (convert_from(job, 'UTF8')::jsonb ->> 'order_id')::uuid = any($2)",
    )
    .bind(queue)
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap();
    payloads
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect()
}

#[tokio::test]
async fn a_reserve_batch_sells_the_stock_first_come_first_served_and_a_rerun_changes_nothing() {
    let app = spawn_app_without_worker().await;
    app.put_sku("HOT", 5, 1_000).await;
    app.put_sku("SIDE", 1, 500).await;
    let runner = runner(&app);
    // In batch order: three singles, a two-line order whose SIDE fits but whose HOT does not once the stock
    // is gone, a single that takes SIDE after all (the misfit held nothing), then more singles than stock.
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create_order(&format!("a{i}"), &[("HOT", 1)], "pm_card_visa")
                .await,
        );
    }
    ids.push(
        app.create_order("big", &[("SIDE", 1), ("HOT", 3)], "pm_card_visa")
            .await,
    );
    ids.push(app.create_order("side", &[("SIDE", 1)], "pm_card_visa").await);
    for i in 0..4 {
        ids.push(
            app.create_order(&format!("b{i}"), &[("HOT", 1)], "pm_card_visa")
                .await,
        );
    }

    let results = runner.run_batch(Step::Reserve, jobs(&ids)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let expected = [
        "RESERVED",
        "RESERVED",
        "RESERVED",
        "CANCELLED",
        "RESERVED",
        "RESERVED",
        "RESERVED",
        "CANCELLED",
        "CANCELLED",
    ];
    assert_eq!(statuses(&app, &ids).await, expected);
    assert_eq!(app.order(ids[3]).await["cancel_reason"], "out_of_stock");
    let hot = app.sku("HOT").await;
    let side = app.sku("SIDE").await;
    assert_eq!(
        (hot["on_hand"].as_i64(), hot["reserved"].as_i64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (side["on_hand"].as_i64(), side["reserved"].as_i64()),
        (Some(1), Some(1))
    );
    let log = step_log(&app.pool, "reserve", &ids).await;
    assert_eq!(log, [("FAILED".to_owned(), 3), ("SUCCEEDED".to_owned(), 6)]);
    // Each reserved order has its pay job, in `StepJob`'s form, and names it; the reservation is held.
    let reserved: Vec<Uuid> = [0, 1, 2, 4, 5, 6].map(|i| ids[i]).to_vec();
    let mut pay_jobs: Vec<Uuid> = queued(&app.pool, "orderflow.pay", &ids)
        .await
        .into_iter()
        .map(|j| {
            assert_eq!(j.attempt, 1);
            j.order_id
        })
        .collect();
    pay_jobs.sort();
    let mut want = reserved.clone();
    want.sort();
    assert_eq!(pay_jobs, want);
    for id in &reserved {
        let order = app.order(*id).await;
        assert_eq!(order["current_step"], "pay");
        assert!(order["reserved_until"].is_string(), "{order}");
        let kinds: Vec<String> = app
            .events(*id)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["order.created", "order.reserved"]);
    }

    // apalis re-runs a job whose ack was lost: the same batch again finds nothing to do.
    let again = runner.run_batch(Step::Reserve, jobs(&ids)).await;

    assert!(again.iter().all(Result::is_ok));
    assert_eq!(statuses(&app, &ids).await, expected);
    assert_eq!(app.sku("HOT").await["reserved"].as_i64(), Some(5));
    assert_eq!(step_log(&app.pool, "reserve", &ids).await, log);
    assert_eq!(queued(&app.pool, "orderflow.pay", &ids).await.len(), 6);
}

#[tokio::test]
async fn batches_carry_orders_to_fulfilled_charge_once_and_send_a_decline_to_compensation() {
    let app = spawn_app_without_worker().await;
    app.put_sku("W", 100, 1_000).await;
    let runner = runner(&app);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.create_order(&format!("w{i}"), &[("W", 2)], "pm_card_visa")
                .await,
        );
    }
    let declined = app
        .create_order("declined", &[("W", 1)], "pm_card_chargeDeclined")
        .await;
    ids.push(declined);
    let paid: Vec<Uuid> = ids[..6].to_vec();

    assert!(
        runner
            .run_batch(Step::Reserve, jobs(&ids))
            .await
            .iter()
            .all(Result::is_ok)
    );
    // The same order twice in one batch: the repeat runs alone after the batch and finds nothing to do.
    let mut pay = jobs(&ids);
    pay.push(pay[0]);
    assert!(runner.run_batch(Step::Pay, pay).await.iter().all(Result::is_ok));
    assert!(
        runner
            .run_batch(Step::Commit, jobs(&paid))
            .await
            .iter()
            .all(Result::is_ok)
    );
    // A commit job that runs again after its capture was recorded finds its work done: nothing changes.
    assert!(
        runner
            .run_batch(Step::Commit, jobs(&paid[..2]))
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert!(
        runner
            .run_batch(Step::Fulfil, jobs(&paid))
            .await
            .iter()
            .all(Result::is_ok)
    );

    assert_eq!(statuses(&app, &paid).await, vec!["FULFILLED"; 6]);
    let w = app.sku("W").await;
    // Six orders of 2 committed; the declined order's unit is still reserved until its compensation runs.
    assert_eq!(
        (w["on_hand"].as_i64(), w["reserved"].as_i64()),
        (Some(88), Some(1))
    );
    for id in &paid {
        let order = app.order(*id).await;
        assert_eq!(order["payment"]["status"], "CAPTURED", "{order}");
        let intents = app.intents_of(*id).await;
        assert_eq!(intents.len(), 1, "one hold per order: {intents:?}");
        assert_eq!(intents[0]["status"], "succeeded");
        let kinds: Vec<String> = app
            .events(*id)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            kinds,
            ["order.created", "order.reserved", "order.paid", "order.fulfilled"]
        );
    }
    for step in ["reserve", "pay", "commit", "fulfil"] {
        assert_eq!(
            step_log(&app.pool, step, &paid).await,
            [("SUCCEEDED".to_owned(), 6)],
            "{step}"
        );
    }
    let d: Value = app.order(declined).await;
    assert_eq!(d["status"], "CANCELLING");
    assert_eq!(d["cancel_reason"], "payment_declined");
    assert_eq!(d["payment"]["status"], "DECLINED");
    assert_eq!(
        queued(&app.pool, "orderflow.release_inventory", &[declined])
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_batch_that_fails_before_it_ends_writes_nothing_and_its_jobs_run_alone() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.batch.before_end", "return(c2)").unwrap();
    let app = spawn_app_without_worker().await;
    app.put_sku("S", 3, 1_000).await;
    let runner = runner(&app);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.create_order(&format!("c{i}"), &[("S", 1)], "pm_card_visa")
                .await,
        );
    }

    let results = runner.run_batch(Step::Reserve, jobs(&ids)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The batch rolled back (its step-log rows with it) and each job ran alone: the stock sold once, one
    // closed attempt per order.
    let mut ended = statuses(&app, &ids).await;
    ended.sort();
    assert_eq!(
        ended,
        ["CANCELLED", "CANCELLED", "RESERVED", "RESERVED", "RESERVED"]
    );
    let s = app.sku("S").await;
    assert_eq!(
        (s["on_hand"].as_i64(), s["reserved"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        step_log(&app.pool, "reserve", &ids).await,
        [("FAILED".to_owned(), 2), ("SUCCEEDED".to_owned(), 3)]
    );
    assert_eq!(queued(&app.pool, "orderflow.pay", &ids).await.len(), 3);
    // The batch did write its five attempts before it failed: their ids were drawn and rolled back.
    let first_id: i64 = sqlx::query_scalar("select min(id) from saga_steps")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        first_id > 5,
        "the batch never reached its failpoint: first step-log id {first_id}"
    );
}

#[tokio::test]
async fn a_pay_batch_that_fails_after_its_calls_retries_later_without_a_second_hold() {
    let _scenario = fail::FailScenario::setup();
    let app = spawn_app_without_worker().await;
    app.put_sku("P", 10, 1_000).await;
    let runner = runner(&app);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create_order(&format!("p{i}"), &[("P", 1)], "pm_card_visa")
                .await,
        );
    }
    assert!(
        runner
            .run_batch(Step::Reserve, jobs(&ids))
            .await
            .iter()
            .all(Result::is_ok)
    );
    fail::cfg("worker.batch.before_record", "return(p1)").unwrap();

    let results = runner.run_batch(Step::Pay, jobs(&ids)).await;

    // The holds were placed, but recording them failed: each attempt is settled as a transient failure, with
    // a second attempt queued after the backoff.
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(statuses(&app, &ids).await, vec!["RESERVED"; 3]);
    assert_eq!(step_log(&app.pool, "pay", &ids).await, [("FAILED".to_owned(), 3)]);
    let retries = queued(&app.pool, "orderflow.pay", &ids).await;
    let retries: Vec<StepJob> = retries.into_iter().filter(|j| j.attempt == 2).collect();
    assert_eq!(retries.len(), 3, "{retries:?}");
    for id in &ids {
        assert_eq!(app.order(*id).await["payment"]["status"], "PENDING");
        let intents = app.intents_of(*id).await;
        assert_eq!(intents.len(), 1, "{intents:?}");
        assert_eq!(intents[0]["status"], "requires_capture");
    }

    fail::remove("worker.batch.before_record");
    let results = runner.run_batch(Step::Pay, retries).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(statuses(&app, &ids).await, vec!["PAID"; 3]);
    assert_eq!(
        step_log(&app.pool, "pay", &ids).await,
        [("FAILED".to_owned(), 3), ("SUCCEEDED".to_owned(), 3)]
    );
    for id in &ids {
        assert_eq!(app.order(*id).await["payment"]["status"], "AUTHORIZED");
        // The retry repeated the authorization with the same key: the provider replayed it.
        assert_eq!(app.intents_of(*id).await.len(), 1);
    }
}
