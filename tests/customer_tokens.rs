//! Customer tokens: a key with `orders:write` mints one for a customer; with it a browser creates orders for that
//! customer only, sees and cancels only that customer's orders (another customer's order is 404, lists are
//! filtered), never reads the feed or writes the catalogue, and stops working when it expires, is altered, or
//! its key is revoked.

use std::time::Duration;

use chrono::Utc;
use orderflow_shared::api_key::{MAX_RATE, Scope};
use orderflow_shared::customer_token::Signer;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    OPERATOR_TOKEN, Options, TestApp, create_key, eventually, key_id, order_body, spawn_app_with,
};

async fn app() -> TestApp {
    spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await
}

/// Mints a token for `customer` with `key` (the app's own key when `None`).
async fn mint(app: &TestApp, key: Option<&str>, body: Value) -> reqwest::Response {
    app.anonymous
        .post(format!("{}/v1/customer_tokens", app.api))
        .bearer_auth(key.unwrap_or(&app.key))
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn token_for(app: &TestApp, customer: &str) -> String {
    let response = mint(app, None, json!({"customer_id": customer})).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["customer_id"], customer);
    body["token"].as_str().unwrap().to_owned()
}

async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app
        .anonymous
        .request(method, format!("{}{path}", app.api))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if path == "/v1/orders" {
        request = request.header("Idempotency-Key", Uuid::now_v7().to_string());
    }
    request.send().await.unwrap()
}

