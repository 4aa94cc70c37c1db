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
DATABASE_URL="$SERVER/$DB" ORDERFLOW_API_ADDR=$DEV_API ORDERFLOW_PAYSIM_ADDR=127.0.0.1:18090 ORDERFLOW_NATS_URL= \
  RUST_LOG=warn "$BIN/orderflow" dev >"$OUT/dev.log" 2>&1 &
DEV=$!
wait_ready "$DEV_API"
DATABASE_URL="$SERVER/$DB" ORDERFLOW_API_ADDR=$API RUST_LOG=warn "$BIN/orderflow-api" >"$OUT/api.log" 2>&1 &
APART=$!
wait_ready "$API"
"$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
  --warmup 3 --mode saga --rate "$RATE" --label apart >/dev/null 2>&1
python3 - "$OUT/apart.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"creation p50 {d['create_latency']['p50_ms']:.1f} p99 {d['create_latency']['p99_ms']:.1f} ms; "
      f"submit-to-end p50 {d['saga_latency']['p50_ms']:.0f} p99 {d['saga_latency']['p99_ms']:.0f} ms; "
      f"{d['sagas_per_s']:.1f} sagas/s, {d['refused']} refused")
PY
