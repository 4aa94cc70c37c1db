-- Operators: which jobs a saga had, what operators did, and one trace per order.

-- Every job enqueued for an order (written by jobs::enqueue in the enqueueing transaction), so a saga's page can
-- list its jobs without scanning apalis.jobs' payloads.
create table saga_jobs (
    job_id      text primary key,
    order_id    uuid not null references orders (id),
    step        text not null,
    attempt     integer not null,
    created_at  timestamptz not null default now()
);
create index saga_jobs_order_id_idx on saga_jobs (order_id, created_at);

-- Every operator action: who (the token's name), with which role, when, and what came of it.
create table admin_actions (
    id          bigint generated always as identity primary key,
    order_id    uuid not null references orders (id),
    action      text not null,
    actor       text not null,
    role        text not null,
    outcome     text not null,
    detail      text,
    created_at  timestamptz not null default now(),
    constraint admin_actions_action_valid check (action in ('retry', 'compensate', 'resolve'))
);
create index admin_actions_order_id_idx on admin_actions (order_id, id);

-- The W3C trace id of the request that created the order; every job carries it, so the API's and the workers'
-- logs of one order share it.
alter table orders add column trace_id text;

-- Queue overviews count the jobs that are not Done; Done rows pile up until the reconciler's cleanup.
create index if not exists orderflow_jobs_open_idx on apalis.jobs (job_type, status) where status <> 'Done';

-- The stuck-saga list filters live sagas by their last progress.
create index orders_attention_updated_at_idx on orders (updated_at) where status = 'NEEDS_ATTENTION';
