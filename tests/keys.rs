//! API keys: every `/v1` route refuses a request without a valid key (401), with a key that lacks the route's
//! scope (403 naming it) or over the key's rate (429), and changes nothing when it refuses; operators manage keys
//! from the admin API, each act in the audit.

use std::time::Duration;

use orderflow_shared::api_key::{MAX_RATE, Scope};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    OPERATOR_TOKEN, Options, TestApp, VIEWER_TOKEN, create_key, eventually, spawn_app_with,
};

fn without_worker() -> Options {
    Options {
        worker: false,
        ..Options::default()
    }
}

/// One `/v1` operation, the scope it needs and what it answers a key that has the scope.
struct Route {
    method: Method,
    /// As `/openapi.json` names it.
    template: &'static str,
    path: String,
    body: Option<Value>,
    scope: Scope,
    allowed: u16,
}

/// Every `/v1` operation, on order `id` and sku `S`; the cancellation last, since it changes the order.
fn routes(id: Uuid) -> Vec<Route> {
    let route =
        |method: Method, template: &'static str, path: String, body: Option<Value>, scope, allowed| Route {
            method,
            template,
            path,
            body,
            scope,
            allowed,
        };
    let order = json!({"customer_id": "matrix", "currency": "USD", "lines": [{"sku": "S", "quantity": 1}],
                       "payment_token": "pm_card_visa"});
    vec![
        route(
            Method::GET,
            "/v1/skus/{sku}",
            "/v1/skus/S".into(),
            None,
            Scope::CatalogRead,
            200,
        ),
        route(
            Method::PUT,
            "/v1/skus/{sku}",
            "/v1/skus/S".into(),
            Some(json!({"on_hand": 50, "price": 100, "currency": "USD"})),
            Scope::CatalogWrite,
            200,
        ),
        route(
            Method::POST,
            "/v1/skus/{sku}/adjustments",
            "/v1/skus/S/adjustments".into(),
            Some(json!({"delta": 1, "reason": "matrix"})),
            Scope::CatalogWrite,
            201,
        ),
        route(
            Method::GET,
            "/v1/skus/{sku}/movements",
            "/v1/skus/S/movements".into(),
            None,
            Scope::CatalogRead,
            200,
        ),
        route(
            Method::GET,
            "/v1/locations",
            "/v1/locations".into(),
            None,
            Scope::CatalogRead,
            200,
        ),
        route(
            Method::PUT,
            "/v1/locations/{code}",
            "/v1/locations/matrix".into(),
            Some(json!({"name": "matrix"})),
            Scope::CatalogWrite,
            201,
        ),
        // After the location is made (routes are let through in this order).
        route(
            Method::POST,
            "/v1/skus/{sku}/transfers",
            "/v1/skus/S/transfers".into(),
            Some(json!({"from": "default", "to": "matrix", "quantity": 1, "reason": "matrix"})),
            Scope::CatalogWrite,
            201,
        ),
        route(
            Method::GET,
            "/v1/orders",
            "/v1/orders".into(),
            None,
            Scope::OrdersRead,
            200,
        ),
        route(
            Method::POST,
            "/v1/orders",
            "/v1/orders".into(),
            Some(order),
            Scope::OrdersWrite,
            202,
        ),
        route(
            Method::GET,
            "/v1/orders/{id}",
            format!("/v1/orders/{id}"),
            None,
            Scope::OrdersRead,
            200,
        ),
        route(
            Method::GET,
            "/v1/orders/{id}/events",
            format!("/v1/orders/{id}/events"),
            None,
            Scope::OrdersRead,
            200,
        ),
        // Nothing of the matrix's order was delivered (no worker runs): a return is refused as such (409).
        route(
            Method::POST,
            "/v1/orders/{id}/returns",
            format!("/v1/orders/{id}/returns"),
            Some(json!({"lines": [{"sku": "S", "quantity": 1}], "restock": true, "refund": false})),
            Scope::FulfilmentWrite,
            409,
        ),
        route(
            Method::GET,
            "/v1/orders/{id}/returns",
            format!("/v1/orders/{id}/returns"),
            None,
            Scope::OrdersRead,
            200,
        ),
        // Nothing of the matrix's order is captured (no worker runs): a refund is refused as such (409).
        route(
            Method::POST,
            "/v1/orders/{id}/refunds",
            format!("/v1/orders/{id}/refunds"),
            Some(json!({"amount": 1, "reason": "requested_by_customer"})),
            Scope::RefundsWrite,
            409,
        ),
        route(
            Method::GET,
            "/v1/orders/{id}/refunds",
            format!("/v1/orders/{id}/refunds"),
            None,
            Scope::OrdersRead,
            200,
        ),
        // The matrix's order is an auto order: a shipment is refused as such (409), not for want of a scope.
        route(
            Method::POST,
            "/v1/orders/{id}/shipments",
            format!("/v1/orders/{id}/shipments"),
            Some(json!({"lines": [{"sku": "S", "quantity": 1}]})),
            Scope::FulfilmentWrite,
            409,
        ),
        route(
            Method::GET,
            "/v1/orders/{id}/shipments",
            format!("/v1/orders/{id}/shipments"),
            None,
            Scope::OrdersRead,
            200,
        ),
        route(
            Method::GET,
            "/v1/events",
            "/v1/events".into(),
            None,
            Scope::EventsRead,
            200,
        ),
        route(
            Method::POST,
            "/v1/customer_tokens",
            "/v1/customer_tokens".into(),
            Some(json!({"customer_id": "matrix", "ttl_seconds": 600})),
            Scope::OrdersWrite,
            201,
        ),
        route(
            Method::POST,
            "/v1/orders/{id}/cancel",
            format!("/v1/orders/{id}/cancel"),
            Some(json!({"reason": "matrix"})),
            Scope::OrdersWrite,
            202,
        ),
    ]
}

