//! The README's front door: `orderflow dev` on a fresh database prints an API key and lines that work as pasted,
//! and the README's "Try it" block, its customer-token example and its stock examples (the ledger, locations)
//! work against it with that key.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Killed, binary, eventually, free_port, server_url};

/// Runs `script` in bash (`set -euo pipefail`) with `ORDERFLOW_KEY` set, and returns its stdout.
async fn bash(script: &str, key: &str) -> String {
    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env("ORDERFLOW_KEY", key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\nfailed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The JSON documents in `text`, one after another (curl prints them without separators).
fn documents(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn orderflow_devs_lines_and_the_readmes_try_it_block_work_as_pasted() {
    let database_url = format!(
        "{}/orderflow_test_{}",
        server_url(),
        uuid::Uuid::new_v4().simple()
    );
    let api = format!("127.0.0.1:{}", free_port());
    let paysim = format!("127.0.0.1:{}", free_port());
    let log = std::env::temp_dir().join(format!("orderflow-dev-{}.log", uuid::Uuid::new_v4().simple()));
    // NATS off: this test's events stay in its database's feed.
    let _dev = Killed(
        std::process::Command::new(binary("orderflow"))
            .args(["dev", "--api-addr", &api, "--paysim-addr", &paysim])
            .env("DATABASE_URL", &database_url)
            .env("ORDERFLOW_ADMIN_TOKENS", "")
            .env("ORDERFLOW_NATS_URL", "")
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let printed = eventually(
        "orderflow dev to print its lines",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("Ctrl-C stops everything").then_some(text)
        },
    )
    .await;

    // The lines after "Try", up to the blank line that ends them.
    let block: Vec<&str> = printed
        .lines()
        .skip_while(|l| !l.starts_with("Try"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(block[0].starts_with("export ORDERFLOW_KEY=ofk_"), "{printed}");
    let key = block[0].trim_start_matches("export ORDERFLOW_KEY=");
    let out = bash(&block.join("\n"), "").await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 2, "the order, then the feed: {out}");
    assert_eq!(answers[0]["customer_id"], "c1", "{out}");
    assert!(
        answers[1]["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{out}"
    );

    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let try_it = readme
        .split("## Try it")
        .nth(1)
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap();
    let out = bash(
        &format!("{}\nsleep 1", try_it.replace("localhost:8080", &api)),
        key,
    )
    .await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 3, "the sku, the order, its events: {out}");
    assert_eq!(answers[0]["sku"], "tee-black-m", "{out}");
    assert_eq!(answers[1]["lines"][0]["sku"], "tee-black-m", "{out}");
    assert_eq!(answers[2][0]["type"], "order.created", "{out}");

    // The Security section's customer-token example, after Try it (its sku exists).
    let example = readme
        .split("### Customer tokens")
        .nth(1)
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap();
    let out = bash(&example.replace("localhost:8080", &api), key).await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 3, "the order, the list, the refusal: {out}");
    assert_eq!(answers[0]["customer_id"], "c1", "{out}");
    let listed = answers[1]["orders"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.iter().all(|o| o["customer_id"] == "c1"),
        "{out}"
    );
    assert_eq!(answers[2]["status"], 403, "{out}");

    // The stock ledger's and the locations' examples, in the README's order (the sku exists).
    let block = |heading: &str| {
        readme
            .split(heading)
            .nth(1)
            .and_then(|section| section.split("```sh\n").nth(1))
            .and_then(|block| block.split("```").next())
            .unwrap()
            .replace("localhost:8080", &api)
    };
    // A conditional set on the version just read: 200 with the figure set, or 412 if an order of the blocks
    // above moved the stock between the read and the set (both as the README says).
    let out = bash(&block("### Setting stock without losing a commit"), key).await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 1, "the set's answer: {out}");
    assert!(
        answers[0]["on_hand"] == 25 || answers[0]["type"] == "urn:orderflow:problem:precondition-failed",
        "{out}"
    );
    let out = bash(&block("### Stock you can account for"), key).await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 2, "the adjustment, the movements: {out}");
    assert_eq!(answers[0]["delta"], 12, "{out}");
    let reasons: Vec<&Value> = answers[1]["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["reason"])
        .collect();
    assert!(reasons.contains(&&Value::from("adjustment")), "{out}");
    let out = bash(&block("### Stock locations"), key).await;
    let answers = documents(&out);
    assert_eq!(answers.len(), 2, "the location, the transfer: {out}");
    assert_eq!(answers[0]["code"], "store-berlin", "{out}");
    assert_eq!(answers[1]["to"], "store-berlin", "{out}");
    let at: Vec<&Value> = answers[1]["stock"]["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["location"])
        .collect();
    assert!(at.contains(&&Value::from("store-berlin")), "{out}");

    // The shipments example: a shipment order waits in PAID, then ships two of its three units; the refunds
    // example (which goes on with its order) refunds one of them by line.
    let out = bash(
        &format!(
            "{}\n{}\n{}",
            block("### Shipments"),
            block("### Refunds"),
            block("### Returns")
        ),
        key,
    )
    .await;
    let answers = documents(&out);
    assert_eq!(
        answers.len(),
        6,
        "the sku, the shipment, the list, the refund, the refunds, the return: {out}"
    );
    assert_eq!(answers[0]["fulfilment"], "shipment", "{out}");
    assert_eq!(
        (&answers[1]["status"], &answers[1]["amount"]),
        (&Value::from("PENDING"), &Value::from(3000)),
        "{out}"
    );
    assert_eq!(answers[2]["shipments"][0]["status"], "DONE", "{out}");
    assert_eq!(
        (&answers[3]["status"], &answers[3]["amount"]),
        (&Value::from("PENDING"), &Value::from(1500)),
        "{out}"
    );
    assert_eq!(
        (
            &answers[4]["captured"],
            &answers[4]["refunded"],
            &answers[4]["refundable"]
        ),
        (&Value::from(3000), &Value::from(1500), &Value::from(1500)),
        "{out}"
    );
    assert_eq!(answers[4]["refunds"][0]["status"], "DONE", "{out}");
    assert_eq!(
        (
            &answers[5]["return"]["restock"],
            &answers[5]["return"]["refund_declined"],
            &answers[5]["refund"]
        ),
        (&Value::from(true), &Value::from(true), &Value::Null),
        "{out}"
    );

    // docs/API.md's stock reference, after the README's (the location exists).
    let api_doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md"))
            .unwrap();
    let example = api_doc
        .split("# Stock")
        .nth(1)
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|block| block.split("```").next())
        .unwrap()
        .replace("localhost:8080", &api);
    let out = bash(&example, key).await;
    let answers = documents(&out);
    assert_eq!(
        answers.len(),
        4,
        "the set, the adjustment, the movements, the locations: {out}"
    );
    assert!(
        answers[0]["on_hand"].is_i64() || answers[0]["status"] == 412,
        "{out}"
    );
    assert_eq!(
        (&answers[1]["delta"], &answers[1]["location"]),
        (&Value::from(-1), &Value::from("store-berlin")),
        "{out}"
    );
    assert_eq!(answers[2]["movements"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(answers[3]["locations"][0]["code"], "default", "{out}");
}
