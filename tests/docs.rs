//! The docs' lists and the benchmark's copies are the code's: every variable OrderFlow reads is in the README's
//! configuration table and every variable there is read somewhere, so the table cannot drift from `settings`;
//! the pgbench scripts send the service's own SQL. (The transition table, the flow and the event types are checked
//! against the code by unit tests in `orderflow-shared`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `ORDERFLOW_…` names that appear as whole words in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ORDERFLOW_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| {
                !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '<' || c == '>')
            })
            .unwrap_or(tail.len());
        found.insert(tail[..end].trim_end_matches('_').to_owned());
        rest = &tail[end..];
    }
    found
}

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn the_readme_configuration_table_is_every_variable_the_code_reads() {
    let root = workspace();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table: String = readme
        .split("## Configuration")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split(" | ").next().unwrap_or_default().to_owned() + "\n")
        .collect();
    let documented = variables(&table);
    let mut code = String::new();
    for crate_dir in ["shared", "api", "worker", "paysim", "cli", "tests"] {
        sources(&root.join(crate_dir), &mut code);
    }
    // String literals only: the name as the code passes it to the environment.
    let read: BTreeSet<String> = variables(&code)
        .into_iter()
        .filter(|name| code.contains(&format!("\"{name}\"")))
        .map(|name| match name.strip_prefix("ORDERFLOW_MAX_ATTEMPTS_") {
            // One row covers the per-step budgets.
            Some(step) if !step.is_empty() => "ORDERFLOW_MAX_ATTEMPTS_<STEP>".to_owned(),
            _ => name,
        })
        .collect();
    let missing: Vec<&String> = read.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&read).collect();
    assert!(
        missing.is_empty(),
        "read by the code but not in the README's table: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in the README's table but read nowhere: {stale:?}"
    );
}

/// Lower case, one space for any run of white space, none inside parentheses: how two copies of one SQL statement
/// are compared whatever their layout.
fn normalized(sql: &str) -> String {
    let words = sql
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    words.replace("( ", "(").replace(" )", ")")
}

/// The pgbench scripts the ceiling runs (bench/pgbench) send the service's own SQL: the statement that ends a
/// step's attempts (`order::advance`) word for word, the stock change (`stock_change!`) in the step's, and the
/// queue's job inserts in order creation's script.
#[test]
fn the_ceiling_scripts_send_the_services_sql() {
    let root = workspace();
    let read = |script: &str| std::fs::read_to_string(root.join("bench/pgbench").join(script)).unwrap();
    // The harness passes the moves as a pgbench variable where the service binds $1.
    let batch = normalized(&read("saga_step_batch.sql").replace(":moves::jsonb[]", "$1::jsonb[]"));
    assert!(
        batch.contains(&normalized(orderflow_shared::order::advance::STATEMENT)),
        "bench/pgbench/saga_step_batch.sql no longer sends order::advance's statement"
    );
    assert!(
        batch.contains(&normalized(orderflow_shared::stock_change!())),
        "saga_step_batch.sql: the stock change (the reservation's movements) differs"
    );
    let jobs = normalized(orderflow_shared::step_job_inserts!());
    assert!(
        batch.contains(&jobs),
        "saga_step_batch.sql: the job inserts differ"
    );
    assert!(
        normalized(&read("create_order.sql")).contains(&jobs),
        "create_order.sql: the job inserts differ"
    );
}

/// `docker-compose.yml` publishes the API's port and nothing else, and PostgreSQL needs a password.
#[test]
fn docker_compose_publishes_only_the_api_and_postgres_has_a_password() {
    let compose = std::fs::read_to_string(workspace().join("docker-compose.yml")).unwrap();
    // Services are the two-space-indented keys under `services:`.
    let mut services: Vec<(String, String)> = Vec::new();
    let body = compose.split("\nservices:\n").nth(1).unwrap();
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            services.push((name.to_owned(), String::new()));
        } else if let Some((_, text)) = services.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["postgres", "nats", "paysim", "api", "worker"]);
    for (name, text) in &services {
        assert_eq!(
            text.contains("ports:"),
            name == "api",
            "{name} publishes a port: {text}"
        );
    }
    let postgres = &services[0].1;
    assert!(
        postgres.contains("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?"),
        "{postgres}"
    );
    assert!(!compose.contains("trust"), "no trust authentication");
}
