#!/usr/bin/env bash
# The ceiling and the service in one run, on one fresh database, and the ratios between them.
#
#   cargo build --release --bin orderflow --bin orderflow-api --bin orderflow-worker --bin orderflow-bench && bash bench/ceiling.sh
#
# 1. Starts `orderflow dev` (release; API, one worker, simulator) on database $DB, which it migrates; for the
#    creation runs it is replaced by `orderflow-api` alone (pgbench runs the creation SQL alone too).
# 2. pgbench (-M prepared, $CLIENTS clients, $T s) with exactly our SQL: one order creation; one saga step as
#    the worker runs it under load, batched (a reserve batch of $BATCH orders, the worker's largest:
#    saga_step_batch.sql), and the same batch with every order on one sku (the hot sku); for reference the
#    same step for a batch of one order, what a worker sends for a lone job. Median of $RUNS.
# 3. orderflow-bench against the API (on its own database of the same server): full sagas and a hot sku offered
#    at $SAGA_RATE per second (above what the machine finishes: an overload), then full sagas at each rate of
#    $SAGA_STEPS until one is not kept up (the sustained rate), then 1.5x and 3x the sustained rate for
#    $OVERLOAD_T s each (graceful overload: admission control on, as shipped),
#    then at $LATENCY_RATE/s and at half the sustained rate (latency with the worker running, as users run it),
#    creation offered 1.5x the ceiling's rate (saturation), creation at half of it (p99 against pgbench's p99
#    at the same rate, -R, the lowest of $RATE_CLIENTS client counts).
#    CPU: PostgreSQL's (every process, those that ended included: the postmaster's children's time) and the
#    service's processes' over each run, from /proc, per order made or per saga ended in it; the load
#    generators' not counted (pgbench's neither).
# 4. Creation once more at $ASYNC_RATE/s with synchronous_commit=off on the service's database and on pgbench's
#    (stated), p99 against pgbench's at the same rate.
# 5. The hot sku on a backlog, as pgbench's hot-sku ceiling runs the reservation on pre-made orders: the API
#    alone makes $BACKLOG orders for one sku (at $BACKLOG_RATE/s), then one `orderflow-worker` running only the reserve
#    step (ORDERFLOW_WORKER_STEPS=reserve) decides them all; reservations per second from its first step's start
#    to its last decision.
# 6. Prints the table and writes it to $OUT/ceiling.md. Stated: PostgreSQL settings as they are (durable) but
#    for that one row; every connection over loopback without TLS (PGSSLMODE=disable).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

# The binaries measured: another directory runs an earlier build, for a before/after in one session.
BIN=${BIN:-target/release}
# The load generator (another build's may load an earlier service, so that both runs count alike).
BENCH=${BENCH:-$BIN/orderflow-bench}
DB=${DB:-orderflow_ceiling}
# pgbench writes rows the service would take for its own (CREATED orders, jobs): it gets a twin database on the
# same server, with the same schema.
PGDB=${DB}_pgbench
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
CLIENTS=${CLIENTS:-16}
T=${T:-20}
RUNS=${RUNS:-3}
SAGA_RATE=${SAGA_RATE:-1000}
# Offered rates tried in turn for the sustained saga rate (stops at the first not kept up).
SAGA_STEPS=${SAGA_STEPS:-500 600 700 800 900}
# Seconds of each overload run (1.5x and 3x the sustained rate).
OVERLOAD_T=${OVERLOAD_T:-60}
# Orders per batched step in the ceiling: ORDERFLOW_WORKER_STEP_BATCH's default, the most a worker batch holds.
BATCH=${BATCH:-64}
ASYNC_RATE=${ASYNC_RATE:-1000}
# The hot-sku backlog: 10,000 orders, a drain of a few seconds; made below the API's saturation (the rate it is
# made at does not enter the measure).
BACKLOG=${BACKLOG:-10000}
BACKLOG_RATE=${BACKLOG_RATE:-500}
# The API's pool in the creation runs (API alone): the shipped default unless set (see api_alone).
CREATE_CONNECTIONS=${CREATE_CONNECTIONS:-32}
# The moderate load of the latency rows (sagas/s, worker running).
LATENCY_RATE=${LATENCY_RATE:-100}
HZ=$(getconf CLK_TCK)
# Ceiling and service connect alike, over loopback without TLS (libpq and sqlx both read PGSSLMODE): TLS on a
# same-host connection protects nothing, and it was 6% of the machine in PostgreSQL alone in the saga profile.
export PGSSLMODE=${PGSSLMODE:-disable}
OUT=${OUT:-bench/results}
API=127.0.0.1:18080
mkdir -p "$OUT"

