//! Bad input of each kind gets its 4xx problem response naming what is wrong, and changes nothing.

use serde_json::{Value, json};

use crate::helpers::{OPERATOR_TOKEN, Options, VIEWER_TOKEN, order_body, spawn_app, spawn_app_with};

struct Case {
    name: &'static str,
    body: String,
    content_type: &'static str,
    key: Option<&'static str>,
    status: u16,
    field: Option<&'static str>,
}

fn case(name: &'static str, body: Value, status: u16, field: Option<&'static str>) -> Case {
    Case {
        name,
        body: body.to_string(),
        content_type: "application/json",
        key: Some("k"),
        status,
        field,
    }
}

fn valid() -> Value {
    json!({"customer_id": "c1", "currency": "USD", "lines": [{"sku": "A", "quantity": 1}], "payment_token": "pm_card_visa"})
}

/// The valid body with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

#[tokio::test]
async fn each_kind_of_bad_order_gets_its_problem_response_and_creates_nothing() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    app.put_sku("B", 5, 1000).await;
    app.http
        .put(format!("{}/v1/skus/EU", app.api))
        .json(&json!({"on_hand": 5, "price": 100, "currency": "EUR"}))
        .send()
        .await
        .unwrap();

    let quantity = |q: Value| with("lines", json!([{"sku": "A", "quantity": q}]));
    let mut missing_customer = valid();
    missing_customer.as_object_mut().unwrap().remove("customer_id");

    let cases = vec![
        Case {
            name: "malformed json",
            body: "{\"customer_id\":".into(),
            content_type: "application/json",
            key: Some("k"),
            status: 400,
            field: None,
        },
        Case {
            name: "not json",
            body: "customer_id=c1".into(),
            content_type: "application/x-www-form-urlencoded",
            key: Some("k"),
            status: 415,
            field: None,
        },
        Case {
            name: "no key",
            body: valid().to_string(),
            content_type: "application/json",
            key: None,
            status: 400,
            field: None,
        },
        case("missing field", missing_customer, 422, Some("body")),
        case("unknown field", with("coupon", json!("X")), 422, Some("body")),
        case(
            "blank customer",
            with("customer_id", json!("  ")),
            422,
            Some("customer_id"),
        ),
        case(
            "bad currency",
            with("currency", json!("usd")),
            422,
            Some("currency"),
        ),
        case("empty lines", with("lines", json!([])), 422, Some("lines")),
        case(
            "quantity zero",
            quantity(json!(0)),
            422,
            Some("lines[0].quantity"),
        ),
        case(
            "quantity absurd",
            quantity(json!(1_000_000)),
            422,
            Some("lines[0].quantity"),
        ),
        case(
            "quantity as text",
            quantity(json!("2")),
            422,
            Some("lines[0].quantity"),
        ),
        case(
            "quantity fraction",
            quantity(json!(1.5)),
            422,
            Some("lines[0].quantity"),
        ),
        case(
            "duplicate lines",
            with(
                "lines",
                json!([{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]),
            ),
            422,
            Some("lines[1].sku"),
        ),
        case(
            "unknown sku",
            with(
                "lines",
                json!([{"sku": "A", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]),
            ),
            422,
            Some("lines[1].sku"),
        ),
        case(
            "bad sku code",
            with("lines", json!([{"sku": "a b", "quantity": 1}])),
            422,
            Some("lines[0].sku"),
        ),
        case(
            "currency mismatch",
            with("lines", json!([{"sku": "EU", "quantity": 1}])),
            422,
            Some("lines[0].sku"),
        ),
        case(
            "blank payment token",
            with("payment_token", json!("")),
            422,
            Some("payment_token"),
        ),
    ];

    for c in cases {
        let mut request = app
            .http
            .post(format!("{}/v1/orders", app.api))
            .header("content-type", c.content_type)
            .body(c.body);
        if let Some(key) = c.key {
            request = request.header("Idempotency-Key", format!("{key}-{}", c.name));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), c.status, "{}", c.name);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{}",
            c.name
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], c.status, "{}", c.name);
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:orderflow:problem:"),
            "{}",
            c.name
        );
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{}", c.name);
        if let Some(field) = c.field {
            let got = problem["field"].as_str().unwrap_or_default();
            if field == "body" {
                assert!(!got.is_empty(), "{}: {problem}", c.name);
            } else {
                assert_eq!(got, field, "{}: {problem}", c.name);
            }
        }
    }

    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 0, "no bad request created an order");
    let jobs: i64 = sqlx::query_scalar("select count(*) from apalis.jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "no bad request queued a job");
}

