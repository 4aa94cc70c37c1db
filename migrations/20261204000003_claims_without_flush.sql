-- A claim (apalis.get_jobs, as migration 20261204000001 installs it) commits without waiting for the WAL flush.
-- OrderFlow's workers claim with one statement of their own transaction (`worker/src/poll.rs`, `Paced`), and a
-- claim that found jobs waited for a flush of its own, one more fsync that a new order's commit could queue
-- behind. A claim lost in a PostgreSQL crash leaves its jobs Pending, to be
-- claimed again; a claim whose jobs then ran is durable with them, because a step's durable commit flushes the
-- WAL up to its own commit record, which follows the claim's. `set_config(.., true)` is the caller's
-- transaction's, so the function is for claims alone: only `Paced` calls it (apalis's own fetch path is not
-- used); the test `queue::a_claim_does_not_wait_for_the_disk` pins the setting.
create or replace function apalis.get_jobs(worker_id text, v_job_type text, v_job_count integer default 5)
returns setof apalis.jobs
language plpgsql
volatile
as $$
begin
    perform set_config('synchronous_commit', 'off', true);
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