fresh_db "$SERVER" "$DB"
fresh_db "$SERVER" "$PGDB"
# The twin's schema: the API migrates a database at start-up.
DATABASE_URL="$SERVER/$PGDB" ORDERFLOW_API_ADDR=127.0.0.1:18081 $BIN/orderflow-api >"$OUT/migrate.log" 2>&1 &
MIGRATE=$!
wait_ready 127.0.0.1:18081
kill $MIGRATE; wait $MIGRATE 2>/dev/null || true
DEV=; WORKER=
trap 'kill $DEV $WORKER 2>/dev/null; wait $DEV $WORKER 2>/dev/null || true' EXIT
start_dev "$SERVER/$DB" "$API" "$OUT/dev.log"

sql() { psql -qAt "$SERVER/$PGDB" -c "$1"; }
# Milliseconds of CPU between two tick counts.
ms() { echo $(( ($2 - $1) * 1000 / HZ )); }
sql "insert into skus (sku, on_hand, price, currency) select 'ceiling-' || i, 100000000, 100, 'USD' from generate_series(0, 49) i"
# Their stock, at the one location (the service's skus get theirs through the API).
sql "insert into stock_levels (sku, location, on_hand) select sku, 'default', on_hand from skus where sku like 'ceiling-%'"


# pgbench one script: prints "tps p99_ms" (p99 from the per-transaction log).
pgb() {
  local script=$1; shift
  rm -f "$OUT"/pgbench_log.*
  pgbench -n -M prepared -c "${PGB_CLIENTS:-$CLIENTS}" -j 2 -T "$T" -D orders=$STEP_ORDERS -f "bench/pgbench/$script" -l --log-prefix="$OUT/pgbench_log" "$@" \
    "$SERVER/$PGDB" 2>/dev/null | awk '/^tps/ {print $3}' | head -1 | tr -d '\n'
  printf ' '
  cat "$OUT"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f\n", a[int(NR*0.99)]/1000}'
}
# pgbench at a fixed rate (-R) of creation: its p99 depends on its own client count (at 16 its clients queue
# behind each other; at 2 it cannot keep 1,000/s here), so its p99 is the lowest of the counts in $RATE_CLIENTS
# that kept 95% of the rate. Prints "tps p99_ms clients".
RATE_CLIENTS=${RATE_CLIENTS:-4 8 16}
pgb_rate() {
  local rate=$1 best="" result tps p99
  for c in $RATE_CLIENTS; do
    result=$(PGB_CLIENTS=$c pgb create_order.sql -R "$rate")
    read -r tps p99 <<<"$result"
    if awk -v t="$tps" -v r="$rate" 'BEGIN {exit !(t >= 0.95 * r)}' &&
       { [ -z "$best" ] || awk -v p="$p99" -v b="$(echo "$best" | awk '{print $2}')" 'BEGIN {exit !(p < b)}'; }; then
      best="$tps $p99 $c"
    fi
  done
  echo "${best:-$result $c}"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Orders for the step scripts: CREATED, one line each, numbered so a script can pick one at random.
STEP_ORDERS=100000
sql "insert into orders (id, customer_id, currency, total, status, payment_token, current_step)
     select gen_random_uuid(), 'ceiling', 'USD', 100, 'CREATED', 'pm_card_visa', 'reserve' from generate_series(1, $STEP_ORDERS)"
sql "insert into order_lines (order_id, line_no, sku, quantity, unit_price)
     select id, 1, 'ceiling-0', 1, 100 from orders where customer_id = 'ceiling'"
sql "create table ceiling_orders as select row_number() over () as k, id from orders where customer_id = 'ceiling'"
sql "alter table ceiling_orders add primary key (k)"

echo "== pgbench ceilings ($CLIENTS clients, ${T}s, median of $RUNS)"
declare -A TPS P99 CPU_TXN
# name, script, its variables: the hot sku is the saga step with every order's stock on one sku.
for run in "create_order create_order.sql" "one_step saga_step_batch.sql -D skus=50 -D clients=$CLIENTS -D batch=1" \
           "one_hot_sku saga_step_batch.sql -D skus=1 -D clients=$CLIENTS -D batch=1" \
           "batch_step saga_step_batch.sql -D skus=50 -D clients=$CLIENTS -D batch=$BATCH" \
           "batch_hot_sku saga_step_batch.sql -D skus=1 -D clients=$CLIENTS -D batch=$BATCH"; do
  read -r name script vars <<<"$run"
  c0=$(pg_ticks)
  results=$(for _ in $(seq 1 "$RUNS"); do pgb "$script" $vars; done)
  c1=$(pg_ticks)
  TPS[$name]=$(echo "$results" | awk '{print $1}' | median | awk '{printf "%.0f", $1}')
  P99[$name]=$(echo "$results" | awk '{print $2}' | median)
  # PostgreSQL's CPU per transaction over the runs (transactions: tps x T per run).
  CPU_TXN[$name]=$(python3 -c "print(round($(ms "$c0" "$c1") / ($(echo "$results" | awk '{s += $1} END {print s}') * $T), 4))")
  echo "$name: ${TPS[$name]} tps, p99 ${P99[$name]} ms, PostgreSQL CPU ${CPU_TXN[$name]} ms per transaction"
done
# A batched transaction does $BATCH steps (reservations).
BATCH_STEPS=$(( ${TPS[batch_step]} * BATCH ))
BATCH_HOT=$(( ${TPS[batch_hot_sku]} * BATCH ))
echo "batched: $BATCH_STEPS steps/s, hot sku $BATCH_HOT reservations/s"

CREATE_CEIL=${TPS[create_order]%.*}
HALF=$(( CREATE_CEIL / 2 ))
# Saturation: offered half again the ceiling's rate, so what the service achieves is its own limit, not ours.
OVER=$(( CREATE_CEIL * 3 / 2 ))
echo "== pgbench create_order at half its ceiling ($HALF/s, -R)"
PGB_HALF=$(pgb_rate "$HALF")
PGB_HALF_P99=$(echo "$PGB_HALF" | awk '{print $2}')
PGB_HALF_CLIENTS=$(echo "$PGB_HALF" | awk '{print $3}')

echo "== pgbench create_order at $LATENCY_RATE/s (-R)"
PGB_LOW=$(pgb_rate "$LATENCY_RATE")
PGB_LOW_P99=$(echo "$PGB_LOW" | awk '{print $2}')
PGB_LOW_CLIENTS=$(echo "$PGB_LOW" | awk '{print $3}')

# pgbench's p99 for the same creation SQL at $ASYNC_RATE/s with synchronous_commit=off (its sessions start after).
sql "alter database $PGDB set synchronous_commit = off"
echo "== pgbench create_order at $ASYNC_RATE/s with synchronous_commit=off (-R)"
PGB_ASYNC=$(pgb_rate "$ASYNC_RATE")
PGB_ASYNC_TPS=$(echo "$PGB_ASYNC" | awk '{print $1}')
PGB_ASYNC_P99=$(echo "$PGB_ASYNC" | awk '{print $2}')
PGB_ASYNC_CLIENTS=$(echo "$PGB_ASYNC" | awk '{print $3}')
sql "alter database $PGDB reset synchronous_commit"

bench() { $BENCH --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" \
  --duration "${DURATION:-$T}" --warmup 3 "$@" >/dev/null; }
# bench with the CPU it cost: cpu_bench <unit> <label> <bench arguments>: PostgreSQL's and the service's CPU
# (ms) over the run and the units done in it (orders made, or sagas ended), in $OUT/<label>.cpu.
units() {
  case $1 in
    order) psql -qAt "$SERVER/$DB" -c "select count(*) from orders" ;;
    saga) psql -qAt "$SERVER/$DB" -c "select count(*) from orders where status in ('FULFILLED', 'CANCELLED')" ;;
  esac
}
cpu_bench() {
  local unit=$1 label=$2; shift 2
  local u0 p0 s0 u1 p1 s1
  u0=$(units "$unit"); p0=$(pg_ticks); s0=$(ticks $DEV)
  bench --label "$label" "$@"
  p1=$(pg_ticks); s1=$(ticks $DEV); u1=$(units "$unit")
  echo "$(ms "$p0" "$p1") $(ms "$s0" "$s1") $((u1 - u0))" >"$OUT/$label.cpu"
}
# CPU per unit of a run: cpu <label> -> "PostgreSQL service all" in ms per order or saga (zeros for a run that
# did not happen).
cpu() {
  [ -f "$OUT/$1.cpu" ] || { echo "0 0 0"; return; }
  awk '{n = ($3 > 0) ? $3 : 1; printf "%.2f %.2f %.2f\n", $1 / n, $2 / n, ($1 + $2) / n}' "$OUT/$1.cpu"
}
# A latency run's figures: creation p50 p99, submit-to-end p50 p99 (ms), complete sagas/s.
lat() { j "latency-$1" "f\"{d['create_latency']['p50_ms']:.1f} {d['create_latency']['p99_ms']:.1f} {d['saga_latency']['p50_ms']:.0f} {d['saga_latency']['p99_ms']:.0f} {d['sagas_per_s']:.1f}\""; }
# A figure from a run's results: j <label> <python expression over its JSON, d>.
j() { python3 -c "import json,sys; d=json.load(open('$OUT/$1.json')); print(eval(sys.argv[1]))" "$2"; }
# Sagas first: creation runs leave a backlog of sagas behind them that the worker would still be working off.
echo "== service: full sagas at $SAGA_RATE/s"
bench --mode saga --rate "$SAGA_RATE" --label saga
# Offered beyond what the machine finishes, the API accepts every order and the steps get what is left of the
# cores, so the figure above moves with that split. The sustained rate: the highest of $SAGA_STEPS offered whose
# sagas all end at 95% of the rate or more (counted from the first order's due time to the last saga's end, so
# the last sagas' latency counts against it: conservative, and too strict for short runs: with T=5 a machine
# that keeps up with 300/s scored 268/s).
SUSTAINED=0
SUSTAINED_P99=0
FIRST_RATE=
for rate in $SAGA_STEPS; do
  echo "== service: full sagas at $rate/s (sustained?)"
  cpu_bench saga "saga-$rate" --mode saga --rate "$rate"
  read -r done_rate unfinished p99 <<<"$(j "saga-$rate" "' '.join(map(str, (d['sagas_per_s'], d.get('sagas_unfinished', 0), round(d['saga_latency']['p99_ms']))))")"
  echo "   $done_rate sagas/s, $unfinished unfinished, submit-to-end p99 $p99 ms"
  FIRST_RATE=${FIRST_RATE:-$done_rate}
  if [ "$unfinished" = 0 ] && awk -v a="$done_rate" -v r="$rate" 'BEGIN {exit !(a >= 0.95 * r)}'; then
    SUSTAINED=$rate; SUSTAINED_RATE=$(printf '%.1f' "$done_rate"); SUSTAINED_P99=$p99
  else
    break
  fi
