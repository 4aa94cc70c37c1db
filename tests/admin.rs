//! The admin API: roles, queue counts, the stuck-saga list, one saga's story, and the operator actions.

use std::time::Duration;

use orderflow_shared::flow::Step;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{OPERATOR_TOKEN, Options, TestApp, VIEWER_TOKEN, spawn_app_with};

fn without_worker() -> Options {
    Options {
        worker: false,
        ..Options::default()
    }
}

async fn act(app: &TestApp, id: Uuid, action: &str, token: &str) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/admin/v1/sagas/{id}/{action}", app.api))
        .bearer_auth(token)
        .json(&json!({"note": format!("test {action}")}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn no_or_a_wrong_token_is_401_and_a_viewer_cannot_act() {
    let app = spawn_app_with(without_worker()).await;
    app.put_sku("A", 5, 100).await;
    let id = app.create_order("roles", &[("A", 1)], "pm_card_visa").await;

    for token in [None, Some("not-a-token-at-all-000")] {
        let response = app.admin_get("/admin/v1/queues", token).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["type"].as_str().unwrap().ends_with(":unauthorized"),
            "{problem}"
        );
    }
    // The dashboard's cookie is no key to the JSON API.
    let with_cookie = app
        .http
        .get(format!("{}/admin/v1/queues", app.api))
        .header("Cookie", format!("orderflow_admin={OPERATOR_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 401);

    for path in [
        "/admin/v1/queues",
        "/admin/v1/sagas",
        &format!("/admin/v1/sagas/{id}"),
    ] {
        assert_eq!(
            app.admin_get(path, Some(VIEWER_TOKEN)).await.status(),
            200,
            "{path}"
        );
    }
    for action in ["retry", "compensate", "resolve"] {
        let (status, problem) = act(&app, id, action, VIEWER_TOKEN).await;
        assert_eq!(status, 403, "{action}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("vera is a viewer"),
            "{problem}"
        );
    }
    assert_eq!(app.order(id).await["status"], "CREATED", "nothing happened");
}

#[tokio::test]
async fn queues_count_jobs_by_state_with_the_oldest_pending_age() {
    let app = spawn_app_with(without_worker()).await;
    app.put_sku("Q", 50, 100).await;
    for i in 0..3 {
        app.create_order(&format!("q{i}"), &[("Q", 1)], "pm_card_visa")
            .await;
    }
    // One job scheduled for later, one dead.
    sqlx::query("update apalis.jobs set run_at = now() + interval '1 hour' where id = (select min(id) from apalis.jobs)")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update apalis.jobs set status = 'Killed' where id = (select max(id) from apalis.jobs)")
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let body = app.admin_json("/admin/v1/queues").await;
    let queues = body["queues"].as_array().unwrap();
    let names: Vec<&str> = queues.iter().map(|q| q["queue"].as_str().unwrap()).collect();
    let expected: Vec<&str> = Step::ALL.iter().map(|s| s.queue()).collect();
    assert_eq!(names, expected, "every queue, idle ones too");
    let reserve = &queues[0];
    assert_eq!(
        (
            reserve["pending"].as_i64(),
            reserve["scheduled"].as_i64(),
            reserve["running"].as_i64(),
            reserve["dead"].as_i64()
        ),
        (Some(1), Some(1), Some(0), Some(1)),
        "{reserve}"
    );
    assert!(
        reserve["oldest_pending_seconds"].as_f64().unwrap() >= 1.0,
        "{reserve}"
    );
    assert_eq!(queues[1]["pending"], 0);
    assert!(queues[1]["oldest_pending_seconds"].is_null());
}

#[tokio::test]
async fn the_saga_list_filters_pages_and_shows_stuck_sagas() {
    let app = spawn_app_with(without_worker()).await;
    app.put_sku("L", 50, 100).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.create_order(&format!("l{i}"), &[("L", 1)], "pm_card_visa")
                .await,
        );
    }
    sqlx::query("update orders set last_error = 'pay: provider down' where id = $1")
        .bind(ids[2])
        .execute(&app.pool)
        .await
        .unwrap();

    // Fresh sagas are not stuck yet (the test threshold is 1 s)...
    let fresh = app.admin_json("/admin/v1/sagas?stuck=true").await;
    assert_eq!(fresh["sagas"].as_array().unwrap().len(), 0, "{fresh}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // ...then they are, with the job that should move them on.
    let stuck = app.admin_json("/admin/v1/sagas?stuck=true").await;
    let listed: Vec<&str> = stuck["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    assert_eq!(listed, expected);
    assert_eq!(stuck["sagas"][0]["job_status"], "Pending");
    assert_eq!(stuck["sagas"][0]["current_step"], "reserve");
    let patient = app.admin_json("/admin/v1/sagas?stuck=true&stuck_after=1h").await;
    assert!(patient["sagas"].as_array().unwrap().is_empty());

    let by_error = app.admin_json("/admin/v1/sagas?error=PROVIDER").await;
    assert_eq!(by_error["sagas"].as_array().unwrap().len(), 1);
    assert_eq!(by_error["sagas"][0]["id"], ids[2].to_string());
    let by_status = app
        .admin_json("/admin/v1/sagas?status=CREATED&step=reserve&older_than=1s")
        .await;
    assert_eq!(by_status["sagas"].as_array().unwrap().len(), 5);
    assert!(
        app.admin_json("/admin/v1/sagas?status=PAID").await["sagas"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let first = app.admin_json("/admin/v1/sagas?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = app
        .admin_json(&format!("/admin/v1/sagas?limit=2&after={cursor}"))
        .await;
    assert_eq!(second["sagas"][0]["id"], ids[2].to_string());

    for (query, field) in [
        ("status=SHIPPED", "status"),
        ("step=dance", "step"),
        ("older_than=soon", "older_than"),
        ("stuck=maybe", "stuck"),
        ("stuck=true&stuck_after=5x", "stuck_after"),
        ("limit=0", "limit"),
        ("after=nope", "after"),
    ] {
        let response = app
            .admin_get(&format!("/admin/v1/sagas?{query}"), Some(VIEWER_TOKEN))
            .await;
        assert_eq!(response.status(), 422, "{query}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{query}");
    }
}

/// A saga waiting on a long backoff is stuck; an operator's retry runs the step now and the saga finishes. The
/// detail shows steps (with worker and error), jobs (the superseded one Killed), events and the action.
#[tokio::test]
async fn retry_runs_a_stuck_step_now_and_the_saga_page_tells_the_whole_story() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.pay.before_authorize", "1*return(slowpoke)").unwrap();
    let app = spawn_app_with(Options {
        tune: |s| {
            s.retry_base_delay = Duration::from_secs(600);
            s.retry_max_delay = Duration::from_secs(600);
        },
        ..Options::default()
    })
    .await;
    app.put_sku("R", 5, 100).await;
    let id = app.create_order("slowpoke", &[("R", 1)], "pm_card_visa").await;
    let order = app.wait_for_error(id, "failpoint", Duration::from_secs(10)).await;
    assert_eq!(order["error_code"], "step_retrying", "{order}");
    assert_eq!(
        order["status"], "RESERVED",
        "waiting ten minutes for its second attempt"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let detail = app.admin_json(&format!("/admin/v1/sagas/{id}")).await;
    assert_eq!(detail["stuck"], true, "{detail}");
    assert_eq!(detail["current_job"]["status"], "Pending");

    let (status, result) = act(&app, id, "retry", OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["actor"], "otto");
    assert!(
        result["outcome"].as_str().unwrap().contains("pay attempt 2"),
        "{result}"
    );
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "FULFILLED");

    let detail = app.admin_json(&format!("/admin/v1/sagas/{id}")).await;
    assert_eq!(detail["stuck"], false);
    let steps = detail["steps"].as_array().unwrap();
    let pay: Vec<(&str, i64)> = steps
        .iter()
        .filter(|s| s["step"] == "pay")
        .map(|s| (s["status"].as_str().unwrap(), s["attempt"].as_i64().unwrap()))
        .collect();
    assert_eq!(pay, [("FAILED", 1), ("SUCCEEDED", 2)]);
    assert!(
        steps
            .iter()
            .all(|s| s["worker"].is_string() && s["started_at"].is_string())
    );
    assert!(
        steps[1]["error"].as_str().unwrap().contains("failpoint"),
        "{}",
        steps[1]
    );
    let jobs = detail["jobs"].as_array().unwrap();
    let superseded = jobs
        .iter()
        .find(|j| j["step"] == "pay" && j["attempt"] == 2 && j["status"] == "Killed");
    assert!(superseded.is_some(), "the delayed retry was superseded: {jobs:?}");
    let events: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["order.created", "order.reserved", "order.paid", "order.fulfilled"]
    );
    let actions = detail["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(
        (actions[0]["action"].as_str(), actions[0]["actor"].as_str()),
        (Some("retry"), Some("otto"))
    );
    assert_eq!(actions[0]["detail"], "test retry");
    assert!(actions[0]["at"].is_string());
}

#[tokio::test]
async fn compensate_cancels_a_live_saga_and_refuses_a_finished_one() {
    let app = spawn_app_with(without_worker()).await;
    app.put_sku("C", 5, 100).await;
    let id = app.create_order("comp", &[("C", 2)], "pm_card_visa").await;

    let (status, result) = act(&app, id, "compensate", OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["order"]["status"], "CANCELLING");
    app.start_worker();
    let order = app.wait_terminal(id).await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "operator_request");
    assert_eq!(app.sku("C").await["reserved"], 0);

    let (status, problem) = act(&app, id, "compensate", OPERATOR_TOKEN).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["type"].as_str().unwrap().ends_with(":action-not-allowed"));
    let (status, _) = act(&app, id, "retry", OPERATOR_TOKEN).await;
    assert_eq!(status, 409);
    let (status, _) = act(&app, Uuid::now_v7(), "retry", OPERATOR_TOKEN).await;
    assert_eq!(status, 404);
}

/// A parked saga: the operator retries its compensation once (it fails again and parks again, no loop), then
/// repairs by hand and resolves it.
#[tokio::test]
async fn a_parked_saga_can_be_retried_and_then_resolved_after_manual_repair() {
    let _scenario = fail::FailScenario::setup();
    fail::cfg("worker.cancel_payment.before", "return(parked)").unwrap();
    let app = spawn_app_with(Options {
        tune: |s| s.attempts.compensation = 2,
        ..Options::default()
    })
    .await;
    app.put_sku("P", 5, 100).await;
    let id = app
        .create_order("parked", &[("P", 1)], "pm_card_chargeDeclined")
        .await;
    app.wait_for(id, &["NEEDS_ATTENTION"], Duration::from_secs(20))
        .await;

    let (status, result) = act(&app, id, "resolve", VIEWER_TOKEN).await;
    assert_eq!(status, 403, "{result}");
    let (status, result) = act(&app, id, "retry", OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{result}");
    assert!(
        result["outcome"]
            .as_str()
            .unwrap()
            .contains("cancel_payment attempt 3"),
        "{result}"
    );
    app.wait_for(id, &["NEEDS_ATTENTION"], Duration::from_secs(20))
        .await;
    let detail = app.admin_json(&format!("/admin/v1/sagas/{id}")).await;
    assert!(
        detail["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failpoint")),
        "the admin view keeps the step's error text: {detail}"
    );
    assert_eq!(detail["order"]["error_code"], "needs_attention");
    let failed: i64 = sqlx::query_scalar(
        "select count(*) from saga_steps where order_id = $1 and step = 'cancel_payment' and status = 'FAILED'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(failed, 3, "one more attempt, then parked again");

    let (status, result) = act(&app, id, "resolve", OPERATOR_TOKEN).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["order"]["status"], "CANCELLED");
    let detail = app.admin_json(&format!("/admin/v1/sagas/{id}")).await;
    let types: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        &types[types.len() - 4..],
        [
            "order.needs_attention",
            "order.cancellation_resumed",
            "order.needs_attention",
            "order.cancelled"
        ]
    );
    let actions: Vec<&str> = detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["retry", "resolve"]);
    let (status, _) = act(&app, id, "resolve", OPERATOR_TOKEN).await;
    assert_eq!(status, 409, "only once");
}
