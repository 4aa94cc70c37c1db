//! The dashboard in a real browser (Debian's headless Chromium through chromedriver): a saga stuck while the
//! workers are stopped shows on the overview; after the workers return, an operator's click on Retry finishes
//! it. Set `ORDERFLOW_SCREENSHOT_DIR` to keep screenshots of the pages.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{
    Killed, OPERATOR_TOKEN, Options, TestApp, VIEWER_TOKEN, eventually, free_port, spawn_app_with,
    spawn_worker_process,
};

/// chromedriver on a free port and a headless Chromium session (the flags this machine needs: no sandbox as
/// root, no background networking on a closed network, a fresh profile).
async fn browser() -> (Killed, Client, std::path::PathBuf) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let port = free_port();
    let driver = Killed(
        std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian: chromium-driver; .ci/run installs it)"),
    );
    let profile = std::env::temp_dir().join(format!("orderflow-chromium-{}", uuid::Uuid::new_v4().simple()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = eventually("chromedriver to start a session", Duration::from_secs(30), || {
        let (url, capabilities) = (url.clone(), capabilities.clone());
        async move {
            ClientBuilder::rustls()
                .ok()?
                .capabilities(capabilities)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    (driver, client, profile)
}

async fn screenshot(client: &Client, name: &str) {
    if let Some(dir) = std::env::var_os("ORDERFLOW_SCREENSHOT_DIR") {
        let png = client.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

async fn sign_in(client: &Client, api: &str, token: &str) {
    client.goto(&format!("{api}/admin")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_operator_sees_a_stuck_saga_and_a_click_on_retry_finishes_it() {
    let app = spawn_app_with(Options {
        worker: false,
        tune: |s| {
            s.retry_base_delay = Duration::from_secs(600);
            s.retry_max_delay = Duration::from_secs(600);
        },
        ..Options::default()
    })
    .await;
    app.put_sku("tee-black-m", 10, 1999).await;

    // A worker whose first payment call fails: the retry is ten minutes away. Then the workers stop.
    let env = [
        ("ORDERFLOW_PAYMENTS_URL", app.paysim.as_str()),
        ("ORDERFLOW_RETRY_BASE_MS", "600000"),
        ("ORDERFLOW_RETRY_MAX_MS", "600000"),
        ("FAILPOINTS", "worker.pay.before_authorize=return(browser)"),
    ];
    let mut worker = spawn_worker_process(&app.database_url, &env);
    let id = app
        .create_order("browser", &[("tee-black-m", 2)], "pm_card_visa")
        .await;
    app.wait_for_error(id, "failpoint", Duration::from_secs(20)).await;
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let (_driver, client, profile) = browser().await;
    sign_in(&client, &app.api, OPERATOR_TOKEN).await;
    let link = client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&format!("#stuck a[href='/admin/sagas/{id}']")))
        .await
        .expect("the stuck saga is listed on the overview");
    screenshot(&client, "dashboard-overview.png").await;
    link.click().await.unwrap();
    let page = client.source().await.unwrap();
    assert!(
        page.contains("RESERVED") && page.contains("failpoint worker.pay.before_authorize"),
        "{page}"
    );
    assert!(page.contains("stuck-badge"));

    // The workers return (without the fault, still with the ten-minute backoff): nothing moves by itself...
    app.start_worker();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(app.order(id).await["status"], "RESERVED");
    // ...until the operator clicks Retry.
    client
        .find(Locator::Id("retry"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = client
        .wait()
        .for_element(Locator::Id("flash"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(flash.contains("pay attempt"), "{flash}");
    let order = app
        .wait_for(id, &["FULFILLED", "CANCELLED"], Duration::from_secs(20))
        .await;
    assert_eq!(order["status"], "FULFILLED");
    client.refresh().await.unwrap();
    let page = client.source().await.unwrap();
    assert!(
        page.contains(r#"<span class="badge FULFILLED">FULFILLED</span>"#),
        "{page}"
    );
    assert!(
        page.contains("otto (operator)"),
        "the action is recorded with who did it"
    );
    screenshot(&client, "dashboard-saga.png").await;

    // A viewer sees the same page without the buttons.
    client
        .find(Locator::Css("header button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Signed out once the sign-in form is back (the click's navigation may still be under way).
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    sign_in(&client, &app.api, VIEWER_TOKEN).await;
    client
        .goto(&format!("{}/admin/sagas/{id}", app.api))
        .await
        .unwrap();
    assert!(
        client.find(Locator::Id("retry")).await.is_err(),
        "no retry button for a viewer"
    );
    assert!(client.source().await.unwrap().contains("vera (viewer)"));

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

#[tokio::test]
async fn the_dashboard_refuses_a_wrong_token_and_forged_forms() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let page = app.http.get(format!("{}/admin", app.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Sign in"));
    let wrong = app
        .http
        .post(format!("{}/admin/login", app.api))
        .form(&[("token", "guess-guess-guess-guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("not valid"));

    app.put_sku("F", 5, 100).await;
    let id = app.create_order("forged", &[("F", 1)], "pm_card_visa").await;
    let forged = app
        .http
        .post(format!("{}/admin/sagas/{id}/compensate", app.api))
        .header("Cookie", format!("orderflow_admin={OPERATOR_TOKEN}"))
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(app.order(id).await["status"], "CREATED", "nothing happened");
}

/// Signs in over plain HTTP; the session cookie (`name=value`).
async fn session(app: &TestApp, token: &str) -> String {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/admin/login", app.api))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// A dashboard page's HTML, with the session cookie.
async fn page(app: &TestApp, cookie: &str, path: &str) -> String {
    let response = app
        .anonymous
        .get(format!("{}{path}", app.api))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

/// The keys page over plain HTTP (the session cookie by hand): an operator creates a key, sees its secret once,
/// and revokes it; a viewer sees the keys without the forms; a forged form makes nothing.
#[tokio::test]
async fn operators_create_and_revoke_keys_on_the_keys_page() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let operator = session(&app, OPERATOR_TOKEN).await;
    let keys_page = page(&app, &operator, "/admin/keys").await;
    assert!(
        keys_page.contains(&app.key[..12]) && keys_page.contains(r#"id="new-key""#),
        "{keys_page}"
    );
    let csrf = keys_page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();

    let forged = app
        .anonymous
        .post(format!("{}/admin/keys", app.api))
        .header("Cookie", &operator)
        .form(&[("csrf", "forged"), ("name", "evil"), ("scope", "orders:read")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let refused = app
        .anonymous
        .post(format!("{}/admin/keys", app.api))
        .header("Cookie", &operator)
        .form(&[("csrf", csrf.as_str()), ("name", "shop")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422, "no scope ticked");
    assert!(refused.text().await.unwrap().contains("Not created: scopes"));
    let made: i64 = sqlx::query_scalar("select count(*) from api_keys where created_by = 'otto'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(made, 0, "neither the forged nor the refused form made a key");

    let created = app
        .anonymous
        .post(format!("{}/admin/keys", app.api))
        .header("Cookie", &operator)
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "<b>shop</b>"),
            ("scope", "orders:write"),
            ("scope", "catalog:read"),
            ("rate_per_second", "7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let created = created.text().await.unwrap();
    let secret = created
        .split(r#"<code id="secret">"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("ofk_"), "{created}");
    assert!(
        created.contains("&#60;b&#62;shop&#60;/b&#62;") && !created.contains("<b>shop"),
        "escaped: {created}"
    );
    let works = app
        .anonymous
        .get(format!("{}/v1/skus/NONE", app.api))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(works.status(), 404, "the key works (catalog:read)");
    let listed = page(&app, &operator, "/admin/keys").await;
    assert!(!listed.contains(&secret), "the secret is shown once");
    assert!(
        listed.contains("7/s") && listed.contains("orders:write"),
        "{listed}"
    );

    let viewer = page(&app, &session(&app, VIEWER_TOKEN).await, "/admin/keys").await;
    assert!(
        viewer.contains(&secret[..12]) && !viewer.contains("new-key") && !viewer.contains("id=\"revoke-"),
        "{viewer}"
    );

    let id: uuid::Uuid = sqlx::query_scalar("select id from api_keys where created_by = 'otto'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let revoked = app
        .anonymous
        .post(format!("{}/admin/keys/{id}/revoke", app.api))
        .header("Cookie", &operator)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200, "redirected to the keys page");
    assert!(
        revoked
            .text()
            .await
            .unwrap()
            .contains("Revoked &#60;b&#62;shop&#60;/b&#62;")
    );
    let actions: Vec<String> =
        sqlx::query_scalar("select action from admin_actions where api_key_id = $1 order by id")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(actions, ["key_create", "key_revoke"]);
}
