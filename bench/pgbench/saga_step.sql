-- One saga step's own transaction, statement for statement as the worker sends it for the reserve step
-- (worker/src/saga.rs::reserve): lock the order and open the step log (saga::lock_and_start, one statement),
-- read the lines, the conditional stock update and reservation row (one line: no savepoint), the transition with
-- its event (one statement), the reservation's expiry, the next job with its bookkeeping (jobs::enqueue, one
-- statement), close the step log. apalis's fetch (one per 16 jobs) and our batched completion are left out,
-- so the ceiling is the step alone and the service does strictly more than it. Orders are pre-made CREATED
-- rows (bench/ceiling.sh); a repeat pick does the same writes. The stock comes from one of :skus skus
-- (`-D skus=50`); with `-D skus=1` every client contends for one row: the hot-sku ceiling.
\set s random(0, :skus - 1)
\set k random(1, :orders)
BEGIN;
WITH o AS (SELECT id, customer_id, currency, total, status, payment_token, cancel_reason, cancel_note, current_step,
                  last_error, job_id, reserved_until, trace_id, created_at, updated_at
           FROM orders WHERE id = (SELECT id FROM ceiling_orders WHERE k = :k) FOR UPDATE),
     s AS (INSERT INTO saga_steps (order_id, step, attempt, status, undo, worker)
           SELECT id, 'reserve', 1, 'STARTED', 'release_inventory', 'ceiling' FROM o RETURNING id)
SELECT o.id AS order_id, (SELECT id FROM s) AS log_id FROM o \gset
SELECT order_id, line_no, sku, quantity, unit_price FROM order_lines WHERE order_id = :order_id::uuid ORDER BY line_no;
UPDATE skus SET reserved = reserved + 1, updated_at = now() WHERE sku = 'ceiling-' || :s::text AND on_hand - reserved >= 1;
INSERT INTO reservations (order_id, sku, quantity, status) VALUES (:order_id::uuid, 'ceiling-' || :s::text, 1, 'RESERVED') ON CONFLICT DO NOTHING;
WITH o AS (UPDATE orders SET status = 'RESERVED', cancel_reason = coalesce(NULL, cancel_reason), cancel_note = coalesce(NULL, cancel_note),
                  current_step = 'pay', updated_at = now() WHERE id = :order_id::uuid RETURNING id)
INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
SELECT gen_random_uuid(), o.id, coalesce((SELECT max(sequence) FROM order_events WHERE order_id = :order_id::uuid), 0) + 1,
       'order.reserved', 'CREATED', 'RESERVED', NULL FROM o;
UPDATE orders SET reserved_until = now() + make_interval(secs => 900) WHERE id = :order_id::uuid;
WITH o AS (UPDATE orders SET job_id = 'J' || :log_id::text, current_step = 'pay' WHERE id = :order_id::uuid RETURNING id, trace_id),
s AS (INSERT INTO saga_jobs (job_id, order_id, step, attempt) SELECT 'J' || :log_id::text, id, 'pay', 1 FROM o),
j AS (INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
      SELECT 'J' || :log_id::text, 'ceiling.next',
             convert_to(jsonb_strip_nulls(jsonb_build_object('order_id', o.id, 'attempt', 1::integer,
                 'trace', coalesce(NULL, CASE WHEN o.trace_id ~ '^[0-9a-f]{32}$' THEN o.trace_id END)))::text, 'UTF8'),
             'Pending', 0, 3, now() + make_interval(secs => 0), 0, ''::hstore
      FROM o)
SELECT 1;
UPDATE saga_steps SET status = 'SUCCEEDED', error = NULL, finished_at = now() WHERE id = :log_id::bigint;
COMMIT;
