-- What each worker process holds and has not started, per queue: the longest wait of its claimed jobs that no
-- batch runs yet (worker/src/held.rs reports it every 100 ms while one has waited 25 ms or more; admission
-- control adds it to each queue's head, queue::views::saga_backlog). Only the worker knows which of its jobs have
-- started: apalis marks none of ours Running, and marking them would rewrite every job row.
--
-- A table rather than NOTIFY: PostgreSQL 15 signals every listening backend of the database for each notification,
-- whatever its channel, so an API connection listening for reports also took in every queue announcement, in a
-- transaction of its own: with `orderflow dev` idle, 500 notifications on apalis's channel cost 974 transactions
-- with the API listening against 473 without (one run each, 2026-12-05).
-- Unlogged: a report is stale within a second, so a crash may lose them all, and their writes make no WAL. Its
-- updates change no indexed column (HOT: no index write, and the page prunes itself). The reconciler deletes the
-- rows of workers that stopped reporting.
create unlogged table worker_waits (
    worker text not null,
    queue text not null,
    wait_seconds float8 not null,
    reported_at timestamptz not null default now(),
    primary key (worker, queue)
);
