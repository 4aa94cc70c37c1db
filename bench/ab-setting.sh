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
    start_dev "$SERVER/$DB" "$API" "$OUT/dev.log" "$VAR=$value"
    u0=$(ended); p0=$(pg_ticks); s0=$(ticks $DEV)
    "$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
      --warmup 3 --mode saga --rate "$RATE" --label ab >/dev/null 2>&1
    p1=$(pg_ticks); s1=$(ticks $DEV); u1=$(ended)
    kill $DEV; wait $DEV 2>/dev/null || true; DEV=
    # CPU per saga ended, in ms, of $1 ticks.
    per_saga() { awk -v t="$1" -v n=$((u1 - u0)) -v hz="$HZ" 'BEGIN { printf "%.2f", t * 1000 / hz / (n > 0 ? n : 1) }'; }
    echo "round $round $VAR=$value: $(saga_summary "$OUT/ab.json"); CPU per saga PostgreSQL $(per_saga $((p1 - p0))), orderflow dev $(per_saga $((s1 - s0))) ms"
  done
done
