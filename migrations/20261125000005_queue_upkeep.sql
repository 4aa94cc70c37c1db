-- apalis-postgres's own migrations leave two copies of indexes on apalis.jobs: unique_job_id is jobs_pkey
-- again, lidx is idx_apalis_jobs_lock_by again. Every job is written three times (enqueue, fetch, completion),
-- none of them a HOT update, so each copy is one more index insert per write and nothing reads it.
-- orderflow-queue-bench --jobs 20000, three alternating runs on one database: 3,830 -> 4,834 trivial jobs/s
-- (median). Plain indexes, no constraint depends on them; apalis's later migrations do not name them.
drop index if exists apalis.unique_job_id;
drop index if exists apalis.lidx;

-- An order row is rewritten by every step; `jobs::enqueue` touches no indexed column of it, so its update can
-- be HOT (no index writes) when the row's page has room: leave room on new pages.
alter table orders set (fillfactor = 80);
