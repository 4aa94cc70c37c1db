#!/usr/bin/env bash
# Creation served by `orderflow-api` in a process of its own, the steps and the simulator by `orderflow dev` beside
# it (whose own API then stands idle): the load of bench/ab-setting.sh with the API apart, to tell what the API
# and the steps sharing one process and runtime cost from what they cost sharing the cores. $RATE sagas/s for $T s,
# a fresh database. docs/PERFORMANCE.md, "Issue 16, part 7".
#
#   cargo build --release --bin orderflow --bin orderflow-api --bin orderflow-bench
#   RATE=1000 T=30 bash bench/api-apart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-target/release}
RATE=${RATE:-1000}; T=${T:-30}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}; DB=${DB:-orderflow_apart}
DEV_API=127.0.0.1:18080; API=127.0.0.1:18081
export PGSSLMODE=${PGSSLMODE:-disable}
OUT=${OUT:-bench/results/apart}; mkdir -p "$OUT"
DEV=; APART=
trap 'kill ${DEV:-} ${APART:-} 2>/dev/null; wait 2>/dev/null || true' EXIT
fresh_db "$SERVER" "$DB"
start_dev "$SERVER/$DB" "$DEV_API" "$OUT/dev.log"
DATABASE_URL="$SERVER/$DB" ORDERFLOW_API_ADDR=$API RUST_LOG=warn "$BIN/orderflow-api" >"$OUT/api.log" 2>&1 &
APART=$!
wait_ready "$API"
"$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
  --warmup 3 --mode saga --rate "$RATE" --label apart >/dev/null 2>&1
saga_summary "$OUT/apart.json"
