-- One order creation, statement for statement as POST /v1/orders sends it (api/src/routes/orders.rs::create):
-- idempotency lock and lookup, sku prices, the order with its lines and created event (order::insert, one
-- statement, together with its first job and that job's bookkeeping: jobs::job_ctes; apalis's notify trigger
-- fires), the idempotency record. Two lines, like the service benchmark's average.
\set n random(1, 1000000000)
\set s random(0, 49)
BEGIN;
SELECT pg_try_advisory_xact_lock(hashtextextended('orderflow.idempotency:' || 'ceiling-' || :n::text || '-' || :client_id::text, 0));
SELECT request_hash, order_id, response_status, response_body FROM idempotency_keys WHERE key = 'ceiling-' || :n::text || '-' || :client_id::text;
SELECT sku, on_hand, reserved, price, currency, created_at, updated_at FROM skus WHERE sku = ANY (ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)]);
WITH o AS (
    INSERT INTO orders (id, customer_id, currency, total, status, payment_token, current_step, trace_id, job_id)
    VALUES (gen_random_uuid(), 'ceiling', 'USD', 300, 'CREATED', 'pm_card_visa', 'reserve', md5(:n::text),
            'J' || :n::text || '-' || :client_id::text)
    RETURNING id, customer_id, currency, total, status, payment_token, cancel_reason, cancel_note, current_step,
              last_error, job_id, reserved_until, trace_id, created_at, updated_at),
l AS (
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
    SELECT o.id, ordinality::integer, sku, quantity, unit_price
    FROM o, unnest(ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)], ARRAY[1, 2]::bigint[], ARRAY[100, 100]::bigint[])
         WITH ORDINALITY AS l(sku, quantity, unit_price)),
e AS (
    INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status)
    SELECT gen_random_uuid(), o.id, 1, 'order.created', NULL, 'CREATED' FROM o),
s AS (INSERT INTO saga_jobs (job_id, order_id, step, attempt) SELECT 'J' || :n::text || '-' || :client_id::text, id, 'reserve', 1 FROM o),
j AS (INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
      SELECT 'J' || :n::text || '-' || :client_id::text, 'ceiling.reserve',
             convert_to(jsonb_strip_nulls(jsonb_build_object('order_id', o.id, 'attempt', 1::integer,
                 'trace', coalesce(NULL, CASE WHEN o.trace_id ~ '^[0-9a-f]{32}$' THEN o.trace_id END)))::text, 'UTF8'),
             'Pending', 0, 3, now() + make_interval(secs => 0), 0, ''::hstore
      FROM o)
SELECT * FROM o \gset order_
INSERT INTO idempotency_keys (key, request_hash, order_id, response_status, response_body)
  VALUES ('ceiling-' || :n::text || '-' || :client_id::text, sha256(:n::text::bytea), :order_id::uuid, 202, '{}'::jsonb);
COMMIT;