async fn status_of(app: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("select status from orders where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_customer_token_sees_creates_and_cancels_only_its_customers_orders() {
    let app = app().await;
    app.put_sku("T", 20, 500).await;
    let bobs = app.create_order("bob", &[("T", 1)], "pm_card_visa").await;
    let alices_by_key = app.create_order("alice", &[("T", 1)], "pm_card_visa").await;
    let alice = token_for(&app, "alice").await;

    // Creates for alice; not for bob.
    let created = call(
        &app,
        &alice,
        Method::POST,
        "/v1/orders",
        Some(order_body("alice", &[("T", 1)], "pm_card_visa")),
    )
    .await;
    assert_eq!(created.status(), 202);
    let own: Uuid = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let for_bob = call(
        &app,
        &alice,
        Method::POST,
        "/v1/orders",
        Some(order_body("bob", &[("T", 1)], "pm_card_visa")),
    )
    .await;
    assert_eq!(for_bob.status(), 403);
    assert_eq!(for_bob.headers()["content-type"], "application/problem+json");

    // Reads, events and cancel: alice's orders yes (whoever created them), bob's is not there.
    for id in [own, alices_by_key] {
        for path in [format!("/v1/orders/{id}"), format!("/v1/orders/{id}/events")] {
            assert_eq!(
                call(&app, &alice, Method::GET, &path, None).await.status(),
                200,
                "{path}"
            );
        }
    }
    for path in [format!("/v1/orders/{bobs}"), format!("/v1/orders/{bobs}/events")] {
        let response = call(&app, &alice, Method::GET, &path, None).await;
        assert_eq!(response.status(), 404, "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:orderflow:problem:not-found");
    }
    let cancel_bobs = call(
        &app,
        &alice,
        Method::POST,
        &format!("/v1/orders/{bobs}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancel_bobs.status(), 404);
    assert_eq!(status_of(&app, bobs).await, "CREATED", "bob's order untouched");
    let cancel_own = call(
        &app,
        &alice,
        Method::POST,
        &format!("/v1/orders/{own}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancel_own.status(), 202);
    assert_eq!(status_of(&app, own).await, "CANCELLING");

    // Lists hold alice's orders only, whatever the filter asks.
    let list: Value = call(&app, &alice, Method::GET, "/v1/orders?limit=100", None)
        .await
        .json()
        .await
        .unwrap();
    let mut ids: Vec<&str> = list["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![own.to_string(), alices_by_key.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    let asked_for_bob: Value = call(&app, &alice, Method::GET, "/v1/orders?customer_id=bob", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(asked_for_bob["orders"], json!([]));
    // The key still sees everyone's.
    let all: Value = app.get_json(&format!("{}/v1/orders?limit=100", app.api)).await;
    assert_eq!(all["orders"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_customer_token_never_reads_the_feed_writes_the_catalogue_or_mints() {
    let app = app().await;
    app.put_sku("T", 5, 500).await;
    let token = token_for(&app, "carol").await;
    for (method, path, body) in [
        (Method::GET, "/v1/events", None),
        (
            Method::PUT,
            "/v1/skus/T",
            Some(json!({"on_hand": 1000, "price": 1, "currency": "USD"})),
        ),
        (
            Method::POST,
            "/v1/customer_tokens",
            Some(json!({"customer_id": "carol"})),
        ),
    ] {
        let response = call(&app, &token, method.clone(), path, body).await;
        assert_eq!(response.status(), 403, "{method} {path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:orderflow:problem:insufficient-scope",
            "{problem}"
        );
    }
    assert_eq!(app.sku("T").await["price"], 500, "the catalogue is unchanged");
    // The catalogue's reads follow the minting key: this key has catalog:read, a narrower one has not.
    assert_eq!(
        call(&app, &token, Method::GET, "/v1/skus/T", None).await.status(),
        200
    );
    let narrow = create_key(&app.pool, &[Scope::OrdersWrite], MAX_RATE).await;
    let response = mint(&app, Some(&narrow), json!({"customer_id": "carol"})).await;
    assert_eq!(response.status(), 201);
    let narrow_token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(&app, &narrow_token, Method::GET, "/v1/skus/T", None)
            .await
            .status(),
        403
    );
    assert_eq!(
        call(&app, &narrow_token, Method::GET, "/v1/orders", None)
            .await
            .status(),
        200
    );

    // Minting needs orders:write.
    let reader = create_key(&app.pool, &[Scope::OrdersRead], MAX_RATE).await;
    let refused = mint(&app, Some(&reader), json!({"customer_id": "carol"})).await;
    assert_eq!(refused.status(), 403);
}

#[tokio::test]
async fn an_expired_altered_or_orphaned_token_is_401_and_bad_requests_to_mint_are_422() {
    let app = app().await;
    let signer = Signer::load(&app.pool).await.unwrap();
    let minter = key_id(&app.pool, &app.key).await;
    let (expired, _) = signer.mint(minter, "dave", 60, Utc::now() - chrono::Duration::seconds(61));
    let (fresh, _) = signer.mint(minter, "dave", 60, Utc::now());
    let (signed, signature) = fresh.rsplit_once('.').unwrap();
    let altered = format!("{signed}x.{signature}");
    let foreign = Signer::new(b"some other deployment's secret!!")
        .mint(minter, "dave", 60, Utc::now())
        .0;
    let (unknown_key, _) = signer.mint(Uuid::now_v7(), "dave", 60, Utc::now());
    assert_eq!(
        call(&app, &fresh, Method::GET, "/v1/orders", None).await.status(),
        200
    );
    for (what, token) in [
        ("expired", &expired),
        ("altered", &altered),
        ("signed elsewhere", &foreign),
        ("minted by no key", &unknown_key),
    ] {
        let response = call(&app, token, Method::GET, "/v1/orders", None).await;
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="orderflow", error="invalid_token""#,
            "{what}"
        );
    }

    // Revoking the minting key ends its tokens (within the key cache's few seconds).
    let storefront = create_key(&app.pool, &[Scope::OrdersWrite, Scope::OrdersRead], MAX_RATE).await;
    let response = mint(
        &app,
        Some(&storefront),
        json!({"customer_id": "erin", "ttl_seconds": 600}),
    )
    .await;
    let token = response.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(&app, &token, Method::GET, "/v1/orders", None).await.status(),
        200
    );
    let revoked = app
        .anonymous
        .post(format!(
            "{}/admin/v1/keys/{}/revoke",
            app.api,
            key_id(&app.pool, &storefront).await
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    eventually("the token stops working", Duration::from_secs(10), || async {
        (call(&app, &token, Method::GET, "/v1/orders", None).await.status() == 401).then_some(())
    })
    .await;

    for (body, field) in [
        (json!({"customer_id": ""}), "customer_id"),
        (json!({"customer_id": "a\u{0}b"}), "customer_id"),
        (json!({"customer_id": "c", "ttl_seconds": 86_401}), "ttl_seconds"),
        (json!({"customer_id": "c", "ttl_seconds": 0}), "ttl_seconds"),
    ] {
        let response = mint(&app, None, body.clone()).await;
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["field"], field, "{body}");
    }
}

/// Idempotency-Keys are the customer's under a token: the same key from the storefront's key and from the
/// customer's token are two requests, and a token's repeat replays its own order.
#[tokio::test]
async fn a_customer_tokens_idempotency_keys_are_the_customers() {
    let app = app().await;
    app.put_sku("T", 20, 500).await;
    let token = token_for(&app, "frank").await;
    let body = order_body("frank", &[("T", 1)], "pm_card_visa");
    let send = |bearer: String| {
        let body = body.clone();
        let app = &app;
        async move {
            let response = app
                .anonymous
                .post(format!("{}/v1/orders", app.api))
                .bearer_auth(bearer)
                .header("Idempotency-Key", "checkout-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let by_token = send(token.clone()).await;
    let by_key = send(app.key.clone()).await;
    let again = send(token.clone()).await;
    assert_ne!(by_token, by_key, "two callers, two orders");
    assert_eq!(by_token, again, "the token's repeat replays");
    // A second token for the same customer is the same caller.
    assert_eq!(send(token_for(&app, "frank").await).await, by_token);
}
