//! The cache of the compile-time checked queries (`.sqlx/`, committed, so builds need no database:
//! `SQLX_OFFLINE=true` in `.cargo/config.toml`) is the schema's and the source's. Each cached query, described
//! again by PostgreSQL against a database migrated as OrderFlow migrates one, gives exactly what the cache says
//! (columns, types, nullability, parameters), and each is still a query of the source: with the build itself,
//! which fails on a query that has no cache entry, this is what `cargo sqlx prepare --check` checks.
//! `tests/sqlx-prepare.sh` regenerates the cache.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::{Executor, SqlSafeStr};

use crate::helpers::{Options, spawn_app_with};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[tokio::test]
async fn the_query_cache_is_the_schemas_and_the_sources() {
    let app = spawn_app_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let root = workspace();
    let mut sources = String::new();
    for crate_dir in ["shared", "api", "worker", "paysim", "cli", "bench"] {
        rust_sources(&root.join(crate_dir), &mut sources);
    }
    let mut conn = app.pool.acquire().await.unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join(".sqlx")).unwrap() {
        let path = entry.unwrap().path();
        let cached: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let query = cached["query"].as_str().unwrap();
        let hash: String = Sha256::digest(query.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            cached["hash"].as_str(),
            Some(hash.as_str()),
            "{}: hash",
            path.display()
        );
        assert!(
            sources.contains(query),
            "{} caches a query no source has any more (run tests/sqlx-prepare.sh):\n{query}",
            path.display()
        );
        let described = (&mut *conn)
            .describe(sqlx::AssertSqlSafe(query.to_owned()).into_sql_str())
            .await
            .unwrap_or_else(|e| panic!("{}: PostgreSQL cannot describe it: {e}\n{query}", path.display()));
        assert_eq!(
            serde_json::to_value(&described).unwrap(),
            cached["describe"],
            "{} is stale against the migrated schema (run tests/sqlx-prepare.sh):\n{query}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked > 30, "only {checked} cached queries");
}
