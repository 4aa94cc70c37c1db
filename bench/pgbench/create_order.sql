-- One order creation, statement for statement as POST /v1/orders sends it (shared/src/order/create.rs): the
-- idempotency key's lock with what creation reads (admit: the key's record, the skus' prices, the transaction's
-- timestamp), then the order with its lines, its created event, the idempotency record and its first job with
-- that job's saga_jobs row (the queue's job inserts; apalis's notify trigger fires), in one statement (insert).
-- Two lines, like the service benchmark's average. The caller is an API key's, as the service scopes keys.
\set n random(1, 1000000000)
\set s random(0, 49)
BEGIN;
WITH l AS (SELECT pg_try_advisory_xact_lock(
                 hashtextextended('orderflow.idempotency:' || char_length('key:0193a0a0-0000-7000-8000-000000000001') || ':' || 'key:0193a0a0-0000-7000-8000-000000000001' || ':' || ('ceiling-' || :n::text || '-' || :client_id::text), 0)) AS held)
SELECT l.held, now() AS now,
       i.request_hash, i.order_id, i.adjustment_id, i.response_status, i.response_body,
       s.sku, s.on_hand, s.reserved, s.price, s.currency, s.fulfilment, s.created_at, s.updated_at
FROM l
LEFT JOIN idempotency_keys i ON l.held AND i.caller = 'key:0193a0a0-0000-7000-8000-000000000001' AND i.key = 'ceiling-' || :n::text || '-' || :client_id::text
LEFT JOIN skus s ON l.held AND i.key IS NULL AND s.sku = ANY (ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)]);
WITH o AS (
    INSERT INTO orders (id, customer_id, currency, total, status, payment_token, current_step, trace_id, job_id,
                        created_at, updated_at, fulfilment)
    VALUES (gen_random_uuid(), 'ceiling', 'USD', 300, 'CREATED', 'pm_card_visa', 'reserve', md5(:n::text),
            'J' || :n::text || '-' || :client_id::text, now(), now(), 'auto')
    RETURNING id, trace_id),
lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price)
    SELECT o.id, ordinality::integer, sku, quantity, unit_price
    FROM o, unnest(ARRAY['ceiling-' || :s::text, 'ceiling-' || ((:s + 1) % 50)], ARRAY[1, 2]::bigint[], ARRAY[100, 100]::bigint[])
         WITH ORDINALITY AS l(sku, quantity, unit_price)),
created AS (
    INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status)
    SELECT gen_random_uuid(), o.id, 1, 'order.created', NULL, 'CREATED' FROM o),
key_record AS (INSERT INTO idempotency_keys (caller, key, request_hash, order_id, response_status, response_body)
      SELECT 'key:0193a0a0-0000-7000-8000-000000000001', 'ceiling-' || :n::text || '-' || :client_id::text, sha256(:n::text::bytea), o.id, 202,
             '{"status": "CREATED", "fulfilment": "auto", "current_step": "reserve", "lines": [{"sku": "ceiling-0", "quantity": 1, "unit_price": 100}, {"sku": "ceiling-1", "quantity": 2, "unit_price": 100}], "total": 300, "currency": "USD", "customer_id": "ceiling", "payment": null, "cancel_reason": null, "cancel_note": null, "reserved_until": null, "error_code": null, "created_at": "2026-12-03T08:00:00.000000Z", "updated_at": "2026-12-03T08:00:00.000000Z", "id": "0193a0a0-0000-7000-8000-000000000000"}'::jsonb
      FROM o),
new_jobs AS (
    SELECT o.id AS order_id, 'J' || :n::text || '-' || :client_id::text AS job_id, 'reserve' AS step,
           'ceiling.reserve' AS queue, 1 AS attempt, 0::double precision AS delay_secs,
           CASE WHEN o.trace_id ~ '^[0-9a-f]{32}$' THEN o.trace_id END AS trace
    FROM o),
saga_job_rows AS (
    INSERT INTO saga_jobs (job_id, order_id, step, attempt)
    SELECT job_id, order_id, step, attempt FROM new_jobs),
apalis_job_rows AS (
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    SELECT job_id, queue,
           convert_to(jsonb_strip_nulls(jsonb_build_object(
               'order_id', order_id, 'attempt', attempt, 'trace', trace))::text, 'UTF8'),
           'Pending', 0, 3, now() + make_interval(secs => delay_secs), 0, ''::hstore
    FROM new_jobs)
SELECT 1;
COMMIT;
