#!/usr/bin/env bash
# The ceiling's pgbench scripts for several builds, interleaved, for a before/after of a change to their SQL:
# each build's own schema (migrated by its own orderflow-api) and its own bench/pgbench SQL, the builds in turn
# in each round, so the machine's drift (often more than the change) hits every build alike.
#
#   git worktree add /tmp/before <commit>   # and a release build of each tree
#   VARIANTS="before:/tmp/before:/tmp/before/target/release after:.:target/release" ROUNDS=3 T=15 \
#     bash bench/ab-pgbench.sh
#
# Prints one line per round, build and script: "round=1 variant=before batch_step tps=41.8". Databases ab_<name>.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
SERVER=postgres://postgres@127.0.0.1:5432
T=${T:-15}; ROUNDS=${ROUNDS:-3}; CLIENTS=16; STEP_ORDERS=100000
for v in $VARIANTS; do
  IFS=: read -r name tree bin <<<"$v"
  db=ab_$name
  fresh_db "$SERVER" "$db"
  DATABASE_URL="$SERVER/$db" ORDERFLOW_API_ADDR=127.0.0.1:18081 $bin/orderflow-api >/dev/null 2>&1 &
  pid=$!
  wait_ready 127.0.0.1:18081
  kill $pid; wait $pid 2>/dev/null
  s() { psql -qAt "$SERVER/$db" -c "$1"; }
  s "insert into skus (sku, on_hand, price, currency) select 'ceiling-' || i, 100000000, 100, 'USD' from generate_series(0, 49) i"
  s "do \$\$ begin if to_regclass('stock_levels') is not null then insert into stock_levels (sku, location, on_hand) select sku, 'default', on_hand from skus; end if; end \$\$"
  s "insert into orders (id, customer_id, currency, total, status, payment_token, current_step) select gen_random_uuid(), 'ceiling', 'USD', 100, 'CREATED', 'pm_card_visa', 'reserve' from generate_series(1, $STEP_ORDERS)"
  s "insert into order_lines (order_id, line_no, sku, quantity, unit_price) select id, 1, 'ceiling-0', 1, 100 from orders where customer_id = 'ceiling'"
  s "create table ceiling_orders as select row_number() over () as k, id from orders where customer_id = 'ceiling'"
  s "alter table ceiling_orders add primary key (k)"
  s "vacuum analyze"
done
for r in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    IFS=: read -r name tree bin <<<"$v"
    for run in "create_order create_order.sql" "batch_step saga_step_batch.sql -D skus=50 -D clients=$CLIENTS -D batch=64" \
               "batch_hot_sku saga_step_batch.sql -D skus=1 -D clients=$CLIENTS -D batch=64" \
               "one_step saga_step_batch.sql -D skus=50 -D clients=$CLIENTS -D batch=1"; do
      read -r label script vars <<<"$run"
      tps=$(cd "$tree" && pgbench -n -M prepared -c $CLIENTS -j 2 -T "$T" -D orders=$STEP_ORDERS -f "bench/pgbench/$script" $vars "$SERVER/ab_$name" 2>/dev/null | awk '/^tps/ {print $3}' | head -1)
      echo "round=$r variant=$name $label tps=$tps"
    done
  done
done
