-- apalis's fetch, `apalis.get_jobs`, is a `language sql` function, and PostgreSQL 15 plans the body of such a
-- function (one that cannot be inlined: it updates) on every call; there is no plan cache for SQL functions
-- before PostgreSQL 18. A worker fetches far more often than it finds work (each queue on a timer, on every
-- notification, after every batch), so most calls are empty and nearly all their cost was the planning:
-- `orderflow dev` at 100 sagas/s, pg_stat_statements: 20,092 calls in 24 s at 0.589 ms each, the largest
-- statement of the run (11.8 s of PostgreSQL's time for 2,300 sagas). An empty fetch alone (pgbench -M prepared,
-- one client): 0.298 ms as apalis ships it, 0.077 ms as PL/pgSQL (its statement's plan is kept per session),
-- 0.056 ms for the bare statement.
--
-- The same statement, the same signature and result, in PL/pgSQL. apalis's migrations run before ours at every
-- start, so a later apalis release that replaces the function replaces ours on the next upgrade: the test
-- `queue::the_fetch_keeps_its_plan` reads the function's language and fails then, and this migration's
-- statement is to be redone against the new body.
create or replace function apalis.get_jobs(worker_id text, v_job_type text, v_job_count integer default 5)
returns setof apalis.jobs
language plpgsql
volatile
as $$
begin
    return query
    with jobs as (
        select id
        from apalis.jobs
        where (status = 'Pending' or (status = 'Failed' and attempts < max_attempts))
          and run_at < now()
          and job_type = v_job_type
        order by priority desc, run_at asc
        limit v_job_count
        for update skip locked
    )
    update apalis.jobs j
    set status = 'Queued', lock_by = worker_id, lock_at = now()
    from jobs
    where j.id = jobs.id
    returning j.*;
end;
$$;

