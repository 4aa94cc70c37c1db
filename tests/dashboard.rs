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
    // Signed in once the header shows the sign-out button. The click may return before the form's post is
    // answered, and a navigation started meanwhile would cancel it.
    if client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("sign-out"))
        .await
        .is_err()
    {
        panic!(
            "the sign-in did not lead to a signed-in page: {}",
            client.source().await.unwrap()
        );
    }
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
    let stuck_link = format!("#stuck a[href='/admin/sagas/{id}']");
    client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&stuck_link))
        .await
        .expect("the stuck saga is listed on the overview");
    screenshot(&client, "dashboard-overview.png").await;
    // The overview reloads itself every few seconds: a link found before a reload is stale after it, so each
    // try looks the link up again (three tries).
    let mut clicked = false;
    for _ in 0..3 {
        let link = client.find(Locator::Css(&stuck_link)).await;
        if let Ok(link) = link
            && link.click().await.is_ok()
        {
            clicked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(clicked, "the stuck saga's link could be clicked");
    // The saga's page (only it has the stuck badge), not the overview the click started from.
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("stuck-badge"))
        .await
        .expect("the click leads to the saga's page");
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
        page.contains("<td>otto (operator)</td>"),
        "the action is recorded with who did it: {page}"
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
    let page = client.source().await.unwrap();
    assert!(page.contains("vera (viewer)"), "{page}");
    assert!(
        client.find(Locator::Id("retry")).await.is_err(),
        "no retry button for a viewer"
    );

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// A client that does not follow redirects and keeps no cookies: each test sends its cookies by hand.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The secret a page shows once (`<code id="secret">`).
fn secret_of(html: &str) -> String {
    html.split(r#"<code id="secret">"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned()
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned()
}

/// The `name=value` of the response's cookie `name`, and the whole Set-Cookie line.
fn set_cookie(response: &reqwest::Response, name: &str) -> (String, String) {
    let line = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie: {:?}", response.headers()));
    (line.split(';').next().unwrap().to_owned(), line)
}

/// The sign-in form: its nonce cookie and CSRF token.
async fn sign_in_form(app: &TestApp) -> (String, String) {
    let form = plain().get(format!("{}/admin", app.api)).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let (cookie, _) = set_cookie(&form, "orderflow_sign_in");
    (cookie, csrf_of(&form.text().await.unwrap()))
}

/// Posts the sign-in form with `token`, as a browser would after loading it.
async fn post_sign_in(app: &TestApp, token: &str) -> reqwest::Response {
    let (cookie, csrf) = sign_in_form(app).await;
    plain()
        .post(format!("{}/admin/login", app.api))
        .header("Cookie", cookie)
        .form(&[("token", token), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap()
}

/// Signs in over plain HTTP; the session cookie (`name=value`).
async fn session(app: &TestApp, token: &str) -> String {
    let response = post_sign_in(app, token).await;
    assert_eq!(response.status(), 303);
    set_cookie(&response, "orderflow_admin").0
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
    let wrong = post_sign_in(&app, "guess-guess-guess-guess").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("not valid"));
    // The sign-in form itself: without its CSRF token, or with another form's, no session opens.
    let (cookie, _) = sign_in_form(&app).await;
    let (_, other_forms_csrf) = sign_in_form(&app).await;
    for form in [
        vec![("token", OPERATOR_TOKEN)],
        vec![("token", OPERATOR_TOKEN), ("csrf", other_forms_csrf.as_str())],
    ] {
        let forged = plain()
            .post(format!("{}/admin/login", app.api))
            .header("Cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{form:?}");
        assert!(
            forged
                .headers()
                .get_all("set-cookie")
                .iter()
                .all(|c| !c.to_str().unwrap().starts_with("orderflow_admin="))
        );
    }

    app.put_sku("F", 5, 100).await;
    let id = app.create_order("forged", &[("F", 1)], "pm_card_visa").await;
    let operator = session(&app, OPERATOR_TOKEN).await;
    let forged = plain()
        .post(format!("{}/admin/sagas/{id}/compensate", app.api))
        .header("Cookie", &operator)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // The admin token as the cookie (what the cookie used to be) is no session.
    let token_as_cookie = plain()
        .post(format!("{}/admin/sagas/{id}/compensate", app.api))
        .header("Cookie", format!("orderflow_admin={OPERATOR_TOKEN}"))
        .form(&[("csrf", "anything")])
        .send()
        .await
        .unwrap();
    assert_eq!(token_as_cookie.status(), 401);
    assert_eq!(app.order(id).await["status"], "CREATED", "nothing happened");
}

/// A session is a random id kept server-side: not the admin token, no bearer token, ended for good by signing
/// out (a form with its CSRF token); its cookie is HttpOnly, SameSite=Strict, Secure but on plain-HTTP
/// localhost; every page has the security headers.
#[tokio::test]
async fn sessions_are_server_side_and_end_at_sign_out() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let response = post_sign_in(&app, OPERATOR_TOKEN).await;
    assert_eq!(response.status(), 303);
    let (cookie, line) = set_cookie(&response, "orderflow_admin");
    let id = cookie.trim_start_matches("orderflow_admin=").to_owned();
    assert_eq!(id.len(), 64);
    assert!(!id.contains(OPERATOR_TOKEN));
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Strict") && line.contains("Path=/admin"),
        "{line}"
    );
    assert!(!line.contains("Secure"), "plain HTTP on 127.0.0.1: {line}");
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from admin_sessions where id_hash = sha256(convert_to($1, 'UTF8')) and admin_name = 'otto'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1, "the server keeps the id's hash");

    // Behind a TLS proxy, or under any other name, the cookie is Secure.
    for (header, value) in [("x-forwarded-proto", "https"), ("host", "orders.example.com")] {
        let form = plain()
            .get(format!("{}/admin", app.api))
            .header(header, value)
            .send()
            .await
            .unwrap();
        let (_, line) = set_cookie(&form, "orderflow_sign_in");
        assert!(line.ends_with("; Secure"), "{header}: {line}");
    }

    // The session is no bearer token for the admin API.
    let as_bearer = plain()
        .get(format!("{}/admin/v1/queues", app.api))
        .bearer_auth(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), 401);

    let overview = plain()
        .get(format!("{}/admin", app.api))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(overview.headers()[header], value, "{header}");
    }
    let policy = overview.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let html = overview.text().await.unwrap();
    assert!(html.contains(r#"id="sign-out""#), "signed in: {html}");
    let csrf = csrf_of(&html);

    // Signing out needs the form's token; then the session is over, whatever the browser still holds.
    let forged = plain()
        .post(format!("{}/admin/logout", app.api))
        .header("Cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(
        page(&app, &cookie, "/admin").await.contains(r#"id="sign-out""#),
        "still signed in"
    );
    let out = plain()
        .post(format!("{}/admin/logout", app.api))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(set_cookie(&out, "orderflow_admin").1.contains("Max-Age=0"));
    let after = page(&app, &cookie, "/admin").await;
    assert!(
        after.contains("Sign in") && !after.contains("sign-out"),
        "{after}"
    );
    app.put_sku("F", 5, 100).await;
    let order = app
        .create_order("after-sign-out", &[("F", 1)], "pm_card_visa")
        .await;
    let replayed = plain()
        .post(format!("{}/admin/sagas/{order}/compensate", app.api))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 401, "the old session acts on nothing");
    assert_eq!(app.order(order).await["status"], "CREATED");
}

/// Failed sign-ins: a client past five waits (429 with Retry-After), even with the right token (per address:
/// `session::tests` shows another address is not held up).
#[tokio::test]
async fn failed_sign_ins_are_limited() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(post_sign_in(&app, "a-wrong-guess-0123456789").await.status(), 401);
    }
    let held = post_sign_in(&app, OPERATOR_TOKEN).await;
    assert_eq!(held.status(), 429);
    let wait: u64 = held.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&wait), "{wait}");
    assert!(held.text().await.unwrap().contains("Too many failed sign-ins"));
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
    let secret = secret_of(&created);
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