done
# Latency below saturation with the worker running (`orderflow dev`, as users start it): at $LATENCY_RATE/s and
# at half the sustained rate.
# When half the sustained rate is that rate, one run serves both rows.
HALF_SUSTAINED=$(( SUSTAINED > 0 ? SUSTAINED / 2 : LATENCY_RATE ))
for rate in $(printf '%s\n' "$LATENCY_RATE" "$HALF_SUSTAINED" | sort -un); do
  echo "== service: full sagas at $rate/s (latency, worker running)"
  cpu_bench saga "latency-$rate" --mode saga --rate "$rate"
  echo "   creation p50, p99; submit-to-end p50, p99 (ms); sagas/s: $(lat "$rate")"
  echo "   CPU per saga (PostgreSQL, orderflow dev, both): $(cpu "latency-$rate") ms"
done
# Graceful overload: offered 1.5x and 3x the sustained rate (when none of $SAGA_STEPS was kept up, what the
# first of them achieved), the complete sagas per second against that rate and the accepted orders' latency;
# what admission control refuses is counted apart.
BASE=${SUSTAINED_RATE:-$FIRST_RATE}
# Labels name the multiple in percent (orderflow-bench takes a label's last dot for an extension).
for percent in 150 300; do
  rate=$(python3 -c "print(round($BASE * $percent / 100))")
  echo "== service: full sagas at ${percent}% of the sustained rate ($rate/s, ${OVERLOAD_T}s)"
  DURATION=$OVERLOAD_T bench --mode saga --rate "$rate" --label "overload-$percent"
  echo "   $(j "overload-$percent" "f\"{d['sagas_per_s']:.1f} sagas/s, p99 {d['saga_latency']['p99_ms']:.0f} ms, refused {d['refused']} of {d['sent']}\"")"
