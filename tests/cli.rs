//! The `orderflow` command line against a running API: tables by default, JSON with `--json`, the token from
//! the environment, clear errors.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{OPERATOR_TOKEN, Options, TestApp, VIEWER_TOKEN, binary, spawn_app_with};

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn orderflow(app: &TestApp, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(binary("orderflow"));
    command
        .args(args)
        .env("ORDERFLOW_ADMIN_URL", &app.api)
        .env_remove("ORDERFLOW_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("ORDERFLOW_ADMIN_TOKEN", token);
    }
    let output = command.output().await.unwrap();
    Output {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn stuck_app() -> (TestApp, Uuid) {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("C", 5, 100).await;
    let id = app.create_order("cli", &[("C", 1)], "pm_card_visa").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    (app, id)
}

#[tokio::test]
async fn queues_sagas_and_a_saga_read_as_tables_or_json() {
    let (app, id) = stuck_app().await;

    let queues = orderflow(&app, Some(VIEWER_TOKEN), &["queues"]).await;
    assert!(queues.ok, "{}", queues.stderr);
    let lines: Vec<&str> = queues.stdout.lines().collect();
    assert!(lines[0].starts_with("QUEUE") && lines[0].contains("PENDING") && lines[0].contains("OLDEST_S"));
    let reserve = lines.iter().find(|l| l.starts_with("orderflow.reserve")).unwrap();
    let cells: Vec<&str> = reserve.split_whitespace().collect();
    assert_eq!(cells[1], "1", "one pending reserve job: {reserve}");
    let json: Value = serde_json::from_str(
        &orderflow(&app, Some(VIEWER_TOKEN), &["queues", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(json["queues"][0]["pending"], 1);

    let stuck = orderflow(
        &app,
        Some(VIEWER_TOKEN),
        &["sagas", "--stuck", "--older-than", "1s"],
    )
    .await;
    assert!(stuck.ok, "{}", stuck.stderr);
    assert!(stuck.stdout.starts_with("SAGA"), "{}", stuck.stdout);
    assert!(
        stuck.stdout.contains(&id.to_string()) && stuck.stdout.contains("CREATED"),
        "{}",
        stuck.stdout
    );
    let patient = orderflow(
        &app,
        Some(VIEWER_TOKEN),
        &["sagas", "--stuck", "--older-than", "1h"],
    )
    .await;
    assert_eq!(patient.stdout.trim(), "no sagas match");

    let saga = orderflow(&app, Some(VIEWER_TOKEN), &["saga", &id.to_string()]).await;
    assert!(saga.ok, "{}", saga.stderr);
    assert!(
        saga.stdout.contains("(stuck)")
            && saga.stdout.contains("EVENTS")
            && saga.stdout.contains("order.created")
    );
    let json: Value = serde_json::from_str(
        &orderflow(&app, Some(VIEWER_TOKEN), &["saga", &id.to_string(), "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(json["order"]["id"], id.to_string());
}

#[tokio::test]
async fn actions_need_an_operator_and_errors_say_what_is_wrong() {
    let (app, id) = stuck_app().await;

    let no_token = orderflow(&app, None, &["queues"]).await;
    assert!(!no_token.ok);
    assert!(
        no_token.stderr.contains("ORDERFLOW_ADMIN_TOKEN"),
        "{}",
        no_token.stderr
    );
    let wrong = orderflow(&app, Some("wrong-token-wrong-token"), &["queues"]).await;
    assert!(!wrong.ok);
    assert!(
        wrong.stderr.contains("not valid") && wrong.stderr.contains("401"),
        "{}",
        wrong.stderr
    );
    let viewer = orderflow(&app, Some(VIEWER_TOKEN), &["saga", &id.to_string(), "compensate"]).await;
    assert!(!viewer.ok);
    assert!(viewer.stderr.contains("403"), "{}", viewer.stderr);

    let done = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &["saga", &id.to_string(), "compensate", "--note", "fraud"],
    )
    .await;
    assert!(done.ok, "{}", done.stderr);
    assert!(
        done.stdout.starts_with("compensate by otto:") && done.stdout.contains("CANCELLING"),
        "{}",
        done.stdout
    );
    let again = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &["saga", &id.to_string(), "compensate"],
    )
    .await;
    assert!(!again.ok && again.stderr.contains("409"), "{}", again.stderr);
    let unknown = orderflow(&app, Some(OPERATOR_TOKEN), &["saga", &id.to_string(), "explode"]).await;
    assert!(
        !unknown.ok && unknown.stderr.contains("retry"),
        "clap lists the actions: {}",
        unknown.stderr
    );
    let action: String = sqlx::query_scalar("select detail from admin_actions where order_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(action, "fraud");
}
