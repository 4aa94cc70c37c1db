#!/usr/bin/env bash
# Order creation alone (`orderflow-api`, no worker) at a steady offered rate: its latency (open loop, from
# orderflow-bench's histogram) and its CPU per order by process (PostgreSQL, the API, the load generator), from
# /proc/<pid>/stat over an 8 s window. ASYNC=1 (the default) sets synchronous_commit=off on the database, as the
# target "p99 < 5 ms at 1,000 orders/s" states; ASYNC=0 keeps commits durable.
#
#   cargo build --release --bin orderflow-api --bin orderflow-bench && RATE=1000 bash bench/cpu-per-order.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
# The binaries measured: another directory runs an earlier build, for a before/after in one session.
BIN=${BIN:-target/release}
RATE=${RATE:-1000}
ASYNC=${ASYNC:-1}
T=${T:-15}
DB=${DB:-orderflow_cpu_order}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
API=127.0.0.1:18080
OUT=${OUT:-/tmp/orderflow-cpu-order}
export PGSSLMODE=${PGSSLMODE:-disable}

orders() { psql -qAt "$SERVER/$DB" -c "select count(*) from orders"; }

fresh_db "$SERVER" "$DB"
if [ "$ASYNC" = 1 ]; then psql -q "$SERVER/postgres" -c "alter database $DB set synchronous_commit = off"; fi
# No worker runs, so every order's first job waits: admission control (on by default) would refuse all but the
# first second's orders. Creation alone is measured with it off, as bench/ceiling.sh's API-alone rows are.
DATABASE_URL="$SERVER/$DB" ORDERFLOW_API_ADDR=$API RUST_LOG=warn ORDERFLOW_ADMISSION_MAX_BACKLOG_MS=0 \
  $BIN/orderflow-api >"$OUT.api.log" 2>&1 &
APIPID=$!
trap 'kill $APIPID 2>/dev/null; wait $APIPID 2>/dev/null || true' EXIT
wait_ready "$API"
$BIN/orderflow-bench --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --mode create \
  --rate "$RATE" --duration "$T" --warmup 3 --label create >/dev/null 2>&1 &
BENCH=$!
sleep 6   # past the warm-up
P0=$(pg_ticks); A0=$(ticks $APIPID); B0=$(ticks $BENCH); N0=$(orders)
sleep 8
P1=$(pg_ticks); A1=$(ticks $APIPID); B1=$(ticks $BENCH); N1=$(orders)
wait $BENCH || true
python3 - "$((N1 - N0))" "$((P1 - P0))" "$((A1 - A0))" "$((B1 - B0))" "$(getconf CLK_TCK)" "$OUT/create.json" "$ASYNC" <<'PY'
import json, sys
n, pg, api, bench, hz = map(int, sys.argv[1:6])
d = json.load(open(sys.argv[6]))
l = d["create_latency"]
ms = lambda t: t * 1000 / hz / max(n, 1)
commit = "synchronous_commit=off" if sys.argv[7] == "1" else "durable"
print(f"{commit}: achieved {d['create_achieved_per_s']:.1f}/s, errors {d['errors']}; latency p50 {l['p50_ms']} "
      f"p90 {l['p90_ms']} p99 {l['p99_ms']} ms; CPU ms per order: PostgreSQL {ms(pg):.3f}, API {ms(api):.3f}, "
      f"load generator {ms(bench):.3f}")
PY