#[tokio::test]
async fn bad_reads_and_sku_writes_get_problem_responses() {
    let app = spawn_app().await;
    app.put_sku("A", 5, 1000).await;
    let unknown = uuid::Uuid::now_v7();
    let reads = [
        ("/v1/orders/not-a-uuid".to_owned(), 400),
        (format!("/v1/orders/{unknown}"), 404),
        (format!("/v1/orders/{unknown}/events"), 404),
        ("/v1/orders?limit=0".to_owned(), 422),
        ("/v1/orders?limit=abc".to_owned(), 422),
        ("/v1/orders?status=shipped".to_owned(), 422),
        ("/v1/orders?after=xyz".to_owned(), 422),
        ("/v1/skus/NOPE".to_owned(), 404),
        ("/v1/nowhere".to_owned(), 404),
    ];
    for (path, status) in reads {
        let response = app.api_get(&path).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }

    let put = |sku: &str, body: Value| {
        app.http
            .put(format!("{}/v1/skus/{sku}", app.api))
            .json(&body)
            .send()
    };
    let negative = put("A", json!({"on_hand": -1, "price": 100, "currency": "USD"}))
        .await
        .unwrap();
    assert_eq!(negative.status(), 422);
    assert_eq!(negative.json::<Value>().await.unwrap()["field"], "on_hand");
    assert_eq!(
        put("A", json!({"on_hand": 1, "price": -5, "currency": "USD"}))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        put("A", json!({"on_hand": 1, "price": 5, "currency": "dollars"}))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        put("bad sku!", json!({"on_hand": 1, "price": 5, "currency": "USD"}))
            .await
            .unwrap()
            .status(),
        422
    );

    // on_hand below what is reserved: hold 3 units with an order whose worker is not running.
    sqlx::query("update skus set reserved = 3 where sku = 'A'")
        .execute(&app.pool)
        .await
        .unwrap();
    let below = put("A", json!({"on_hand": 2, "price": 1000, "currency": "USD"}))
        .await
        .unwrap();
    assert_eq!(below.status(), 409);
    assert_eq!(
        below.json::<Value>().await.unwrap()["type"],
        "urn:orderflow:problem:stock-below-reserved"
    );
    assert_eq!(
        app.sku("A").await["on_hand"],
        5,
        "the rejected update changed nothing"
    );
}

#[tokio::test]
async fn list_pages_with_a_cursor_and_filters() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        worker: false,
        ..Default::default()
    })
    .await;
    app.put_sku("A", 50, 100).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            app.create_order(
                if i % 2 == 0 { "even" } else { "odd" },
                &[("A", 1)],
                "pm_card_visa",
            )
            .await,
        );
    }

    let page1 = app.get_json(&format!("{}/v1/orders?limit=2", app.api)).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = app
        .get_json(&format!("{}/v1/orders?limit=2&after={cursor}", app.api))
        .await;
    let evens = app
        .get_json(&format!("{}/v1/orders?customer_id=even&status=CREATED", app.api))
        .await;

    let ids = |page: &Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected: Vec<String> = created.iter().map(|id| id.to_string()).collect();
    assert_eq!(ids(&page1), expected[0..2]);
    assert_eq!(ids(&page2), expected[2..4]);
    assert_eq!(ids(&evens).len(), 3);
    assert!(evens["next_cursor"].is_null());
}

