# What the bench scripts share; each sources it after changing to the repository's root:
#   . bench/lib.sh

# CPU clock ticks (user + system) of the given processes, threads included, from /proc/<pid>/stat; a process that
# has ended counts nothing.
ticks() { local s=0 p f; for p in "$@"; do read -r -a f <"/proc/$p/stat" 2>/dev/null || continue; s=$((s + f[13] + f[14])); done; echo $s; }

# PostgreSQL's ticks: every live process, and the postmaster's ended children (the backends of closed
# connections, which a sum over the live processes misses).
pg_ticks() { local pm; pm=$(pgrep -u postgres -o postgres); echo $(( $(ticks $(pgrep -u postgres postgres)) + $(awk '{print $16 + $17}' "/proc/$pm/stat") )); }

# A new, empty database $2 on the server at $1 (one left from an earlier run is dropped). PostgreSQL's notice
# that there was none to drop is not shown; its errors are.
fresh_db() {
  PGOPTIONS="-c client_min_messages=warning" psql -q "$1/postgres" \
    -c "drop database if exists $2 with (force)" -c "create database $2"
}

# Waits up to 60 s for an OrderFlow process at host:port $1 to answer /readyz; fails if it does not.
wait_ready() {
  local _
  for _ in $(seq 1 120); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.5; done
  echo "no answer from http://$1/readyz after 60 s" >&2
  return 1
}

# Starts `orderflow dev` from $BIN on the database at URL $1 with its API at host:port $2, logging to $3, events to
# the feed only (no NATS), and any further NAME=value arguments in its environment. Its pid is left in DEV; returns
# once it answers.
start_dev() {
  local url=$1 api=$2 log=$3
  shift 3
  env "$@" DATABASE_URL="$url" ORDERFLOW_API_ADDR="$api" ORDERFLOW_PAYSIM_ADDR=127.0.0.1:18090 ORDERFLOW_NATS_URL= \
    RUST_LOG=warn "$BIN/orderflow" dev >"$log" 2>&1 &
  DEV=$!
  wait_ready "$api"
}

# One line from the JSON of an `orderflow-bench --mode saga` run at $1: creation and submit-to-end p50 and p99,
# complete sagas per second, and the orders refused of those sent.
saga_summary() {
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"creation p50 {d['create_latency']['p50_ms']:.1f} p99 {d['create_latency']['p99_ms']:.1f} ms; "
      f"submit-to-end p50 {d['saga_latency']['p50_ms']:.0f} p99 {d['saga_latency']['p99_ms']:.0f} ms; "
      f"{d['sagas_per_s']:.1f} sagas/s, {d['refused']} of {d['sent']} refused")
PY
}