/// Sends `route` with `authorization` as the header's value (none if `None`), on a client that sends no key of
/// its own.
async fn send(app: &TestApp, route: &Route, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app
        .anonymous
        .request(route.method.clone(), format!("{}{}", app.api, route.path))
        .header("Idempotency-Key", Uuid::new_v4().to_string());
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(body) = &route.body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// The status, problem `type`, `detail` and `WWW-Authenticate` of a refusal, checked to be a problem.
async fn refusal(response: reqwest::Response, what: &str) -> (u16, String, String, String) {
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{what}"
    );
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["type"].as_str().unwrap().to_owned(),
        body["detail"].as_str().unwrap().to_owned(),
        challenge,
    )
}

async fn revoke(app: &TestApp, id: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/admin/v1/keys/{id}/revoke", app.api))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
}

async fn key_id(app: &TestApp, secret: &str) -> String {
    let hint = format!("{}…", &secret[..12]);
    let id: Uuid = sqlx::query_scalar("select id from api_keys where hint = $1")
        .bind(&hint)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    id.to_string()
}

#[tokio::test]
async fn every_v1_route_needs_a_valid_key_with_its_scope_and_a_refusal_changes_nothing() {
    let app = spawn_app_with(without_worker()).await;
    app.put_sku("S", 10, 100).await;
    let id = app.create_order("matrix", &[("S", 1)], "pm_card_visa").await;
    let routes = routes(id);

    // The matrix covers every /v1 operation the API documents.
    let document: Value = app.get_json(&format!("{}/openapi.json", app.api)).await;
    let mut documented: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        // The provider's webhooks authenticate by their signature (`provider_webhooks` tests them).
        .filter(|(path, _)| path.starts_with("/v1/") && !path.starts_with("/v1/provider/"))
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let mut covered: Vec<String> = routes
        .iter()
        .map(|r| format!("{} {}", r.method, r.template))
        .collect();
    documented.sort();
    covered.sort();
    assert_eq!(covered, documented, "every /v1 operation is in the matrix");
    for (path, item) in document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/") && !p.starts_with("/v1/provider/"))
    {
        for (method, operation) in item.as_object().unwrap() {
            for status in ["401", "403", "429"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }

    let revoked = create_key(&app.pool, &Scope::ALL, MAX_RATE).await;
    let revoked_id = key_id(&app, &revoked).await;
    assert_eq!(revoke(&app, &revoked_id).await.status(), 200);
    let unknown = format!("ofk_{}", "0123456789abcdef".repeat(4));
    let invalid = [
        ("malformed", "Bearer not-a-key".to_owned()),
        ("upper-case", format!("Bearer {}", app.key.to_uppercase())),
        ("basic", "Basic dXNlcjpwYXNzd29yZA==".to_owned()),
        ("an admin token", format!("Bearer {OPERATOR_TOKEN}")),
        ("unknown", format!("Bearer {unknown}")),
        ("revoked", format!("Bearer {revoked}")),
    ];

    for route in &routes {
        let name = format!("{} {}", route.method, route.path);
        let (status, kind, _, challenge) = refusal(send(&app, route, None).await, &name).await;
        assert_eq!(
            (status, kind.as_str()),
            (401, "urn:orderflow:problem:unauthorized"),
            "{name} without a key"
        );
        assert_eq!(challenge, r#"Bearer realm="orderflow""#, "{name}");
        for (what, authorization) in &invalid {
            let (status, kind, _, challenge) =
                refusal(send(&app, route, Some(authorization)).await, &name).await;
            assert_eq!(
                (status, kind.as_str()),
                (401, "urn:orderflow:problem:unauthorized"),
                "{name}: {what}"
            );
            // RFC 6750: another scheme is no bearer token at all; a bearer token that is no key is invalid.
            let expected = if authorization.starts_with("Basic ") {
                r#"Bearer realm="orderflow""#
            } else {
                r#"Bearer realm="orderflow", error="invalid_token""#
            };
            assert_eq!(challenge, expected, "{name}: {what}");
        }
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != route.scope).collect();
        let wrong = create_key(&app.pool, &others, MAX_RATE).await;
        let (status, kind, detail, challenge) =
            refusal(send(&app, route, Some(&format!("Bearer {wrong}"))).await, &name).await;
        assert_eq!(
            (status, kind.as_str()),
            (403, "urn:orderflow:problem:insufficient-scope"),
            "{name}"
        );
        assert!(detail.contains(route.scope.as_str()), "{name}: {detail}");
        assert!(
            challenge.contains(&format!(r#"scope="{}""#, route.scope)),
            "{name}: {challenge}"
        );
    }

    // Nothing a refused request asked for happened.
    let sku = app.sku("S").await;
    assert_eq!(
        (sku["on_hand"].as_i64(), sku["price"].as_i64()),
        (Some(10), Some(100)),
        "{sku}"
    );
    let adjustments: i64 = sqlx::query_scalar("select count(*) from stock_adjustments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(adjustments, 0, "no refused adjustment or transfer was made");
    let locations: i64 = sqlx::query_scalar("select count(*) from locations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(locations, 1, "no refused request made a location");
    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1, "no refused creation made an order");
    assert_eq!(
        app.order(id).await["status"],
        "CREATED",
        "no refused cancellation cancelled"
    );

    // A key with only the route's scope is let through.
    for route in &routes {
        let only = create_key(&app.pool, &[route.scope], MAX_RATE).await;
        let response = send(&app, route, Some(&format!("Bearer {only}"))).await;
        assert_eq!(
            response.status().as_u16(),
            route.allowed,
            "{} {}",
            route.method,
            route.path
        );
    }
    assert_eq!(app.sku("S").await["on_hand"], 50 + 1, "set, then adjusted");
    assert_eq!(
        app.order(id).await["status"],
        "CANCELLING",
        "cancelled (no worker runs the compensation)"
    );

    // Health and the document need no key; /metrics needs metrics:read; the admin API does not take a key.
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = app
            .anonymous
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let admin = app
        .http
        .get(format!("{}/admin/v1/queues", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401, "an API key is not an admin token");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_is_counted() {
    let app = spawn_app_with(without_worker()).await;
    let slow = create_key(&app.pool, &[Scope::CatalogRead], 1).await;
    let get = || {
        app.anonymous
            .get(format!("{}/v1/skus/NONE", app.api))
            .bearer_auth(&slow)
            .send()
    };
    // A burst of twice the rate, then refusals until a second has passed.
    assert_eq!(get().await.unwrap().status(), 404);
    assert_eq!(get().await.unwrap().status(), 404);
    let limited = get().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let (_, kind, _, _) = refusal(limited, "over the rate").await;
    assert_eq!(kind, "urn:orderflow:problem:rate-limited");
    // Another key is not held back by this one.
    assert_eq!(app.api_get("/v1/skus/NONE").await.status(), 404);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        get().await.unwrap().status(),
        404,
        "allowed again after Retry-After"
    );

    let metrics = app.api_get("/metrics").await.text().await.unwrap();
    let hint = &slow[..12];
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("orderflow_rate_limited_requests_total") && l.contains(hint))
        .unwrap_or_else(|| panic!("no rate-limited count for {hint}:\n{metrics}"));
    let count: f64 = counted.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{counted}");
}

#[tokio::test]
async fn operators_create_list_and_revoke_keys_each_act_audited_and_a_revoked_key_stops_working() {
    let app = spawn_app_with(without_worker()).await;
    let create = |token: &'static str, body: Value| {
        app.anonymous
            .post(format!("{}/admin/v1/keys", app.api))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let body = json!({"name": "storefront", "scopes": ["catalog:read", "orders:write", "catalog:read"]});
    assert_eq!(
        create(VIEWER_TOKEN, body.clone()).await.unwrap().status(),
        403,
        "a viewer cannot create"
    );

    let created = create(OPERATOR_TOKEN, body).await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ofk_") && secret.len() == 68, "{secret}");
    assert_eq!(created["scopes"], json!(["orders:write", "catalog:read"]));
    assert_eq!(
        created["rate_per_second"], 100,
        "ORDERFLOW_API_KEY_RATE's default"
    );
    assert_eq!(created["created_by"], "otto");
    let id = created["id"].as_str().unwrap().to_owned();

    // Only the hash is stored; a list never shows a secret.
    let stored: Vec<u8> = sqlx::query_scalar("select secret_hash from api_keys where id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, orderflow_shared::api_key::hash(&secret));
    let listed = app
        .anonymous
        .get(format!("{}/admin/v1/keys", app.api))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("storefront") && !listed.contains(&secret[4..]),
        "{listed}"
    );

    // The key works for its scopes, then stops within the cache's time once revoked.
    let get_sku = || {
        app.anonymous
            .get(format!("{}/v1/skus/NONE", app.api))
            .bearer_auth(&secret)
            .send()
    };
    assert_eq!(get_sku().await.unwrap().status(), 404);
    let revoke_as = |token: &'static str| {
        app.anonymous
            .post(format!("{}/admin/v1/keys/{id}/revoke", app.api))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        revoke_as(VIEWER_TOKEN).await.unwrap().status(),
        403,
        "a viewer cannot revoke"
    );
    let revoked = revoke_as(OPERATOR_TOKEN).await.unwrap();
    assert_eq!(revoked.status(), 200);
    let revoked: Value = revoked.json().await.unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(
        revoke_as(OPERATOR_TOKEN).await.unwrap().status(),
        200,
        "revoking again is harmless"
    );
    eventually(
        "the revoked key to be refused",
        Duration::from_secs(10),
        || async { (get_sku().await.ok()?.status() == 401).then_some(()) },
    )
    .await;

    // Each act once in the audit, with who did it.
    let audit: Vec<(String, String, String)> = sqlx::query_as(
        "select action, actor, role from admin_actions where api_key_id = $1::uuid order by id",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [
        ("key_create", "otto", "operator"),
        ("key_revoke", "otto", "operator"),
    ];
    assert_eq!(
        audit,
        expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned())),
    );

    // Bad requests name the field; an unknown key is 404.
    for (body, field) in [
        (json!({"name": "", "scopes": ["orders:read"]}), "name"),
        (
            json!({"name": "x".repeat(101), "scopes": ["orders:read"]}),
            "name",
        ),
        (json!({"name": "a", "scopes": []}), "scopes"),
        (
            json!({"name": "a", "scopes": ["orders:read", "orders:delete"]}),
            "scopes[1]",
        ),
        (
            json!({"name": "a", "scopes": ["orders:read"], "rate_per_second": 0}),
            "rate_per_second",
        ),
        (
            json!({"name": "a", "scopes": ["orders:read"], "rate_per_second": MAX_RATE + 1}),
            "rate_per_second",
        ),
    ] {
        let response = create(OPERATOR_TOKEN, body.clone()).await.unwrap();
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["field"], field, "{body}");
    }
    for unknown in [Uuid::now_v7().to_string(), "not-an-id".to_owned()] {
        let response = app
            .anonymous
            .post(format!("{}/admin/v1/keys/{unknown}/revoke", app.api))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{unknown}");
    }
    let keys: i64 = sqlx::query_scalar("select count(*) from api_keys where name = 'a'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "no refused request made a key");
}

/// `/metrics` on the API's address needs a key with `metrics:read`; with `ORDERFLOW_API_METRICS_ADDR` it is
/// served there without one, and not on the API's address.
#[tokio::test]
async fn metrics_need_their_scope_or_their_own_address() {
    let app = spawn_app_with(without_worker()).await;
    let get = |key: Option<String>| {
        let app = &app;
        async move {
            let mut request = app.anonymous.get(format!("{}/metrics", app.api));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            request.send().await.unwrap()
        }
    };
    let anonymous = get(None).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
    let others = Scope::ALL
        .into_iter()
        .filter(|s| *s != Scope::MetricsRead)
        .collect::<Vec<_>>();
    let without = create_key(&app.pool, &others, MAX_RATE).await;
    let refused = get(Some(without)).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer realm="orderflow", error="insufficient_scope", scope="metrics:read""#
    );
    let scraper = create_key(&app.pool, &[Scope::MetricsRead], MAX_RATE).await;
    let scraped = get(Some(scraper.clone())).await;
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("orderflow_queue_jobs"));
    // A scraper key reaches nothing else.
    let orders = app
        .anonymous
        .get(format!("{}/v1/orders", app.api))
        .bearer_auth(&scraper)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 403);

    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", crate::helpers::free_port())
        .parse()
        .unwrap();
    let private = spawn_app_with(Options {
        metrics_addr: Some(addr),
        ..without_worker()
    })
    .await;
    let open = eventually("the metrics address answers", Duration::from_secs(10), || async {
        reqwest::get(format!("http://{addr}/metrics")).await.ok()
    })
    .await;
    assert_eq!(open.status(), 200);
    assert!(open.text().await.unwrap().contains("orderflow_queue_jobs"));
    let moved = private
        .http
        .get(format!("{}/metrics", private.api))
        .send()
        .await
        .unwrap();
    assert_eq!(
        moved.status(),
        404,
        "not on the API's address when it has its own"
    );
}
