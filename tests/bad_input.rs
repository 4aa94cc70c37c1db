//! Bad input of each kind gets its 4xx problem response naming what is wrong, and changes nothing.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

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