done
echo "== service: hot sku at $SAGA_RATE/s"
bench --mode hotsku --rate "$SAGA_RATE" --label hotsku
# Stops what serves $API and starts `orderflow-api` alone on database $1, logging to $OUT/$2.
# Its pool: $CREATE_CONNECTIONS, the shipped default (32) unless set, since users run defaults (alone, a pool of
# about twice the cores is faster: docs/PERFORMANCE.md, "API pool size"; the table states the pool).
# Admission control off: with no worker every order is backlog, and these runs measure creation alone.
api_alone() {
  kill $DEV; wait $DEV 2>/dev/null || true
  DATABASE_URL="$SERVER/$1" ORDERFLOW_API_ADDR=$API RUST_LOG=warn ORDERFLOW_DB_MAX_CONNECTIONS=${3:-32} \
    ORDERFLOW_ADMISSION_MAX_BACKLOG_MS=0 \
    $BIN/orderflow-api >"$OUT/$2" 2>&1 &
  DEV=$!
  wait_ready "$API"
}
# Creation is measured on the API alone, as pgbench measures the creation SQL alone: the worker is stopped so
# that it does not spend the same two cores on the sagas of the orders being created (those are measured above).
api_alone "$DB" api.log "$CREATE_CONNECTIONS"
echo "== service: creation at half the ceiling ($HALF/s)"
bench --mode create --rate "$HALF" --label create-half
echo "== service: creation offered 1.5x the ceiling ($OVER/s)"
cpu_bench order create-saturation --mode create --rate "$OVER"
# The same creation path with synchronous_commit=off (stated in the table): no fsync wait, so what is left is
# CPU. New sessions pick the setting up, so the API restarts.
psql -q "$SERVER/postgres" -c "alter database $DB set synchronous_commit = off"
api_alone "$DB" api-async.log "$CREATE_CONNECTIONS"
echo "== service: creation at $ASYNC_RATE/s with synchronous_commit=off"
bench --mode create --rate "$ASYNC_RATE" --label create-async
psql -q "$SERVER/postgres" -c "alter database $DB reset synchronous_commit"

