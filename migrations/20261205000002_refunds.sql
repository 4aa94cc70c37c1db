-- Refunds (issue 18, part 5): captured money given back, by amount or by lines, never more than was captured in
-- total. A refund is PENDING when accepted (under the order's lock, which every refund of the order takes, so two
-- that together pass what was captured cannot both be accepted), REFUNDING once the refund step has asked the
-- provider for it (under the refund's own idempotency key), then DONE (the provider's refund id kept) or FAILED
-- (refused for good: nothing was refunded, and it no longer counts against what is refundable). Refunds do not move
-- the order's status; `order.refunded` (or `order.refund_failed`) names the refund.
create table refunds (
    id           uuid primary key,
    order_id     uuid not null references orders (id),
    status       text not null,
    amount       bigint not null,
    -- Stripe's refund reasons: what the provider is told.
    reason       text not null,
    note         text,
    -- The provider's refund (`re_…`).
    provider_ref text,
    failure      text,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint refunds_status_valid check (status in ('PENDING', 'REFUNDING', 'DONE', 'FAILED')),
    constraint refunds_amount_positive check (amount > 0),
    constraint refunds_reason_valid check (reason in ('requested_by_customer', 'duplicate', 'fraudulent')),
    constraint refunds_note_length check (char_length(note) between 1 and 500)
);
create index refunds_order_id_idx on refunds (order_id, id);

-- A refund by lines: the units of each order line it refunds, at the line's price. A line is refunded by line at
-- most as many units as were delivered of it.
create table refund_lines (
    refund_id uuid not null references refunds (id),
    order_id  uuid not null,
    line_no   integer not null,
    quantity  bigint not null,
    constraint refund_lines_pkey primary key (refund_id, line_no),
    constraint refund_lines_order_line_fkey foreign key (order_id, line_no) references order_lines (order_id, line_no),
    constraint refund_lines_quantity_positive check (quantity > 0)
);
-- What was refunded and what shipped of an order's line, read under the order's lock by each refund by lines.
create index refund_lines_order_line_idx on refund_lines (order_id, line_no);
create index shipment_lines_order_line_idx on shipment_lines (order_id, line_no);

-- A refund's Idempotency-Key record names the refund.
alter table idempotency_keys add column refund_id uuid references refunds (id);
alter table idempotency_keys drop constraint idempotency_keys_one_resource;
alter table idempotency_keys add constraint idempotency_keys_one_resource
    check (num_nonnulls(order_id, adjustment_id, shipment_id, refund_id) = 1);

-- An `order.refunded` or `order.refund_failed` event names its refund.
alter table order_events add column refund_id uuid references refunds (id);

-- A FULFILLED order with a refund on its way has a current step (refund) and a job, as a live saga has: the
-- reconciler's scan of live sagas takes it in. A FULFILLED order with none (every one before this migration) is
-- outside the index's predicate, so the index stays as small as it was. Rebuilt in place of the old one; the
-- build locks `orders` against writes while it runs.
drop index orders_live_updated_at_idx;
create index orders_live_updated_at_idx on orders (updated_at)
    where status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'FULFILLED', 'CANCELLING')
      and current_step is not null;
