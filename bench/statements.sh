#!/usr/bin/env bash
# Where PostgreSQL's time goes: `orderflow dev` offered $RATE sagas/s for $T s (after a 3 s warm-up), with
# pg_stat_statements (planning tracked) counting from the moment the API answers; prints the run's sagas/s and
# latencies, then the $TOP statements of its database by total time (wall time, lock waits included). It loads
# the extension with `alter system` and a restart of the local cluster, and takes both back on exit (restarting
# again): run it on a machine of your own, as root or as the cluster's owner. docs/PERFORMANCE.md, "Issue 16",
# parts 5 to 7.
#
#   cargo build --release --bin orderflow --bin orderflow-bench
#   RATE=700 T=30 bash bench/statements.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-target/release}
RATE=${RATE:-700}; T=${T:-30}; TOP=${TOP:-25}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}; DB=${DB:-orderflow_statements}; API=127.0.0.1:18080
CLUSTER=${CLUSTER:-"$(ls /etc/postgresql | sort -V | tail -1) main"}
export PGSSLMODE=${PGSSLMODE:-disable}
OUT=${OUT:-bench/results/statements}; mkdir -p "$OUT"
# shellcheck disable=SC2086
restart() { pg_ctlcluster $CLUSTER restart; for _ in $(seq 1 30); do pg_isready -q -d "$SERVER/postgres" && return; sleep 1; done; }
DEV=
finish() {
  [ -n "$DEV" ] && kill "$DEV" 2>/dev/null; wait 2>/dev/null || true
  psql -qAt "$SERVER/postgres" -c "drop extension if exists pg_stat_statements" \
    -c "alter system reset shared_preload_libraries" -c "alter system reset pg_stat_statements.track_planning" || true
  restart
}
trap finish EXIT
psql -qAt "$SERVER/postgres" -c "alter system set shared_preload_libraries = 'pg_stat_statements'"
restart
psql -qAt "$SERVER/postgres" -c "alter system set pg_stat_statements.track_planning = on" -c "select pg_reload_conf()" \
  -c "create extension if not exists pg_stat_statements" >/dev/null
fresh_db "$SERVER" "$DB"
start_dev "$SERVER/$DB" "$API" "$OUT/dev.log"
psql -qAt "$SERVER/postgres" -c "select pg_stat_statements_reset()" >/dev/null
"$BIN/orderflow-bench" --api "http://$API" --database-url "$SERVER/$DB" --out "$OUT" --duration "$T" \
  --warmup 3 --mode saga --rate "$RATE" --label statements >/dev/null 2>&1
saga_summary "$OUT/statements.json"
psql -q "$SERVER/postgres" -c "\pset pager off" -c "
  select calls, round((total_exec_time / calls)::numeric, 2) as ms_a_call, round(total_exec_time::numeric / 1000, 1) as total_s,
         round(total_plan_time::numeric / 1000, 1) as planning_s, rows,
         left(regexp_replace(query, '\s+', ' ', 'g'), 140) as statement
  from pg_stat_statements s join pg_database d on d.oid = s.dbid
  where d.datname = '$DB' order by total_exec_time desc limit $TOP"
