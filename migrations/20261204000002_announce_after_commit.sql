-- apalis's insert trigger notifies `apalis::job::insert` for every due job, inside the inserting transaction,
-- and a notifying transaction holds the notification queue's lock through its WAL flush: notifying commits do not
-- share a flush. Order creation and the worker's step batches now announce their jobs after their commit
-- instead (`shared/src/queue/announce.rs`): they begin with `set local orderflow.announce = 'after_commit'`, and
-- the trigger below leaves their rows alone. Every other insert is announced as apalis announces it.
--
-- apalis's migrations run before ours at every start, so a later apalis release that replaces this function
-- replaces ours on the next upgrade: the test `queue::a_quiet_transaction_leaves_its_jobs_to_be_announced` fails
-- then, and this is to be redone against the new body.
create or replace function apalis.notify_new_jobs() returns trigger
language plpgsql
as $$
begin
    if new.run_at <= now() and current_setting('orderflow.announce', true) is distinct from 'after_commit' then
        perform pg_notify(
            'apalis::job::insert',
            json_build_object('job_type', new.job_type, 'id', new.id, 'run_at', new.run_at)::text
        );
    end if;
    return new;
end;
$$;
