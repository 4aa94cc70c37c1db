#!/usr/bin/env bash
# Regenerates `.sqlx/`, the cache of the compile-time checked queries (sqlx's `query!` macros; builds read it,
# `SQLX_OFFLINE=true` in .cargo/config.toml, so they need no database). Run it after changing a query or a
# migration, then commit `.sqlx/`; the test `sqlx_cache::the_query_cache_is_the_schemas_and_the_sources` fails
# until you do. `cargo sqlx prepare --workspace` (sqlx-cli) does the same; this needs only the local PostgreSQL.
#
# 1. A database migrated as OrderFlow migrates one: apalis-postgres's migrations (from the registry's copy of the
#    crate the lock file pins), then ours, applied with psql, each in one transaction as sqlx applies them (the
#    binaries that would migrate it need the cache).
# 2. The crates with queries compiled against it (`SQLX_OFFLINE=false`), the macros writing every query they
#    check to a fresh `.sqlx/` (`SQLX_OFFLINE_DIR`), so it holds exactly the queries the source has.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
DB=orderflow_sqlx_prepare
psql -q "$SERVER/postgres" -c "drop database if exists $DB with (force)" -c "create database $DB"
apalis=$(cargo metadata --format-version 1 | python3 -c \
  "import json,sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name'] == 'apalis-postgres'))")
for migration in "$(dirname "$apalis")"/migrations/*.sql migrations/*.sql; do
  psql -q -1 -v ON_ERROR_STOP=1 "$SERVER/$DB" -f "$migration" >/dev/null
done
rm -rf .sqlx && mkdir .sqlx
touch shared/src/lib.rs worker/src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$SERVER/$DB?sslmode=disable" \
  cargo check --workspace --all-targets --features orderflow-worker/failpoints
psql -q "$SERVER/postgres" -c "drop database $DB with (force)"
echo "$(ls .sqlx | wc -l) queries cached in .sqlx/"