# The hot sku on a backlog: the API alone (durable again) makes the orders, then a worker that runs only the
# reserve step decides them, as pgbench's batched hot-sku script decides pre-made orders. On a database of its
# own: the creation runs above left their orders' reserve jobs waiting in the same queue.
BACKLOG_DB=${DB}_backlog
fresh_db "$SERVER" "$BACKLOG_DB"
api_alone "$BACKLOG_DB" api-backlog.log
echo "== service: hot sku on a backlog ($BACKLOG orders made, then drained by a reserve-only worker)"
READY="$OUT/hotsku-backlog.ready"
rm -f "$READY"
$BENCH --api "http://$API" --database-url "$SERVER/$BACKLOG_DB" --out "$OUT" --duration $(( BACKLOG / BACKLOG_RATE )) \
  --warmup 0 --mode hotsku --rate "$BACKLOG_RATE" --label hotsku-backlog --backlog-ready "$READY" >/dev/null &
BENCH=$!
while [ ! -f "$READY" ] && kill -0 $BENCH 2>/dev/null; do sleep 0.2; done
DATABASE_URL="$SERVER/$BACKLOG_DB" ORDERFLOW_WORKER_STEPS=reserve ORDERFLOW_NATS_URL= RUST_LOG=warn \
  $BIN/orderflow-worker >"$OUT/worker-backlog.log" 2>&1 &
