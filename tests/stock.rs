//! A sku's stock as the catalogue API sets it: every read carries the version of the stock (`ETag`), and a set
//! made conditional on it (`If-Match`) is refused (412) once the stock moved, so a stock count cannot write an old
//! figure back over an order's commit.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// `PUT /v1/skus/{sku}` with `if_match` as `If-Match` (none: unconditional).
async fn put_stock(app: &TestApp, sku: &str, on_hand: i64, if_match: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .put(format!("{}/v1/skus/{sku}", app.api))
        .json(&json!({"on_hand": on_hand, "price": 1000, "currency": "USD"}));
    if let Some(tag) = if_match {
        request = request.header("If-Match", tag);
    }
    request.send().await.unwrap()
}

/// The sku's body and its `ETag`.
async fn read(app: &TestApp, sku: &str) -> (Value, String) {
    let response = app.api_get(&format!("/v1/skus/{sku}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tag = response.headers()["etag"].to_str().unwrap().to_owned();
    (response.json().await.unwrap(), tag)
}

#[tokio::test]
async fn a_stock_count_read_before_an_order_committed_cannot_write_over_the_commit() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    // A warehouse sync reads the stock ...
    let (before, tag) = read(&app, "A").await;
    assert_eq!(before["on_hand"], 10);
    // ... an order commits two units meanwhile ...
    let id = app.create_order("count", &[("A", 2)], "pm_card_visa").await;
    app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;
    assert_eq!(app.sku("A").await["on_hand"], 8);

    // ... and the sync writes back the figure it read, on the version it read: refused, nothing written.
    let stale = put_stock(&app, "A", 10, Some(&tag)).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let problem: Value = stale.json().await.unwrap();
    assert_eq!(problem["type"], "urn:orderflow:problem:precondition-failed");
    assert_eq!(app.sku("A").await["on_hand"], 8, "the commit was written over");

    // Read again, decide again: the set on the current version goes through and names the next one.
    let (now, current) = read(&app, "A").await;
    assert_ne!(current, tag, "the stock moved, so did its version");
    assert_eq!(
        format!("\"{}\"", now["version"].as_str().unwrap()),
        current,
        "the body's version is the ETag's"
    );
    assert_eq!(now["on_hand"], 8);
    let fresh = put_stock(&app, "A", 12, Some(&current)).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    let set: Value = fresh.json().await.unwrap();
    let next = format!("\"{}\"", set["version"].as_str().unwrap());
    assert_ne!(next, current);
    assert_eq!(
        read(&app, "A").await,
        (set, next),
        "the answer is the stock as set, at the version it names"
    );
}

/// The lost update itself, as every PUT was before versions (ef010c1): a set without If-Match still writes the
/// figure it read over an order's commit, which is why a stock count sends the version it read (above) and a
/// delivery is a delta (`POST /v1/skus/{sku}/adjustments`).
#[tokio::test]
async fn without_if_match_a_count_read_before_a_commit_writes_over_it() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    let (before, _) = read(&app, "A").await;
    let id = app.create_order("count", &[("A", 2)], "pm_card_visa").await;
    app.wait_for(id, &["FULFILLED"], Duration::from_secs(30)).await;
    assert_eq!(app.sku("A").await["on_hand"], 8);

    let blind = put_stock(&app, "A", before["on_hand"].as_i64().unwrap(), None).await;
    assert_eq!(blind.status(), StatusCode::OK);
    assert_eq!(
        app.sku("A").await["on_hand"],
        10,
        "the two units the order took are back on the shelf: the update the commit made is lost"
    );
    // The ledger still accounts for every unit: the count's movement says so.
    let movements = app
        .api_get("/v1/skus/A/movements")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let last = movements["movements"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (&last["reason"], &last["on_hand_delta"]),
        (&json!("stock_count"), &json!(2)),
        "{last}"
    );
}

