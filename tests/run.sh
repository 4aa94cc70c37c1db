#!/usr/bin/env bash
# The test command (README): starts the local services the tests talk to when one is down, installs what the
# tests need when it is missing, builds once and runs every test, whatever fails.
#
#   bash tests/run.sh [nextest arguments, e.g. a filter such as saga::]
#
# One build: the binaries some tests run as processes (the worker with its failpoints) and the tests themselves
# are built by one cargo command with one feature set, and nextest runs with the same one, so nothing is
# compiled twice (two feature sets compiled sqlx, async-nats and the workspace twice: 12 + 6 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

log "PostgreSQL (127.0.0.1:5432)"
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
fi
for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432

log "NATS JetStream (127.0.0.1:4222)"
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  as_root mkdir -p /var/lib/nats-server
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 1; done
fi

log "Headless Chromium and chromedriver, for the dashboard's browser test"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  packages=(chromium chromium-driver)
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
    || { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y \
           --no-install-recommends "${packages[@]}"; }
fi
chromium --version

log "Python tools for the OpenAPI contract test (target/python: openapi-spec-validator, schemathesis)"
# Pinned: the contract test's findings should change when the API does, not when a fuzzer's release does.
VENV=target/python
if ! "$VENV/bin/st" --version >/dev/null 2>&1 || ! "$VENV/bin/openapi-spec-validator" --version >/dev/null 2>&1; then
  python3 -m venv "$VENV" || { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv \
    && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
fi
"$VENV/bin/st" --version

log "cargo-nextest"
if ! cargo nextest --version >/dev/null 2>&1; then
  # Machines of this kind come with nextest. Where it is missing it is built without its self-update feature
  # (the build nextest recommends for CI) and with a quick release profile (a runner's own speed does not
  # matter). With the quick profile alone it took 8 minutes here.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install cargo-nextest --locked --no-default-features --features default-no-update
fi
cargo nextest --version | head -1

FEATURES=orderflow-worker/failpoints
log "Build (one feature set for the binaries and the tests)"
cargo build --workspace --all-targets --features "$FEATURES" --locked

log "Tests (the chaos test runs in its short mode; ORDERFLOW_CHAOS=soak for the long one)"
cargo nextest run --workspace --features "$FEATURES" --locked --no-fail-fast "$@"
