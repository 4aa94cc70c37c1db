-- The stock ledger: every change of a sku's `on_hand` or `reserved` is a movement, appended in the statement that
-- makes the change, by the one piece of SQL that changes stock (`inventory::ledger`, `stock_change!`). The skus'
-- counts stay the fast path; the movements must always add up to them, which the reconciler checks.
--
-- Movements of one sku are appended while its row is locked (every change locks its skus first), so their ids
-- grow in commit order per sku: a client paging one sku's movements by id never skips one that commits late.
-- No foreign keys: the ledger is history, written only where the sku is locked and its order or adjustment is
-- written in the same transaction, and a key check per row would cost every saga step a lookup and a row lock.
create table stock_movements (
    id              bigint generated always as identity,
    sku             text not null,
    -- Where the units are. One location, 'default', until stock locations come.
    location        text not null default 'default',
    on_hand_delta   bigint not null,
    reserved_delta  bigint not null,
    reason          text not null,
    -- The order whose saga moved the stock (reasons order_*), or the adjustment (reason adjustment).
    order_id        uuid,
    adjustment_id   uuid,
    -- Who: 'saga' for an order's steps, the API caller ('key:<id>') for a set or an adjustment, 'migration'.
    actor           text not null,
    created_at      timestamptz not null default now(),
    -- One index: a sku's movements in order, for paging and for the drift check per sku.
    constraint stock_movements_pkey primary key (sku, id),
    constraint stock_movements_reason_valid
        check (reason in ('opening_balance', 'stock_count', 'adjustment', 'order_reserve', 'order_commit',
                          'order_release')),
    constraint stock_movements_moves check (on_hand_delta <> 0 or reserved_delta <> 0),
    constraint stock_movements_order_reasons check ((order_id is not null) = (reason like 'order\_%')),
    constraint stock_movements_adjustment_reason check ((adjustment_id is not null) = (reason = 'adjustment'))
);

-- Movements are never updated or deleted.
create function stock_movements_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'stock_movements is append-only: % is not allowed', tg_op
        using errcode = 'restrict_violation';
end
$$;
create trigger stock_movements_no_update_or_delete
    before update or delete on stock_movements
    for each statement execute function stock_movements_append_only();
create trigger stock_movements_no_truncate
    before truncate on stock_movements
    for each statement execute function stock_movements_append_only();

-- A relative change of stock a client asked for (`POST /v1/skus/{sku}/adjustments`): a delivery, a breakage.
-- Its Idempotency-Key record is in idempotency_keys, as an order's is.
create table stock_adjustments (
    id          uuid primary key,
    sku         text not null references skus (sku),
    location    text not null,
    delta       bigint not null,
    reason      text not null,
    actor       text not null,
    created_at  timestamptz not null default now(),
    constraint stock_adjustments_delta_nonzero check (delta <> 0),
    constraint stock_adjustments_reason_length check (char_length(reason) between 1 and 255)
);

-- An Idempotency-Key answers for an order or for an adjustment: one namespace per caller, as Stripe's keys are
-- per account whatever the endpoint (a key used for an order and then for an adjustment is a reuse: 422).
alter table idempotency_keys alter column order_id drop not null;
alter table idempotency_keys add column adjustment_id uuid references stock_adjustments (id);
alter table idempotency_keys add constraint idempotency_keys_one_resource
    check (num_nonnulls(order_id, adjustment_id) = 1);

-- The stock as it stands opens the ledger. The lock keeps the counts still while they are read; a process of an
-- earlier version still running after this would change stock without movements, and the drift check says so.
lock table skus in share mode;
insert into stock_movements (sku, on_hand_delta, reserved_delta, reason, actor)
select sku, on_hand, reserved, 'opening_balance', 'migration' from skus where on_hand <> 0 or reserved <> 0;