#[tokio::test]
async fn of_two_counts_made_on_the_same_version_one_is_set_and_the_other_refused() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    let (_, tag) = read(&app, "A").await;

    let (first, second) = tokio::join!(
        put_stock(&app, "A", 20, Some(&tag)),
        put_stock(&app, "A", 30, Some(&tag))
    );
    let mut statuses = [first.status(), second.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::PRECONDITION_FAILED]);
    let (winner, loser) = if first.status() == StatusCode::OK {
        (first, second)
    } else {
        (second, first)
    };
    let set: Value = winner.json().await.unwrap();
    let refusal: Value = loser.json().await.unwrap();
    let (now, current) = read(&app, "A").await;
    assert_eq!(
        now["on_hand"], set["on_hand"],
        "the stock is what the one accepted count set"
    );
    assert!(
        refusal["detail"].as_str().unwrap().contains(&current),
        "the refusal names the version the stock is at: {refusal}"
    );
}

#[tokio::test]
async fn if_match_takes_star_lists_and_refuses_a_sku_that_does_not_exist() {
    let app = spawn_app().await;
    assert_eq!(
        put_stock(&app, "NEW", 5, Some("*")).await.status(),
        StatusCode::PRECONDITION_FAILED,
        "If-Match: * needs an existing sku"
    );
    assert_eq!(
        put_stock(&app, "NEW", 5, Some("\"1\"")).await.status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        app.api_get("/v1/skus/NEW").await.status(),
        StatusCode::NOT_FOUND,
        "nothing was created"
    );

    assert_eq!(
        put_stock(&app, "NEW", 5, None).await.status(),
        StatusCode::CREATED
    );
    let (_, tag) = read(&app, "NEW").await;
    assert_eq!(
        put_stock(&app, "NEW", 6, Some("*")).await.status(),
        StatusCode::OK
    );
    let (_, tag2) = read(&app, "NEW").await;
    let list = format!("{tag}, {tag2}, \"0\"");
    assert_eq!(
        put_stock(&app, "NEW", 7, Some(&list)).await.status(),
        StatusCode::OK,
        "any tag of the list matches"
    );
    let (_, tag3) = read(&app, "NEW").await;
    assert_eq!(
        put_stock(&app, "NEW", 8, Some(&format!("W/{tag3}")))
            .await
            .status(),
        StatusCode::PRECONDITION_FAILED,
        "a weak tag never matches, not even the current version's"
    );
    let malformed = put_stock(&app, "NEW", 9, Some("version-7")).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let problem: Value = malformed.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("If-Match"),
        "{problem}"
    );
    assert_eq!(app.sku("NEW").await["on_hand"], 7);
}

#[tokio::test]
async fn a_read_is_conditional_too_not_modified_while_the_version_holds() {
    let app = spawn_app().await;
    app.put_sku("A", 10, 1000).await;
    let (_, tag) = read(&app, "A").await;
    let get = |header: &'static str, value: String| {
        let request = app
            .http
            .get(format!("{}/v1/skus/A", app.api))
            .header(header, value);
        async move { request.send().await.unwrap() }
    };

    let same = get("If-None-Match", format!("W/{tag}")).await;
    assert_eq!(
        same.status(),
        StatusCode::NOT_MODIFIED,
        "weak comparison for If-None-Match"
    );
    assert_eq!(same.headers()["etag"].to_str().unwrap(), tag);
    assert_eq!(
        get("If-None-Match", "*".to_owned()).await.status(),
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(get("If-Match", tag.clone()).await.status(), StatusCode::OK);

    app.put_sku("A", 11, 1000).await;
    let moved = get("If-None-Match", tag.clone()).await;
    assert_eq!(moved.status(), StatusCode::OK, "the stock moved: a full answer");
    let body: Value = moved.json().await.unwrap();
    assert_eq!(body["on_hand"], 11);
    let refused = get("If-Match", tag.clone()).await;
    assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        get("If-None-Match", "not-a-tag".to_owned()).await.status(),
        StatusCode::BAD_REQUEST
    );
}