WORKER=$!
wait $BENCH
kill $WORKER; wait $WORKER 2>/dev/null || true
WORKER=

SAT=$(j create-saturation "round(d['create_achieved_per_s'], 1)")
# Latency with the worker running, and CPU per unit (PostgreSQL, the service, both; ms).
read -r LOW_C50 LOW_C99 LOW_S50 LOW_S99 LOW_DONE <<<"$(lat "$LATENCY_RATE")"
read -r HS_C50 HS_C99 HS_S50 HS_S99 HS_DONE <<<"$(lat "$HALF_SUSTAINED")"
read -r CPU_ORDER_PG CPU_ORDER_API CPU_ORDER <<<"$(cpu create-saturation)"
read -r CPU_LOW_PG CPU_LOW_DEV CPU_LOW <<<"$(cpu "latency-$LATENCY_RATE")"
read -r CPU_SUS_PG CPU_SUS_DEV CPU_SUS <<<"$(cpu "saga-$SUSTAINED")"
# pgbench's PostgreSQL CPU for one saga's SQL: a creation and four batched steps' shares.
CPU_SAGA_CEIL=$(python3 -c "print(round(${CPU_TXN[create_order]} + 4 * ${CPU_TXN[batch_step]} / $BATCH, 3))")
HALF_P99=$(j create-half "d['create_latency']['p99_ms']")
SAGAS=$(j saga "round(d['sagas_per_s'], 1)")
SAGA_P99=$(j saga "round(d['saga_latency']['p99_ms'])")
HOT=$(j hotsku "round(d['sagas_per_s'], 1)")
OVERSOLD=$(j hotsku "d['hot_sku']['oversold']")
SOLD=$(j hotsku "d['hot_sku']['sold']")
HOT_RES=$(j hotsku "round(d['hot_sku']['reservations_per_s'], 1)")
STOCK=$(j hotsku "d['hot_sku']['stock']")
SAGA_COMMITS=$(j saga "round(d['commits_per_order'], 2)")
ASYNC_P99=$(j create-async "d['create_latency']['p99_ms']")
ASYNC_ACHIEVED=$(j create-async "d['create_achieved_per_s']")
ASYNC_ERRORS=$(j create-async "d['errors']")
BACKLOG_RES=$(j hotsku-backlog "round(d['hot_sku']['reservations_per_s'], 1)")
BACKLOG_DECIDED=$(j hotsku-backlog "d['hot_sku']['reservations_decided']")
BACKLOG_HELD=$(j hotsku-backlog "d['hot_sku']['held']")
BACKLOG_STOCK=$(j hotsku-backlog "d['hot_sku']['stock']")
BACKLOG_OVERSOLD=$(j hotsku-backlog "d['hot_sku']['oversold']")
overload_row() {
  local label="overload-$1" times
  times=$(python3 -c "print($1 / 100)")
  local done p99 refused sent errors
  done=$(j "$label" "round(d['sagas_per_s'], 1)")
  p99=$(j "$label" "round(d['saga_latency']['p99_ms'])")
  refused=$(j "$label" "d['refused']")
  sent=$(j "$label" "d['sent']")
  errors=$(j "$label" "d['errors']")
  echo "(\"Complete sagas per second offered ${times}x the sustained rate ($(python3 -c "print(round($BASE * $times))")/s for ${OVERLOAD_T} s; admission on): accepted orders' submit-to-end p99; of the orders sent, refused (503) and failed or past the load generator's in-flight cap\", \"${done}/s, p99 ${p99} ms; of ${sent}: ${refused} refused, ${errors} failed\", \"${BASE}/s\", ${done} / max(${BASE}, 0.001), \"≥ 0.95$2\"),"
}
OVERLOAD_ROWS="$(overload_row 150 ', p99 ≤ 2 s')
$(overload_row 300 '')"

