-- One saga step's first transaction, statement for statement as the worker sends it for a reserve batch of
-- :batch orders (worker/src/runner.rs::attempt with worker/src/steps/reserve.rs): lock the orders
-- (order::lock_many), read their lines (order::lines_of), lock their skus, read their locations' stock and hold
-- it (inventory::reserve_many: three statements, the last with the holds' ledger movements and locations' stock,
-- inventory::ledger's stock_change! word for word), then end every order in one statement (order::advance: the attempt's step-log row,
-- transition + event, hold, next job with its saga_jobs row; the moves are one parameter, an array of one JSON
-- object per move). A batch of one (-D batch=1) is what the worker sends for a lone job.
-- Every pgbench transaction counts :batch steps.
--
-- What the harness adds or changes, and why: the first statement picks the batch's ids and builds the moves'
-- JSON (the worker has the ids from its jobs and builds the JSON in Rust; \gset needs one row); each client draws
-- its batches from its own slice of the pre-made orders (-D clients=16; the worker's batches never share an
-- order), and a repeat pick rewrites its reservation rows (on conflict) rather than failing on them. Each
-- order's stock comes from one of :skus skus by a hash of its id (`-D skus=50`); with `-D skus=1` every
-- reservation of every batch is on one row: the batched hot-sku ceiling.
\set part :orders / :clients
\set k :client_id * :part + random(1, :part - :batch + 1)
\set kend :k + :batch - 1
BEGIN;
SELECT array_agg(id ORDER BY id)::text AS ids,
       array_agg(jsonb_build_object(
           'id', id, 'worker', 'ceiling', 'step', 'reserve', 'attempt', 1, 'log_id', NULL, 'log_status', 'SUCCEEDED',
           'log_note', NULL, 'undo', 'release_inventory', 'to_status', 'RESERVED', 'cancel_reason', NULL,
           'cancel_note', NULL, 'event_id', gen_random_uuid(), 'event_type', 'order.reserved', 'from_status', 'CREATED',
           'event_reason', NULL, 'set_step', true, 'current_step', 'pay', 'job_id', gen_random_uuid()::text,
           'job_step', 'pay', 'queue', 'ceiling.next', 'job_attempt', 1, 'run_after', 0.0, 'trace', NULL,
           'hold_secs', 900.0, 'last_error', NULL) ORDER BY id)::text AS moves
FROM ceiling_orders WHERE k BETWEEN :k AND :kend \gset
SELECT id, customer_id, currency, total, status, payment_token, cancel_reason, cancel_note, current_step,
       last_error, job_id, reserved_until, trace_id, created_at, updated_at
FROM orders WHERE id = any(:ids::uuid[]) ORDER BY id FOR UPDATE;
SELECT order_id, line_no, sku, quantity, unit_price FROM order_lines WHERE order_id = any(:ids::uuid[])
ORDER BY order_id, line_no;
SELECT sku FROM skus
WHERE sku = any(ARRAY(SELECT DISTINCT 'ceiling-' || (abs(hashtext(i::text)) % :skus::integer) FROM unnest(:ids::uuid[]) i))
ORDER BY sku FOR NO KEY UPDATE;
SELECT l.sku, l.location, l.on_hand - l.reserved, c.priority
FROM stock_levels l JOIN locations c ON c.code = l.location
WHERE l.sku = any(ARRAY(SELECT DISTINCT 'ceiling-' || (abs(hashtext(i::text)) % :skus::integer) FROM unnest(:ids::uuid[]) i));
WITH r AS (INSERT INTO reservations (order_id, sku, location, quantity, status)
           SELECT h.order_id, h.sku, 'default', h.quantity, 'RESERVED'
           FROM unnest(:ids::uuid[],
                       ARRAY(SELECT 'ceiling-' || (abs(hashtext(i::text)) % :skus::integer) FROM unnest(:ids::uuid[]) i),
                       array_fill(1::bigint, ARRAY[:batch::integer])) AS h(order_id, sku, quantity)
           ON CONFLICT (order_id, sku, location) DO UPDATE SET quantity = excluded.quantity
           RETURNING order_id, sku, location, quantity),
     changes AS (SELECT sku, location, 0::bigint AS on_hand_delta, quantity AS reserved_delta,
                        'order_reserve'::text AS reason, order_id, NULL::uuid AS adjustment_id, 'saga'::text AS actor
                 FROM r),
     movements as (
               insert into stock_movements (sku, location, on_hand_delta, reserved_delta, reason, order_id,
                                            adjustment_id, actor)
               select sku, location, on_hand_delta, reserved_delta, reason, order_id, adjustment_id, actor
               from changes
               where on_hand_delta <> 0 or reserved_delta <> 0
           ),
           levels as (
               update stock_levels set on_hand = stock_levels.on_hand + d.on_hand,
                                       reserved = stock_levels.reserved + d.reserved, updated_at = now()
               from (select sku, location, sum(on_hand_delta)::bigint as on_hand,
                            sum(reserved_delta)::bigint as reserved
                     from changes group by sku, location) as d
               where stock_levels.sku = d.sku and stock_levels.location = d.location
           ),
           applied as (
               update skus set on_hand = skus.on_hand + d.on_hand, reserved = skus.reserved + d.reserved,
                               updated_at = now()
               from (select sku, sum(on_hand_delta)::bigint as on_hand, sum(reserved_delta)::bigint as reserved
                     from changes group by sku) as d
               where skus.sku = d.sku
               returning skus.sku, skus.on_hand, skus.reserved, skus.price, skus.currency, skus.created_at,
                         skus.updated_at, skus.xmin::text::bigint as version
           )
