-- Fulfilment by shipment (issue 18): a sku is fulfilled `auto` (today's behaviour, for digital goods: the saga
-- fulfils the order right after capture) or by `shipment` (the warehouse ships it). An order is a shipment order
-- when any of its skus is, decided at creation and kept on the order, so a later change of a sku does not move an
-- order already placed. A shipment order's saga stops in PAID with its authorization open, asked for with
-- multicapture; each shipment then captures what it ships, and the units it ships leave stock in the same
-- transaction that records its capture. PAID → PARTIALLY_FULFILLED (some shipped) → FULFILLED (all shipped).
--
-- Every new column of an existing table comes with a constant default or none, so adding it rewrites no table;
-- existing skus and orders are `auto` and behave as they did. The checks added to existing tables are validated by
-- a scan of each (`orders`, `payments`, `reservations`) under the exclusive lock `alter table` takes, and the live
-- index below is rebuilt under a lock against writes to `orders`: on a large database, run it in a quiet moment.
alter table skus add column fulfilment text not null default 'auto';
alter table skus add constraint skus_fulfilment_valid check (fulfilment in ('auto', 'shipment'));

alter table orders add column fulfilment text not null default 'auto';
alter table orders add constraint orders_fulfilment_valid check (fulfilment in ('auto', 'shipment'));
alter table orders drop constraint orders_status_valid;
alter table orders add constraint orders_status_valid
    check (status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'FULFILLED', 'CANCELLING', 'CANCELLED',
                      'NEEDS_ATTENTION'));

-- Whether the authorization asked the provider for multicapture: kept on the row because every repeat of the
-- authorization must send exactly the same parameters under its idempotency key. PARTIALLY_CAPTURED: some
-- shipments captured, the hold still open for the rest.
alter table payments add column multicapture boolean not null default false;
alter table payments drop constraint payments_status_valid;
alter table payments add constraint payments_status_valid
    check (status in ('PENDING', 'AUTHORIZED', 'PARTIALLY_CAPTURED', 'CAPTURED', 'DECLINED', 'VOIDED', 'REFUNDED'));

-- The units of a reservation row that shipments took out of stock (`shipped`), and those given back when the rest
-- of a partly shipped order was cancelled (`cancelled`). The row stays RESERVED while some of its units are still
-- held (`reserved` counts quantity − shipped − cancelled of it); it ends COMMITTED once all have shipped or some
-- shipped and the rest was cancelled, RELEASED if none shipped. An auto order's commit takes the whole row at once
-- and leaves both at 0.
alter table reservations add column shipped bigint not null default 0;
alter table reservations add column cancelled bigint not null default 0;
alter table reservations add constraint reservations_shipped_within
    check (shipped >= 0 and cancelled >= 0 and shipped + cancelled <= quantity);

-- A shipment the warehouse reported: PENDING (written with its request), CAPTURING (its capture asked for, with
-- `final_capture` fixed so that every repeat asks the same), DONE (captured; its units left stock in the same
-- transaction), FAILED (the provider refused the capture for good, or its retries ran out: nothing shipped,
-- the units stay reserved). `amount` is its units at the lines' prices.
create table shipments (
    id            uuid primary key,
    order_id      uuid not null references orders (id),
    status        text not null,
    amount        bigint not null,
    final_capture boolean,
    carrier       text,
    tracking      text,
    -- The intent the capture drew on.
    provider_ref  text,
    failure       text,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    constraint shipments_status_valid check (status in ('PENDING', 'CAPTURING', 'DONE', 'FAILED')),
    constraint shipments_amount_positive check (amount > 0),
    constraint shipments_final_fixed_when_capturing check (status = 'PENDING' or final_capture is not null),
    constraint shipments_carrier_length check (char_length(carrier) between 1 and 255),
    constraint shipments_tracking_length check (char_length(tracking) between 1 and 255)
);
create index shipments_order_id_idx on shipments (order_id, id);

-- A shipment's units per order line and location (a line held at two locations may ship from both).
create table shipment_lines (
    shipment_id uuid not null references shipments (id),
    order_id    uuid not null,
    line_no     integer not null,
    sku         text not null,
    location    text not null references locations (code),
    quantity    bigint not null,
    constraint shipment_lines_pkey primary key (shipment_id, line_no, location),
    constraint shipment_lines_order_line_fkey foreign key (order_id, line_no) references order_lines (order_id, line_no),
    constraint shipment_lines_quantity_positive check (quantity > 0)
);

-- A shipment's Idempotency-Key record names the shipment.
alter table idempotency_keys add column shipment_id uuid references shipments (id);
alter table idempotency_keys drop constraint idempotency_keys_one_resource;
alter table idempotency_keys add constraint idempotency_keys_one_resource
    check (num_nonnulls(order_id, adjustment_id, shipment_id) = 1);

-- An `order.shipped` or `order.shipment_failed` event names its shipment.
alter table order_events add column shipment_id uuid references shipments (id);

-- A shipment order waiting for shipments (PAID or PARTIALLY_FULFILLED with no current step) is not stranded:
-- the reconciler's scan of live sagas leaves it out by the index's own predicate, so orders that wait for days
-- cost the scan nothing. Every live saga that runs has a current step (creation sets the first, every move that
-- queues a job sets its step). Rebuilt in place of the old one (no index more on `orders`, whose every move writes
-- each index); the build locks `orders` against writes while it runs.
drop index orders_live_updated_at_idx;
create index orders_live_updated_at_idx on orders (updated_at)
    where status in ('CREATED', 'RESERVED', 'PAID', 'PARTIALLY_FULFILLED', 'CANCELLING') and current_step is not null;
