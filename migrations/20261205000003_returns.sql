-- Returns (issue 18, part 6): units of an order that came back. A return is recorded whole in one transaction:
-- its lines, the units restocked (`order_return` movements at the location each line goes back to, when
-- `restock`), and the refund of their value that follows it (a refund by lines, run by the refund step) unless the
-- caller declined it. Without restock nothing moves: the units are written off, and the return records it.
alter table stock_movements drop constraint stock_movements_reason_valid;
alter table stock_movements add constraint stock_movements_reason_valid
    check (reason in ('opening_balance', 'stock_count', 'adjustment', 'transfer', 'order_reserve', 'order_commit',
                      'order_release', 'order_return'));

create table returns (
    id              uuid primary key,
    order_id        uuid not null references orders (id),
    restock         boolean not null,
    -- The refund of the returned units' value that follows the return; null when declined or when every unit of
    -- it was refunded by line already.
    refund_id       uuid references refunds (id),
    refund_declined boolean not null,
    note            text,
    created_at      timestamptz not null default now(),
    constraint returns_note_length check (char_length(note) between 1 and 500),
    constraint returns_declined_has_no_refund check (not (refund_declined and refund_id is not null))
);
create index returns_order_id_idx on returns (order_id, id);

-- A return's units per order line, and the location they went back to (restocked) or came from (written off).
create table return_lines (
    return_id uuid not null references returns (id),
    order_id  uuid not null,
    line_no   integer not null,
    location  text not null references locations (code),
    quantity  bigint not null,
    constraint return_lines_pkey primary key (return_id, line_no),
    constraint return_lines_order_line_fkey foreign key (order_id, line_no) references order_lines (order_id, line_no),
    constraint return_lines_quantity_positive check (quantity > 0)
);
create index return_lines_order_line_idx on return_lines (order_id, line_no);

-- A return's Idempotency-Key record names the return.
alter table idempotency_keys add column return_id uuid references returns (id);
alter table idempotency_keys drop constraint idempotency_keys_one_resource;
alter table idempotency_keys add constraint idempotency_keys_one_resource
    check (num_nonnulls(order_id, adjustment_id, shipment_id, refund_id, return_id) = 1);
