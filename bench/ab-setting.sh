#!/usr/bin/env bash
# One setting, A/B on one build: `orderflow dev` at a fixed saga rate with each value of a variable in turn,
# interleaved over rounds, a fresh database per run. Per run: creation p50/p99, submit-to-end p50/p99, complete
# sagas/s, orders refused (503/429), and CPU per saga ended (PostgreSQL's, every process and the postmaster's
# ended children; `orderflow dev`'s), from /proc. Runs minutes apart on one build are the comparison this
# machine's drift allows (../shared/notes/performance.md).
#
#   cargo build --release --bin orderflow --bin orderflow-bench
#   VAR=ORDERFLOW_WORKER_FETCH_GAP_MS VALUES="0 40" RATE=100 T=20 ROUNDS=2 bash bench/ab-setting.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-target/release}
VAR=${VAR:?the variable to vary, e.g. ORDERFLOW_WORKER_FETCH_GAP_MS}
VALUES=${VALUES:?its values, e.g. "0 40"}
RATE=${RATE:-100}; T=${T:-20}; ROUNDS=${ROUNDS:-1}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}; DB=${DB:-orderflow_ab}; API=127.0.0.1:18080
export PGSSLMODE=${PGSSLMODE:-disable}
OUT=${OUT:-bench/results/ab}; mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)
ended() { psql -qAt "$SERVER/$DB" -c "select count(*) from orders where status in ('FULFILLED', 'CANCELLED')"; }
DEV=
trap '[ -n "$DEV" ] && kill $DEV 2>/dev/null; wait 2>/dev/null || true' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for value in $VALUES; do
    fresh_db "$SERVER" "$DB"
    env "$VAR=$value" DATABASE_URL="$SERVER/$DB" ORDERFLOW_API_ADDR=$API ORDERFLOW_PAYSIM_ADDR=127.0.0.1:18090 \
      ORDERFLOW_NATS_URL= RUST_LOG=warn "$BIN/orderflow" dev >"$OUT/dev.log" 2>&1 &
    DEV=$!
    wait_ready "$API"
    u0=$(ended); p0=$(pg_ticks); s0=$(ticks $DEV)
    "$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
      --warmup 3 --mode saga --rate "$RATE" --label ab >/dev/null 2>&1
    p1=$(pg_ticks); s1=$(ticks $DEV); u1=$(ended)
    kill $DEV; wait $DEV 2>/dev/null || true; DEV=
    python3 - "$OUT/ab.json" "$round" "$VAR=$value" "$((u1 - u0))" "$((p1 - p0))" "$((s1 - s0))" "$HZ" <<'PY'
import json, sys
path, round_, setting, n, pg, dev, hz = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
d = json.load(open(path)); n = max(n, 1); ms = lambda t: t * 1000 / hz / n
print(f"round {round_} {setting}: creation p50 {d['create_latency']['p50_ms']:.1f} p99 {d['create_latency']['p99_ms']:.1f} ms; "
      f"submit-to-end p50 {d['saga_latency']['p50_ms']:.0f} p99 {d['saga_latency']['p99_ms']:.0f} ms; "
      f"{d['sagas_per_s']:.1f} sagas/s, {d['refused']} refused; CPU per saga PostgreSQL {ms(pg):.2f}, orderflow dev {ms(dev):.2f} ms")
PY
  done
done