/// A shipment order's saga, on the admin API and on its dashboard page: its shipments with their units, where
/// they shipped from and what they captured; waiting for the next shipment, it is not stuck.
#[tokio::test]
async fn a_saga_shows_its_shipments_and_refunds_and_waiting_for_the_warehouse_is_not_stuck() {
    let app = spawn_app_with(Options::default()).await;
    app.put_shipment_sku("CRATE", 5, 700).await;
    let id = app.create_order("crates", &[("CRATE", 3)], "pm_card_visa").await;
    app.wait_paid(id).await;
    let (status, _) = app
        .ship(
            id,
            "crates-1",
            json!({"lines": [{"sku": "CRATE", "quantity": 2}], "carrier": "DHL", "tracking": "JD77"}),
        )
        .await;
    assert_eq!(status, 202);
    app.wait_for(id, &["PARTIALLY_FULFILLED"], Duration::from_secs(30))
        .await;
    let (status, refund) = app
        .refund(
            id,
            "crates-back",
            json!({"lines": [{"sku": "CRATE", "quantity": 1}], "reason": "duplicate", "note": "sent twice"}),
        )
        .await;
    assert_eq!(status, 202, "{refund}");
    app.wait_refund(id, &refund, "DONE").await;
    // Past the test apps' stuck threshold (1 s) without progress.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let detail = app.admin_json(&format!("/admin/v1/sagas/{id}")).await;
    assert_eq!(detail["stuck"], false, "waiting for the warehouse: {detail}");
    let refunds = detail["refunds"].as_array().unwrap();
    assert_eq!(
        (refunds.len(), &refunds[0]["amount"], &refunds[0]["status"]),
        (1, &json!(700), &json!("DONE")),
        "{detail}"
    );
    let shipments = detail["shipments"].as_array().unwrap();
    assert_eq!(shipments.len(), 1, "{detail}");
    assert_eq!(
        (&shipments[0]["status"], &shipments[0]["amount"]),
        (&json!("DONE"), &json!(1400))
    );

    let cookie = session(&app, VIEWER_TOKEN).await;
    let page = plain()
        .get(format!("{}/admin/sagas/{id}", app.api))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let table = html.split(r#"id="shipments""#).nth(1).expect("a shipments table");
    assert!(table.contains("2 × CRATE from default"), "{table}");
    assert!(table.contains("1400") && table.contains("DHL JD77"), "{table}");
    let refunds = html.split(r#"id="refunds""#).nth(1).expect("a refunds table");
    assert!(
        refunds.contains("700") && refunds.contains("1 × CRATE") && refunds.contains("sent twice"),
        "{refunds}"
    );
    assert!(!html.contains("stuck-badge"), "not stuck");
}

/// The webhook pages over plain HTTP: an operator makes an endpoint and sees its secret once, reads its deliveries
/// and one delivery's attempts, replays it and disables the endpoint; a viewer sees no forms; a forged form makes
/// nothing.
#[tokio::test]
async fn operators_manage_webhook_endpoints_and_read_their_deliveries_on_the_dashboard() {
    let receiver = crate::helpers::Receiver::accepting().await;
    let app = spawn_app_with(Options {
        tune: |settings| settings.webhooks.poll_interval = Duration::from_millis(50),
        ..Options::default()
    })
    .await;
    let operator = session(&app, OPERATOR_TOKEN).await;
    let list = page(&app, &operator, "/admin/webhooks").await;
    assert!(
        list.contains(r#"id="new-endpoint""#) && list.contains("order.paid"),
        "{list}"
    );
    let csrf = csrf_of(&list);
    let post = |path: &str, form: Vec<(&str, &str)>| {
        let request = app
            .anonymous
            .post(format!("{}{path}", app.api))
            .header("Cookie", &operator)
            .form(&form);
        async move { request.send().await.unwrap() }
    };
    let forged = post(
        "/admin/webhooks",
        vec![("csrf", "forged"), ("url", receiver.url.as_str())],
    )
    .await;
    assert_eq!(forged.status(), 403);
    let refused = post(
        "/admin/webhooks",
        vec![("csrf", &csrf), ("url", "http://shop.example/hooks")],
    )
    .await;
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("Not created: url"));
    let created = post(
        "/admin/webhooks",
        vec![
            ("csrf", &csrf),
            ("url", receiver.url.as_str()),
            ("event_type", "order.created"),
        ],
    )
    .await;
    assert_eq!(created.status(), 200);
    let created = created.text().await.unwrap();
    let secret = secret_of(&created);
    assert!(secret.starts_with("whsec_"), "{created}");
    assert!(
        !page(&app, &operator, "/admin/webhooks").await.contains(&secret),
        "shown once"
    );

    app.put_sku("widget", 5, 100).await;
    app.create_order("c1", &[("widget", 1)], "pm_card_visa").await;
    let got = receiver.wait_for("the event", |got| !got.is_empty()).await;
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .unwrap();
    let endpoint: uuid::Uuid = sqlx::query_scalar("select id from webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let delivery: i64 = sqlx::query_scalar("select id from webhook_deliveries")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let one = page(&app, &operator, &format!("/admin/webhooks/deliveries/{delivery}")).await;
        if one.contains(r#"id="attempts""#) {
            assert!(one.contains("200"), "{one}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{one}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliveries = page(&app, &operator, &format!("/admin/webhooks/{endpoint}")).await;
    assert!(
        deliveries.contains(&format!(r#"id="replay-{delivery}""#)),
        "{deliveries}"
    );
    // The client follows the redirect to the endpoint's page, which says what was done.
    let replayed = post(
        &format!("/admin/webhooks/deliveries/{delivery}/replay"),
        vec![("csrf", &csrf)],
    )
    .await;
    assert_eq!(replayed.status(), 200);
    assert!(replayed.text().await.unwrap().contains("is on its way again"));
    receiver.wait_for("the replay", |got| got.len() >= 2).await;

    let viewer = session(&app, VIEWER_TOKEN).await;
    let seen = page(&app, &viewer, &format!("/admin/webhooks/{endpoint}")).await;
    assert!(
        !seen.contains("replay-") && !seen.contains("replay-range"),
        "{seen}"
    );
    assert!(
        !page(&app, &viewer, "/admin/webhooks")
            .await
            .contains("new-endpoint")
    );

    let disabled = post(
        &format!("/admin/webhooks/{endpoint}/disable"),
        vec![("csrf", &csrf)],
    )
    .await;
    assert_eq!(disabled.status(), 200);
    let list = page(&app, &operator, "/admin/webhooks").await;
    assert!(list.contains("disabled from the dashboard"), "{list}");
}
