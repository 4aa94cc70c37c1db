#!/usr/bin/env bash
# A peer on the same machine and database: graphile-worker (npm) against our queue layer, trivial jobs and
# 4-step chains, one process each, concurrency 16. Prints both and the ratios.
#
#   cargo build --release --bin orderflow-queue-bench && bash bench/peer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
DB=${DB:-orderflow_peer}
JOBS=${JOBS:-10000}
# Both connect over loopback without TLS: node-postgres uses none unless told, sqlx and libpq would negotiate it
# (sslmode=prefer). Both read PGSSLMODE.
export PGSSLMODE=${PGSSLMODE:-disable}
fresh_db "$SERVER" "$DB"
(cd bench/peer && npm install --no-audit --no-fund --silent >/dev/null)
results=()
for kind in trivial chain; do
  flag=""; [ "$kind" = chain ] && flag="--chain"
  results+=("$(node bench/peer/graphile.mjs "$SERVER/$DB" "$JOBS" "$kind" | grep '^{')")
  results+=("$(target/release/orderflow-queue-bench --database-url "$SERVER/$DB" --jobs "$JOBS" $flag)")
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
for r in rows:
    print(json.dumps(r))
print("| work | graphile-worker jobs/s | ours jobs/s | ours ÷ graphile-worker |")
print("|---|---|---|---|")
for kind in ("trivial", "chain4"):
    g = next(r for r in rows if r["system"] == "graphile-worker" and r["kind"] == kind)
    o = next(r for r in rows if r["system"] == "orderflow-apalis" and r["kind"] == kind)
    print("| {} ({} jobs) | {:.0f} | {:.0f} | {:.2f} |".format(kind, g["jobs"], g["jobs_per_s"], o["jobs_per_s"], o["jobs_per_s"] / g["jobs_per_s"]))'
