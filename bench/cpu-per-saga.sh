#!/usr/bin/env bash
# CPU per completed saga, by process: PostgreSQL (all its processes), `orderflow dev` (API + worker + simulator)
# and the load generator, from /proc/<pid>/stat over a 20 s window of a steady saga load.
#
#   cargo build --release --bin orderflow --bin orderflow-bench && RATE=60 bash bench/cpu-per-saga.sh
#
# DATABASE_URL picks the connection (default loopback without TLS; try ?sslmode=prefer, or the Unix socket with
# postgres://postgres@localhost/orderflow_cpu?host=/var/run/postgresql). Run as a user that can read the
# postgres processes' /proc entries (root here).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
# The binaries measured: another directory runs an earlier build, for a before/after in one session.
BIN=${BIN:-target/release}
RATE=${RATE:-60}
DB=${DB:-orderflow_cpu}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
URL=${DATABASE_URL:-$SERVER/$DB?sslmode=disable}
API=127.0.0.1:18080
export PGSSLMODE=${PGSSLMODE:-disable}

fulfilled() { psql -qAt "$SERVER/$DB" -c "select count(*) from orders where status = 'FULFILLED'"; }
commits() { psql -qAt "$SERVER/postgres" -c "select xact_commit from pg_stat_database where datname = '$DB'"; }

fresh_db "$SERVER" "$DB"
DEV=
trap 'kill ${DEV:-} 2>/dev/null; wait 2>/dev/null || true' EXIT
start_dev "$URL" "$API" /tmp/orderflow-cpu-dev.log
$BIN/orderflow-bench --api "http://$API" --database-url "$SERVER/$DB" --out /tmp/orderflow-cpu \
  --mode saga --rate "$RATE" --duration 40 --warmup 2 --label cpu >/dev/null 2>&1 &
BENCH=$!
sleep 12   # past the warm-up and the first backlog
P0=$(pg_ticks); D0=$(ticks $DEV); B0=$(ticks $BENCH); N0=$(fulfilled); C0=$(commits)
sleep 20
P1=$(pg_ticks); D1=$(ticks $DEV); B1=$(ticks $BENCH); N1=$(fulfilled); C1=$(commits)
wait $BENCH || true
python3 - "$((N1 - N0))" "$((P1 - P0))" "$((D1 - D0))" "$((B1 - B0))" "$((C1 - C0))" "$(getconf CLK_TCK)" <<'PY'
import sys
n, pg, dev, bench, commits, hz = map(int, sys.argv[1:])
ms = lambda t: t * 1000 / hz / max(n, 1)
print(f"sagas {n} ({n / 20:.1f}/s); CPU ms per saga: PostgreSQL {ms(pg):.2f}, orderflow dev {ms(dev):.2f}, "
      f"load generator {ms(bench):.2f}; commits per saga {commits / max(n, 1):.2f}")
PY
