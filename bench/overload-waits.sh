#!/usr/bin/env bash
# Where accepted orders wait under overload: `orderflow dev` offered $RATE sagas/s for $T s (after a 3 s warm-up),
# and from 12 s after the load starts until it ends, about every 2 s: per queue the due jobs still Pending (what
# admission control measures; its head is by priority then run_at, and our jobs share one priority) and those a
# worker has claimed (Queued until their step ends), each with the age of its oldest since its run_at; then the
# orders whose saga is still running, by status, with the oldest's age. Extra settings for `orderflow dev` go in $EXTRA
# (e.g. EXTRA=ORDERFLOW_WORKER_CONCURRENCY=128). docs/PERFORMANCE.md, "Issue 16, part 5".
#
#   cargo build --release --bin orderflow --bin orderflow-bench
#   RATE=1000 T=30 bash bench/overload-waits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-target/release}
RATE=${RATE:-1000}; T=${T:-30}; EXTRA=${EXTRA:-}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}; DB=${DB:-orderflow_waits}; API=127.0.0.1:18080
export PGSSLMODE=${PGSSLMODE:-disable}
OUT=${OUT:-bench/results/waits}; mkdir -p "$OUT"
fresh_db "$SERVER" "$DB"
DEV=; LOAD=
trap 'kill ${DEV:-} ${LOAD:-} 2>/dev/null; wait 2>/dev/null || true' EXIT
# shellcheck disable=SC2086
start_dev "$SERVER/$DB" "$API" "$OUT/dev.log" $EXTRA
rm -f "$OUT/waits.json"
"$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
  --warmup 3 --mode saga --rate "$RATE" --label waits >/dev/null 2>&1 &
LOAD=$!
end=$((SECONDS + 3 + T))
sleep 12
while kill -0 $LOAD 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do
  echo "jobs:   $(psql -qAt "$SERVER/$DB" -c "select job_type || ' ' || status || ' ' || count(*) || ' oldest '
      || round(extract(epoch from now() - min(run_at))::numeric, 2) || ' s'
    from apalis.jobs where status in ('Pending', 'Queued') and run_at <= now()
    group by job_type, status order by job_type, status" | paste -sd ';')"
  echo "orders: $(psql -qAt "$SERVER/$DB" -c "select status || ' ' || count(*) || ' oldest '
      || round(extract(epoch from now() - min(created_at))::numeric, 2) || ' s'
    from orders where status in ('CREATED', 'RESERVED', 'PAID', 'CANCELLING') group by status order by status" | paste -sd ';')"
  sleep 1.5
done
wait $LOAD
LOAD=
saga_summary "$OUT/waits.json"
