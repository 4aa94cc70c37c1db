//! Reservation expiry, retry budgets and dead ends: what the reconciler and the failure settlement decide.

use std::time::Duration;

use orderflow_shared::flow::Step;

use crate::helpers::{Options, TestApp, spawn_app_with, transitions};

async fn attempts(app: &TestApp, id: uuid::Uuid, step: &str, status: &str) -> i64 {
    sqlx::query_scalar("select count(*) from saga_steps where order_id = $1 and step = $2 and status = $3")
        .bind(id)
        .bind(step)
        .bind(status)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reservation_whose_payment_never_starts_expires_and_frees_the_stock() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.pay.start", "return(expiring)").unwrap();
    let app = spawn_app_with(Options {
        tune: |s| s.reservation_ttl = Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    app.put_sku("E", 3, 1000).await;

    let id = app.create_order("expiring", &[("E", 2)], "pm_card_visa").await;
    let reserved = app
        .wait_for(
            id,
            &["RESERVED", "CANCELLING", "CANCELLED"],
            Duration::from_secs(10),
        )
        .await;
    assert!(
        reserved["reserved_until"].is_string(),
        "the hold's deadline is shown: {reserved}"
    );
    let order = app
        .wait_for(id, &["CANCELLED", "FULFILLED"], Duration::from_secs(20))
        .await;

    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancel_reason"], "reservation_expired");
    assert!(order["payment"].is_null(), "no payment was ever started: {order}");
    let sku = app.sku("E").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        transitions(&app.events(id).await),
        [
            "->CREATED",
            "CREATED>RESERVED",
            "RESERVED>CANCELLING",
            "CANCELLING>CANCELLED"
        ]
    );
    let events = app.events(id).await;
    assert_eq!(events[2]["reason"], "reservation_expired");
}

#[tokio::test]
async fn a_slow_payment_in_flight_keeps_its_reservation_past_the_deadline() {
    let app = spawn_app_with(Options {
        sim: orderflow_paysim::SimConfig {
            slow_delay: Duration::from_millis(2_500),
            ..Default::default()
        },
        tune: |s| s.reservation_ttl = Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    app.put_sku("S", 1, 1000).await;

    let id = app.create_order("slow-payer", &[("S", 1)], "pm_sim_slow").await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "FULFILLED", "{order}");
    let sku = app.sku("S").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["reserved"].as_i64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_parks_the_order_needing_attention() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.cancel_payment.before", "return(stuck)").unwrap();
    let app = spawn_app_with(Options {
        tune: |s| s.attempts.compensation = 3,
        ..Options::default()
    })
    .await;
    app.put_sku("N", 3, 1000).await;

    let id = app
        .create_order("stuck", &[("N", 1)], "pm_card_chargeDeclined")
        .await;
    let order = app
        .wait_for(id, &["NEEDS_ATTENTION", "CANCELLED"], Duration::from_secs(20))
        .await;

    assert_eq!(order["status"], "NEEDS_ATTENTION", "{order}");
    assert_eq!(order["cancel_reason"], "payment_declined");
    assert_eq!(order["current_step"], Step::CancelPayment.name());
    assert_eq!(order["error_code"], "needs_attention", "{order}");
    assert!(
        order.get("last_error").is_none(),
        "no step's error text in the public view: {order}"
    );
    let error: String = sqlx::query_scalar("select last_error from orders where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        error.contains("failpoint worker.cancel_payment.before"),
        "{error}"
    );
    let events = app.events(id).await;
    assert_eq!(events.last().unwrap()["type"], "order.needs_attention");
    assert_eq!(attempts(&app, id, "cancel_payment", "FAILED").await, 3);
    // Stock came back in the first compensation step, which did not fail.
    assert_eq!(app.sku("N").await["reserved"], 0);

    // Parked means parked: no further attempts, no job waiting, also after a few reconciler passes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(attempts(&app, id, "cancel_payment", "FAILED").await, 3);
    let live_jobs: i64 = sqlx::query_scalar(
        "select count(*) from apalis.jobs where status in ('Pending', 'Queued', 'Running') \
         and convert_from(job, 'UTF8')::jsonb ->> 'order_id' = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(live_jobs, 0);
    assert_eq!(app.order(id).await["status"], "NEEDS_ATTENTION");
}

#[tokio::test]
async fn each_step_has_its_own_attempt_budget() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.pay.before_authorize", "return(budget)").unwrap();
    let app = spawn_app_with(Options {
        tune: |s| {
            s.attempts.forward = 8;
            s.attempts.per_step.insert(Step::Pay, 2);
        },
        ..Options::default()
    })
    .await;
    app.put_sku("B", 3, 1000).await;

    let id = app.create_order("budget", &[("B", 1)], "pm_card_visa").await;
    let order = app.wait_terminal(id).await;

    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancel_reason"], "payment_failed");
    assert_eq!(
        attempts(&app, id, "pay", "FAILED").await,
        2,
        "two attempts, as configured for pay"
    );
    // The authorization's outcome was unknown to us (PENDING), so the compensation asked the provider with the
    // same key and voided what that placed: no money held or taken.
    for intent in app.intents_of(id).await {
        assert_eq!(intent["status"], "canceled", "{intent}");
        assert_eq!(intent["amount_received"], 0);
    }
    assert_eq!(app.sku("B").await["reserved"], 0);
}

#[tokio::test]
async fn old_done_jobs_are_deleted_and_the_saga_keeps_its_history() {
    let app = spawn_app_with(Options::default()).await;
    app.put_sku("P", 10, 1000).await;
    let id = app.create_order("purger", &[("P", 1)], "pm_card_visa").await;
    let order = app.wait_for(id, &["FULFILLED"], Duration::from_secs(20)).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    let jobs = orderflow_shared::queue::views::jobs_of_order(&app.pool, id)
        .await
        .unwrap();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids.len(), 4, "reserve, pay, commit, fulfil: {jobs:?}");
    // The worker's completion writer records the ends in the background: wait until all four are Done.
    for _ in 0..100 {
        let done: i64 =
            sqlx::query_scalar("select count(*) from apalis.jobs where id = any($1) and status = 'Done'")
                .bind(&ids)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if done == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two finished two hours ago, one failed two hours ago; the fourth just finished.
    sqlx::query("update apalis.jobs set done_at = now() - interval '2 hours' where id = any($1)")
        .bind(&ids[..3])
        .execute(&app.pool)
        .await
        .unwrap();
    // Failed for good: with attempts left, apalis would fetch it again at once.
    sqlx::query("update apalis.jobs set status = 'Failed', attempts = max_attempts where id = $1")
        .bind(&ids[2])
        .execute(&app.pool)
        .await
        .unwrap();

    let retention = Duration::from_secs(3_600);
    let first = orderflow_shared::queue::upkeep::purge_done_jobs(&app.pool, retention, 1)
        .await
        .unwrap();
    let rest = orderflow_shared::queue::upkeep::purge_done_jobs(&app.pool, retention, 100)
        .await
        .unwrap();
    assert_eq!(
        (first, rest),
        (1, 1),
        "a chunk deletes at most its limit; old Done jobs only"
    );

    let left: Vec<String> = sqlx::query_scalar("select id from apalis.jobs where id = any($1) order by id")
        .bind(&ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut kept = vec![ids[2].clone(), ids[3].clone()];
    kept.sort();
    assert_eq!(left, kept, "the failed job and the recent Done job stay");
    let history = orderflow_shared::queue::views::jobs_of_order(&app.pool, id)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|j| (j.id.clone(), j.status.map(|s| s.as_str().to_owned())))
            .collect::<Vec<_>>(),
        vec![
            (ids[0].clone(), None),
            (ids[1].clone(), None),
            (ids[2].clone(), Some("Failed".to_owned())),
            (ids[3].clone(), Some("Done".to_owned())),
        ],
        "the saga's job history keeps every job; a deleted one has no apalis status"
    );
    // A finished saga whose jobs are gone is not mistaken for a stranded one.
    tokio::time::sleep(Duration::from_millis(750)).await;
    let order = app.order(id).await;
    assert_eq!(order["status"], "FULFILLED", "{order}");
    assert_eq!(transitions(&app.events(id).await).len(), 4);
}
