#!/usr/bin/env bash
# Quick end-to-end figure: N orders submitted by 16 concurrent curl clients to `orderflow dev` (release),
# throughput = FULFILLED orders / (last fulfil - first create), read from the database.
set -euo pipefail
N=${N:-1000}
DB=of_e2e_$$
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB RUST_LOG=warn
./target/release/orderflow dev --api-addr 127.0.0.1:18180 --paysim-addr 127.0.0.1:18190 > /tmp/e2e-dev.log 2>&1 &
DEV=$!
for _ in $(seq 1 50); do curl -sf localhost:18180/readyz >/dev/null && grep -q 'ofk_' /tmp/e2e-dev.log && break; sleep 0.2; done
# The API key `orderflow dev` printed.
KEY=$(grep -o 'ofk_[0-9a-f]\{64\}' /tmp/e2e-dev.log | head -1)
curl -s -X PUT localhost:18180/v1/skus/bulk -H "Authorization: Bearer $KEY" -H 'content-type: application/json' -d '{"on_hand":1000000,"price":100,"currency":"USD"}' >/dev/null
start=$(date +%s.%N)
seq 1 $N | xargs -P 16 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST localhost:18180/v1/orders \
  -H "Authorization: Bearer $KEY" -H 'content-type: application/json' -H "Idempotency-Key: e2e-{}" \
  -d '{"customer_id":"c{}","currency":"USD","lines":[{"sku":"bulk","quantity":1}],"payment_token":"pm_card_visa"}' | sort | uniq -c
submitted=$(date +%s.%N)
while [ "$(psql -h 127.0.0.1 -U postgres -d $DB -tAc "select count(*) from orders where status in ('FULFILLED','CANCELLED')")" -lt $N ]; do sleep 0.2; done
psql -h 127.0.0.1 -U postgres -d $DB -tAc "select status, count(*), round(extract(epoch from max(updated_at) - min(created_at))::numeric, 2) as seconds, round(count(*) / extract(epoch from max(updated_at) - min(created_at))::numeric, 1) as orders_per_s from orders group by status"
echo "submit phase: $(echo "$submitted - $start" | bc) s for $N orders"
kill -INT $DEV; wait $DEV || true
psql -h 127.0.0.1 -U postgres -qc "drop database $DB" 2>/dev/null || true