python3 - "$OUT/ceiling.md" <<EOF
import sys
rows = [
  ("Order creation at saturation (offered ${OVER}/s; API alone, pool of ${CREATE_CONNECTIONS})", "${SAT}/s", "${TPS[create_order]}/s", ${SAT} / ${TPS[create_order]}, "≥ 0.7"),
  ("p99 of creation at half the ceiling (${HALF}/s; API alone, pool of ${CREATE_CONNECTIONS})", "${HALF_P99} ms", "${PGB_HALF_P99} ms (pgbench -R, ${PGB_HALF_CLIENTS} clients)", ${HALF_P99} / max(${PGB_HALF_P99}, 0.001), "≤ 1.0"),
  ("Saga steps per second at the sustained rate (4 per saga) against the batched step (${BATCH} orders per transaction); overloaded at ${SAGA_RATE}/s: $(python3 -c "print(round(${SAGAS} * 4))")/s", "$(python3 -c "print(round(${SUSTAINED_RATE:-0} * 4, 1))")/s", "${BATCH_STEPS}/s", ${SUSTAINED_RATE:-0} * 4 / ${BATCH_STEPS}, "≥ 0.7"),
  ("Saga steps per second against the step for a batch of one order (reference)", "$(python3 -c "print(round(${SAGAS} * 4, 1))")/s", "${TPS[one_step]}/s", ${SAGAS} * 4 / ${TPS[one_step]}, "—"),
  ("Complete sagas per second, sustained: the highest offered rate of ${SAGA_STEPS// /, }/s whose sagas all ended at ≥ 95% of it", "${SUSTAINED_RATE:-0}/s at ${SUSTAINED}/s offered, submit-to-end p99 ${SUSTAINED_P99} ms", "—", None, "≥ 500"),
  ("Complete sagas per second, overloaded (offered ${SAGA_RATE}/s)", "${SAGAS}/s, p99 ${SAGA_P99} ms", "—", None, "—"),
  ${OVERLOAD_ROWS}
  ("Hot sku on a backlog, reservations decided per second by a reserve-only worker (${BACKLOG_DECIDED} decided, ${BACKLOG_HELD} held of a stock of ${BACKLOG_STOCK}; oversold: ${BACKLOG_OVERSOLD}) against the batched hot-sku step", "${BACKLOG_RES}/s", "${BATCH_HOT}/s", ${BACKLOG_RES} / ${BATCH_HOT}, "≥ 0.8"),
  ("Hot sku, full sagas, reservations decided per second (offered ${SAGA_RATE}/s) against the batched hot-sku step", "${HOT_RES}/s", "${BATCH_HOT}/s", ${HOT_RES} / ${BATCH_HOT}, "— (creation-bound)"),
  ("Hot sku, reservations decided per second against the hot-sku step for a batch of one (reference)", "${HOT_RES}/s", "${TPS[one_hot_sku]}/s", ${HOT_RES} / ${TPS[one_hot_sku]}, "—"),
  ("Hot sku, complete sagas per second (oversold: ${OVERSOLD}; sold ${SOLD} of a stock of ${STOCK})", "${HOT}/s", "—", None, "—"),
  ("p99 of creation at ${ASYNC_RATE}/s, synchronous_commit=off (API alone, pool of ${CREATE_CONNECTIONS}; service achieved ${ASYNC_ACHIEVED}/s, ${ASYNC_ERRORS} over the in-flight cap; pgbench ${PGB_ASYNC_TPS} tps)", "${ASYNC_P99} ms", "${PGB_ASYNC_P99} ms (pgbench -R, ${PGB_ASYNC_CLIENTS} clients)", ${ASYNC_P99} / max(${PGB_ASYNC_P99}, 0.001), "≤ 1.5"),
  ("Commits per order (full saga, incl. the simulator-free steps)", "${SAGA_COMMITS}", "—", None, "—"),
  ("Creation p99 at ${LATENCY_RATE} sagas/s with the worker running (\`orderflow dev\`; p50 ${LOW_C50} ms) against pgbench's creation alone at that rate", "${LOW_C99} ms", "${PGB_LOW_P99} ms (pgbench -R, ${PGB_LOW_CLIENTS} clients)", ${LOW_C99} / max(${PGB_LOW_P99}, 0.001), "≤ 5 ms"),
  ("Submit-to-FULFILLED p99 at ${LATENCY_RATE} sagas/s (p50 ${LOW_S50} ms; ${LOW_DONE} complete sagas/s)", "${LOW_S99} ms", "—", None, "≤ 250 ms"),
  ("Creation p99 at half the sustained rate (${HALF_SUSTAINED}/s) with the worker running (p50 ${HS_C50} ms; submit-to-end p50 ${HS_S50}, p99 ${HS_S99} ms)", "${HS_C99} ms", "—", None, "≤ 10 ms"),
  ("CPU per order created at saturation, PostgreSQL + \`orderflow-api\` (${CPU_ORDER_PG} + ${CPU_ORDER_API} ms), against PostgreSQL's per pgbench creation (${CLIENTS} clients)", "${CPU_ORDER} ms", "${CPU_TXN[create_order]} ms", ${CPU_ORDER} / max(${CPU_TXN[create_order]}, 0.0001), "—"),
  ("CPU per complete saga at the sustained rate (${SUSTAINED}/s), PostgreSQL + \`orderflow dev\` (${CPU_SUS_PG} + ${CPU_SUS_DEV} ms), against PostgreSQL's per pgbench creation and four batched steps", "${CPU_SUS} ms", "${CPU_SAGA_CEIL} ms", ${CPU_SUS} / max(${CPU_SAGA_CEIL}, 0.0001), "—"),
  ("CPU per complete saga at ${LATENCY_RATE}/s (${CPU_LOW_PG} + ${CPU_LOW_DEV} ms)", "${CPU_LOW} ms", "${CPU_SAGA_CEIL} ms", ${CPU_LOW} / max(${CPU_SAGA_CEIL}, 0.0001), "—"),
]
out = ["| measure | service | ceiling | ratio | target |", "|---|---|---|---|---|"]
for name, service, ceiling, ratio, target in rows:
    out.append(f"| {name} | {service} | {ceiling} | {'—' if ratio is None else f'{ratio:.2f}'} | {target} |")
text = "\n".join(out) + "\n"
open(sys.argv[1], "w").write(text)
print(text)
EOF
