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

#[tokio::test]
async fn keys_are_created_listed_and_revoked_from_the_command_line() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let viewer = orderflow(
        &app,
        Some(VIEWER_TOKEN),
        &["keys", "create", "--name", "shop", "--scope", "orders:read"],
    )
    .await;
    assert!(!viewer.ok && viewer.stderr.contains("403"), "{}", viewer.stderr);
    let missing = orderflow(&app, Some(OPERATOR_TOKEN), &["keys", "create", "--name", "shop"]).await;
    assert!(
        !missing.ok && missing.stderr.contains("--scope"),
        "clap asks for a scope: {}",
        missing.stderr
    );
    let unknown = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &["keys", "create", "--name", "shop", "--scope", "orders:delete"],
    )
    .await;
    assert!(
        !unknown.ok && unknown.stderr.contains("orders:delete") && unknown.stderr.contains("422"),
        "{}",
        unknown.stderr
    );

    let created = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &[
            "keys",
            "create",
            "--name",
            "storefront",
            "--scope",
            "orders:write,orders:read",
            "--scope",
            "catalog:read",
            "--rate",
            "25",
        ],
    )
    .await;
    assert!(created.ok, "{}", created.stderr);
    assert!(
        created
            .stdout
            .contains("orders:read,orders:write,catalog:read at 25/s"),
        "{}",
        created.stdout
    );
    let secret = created
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("ofk_"))
        .unwrap_or_else(|| panic!("the secret is printed: {}", created.stdout))
        .to_owned();
    let works = app
        .anonymous
        .get(format!("{}/v1/orders", app.api))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(works.status(), 200, "the printed key works");

    let list = orderflow(&app, Some(VIEWER_TOKEN), &["keys", "list"]).await;
    assert!(list.ok, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SCOPES") && lines[0].contains("REVOKED"),
        "{}",
        list.stdout
    );
    let row = lines.iter().find(|l| l.contains("storefront")).unwrap();
    assert!(
        row.contains(&secret[..12]) && !list.stdout.contains(&secret),
        "the hint, never the secret: {row}"
    );
    let id = row.split_whitespace().next().unwrap().to_owned();

    let revoked = orderflow(&app, Some(OPERATOR_TOKEN), &["keys", "revoke", &id]).await;
    assert!(revoked.ok, "{}", revoked.stderr);
    assert!(revoked.stdout.contains("revoked at"), "{}", revoked.stdout);
    let json: Value = serde_json::from_str(
        &orderflow(&app, Some(VIEWER_TOKEN), &["keys", "list", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    let key = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(key["revoked_at"].is_string(), "{key}");
    let gone = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &["keys", "revoke", &Uuid::now_v7().to_string()],
    )
    .await;
    assert!(!gone.ok && gone.stderr.contains("404"), "{}", gone.stderr);
}

#[tokio::test]
async fn what_customers_and_providers_wrote_is_printed_with_control_characters_escaped() {
    let (app, id) = stuck_app().await;
    // Written past the API's checks, as a row from before them or a provider's error text could be.
    sqlx::query("update orders set customer_id = $2, last_error = $3 where id = $1")
        .bind(id)
        .bind("\u{1b}[2J\u{1b}]0;pwned\u{7}")
        .bind("boom\u{1b}[31m\u{202E}red")
        .execute(&app.pool)
        .await
        .unwrap();
    for args in [
        vec!["saga", &id.to_string()[..]],
        vec!["sagas", "--stuck", "--older-than", "1s"],
    ] {
        let out = orderflow(&app, Some(VIEWER_TOKEN), &args).await;
        assert!(out.ok, "{}", out.stderr);
        assert!(
            !out.stdout.contains('\u{1b}') && !out.stdout.contains('\u{7}'),
            "{:?}",
            out.stdout
        );
        assert!(!out.stdout.contains('\u{202E}'), "{:?}", out.stdout);
    }
    let saga = orderflow(&app, Some(VIEWER_TOKEN), &["saga", &id.to_string()]).await;
    assert!(
        saga.stdout.contains(r"\u{1b}[2J"),
        "escaped, not dropped: {}",
        saga.stdout
    );
}

/// An endpoint made, listed, its deliveries read and replayed, disabled and enabled, from the command line.
#[tokio::test]
async fn webhook_endpoints_are_managed_from_the_command_line() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = spawn_app_with(Options {
        tune: |settings| settings.webhooks.poll_interval = std::time::Duration::from_millis(50),
        ..Options::default()
    })
    .await;
    let created = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &[
            "webhooks",
            "create",
            &receiver.url,
            "--event-type",
            "order.created",
        ],
    )
    .await;
    assert!(created.ok, "{}", created.stderr);
    assert!(
        created.stdout.contains("whsec_"),
        "the secret, once: {}",
        created.stdout
    );
    let listed = orderflow(&app, Some(VIEWER_TOKEN), &["webhooks", "list", "--json"]).await;
    let json: Value = serde_json::from_str(&listed.stdout).unwrap();
    let endpoint = json["endpoints"][0]["id"].as_str().unwrap().to_owned();
    assert!(!listed.stdout.contains("whsec_"), "never the secret again");

    app.put_sku("widget", 5, 100).await;
    app.create_order("c1", &[("widget", 1)], "pm_card_visa").await;
    receiver.wait_for("the event", |got| !got.is_empty()).await;
    let deliveries = orderflow(
        &app,
        Some(VIEWER_TOKEN),
        &["webhooks", "deliveries", &endpoint, "--json"],
    )
    .await;
    let json: Value = serde_json::from_str(&deliveries.stdout).unwrap();
    let delivery = json["deliveries"][0]["id"].as_i64().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let one = orderflow(&app, Some(VIEWER_TOKEN), &["webhooks", "delivery", &delivery]).await;
        if one.stdout.contains("DELIVERED") {
            assert!(one.stdout.contains("200"), "the attempt's status: {}", one.stdout);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", one.stdout);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let replayed = orderflow(&app, Some(OPERATOR_TOKEN), &["webhooks", "replay", &delivery]).await;
    assert!(
        replayed.ok && replayed.stdout.contains("PENDING"),
        "{}",
        replayed.stdout
    );
    receiver.wait_for("the replay", |got| got.len() >= 2).await;

    let viewer = orderflow(&app, Some(VIEWER_TOKEN), &["webhooks", "disable", &endpoint]).await;
    assert!(!viewer.ok && viewer.stderr.contains("403"), "{}", viewer.stderr);
    let disabled = orderflow(
        &app,
        Some(OPERATOR_TOKEN),
        &["webhooks", "disable", &endpoint, "--reason", "maintenance"],
    )
    .await;
    assert!(
        disabled.ok && disabled.stdout.contains("maintenance"),
        "{}",
        disabled.stdout
    );
    let enabled = orderflow(&app, Some(OPERATOR_TOKEN), &["webhooks", "enable", &endpoint]).await;
    assert!(
        enabled.ok && enabled.stdout.contains("yes"),
        "{} {}",
        enabled.stdout,
        enabled.stderr
    );
}