#[tokio::test]
async fn health_readiness_and_openapi_answer() {
    let app = spawn_app().await;
    assert_eq!(app.api_get("/healthz").await.status(), 200);
    assert_eq!(app.api_get("/readyz").await.status(), 200);
    let doc = app.get_json(&format!("{}/openapi.json", app.api)).await;
    for path in [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/events",
        "/v1/skus/{sku}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

/// Control characters (U+0000, an escape, a bidi override) in every text a client sends: 422 naming the field,
/// never 500 (PostgreSQL refuses U+0000 with SQLSTATE 22021), and nothing written. Durations out of range in the
/// admin filters: 422, not an interval overflow in PostgreSQL.
#[tokio::test]
async fn control_characters_anywhere_and_huge_durations_are_422_naming_the_field() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("A", 5, 1000).await;
    let id = app.create_order("plain", &[("A", 1)], "pm_card_visa").await;
    let hostile = ["nul\u{0}", "\u{1b}]0;pwned\u{7}", "invoice\u{202E}fdp.exe"];

    for text in hostile {
        for field in ["customer_id", "payment_token"] {
            let response = app.post_order(&with(field, json!(text))).await;
            assert_eq!(response.status(), 422, "{field} = {text:?}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["field"], field, "{text:?}");
        }
        let cancel = app
            .http
            .post(format!("{}/v1/orders/{id}/cancel", app.api))
            .json(&json!({"reason": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), 422, "reason = {text:?}");
        assert_eq!(cancel.json::<Value>().await.unwrap()["field"], "reason");
        let act = app
            .http
            .post(format!("{}/admin/v1/sagas/{id}/compensate", app.api))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&json!({"note": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(act.status(), 422, "note = {text:?}");
        assert_eq!(act.json::<Value>().await.unwrap()["field"], "note");
    }
    let encoded = ["%00", "%1B%5D0%3Bpwned%07", "invoice%E2%80%AEfdp.exe"];
    for text in encoded {
        for (path, field) in [
            (format!("/v1/orders?customer_id={text}"), "customer_id"),
            (format!("/v1/skus/{text}"), "sku"),
        ] {
            let response = app.api_get(&path).await;
            assert_eq!(response.status(), 422, "{path}");
            assert_eq!(response.json::<Value>().await.unwrap()["field"], field, "{path}");
        }
        let put = app
            .http
            .put(format!("{}/v1/skus/{text}", app.api))
            .json(&json!({"on_hand": 1, "price": 100, "currency": "USD"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 422, "PUT {text}");
        let sagas = app
            .http
            .get(format!("{}/admin/v1/sagas?error={text}", app.api))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(sagas.status(), 422, "error={text}");
        assert_eq!(sagas.json::<Value>().await.unwrap()["field"], "error");
    }
    for query in [
        "older_than=99999999999d",
        "stuck=true&stuck_after=9999999999999h",
        "older_than=3651d",
    ] {
        let response = app
            .http
            .get(format!("{}/admin/v1/sagas?{query}", app.api))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{query}");
    }
    let fine = app
        .http
        .get(format!("{}/admin/v1/sagas?older_than=3650d", app.api))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200, "ten years is the longest");

    let orders: i64 = sqlx::query_scalar("select count(*) from orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1, "no hostile order was made");
    assert_eq!(
        app.order(id).await["status"],
        "CREATED",
        "no hostile cancellation or action ran"
    );
}

/// A body that is not labelled JSON on cancel and on the operator actions is 415 and does nothing (a browser
/// may send `text/plain` and form bodies cross-site); an empty body still means "no options".
#[tokio::test]
async fn cancel_and_admin_actions_take_only_json_bodies() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    app.put_sku("A", 5, 1000).await;
    let id = app.create_order("forms", &[("A", 1)], "pm_card_visa").await;
    let send = |path: String, content_type: Option<&'static str>, body: &'static str| {
        let mut request = app.http.post(format!("{}{path}", app.api)).body(body);
        if path.starts_with("/admin") {
            request = request.bearer_auth(OPERATOR_TOKEN);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    for path in [
        format!("/v1/orders/{id}/cancel"),
        format!("/admin/v1/sagas/{id}/compensate"),
    ] {
        for (content_type, body) in [
            (Some("text/plain"), r#"{"reason": "cross-site"}"#),
            (Some("application/x-www-form-urlencoded"), "reason=cross-site"),
            (Some("text/plain"), ""),
            (None, r#"{"reason": "unlabelled"}"#),
        ] {
            let response = send(path.clone(), content_type, body).await.unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type:?} {body:?}");
            assert_eq!(response.headers()["content-type"], "application/problem+json");
        }
    }
    assert_eq!(app.order(id).await["status"], "CREATED", "nothing was cancelled");
    let empty = send(format!("/v1/orders/{id}/cancel"), None, "").await.unwrap();
    assert_eq!(empty.status(), 202, "no body, no options");
}

/// axum's own refusals answer as problems too: 405 (with `Allow`), 413 past the body limit, a path that is not
/// UTF-8, a query parameter given twice. Made-up methods share one metrics label.
#[tokio::test]
async fn every_refusal_is_a_problem_and_made_up_methods_do_not_grow_the_metrics() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let problem = |response: reqwest::Response, status: u16, what: &'static str| async move {
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], status, "{what}");
        body
    };

    let delete = app
        .http
        .delete(format!("{}/v1/orders", app.api))
        .send()
        .await
        .unwrap();
    let allow = delete
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = problem(delete, 405, "DELETE /v1/orders").await;
    assert_eq!(body["type"], "urn:orderflow:problem:method-not-allowed");
    assert!(
        allow.is_some_and(|a| a.contains("POST") && a.contains("GET")),
        "Allow names the methods"
    );

    let huge = format!(r#"{{"customer_id": "{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let too_large = app
        .http
        .post(format!("{}/v1/orders", app.api))
        .header("Idempotency-Key", "huge")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let body = problem(too_large, 413, "a 3 MB body").await;
    assert_eq!(body["type"], "urn:orderflow:problem:payload-too-large");

    problem(
        app.api_get("/v1/skus/%FF%FE").await,
        400,
        "a path that is not UTF-8",
    )
    .await;
    problem(
        app.api_get("/v1/orders?limit=1&limit=2").await,
        400,
        "a repeated query parameter",
    )
    .await;
    problem(app.api_get("/v1/nowhere").await, 404, "an unknown route").await;

    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let response = app
            .http
            .request(method, format!("{}/v1/orders", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = app.api_get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("MADEUP"), "no made-up method is a label");
    assert!(metrics.contains(r#"method="other""#), "they share one label");
}

/// Nothing is sold for nothing, in a currency that is not one, or for more than one payment can be.
#[tokio::test]
async fn a_zero_price_an_unknown_currency_and_a_total_over_the_payment_cap_are_refused() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let put = |body: Value| app.http.put(format!("{}/v1/skus/M", app.api)).json(&body).send();
    for (body, field) in [
        (json!({"on_hand": 1, "price": 0, "currency": "USD"}), "price"),
        (json!({"on_hand": 1, "price": 100, "currency": "ABC"}), "currency"),
        (json!({"on_hand": 1, "price": 100, "currency": "XAU"}), "currency"),
        (
            json!({"on_hand": 1, "price": 100_000_000, "currency": "USD"}),
            "price",
        ),
    ] {
        let response = put(body.clone()).await.unwrap();
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["field"], field, "{body}");
    }
    assert_eq!(
        app.api_get("/v1/skus/M").await.status(),
        404,
        "no refused sku was made"
    );

    app.put_sku("BIG", 10, 60_000_000).await;
    let over = app
        .post_order(&order_body("big", &[("BIG", 2)], "pm_card_visa"))
        .await;
    assert_eq!(over.status(), 422, "120,000,000 minor units is over the cap");
    let problem: Value = over.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("99999999"),
        "{problem}"
    );
    let at_most = app
        .post_order(&order_body("big", &[("BIG", 1)], "pm_card_visa"))
        .await;
    assert_eq!(at_most.status(), 202);
}
