-- Merchants' webhook endpoints and the deliveries of every order event to them (Standard Webhooks).

-- An endpoint. Its signing secret is not stored: it is derived from the `webhook_endpoints` server secret, the
-- endpoint's id and `generation` (`webhooks::secret`), shown once when made, and derived again to sign.
create table webhook_endpoints (
    id              uuid primary key,
    url             text not null,
    -- The event types it receives (`order.paid`, …); empty: every type.
    event_types     text[] not null default '{}',
    description     text,
    generation      integer not null default 1,
    enabled         boolean not null default true,
    -- Why it was disabled: an operator's words, `410 Gone`, or its deliveries failing for too long.
    disabled_reason text,
    -- The first failure of the current run of failures (null once a delivery succeeds): disabling counts from it.
    failing_since   timestamptz,
    created_by      text not null,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint webhook_endpoints_disabled_says_why check (enabled or disabled_reason is not null)
);

-- How far the fan-out has read the events (the feed's position: `outbox::Cursor`). One row.
create table webhook_cursor (
    single  boolean primary key default true,
    txid    bigint not null,
    id      bigint not null,
    constraint webhook_cursor_single check (single)
);
insert into webhook_cursor (single, txid, id) values (true, 0, 0);

-- One event to one endpoint. Unique per (endpoint, event): the fan-out re-reading after a crash adds nothing, and
-- a replay sends the same row again (the same `webhook-id`), never a second one.
create table webhook_deliveries (
    id              bigint generated always as identity primary key,
    endpoint_id     uuid not null references webhook_endpoints (id),
    event_id        uuid not null references order_events (event_id),
    order_id        uuid not null,
    -- The event's per-order sequence: an order's later event waits for its earlier one to this endpoint.
    sequence        integer not null,
    status          text not null default 'PENDING',
    -- Attempts in this round (a replay starts a new round, counted in `replays`, from 0).
    attempts        integer not null default 0,
    -- When it is due; while an attempt is out, the end of its lease (a worker that dies leaves it due then).
    next_attempt_at timestamptz not null default now(),
    last_status     integer,
    last_latency_ms integer,
    last_error      text,
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    replays         integer not null default 0,
    constraint webhook_deliveries_once unique (endpoint_id, event_id),
    constraint webhook_deliveries_status_valid check (status in ('PENDING', 'DELIVERED', 'DEAD'))
);
-- The due ones, and an order's earlier undelivered ones (the order rule).
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'PENDING';
create index webhook_deliveries_order on webhook_deliveries (endpoint_id, order_id, sequence)
    where status = 'PENDING';
create index webhook_deliveries_endpoint on webhook_deliveries (endpoint_id, created_at);

-- Every attempt of a delivery: the delivery log operators read.
create table webhook_attempts (
    delivery_id     bigint not null references webhook_deliveries (id),
    round           integer not null,
    attempt         integer not null,
    started_at      timestamptz not null,
    status_code     integer,
    latency_ms      integer not null,
    -- The endpoint's answer, its first 1 KB; or why there was none (a timeout, a refused connection).
    response        text,
    error           text,
    primary key (delivery_id, round, attempt)
);
