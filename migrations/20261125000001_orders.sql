-- OrderFlow core schema: catalogue stock, orders, the saga's records and the audit trail.
-- Money is in integer minor units (cents); ids are UUIDs; nothing here is ever deleted by a cancellation:
-- compensations flip statuses and append events, so the full history stays readable.

create table skus (
    sku         text primary key,
    on_hand     bigint not null,
    -- Units held by orders between reservation and commit (phase one of the two-phase reservation).
    reserved    bigint not null default 0,
    price       bigint not null,
    currency    text not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint skus_sku_format check (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    constraint inventory_reserved_nonnegative check (reserved >= 0),
    -- The no-oversell invariant: 0 <= reserved <= on_hand, enforced by the database itself.
    constraint inventory_reserved_le_on_hand check (reserved <= on_hand),
    constraint skus_price_nonnegative check (price >= 0),
    constraint skus_currency_format check (currency ~ '^[A-Z]{3}$')
);

create table orders (
    id              uuid primary key,
    customer_id     text not null,
    currency        text not null,
    total           bigint not null,
    status          text not null,
    -- The payment method token the customer gave; the worker passes it to the provider.
    payment_token   text not null,
    -- Why the order was (or is being) cancelled; null unless status is CANCELLING or CANCELLED.
    cancel_reason   text,
    -- Free text the customer gave with a cancel request.
    cancel_note     text,
    -- The saga step the order is in or last finished, for operators.
    current_step    text,
    -- The last error a step met (transient or permanent), for operators; cleared by nothing.
    last_error      text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint orders_status_valid
        check (status in ('CREATED', 'RESERVED', 'PAID', 'FULFILLED', 'CANCELLING', 'CANCELLED')),
    constraint orders_total_nonnegative check (total >= 0),
    constraint orders_cancel_reason_only_when_cancelling
        check ((cancel_reason is null) = (status not in ('CANCELLING', 'CANCELLED')))
);

-- Cursor pagination walks ids (UUIDv7, so time-ordered) within a filter.
create index orders_status_id_idx on orders (status, id);
create index orders_customer_id_id_idx on orders (customer_id, id);

create table order_lines (
    order_id    uuid not null references orders (id),
    line_no     integer not null,
    sku         text not null references skus (sku),
    quantity    bigint not null,
    -- Price snapshot taken from the sku when the order was created; later price changes do not touch it.
    unit_price  bigint not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint order_lines_pkey primary key (order_id, line_no),
    constraint order_lines_sku_unique_per_order unique (order_id, sku),
    constraint order_lines_quantity_positive check (quantity > 0),
    constraint order_lines_unit_price_nonnegative check (unit_price >= 0)
);

-- One row per (order, sku) held. RESERVED counts in skus.reserved; COMMITTED has left on_hand;
-- RELEASED gave the units back (from either state).
create table reservations (
    order_id    uuid not null references orders (id),
    sku         text not null references skus (sku),
    quantity    bigint not null,
    status      text not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint reservations_pkey primary key (order_id, sku),
    constraint reservations_status_valid check (status in ('RESERVED', 'COMMITTED', 'RELEASED')),
    constraint reservations_quantity_positive check (quantity > 0)
);

-- At most one payment per order. PENDING is written before the provider is called (the step log's promise),
-- so a crash leaves a row that says "ask the provider with this idempotency key".
create table payments (
    order_id        uuid primary key references orders (id),
    -- Sent as Idempotency-Key on the authorization; derived from the order id, so every retry reuses it.
    idempotency_key text not null unique,
    provider_ref    text,
    amount          bigint not null,
    currency        text not null,
    payment_token   text not null,
    status          text not null,
    decline_code    text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint payments_status_valid
        check (status in ('PENDING', 'AUTHORIZED', 'CAPTURED', 'DECLINED', 'VOIDED', 'REFUNDED')),
    constraint payments_amount_nonnegative check (amount >= 0)
);

-- The saga step log: one row per step attempt, written BEFORE the step's side effect, saying what undoes it.
-- A reconciler reads it to finish or undo a saga a crash left half-done.
create table saga_steps (
    id          bigint generated always as identity primary key,
    order_id    uuid not null references orders (id),
    step        text not null,
    attempt     integer not null,
    status      text not null,
    -- The compensation that undoes this step's effect ('release_inventory', 'cancel_payment') or null.
    undo        text,
    worker      text,
    error       text,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    constraint saga_steps_status_valid check (status in ('STARTED', 'SUCCEEDED', 'FAILED', 'SKIPPED')),
    constraint saga_steps_attempt_positive check (attempt > 0)
);

create index saga_steps_order_id_idx on saga_steps (order_id, id);

-- Append-only audit trail, one row per order transition, written in the transition's transaction.
-- It doubles as the transactional outbox (published_at is set by the relay).
create table order_events (
    id          bigint generated always as identity primary key,
    event_id    uuid not null unique,
    order_id    uuid not null references orders (id),
    -- 1, 2, 3… per order: the order's own sequence, so consumers can check they saw every transition.
    sequence    integer not null,
    event_type  text not null,
    from_status text,
    to_status   text not null,
    reason      text,
    created_at  timestamptz not null default now(),
    published_at timestamptz,
    constraint order_events_sequence_unique unique (order_id, sequence)
);

create index order_events_unpublished_idx on order_events (id) where published_at is null;

-- Idempotency-Key records for POST /v1/orders. The request fingerprint is a SHA-256 of the normalised body;
-- the stored response is replayed verbatim for a repeat.
create table idempotency_keys (
    key             text primary key,
    request_hash    bytea not null,
    order_id        uuid not null references orders (id),
    response_status integer not null,
    response_body   jsonb not null,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint idempotency_keys_key_length check (char_length(key) between 1 and 255)
);
