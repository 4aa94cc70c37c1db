-- One batched saga step's transaction, statement for statement as the worker sends it for a reserve batch of
-- :batch orders (worker/src/batch.rs::reserve_batch): lock the orders (order::lock_many), open their attempts
-- (saga::start_many), read their lines (order::lines_of), lock their skus and hold the stock
-- (inventory::reserve_many: two statements), then end every order in one statement (saga::end_many: step log,
-- transition + event, hold, next job with its saga_jobs row). Every pgbench transaction counts :batch steps.
--
-- What the harness adds or changes, and why: the first statement picks the batch's ids (the worker has them
-- from its jobs); the attempts' ids come back as one array (\gset needs one row); each client draws its batches
-- from its own slice of the pre-made orders (-D clients=16; the worker's batches never share an order), and a
-- repeat pick rewrites its reservation rows (on conflict) rather than failing on them. Each order's stock comes
-- from one of :skus skus by a hash of its id (`-D skus=50`); with `-D skus=1` every reservation of every batch
-- is on one row: the batched hot-sku ceiling.
\set part :orders / :clients
\set k :client_id * :part + random(1, :part - :batch + 1)
\set kend :k + :batch - 1
BEGIN;
SELECT array_agg(id ORDER BY id)::text AS ids FROM ceiling_orders WHERE k BETWEEN :k AND :kend \gset
SELECT id, customer_id, currency, total, status, payment_token, cancel_reason, cancel_note, current_step, last_error,
       job_id, reserved_until, trace_id, created_at, updated_at
FROM orders WHERE id = any(:ids::uuid[]) ORDER BY id FOR UPDATE;
WITH s AS (INSERT INTO saga_steps (order_id, step, attempt, status, undo, worker)
           SELECT a.order_id, 'reserve', a.attempt, 'STARTED', 'release_inventory', 'ceiling'
           FROM unnest(:ids::uuid[], array_fill(1, ARRAY[:batch::integer])) AS a(order_id, attempt)
           RETURNING order_id, id)
SELECT array_agg(id ORDER BY order_id)::text AS log_ids FROM s \gset
SELECT order_id, line_no, sku, quantity, unit_price FROM order_lines WHERE order_id = any(:ids::uuid[])
ORDER BY order_id, line_no;
SELECT sku, on_hand - reserved FROM skus
WHERE sku = any(ARRAY(SELECT DISTINCT 'ceiling-' || (abs(hashtext(i::text)) % :skus::integer) FROM unnest(:ids::uuid[]) i))
ORDER BY sku FOR NO KEY UPDATE;
WITH r AS (INSERT INTO reservations (order_id, sku, quantity, status)
           SELECT h.order_id, h.sku, h.quantity, 'RESERVED'
           FROM unnest(:ids::uuid[],
                       ARRAY(SELECT 'ceiling-' || (abs(hashtext(i::text)) % :skus::integer) FROM unnest(:ids::uuid[]) i),
                       array_fill(1::bigint, ARRAY[:batch::integer])) AS h(order_id, sku, quantity)
           ON CONFLICT (order_id, sku) DO UPDATE SET quantity = excluded.quantity
           RETURNING sku, quantity)
UPDATE skus SET reserved = skus.reserved + a.quantity, updated_at = now()
FROM (SELECT sku, sum(quantity)::bigint AS quantity FROM r GROUP BY sku) AS a
WHERE skus.sku = a.sku;
WITH t AS (
    SELECT * FROM unnest(:ids::uuid[], :log_ids::bigint[], array_fill('SUCCEEDED'::text, ARRAY[:batch::integer]),
                         array_fill(NULL::text, ARRAY[:batch::integer]), array_fill('RESERVED'::text, ARRAY[:batch::integer]),
                         array_fill(NULL::text, ARRAY[:batch::integer]), array_fill(NULL::text, ARRAY[:batch::integer]),
                         ARRAY(SELECT gen_random_uuid() FROM generate_series(1, :batch::integer)),
                         array_fill('order.reserved'::text, ARRAY[:batch::integer]), array_fill('CREATED'::text, ARRAY[:batch::integer]),
                         array_fill('pay'::text, ARRAY[:batch::integer]), array_fill('ceiling.next'::text, ARRAY[:batch::integer]),
                         ARRAY(SELECT gen_random_uuid()::text FROM generate_series(1, :batch::integer)),
                         array_fill(900::double precision, ARRAY[:batch::integer]))
        AS t(id, log_id, log_status, log_error, to_status, reason, event_reason, event_id,
             event_type, from_status, next_step, queue, job_id, hold_secs)
),
l AS (
    UPDATE saga_steps SET status = t.log_status, error = t.log_error, finished_at = now()
    FROM t WHERE saga_steps.id = t.log_id
),
o AS (
    UPDATE orders
    SET status = coalesce(t.to_status, orders.status),
        cancel_reason = coalesce(t.reason, orders.cancel_reason),
        current_step = t.next_step,
        job_id = coalesce(t.job_id, orders.job_id),
        reserved_until = coalesce(now() + make_interval(secs => t.hold_secs), orders.reserved_until),
        updated_at = CASE WHEN t.to_status IS NULL THEN orders.updated_at ELSE now() END
    FROM t
    WHERE orders.id = t.id AND (t.to_status IS NOT NULL OR t.job_id IS NOT NULL)
    RETURNING orders.id, orders.trace_id
),
e AS (
    INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
    SELECT t.event_id, t.id,
           coalesce((SELECT max(sequence) FROM order_events x WHERE x.order_id = t.id), 0) + 1,
           t.event_type, t.from_status, t.to_status, t.event_reason
    FROM t WHERE t.to_status IS NOT NULL
),
s AS (
    INSERT INTO saga_jobs (job_id, order_id, step, attempt)
    SELECT t.job_id, t.id, t.next_step, 1 FROM t WHERE t.job_id IS NOT NULL
),
j AS (
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    SELECT t.job_id, t.queue,
           convert_to(jsonb_strip_nulls(jsonb_build_object(
               'order_id', o.id,
               'attempt', 1,
               'trace', CASE WHEN o.trace_id ~ '^[0-9a-f]{32}$' THEN o.trace_id END
           ))::text, 'UTF8'),
           'Pending', 0, 3, now(), 0, ''::hstore
    FROM t JOIN o ON o.id = t.id
    WHERE t.job_id IS NOT NULL
)
SELECT count(*) FROM o;
COMMIT;
