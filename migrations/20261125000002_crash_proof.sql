-- Crash-proof sagas: every live saga names the job that moves it on, reservations expire, and a saga whose
-- compensation keeps failing parks in NEEDS_ATTENTION instead of retrying for ever.

-- The apalis job (apalis.jobs.id, a ULID) that moves the order on: set in the transaction that enqueues it, so
-- for an order that is not terminal it is never stale. The reconciler joins on it to find sagas whose job
-- finished, died or vanished without moving them on.
alter table orders add column job_id text;

-- Until when the order's reserved stock is held for it; set by the reserve step. Past it, and unless an
-- authorization is in flight (a PENDING payment), the reconciler releases the stock and cancels the order.
alter table orders add column reserved_until timestamptz;

alter table orders drop constraint orders_status_valid;
alter table orders add constraint orders_status_valid
    check (status in ('CREATED', 'RESERVED', 'PAID', 'FULFILLED', 'CANCELLING', 'CANCELLED', 'NEEDS_ATTENTION'));

-- NEEDS_ATTENTION is only reached from CANCELLING, so it keeps the cancel reason.
alter table orders drop constraint orders_cancel_reason_only_when_cancelling;
alter table orders add constraint orders_cancel_reason_only_when_cancelling
    check ((cancel_reason is null) = (status not in ('CANCELLING', 'CANCELLED', 'NEEDS_ATTENTION')));

-- The reconciler's scans: sagas still running, and reservations by deadline.
create index orders_live_updated_at_idx on orders (updated_at)
    where status in ('CREATED', 'RESERVED', 'PAID', 'CANCELLING');
create index orders_reserved_until_idx on orders (reserved_until) where status = 'RESERVED';

-- The reconciler looks for fetched jobs (Queued or Running) whose worker is gone every second; apalis has no
-- index for that (its own are for fetching Pending jobs). apalis's schema is set up before ours (db::migrate).
create index if not exists orderflow_jobs_in_flight_idx on apalis.jobs (job_type)
    where status in ('Queued', 'Running');

-- Attempts still open (STARTED): the reconciler closes those of workers that are gone.
create index saga_steps_started_idx on saga_steps (worker) where status = 'STARTED';
