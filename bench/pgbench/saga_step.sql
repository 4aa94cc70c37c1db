-- One saga step as the worker runs the reserve step (worker/src/saga.rs::reserve), with apalis's job cycle:
-- fetch (claim) a job, lock the order, step-log row, conditional stock update, reservation row, transition and
-- event, next job and its link, close the step log; then apalis's ack in its own transaction. The job claimed
-- is a pre-made Pending row of queue 'ceiling.step' (bench/ceiling.sh makes them).
\set s random(0, 49)
BEGIN;
SELECT * FROM apalis.get_jobs('ceiling-worker-' || :client_id::text, 'ceiling.step', 1) \gset job_
COMMIT;
BEGIN;
SELECT id, status FROM orders WHERE id = (convert_from(:job_job::bytea, 'UTF8')::jsonb ->> 'order_id')::uuid FOR UPDATE \gset o_
INSERT INTO saga_steps (order_id, step, attempt, status, undo, worker) VALUES (:o_id::uuid, 'reserve', 1, 'STARTED', 'release_inventory', 'ceiling') RETURNING id \gset step_
UPDATE skus SET reserved = reserved + 1, updated_at = now() WHERE sku = 'ceiling-' || :s::text AND on_hand - reserved >= 1;
INSERT INTO reservations (order_id, sku, quantity, status) VALUES (:o_id::uuid, 'ceiling-' || :s::text, 1, 'RESERVED') ON CONFLICT DO NOTHING;
UPDATE orders SET status = status, current_step = 'pay', updated_at = now() WHERE id = :o_id::uuid;
INSERT INTO order_events (event_id, order_id, sequence, event_type, from_status, to_status, reason)
  SELECT gen_random_uuid(), :o_id::uuid, coalesce(max(sequence), 0) + 1, 'order.reserved', 'CREATED', 'RESERVED', NULL
  FROM order_events WHERE order_id = :o_id::uuid;
UPDATE orders SET job_id = :job_id::text || 'n' WHERE id = :o_id::uuid RETURNING trace_id;
INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
  VALUES (:job_id::text || 'n', 'ceiling.next', convert_to('{}', 'UTF8'), 'Done', 0, 3, now(), 0, ''::hstore, NULL);
INSERT INTO saga_jobs (job_id, order_id, step, attempt) VALUES (:job_id::text || 'n', :o_id::uuid, 'pay', 1);
UPDATE saga_steps SET status = 'SUCCEEDED', error = NULL, finished_at = now() WHERE id = :step_id::bigint;
COMMIT;
BEGIN;
UPDATE apalis.jobs SET status = 'Done', attempts = 1, last_result = '{"Ok": null}'::jsonb, done_at = now()
  WHERE id = :job_id::text AND lock_by = 'ceiling-worker-' || :client_id::text;
COMMIT;
