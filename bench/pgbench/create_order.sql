-- One order creation, statement for statement as POST /v1/orders sends it (api/src/routes/orders.rs::create):
-- idempotency lock and lookup, sku prices, order, lines, created event, first job (apalis sink with the
-- notify trigger), the job link, the idempotency record. Two lines, like the service benchmark's average.
\set n random(1, 1000000000)
\set s random(0, 49)
BEGIN;
SELECT pg_try_advisory_xact_lock(hashtextextended('orderflow.idempotency:' || 'ceiling-' || :n::text || '-' || :client_id::text, 0));
SELECT request_hash, order_id, response_status, response_body FROM idempotency_keys WHERE key = 'ceiling-' || :n::text || '-' || :client_id::text;
SELECT sku, on_hand, reserved, price, currency, created_at, updated_at FROM skus WHERE sku = ANY (ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)]);
INSERT INTO orders (id, customer_id, currency, total, status, payment_token, current_step, trace_id)
  VALUES (gen_random_uuid(), 'ceiling', 'USD', 300, 'CREATED', 'pm_card_visa', 'reserve', md5(:n::text))
  RETURNING id \gset order_
INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
  SELECT :order_id::uuid, ordinality::integer, sku, quantity, unit_price
  FROM unnest(ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)], ARRAY[1, 2]::bigint[], ARRAY[100, 100]::bigint[])
       WITH ORDINALITY AS l(sku, quantity, unit_price);
INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
  SELECT gen_random_uuid(), :order_id::uuid, coalesce(max(sequence), 0) + 1, 'order.created', NULL, 'CREATED', NULL
  FROM order_events WHERE order_id = :order_id::uuid;
UPDATE orders SET job_id = 'J' || :n::text || :client_id::text WHERE id = :order_id::uuid RETURNING trace_id;
INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
  VALUES ('J' || :n::text || :client_id::text, 'ceiling.reserve', convert_to('{"order_id":"' || :order_id::text || '","attempt":1}', 'UTF8'),
          'Done', 0, 3, now(), 0, ''::hstore, NULL);
INSERT INTO saga_jobs (job_id, order_id, step, attempt) VALUES ('J' || :n::text || :client_id::text, :order_id::uuid, 'reserve', 1);
INSERT INTO idempotency_keys (key, request_hash, order_id, response_status, response_body)
  VALUES ('ceiling-' || :n::text || '-' || :client_id::text, sha256(:n::text::bytea), :order_id::uuid, 202, '{}'::jsonb);
COMMIT;