SELECT 1;
WITH t AS (
    SELECT t.* FROM unnest(:moves::jsonb[]) AS m(move), jsonb_to_record(m.move) AS t(
        id uuid, worker text, step text, attempt integer, log_id bigint, log_status text, log_note text, undo text,
        to_status text, cancel_reason text, cancel_note text, event_id uuid, event_type text,
        from_status text, event_reason text, set_step boolean, current_step text, job_id text,
        job_step text, queue text, job_attempt integer, run_after double precision, trace text,
        hold_secs double precision, last_error text, shipment_id uuid, refund_id uuid,
        progress boolean)
),
attempts_closed AS (
    UPDATE saga_steps SET status = t.log_status, error = t.log_note, finished_at = now()
    FROM t WHERE saga_steps.id = t.log_id
),
attempts_recorded AS (
    INSERT INTO saga_steps (order_id, step, attempt, status, undo, worker, error, finished_at)
    SELECT t.id, t.step, t.attempt, t.log_status, t.undo, t.worker, t.log_note, now()
    FROM t WHERE t.log_status IS NOT NULL AND t.log_id IS NULL
),
o AS (
    UPDATE orders
    SET status = coalesce(t.to_status, orders.status),
        cancel_reason = coalesce(t.cancel_reason, orders.cancel_reason),
        cancel_note = coalesce(t.cancel_note, orders.cancel_note),
        current_step = CASE WHEN t.set_step THEN t.current_step ELSE orders.current_step END,
        job_id = coalesce(t.job_id, orders.job_id),
        reserved_until = coalesce(now() + make_interval(secs => t.hold_secs), orders.reserved_until),
        last_error = coalesce(t.last_error, orders.last_error),
        updated_at = CASE WHEN t.to_status IS NULL AND NOT coalesce(t.progress, false) THEN orders.updated_at
                          ELSE now() END
    FROM t
    WHERE orders.id = t.id
      AND (t.to_status IS NOT NULL OR t.job_id IS NOT NULL OR t.hold_secs IS NOT NULL OR t.last_error IS NOT NULL)
    RETURNING orders.id, orders.trace_id
),
events AS (
    INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason,
                              shipment_id, refund_id)
    SELECT t.event_id, t.id,
           coalesce((SELECT max(sequence) FROM order_events x WHERE x.order_id = t.id), 0) + 1,
           t.event_type, t.from_status, t.to_status, t.event_reason, t.shipment_id, t.refund_id
    FROM t WHERE t.to_status IS NOT NULL
),
new_jobs AS (
    SELECT t.id AS order_id, t.job_id, t.job_step AS step, t.queue, t.job_attempt AS attempt,
           t.run_after AS delay_secs,
           coalesce(t.trace, CASE WHEN o.trace_id ~ '^[0-9a-f]{32}$' THEN o.trace_id END) AS trace
    FROM t JOIN o ON o.id = t.id
    WHERE t.job_id IS NOT NULL
),
saga_job_rows AS (
    INSERT INTO saga_jobs (job_id, order_id, step, attempt)
    SELECT job_id, order_id, step, attempt FROM new_jobs
),
apalis_job_rows AS (
    INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    SELECT job_id, queue,
           convert_to(jsonb_strip_nulls(jsonb_build_object(
               'order_id', order_id, 'attempt', attempt, 'trace', trace))::text, 'UTF8'),
           'Pending', 0, 3, now() + make_interval(secs => delay_secs), 0, ''::hstore
    FROM new_jobs
)
SELECT count(*) FROM o;
COMMIT;
