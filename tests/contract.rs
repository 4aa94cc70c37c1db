//! The OpenAPI document is a contract: it validates as OpenAPI 3.1 (openapi-spec-validator), and a schema-driven
//! fuzzer (schemathesis) sending what the document allows, and what it does not, to a live instance with a key
//! finds no 5xx, no status or content type the document does not name, and no response that breaks its schema.
//! Both tools come from PyPI into `target/python` (`tests/run.sh` installs them).

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::helpers::{OPERATOR_TOKEN, Options, TestApp, spawn_app_with};

/// A tool of `target/python`.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/python/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `bash tests/run.sh` installs it",
        path.display()
    );
    path
}

fn report(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn app() -> TestApp {
    spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn the_document_validates_as_openapi_3_1_with_every_scope_and_problem_type() {
    let app = app().await;
    let document: Value = app.get_json(&format!("{}/openapi.json", app.api)).await;
    assert_eq!(document["openapi"], "3.1.0");
    let file = std::env::temp_dir().join(format!(
        "orderflow-openapi-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, serde_json::to_vec(&document).unwrap()).unwrap();
    let output = tokio::process::Command::new(tool("openapi-spec-validator"))
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(output.status.success(), "{}", report(&output));

    // Every error a handler can answer is a problem, and every operation documents the refusals before it.
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("default"), "{method} {path}");
            for (status, response) in responses {
                // Successes, and 304 Not Modified (no body: a conditional read's "what you have is current").
                if status.starts_with('2') || status == "304" {
                    continue;
                }
                let content = response["content"].as_object().unwrap();
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{method} {path} {status}"
                );
            }
            // The provider's webhooks authenticate by their signature (`provider_webhooks`), not a key.
            if path.starts_with("/v1/provider/") {
                assert!(
                    operation.get("security").is_none(),
                    "{method} {path} needs no key"
                );
            } else if path.starts_with("/v1/") || path == "/metrics" {
                let scopes = &operation["security"][0]["api_key"];
                assert!(
                    scopes.as_array().is_some_and(|s| s.len() == 1),
                    "{method} {path} names its scope: {operation}"
                );
            }
        }
    }
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
}

/// Runs schemathesis against the app's live API on the operations whose path matches `paths`, with
/// `authorization`, and the config file `config` (parameters to use) when given.
async fn fuzz(app: &TestApp, paths: &str, authorization: &str, config: Option<&str>) {
    let mut command = tokio::process::Command::new(tool("st"));
    let config_file = config.map(|text| {
        let file = std::env::temp_dir().join(format!(
            "orderflow-schemathesis-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&file, text).unwrap();
        file
    });
    if let Some(file) = &config_file {
        command.arg("--config-file").arg(file);
    }
    let output = command
        .args(["run", &format!("{}/openapi.json", app.api), "--url", &app.api])
        .args(["--header", &format!("Authorization: {authorization}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--include-path-regex", paths])
        .args([
            "--max-examples",
            "25",
            "--seed",
            "15",
            "--workers",
            "1",
            "--no-color",
        ])
        .args(["--generation-database", "none"])
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    if let Some(file) = config_file {
        let _ = std::fs::remove_file(file);
    }
    let text = report(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("passed"), "{text}");
    assert!(
        !text.contains("Authentication failed"),
        "the fuzzer's requests got past authentication: {text}"
    );
}

#[tokio::test]
async fn a_schema_driven_fuzzer_finds_no_5xx_no_undocumented_answer_and_no_broken_response() {
    let app = app().await;
    app.put_sku("tee", 1_000, 1_999).await;
    let order = app.create_order("fuzz", &[("tee", 1)], "pm_card_visa").await;
    let v1 = "^/(v1/|healthz|readyz|metrics)";
    let key = format!("Bearer {}", app.key);
    // Whatever the generator makes of every parameter.
    fuzz(&app, v1, &key, None).await;
    // A sku and an order that exist, so that answers past the 404 are checked too.
    fuzz(
        &app,
        v1,
        &key,
        Some(&format!(
            "[parameters]\n\"path.sku\" = \"tee\"\n\"path.id\" = \"{order}\"\n"
        )),
    )
    .await;
    // The admin API with an operator's token.
    fuzz(
        &app,
        "^/admin/v1/",
        &format!("Bearer {OPERATOR_TOKEN}"),
        Some(&format!("[parameters]\n\"path.id\" = \"{order}\"\n")),
    )
    .await;
}
