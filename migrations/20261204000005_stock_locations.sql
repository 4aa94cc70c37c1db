-- Stock locations (warehouses, stores): each sku's stock is held per location (`stock_levels`), and a sku's
-- `on_hand` and `reserved` on `skus` are the sums over its locations, kept by the same statement that changes a
-- location's (`inventory::ledger`'s `stock_change!`). The sku's row stays the lock every change of its stock takes
-- first, so the two never disagree and a reservation decides on every location of a sku at once.
--
-- Stop the workers of earlier versions before this runs: they would reserve without a location and change the
-- skus' totals without their locations' stock (the drift check would say so). The tables it changes are locked
-- first, all at once, so a statement of such a process cannot deadlock with it halfway.
lock table skus, reservations, stock_movements, stock_adjustments in access exclusive mode;
create table locations (
    code        text primary key,
    name        text not null,
    -- Allocation order among locations that can each serve a line: lower first (then by code).
    priority    integer not null default 100,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint locations_code_format check (code ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    constraint locations_name_length check (char_length(name) between 1 and 255)
);

-- The one location there was: today's clients, which name none, keep working on it.
insert into locations (code, name, priority) values ('default', 'Default location', 0);

create table stock_levels (
    sku         text not null references skus (sku),
    location    text not null references locations (code),
    on_hand     bigint not null default 0,
    reserved    bigint not null default 0,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint stock_levels_pkey primary key (sku, location),
    constraint stock_levels_reserved_nonnegative check (reserved >= 0),
    -- No oversell per location: 0 <= reserved <= on_hand at each one, enforced by the database itself.
    constraint inventory_reserved_le_on_hand_at_location check (reserved <= on_hand)
);

insert into stock_levels (sku, location, on_hand, reserved)
select sku, 'default', on_hand, reserved from skus;

-- A reservation is per location: an order's line may be split over several, and commit and release act on
-- exactly the locations it holds.
alter table reservations add column location text not null default 'default';
alter table reservations alter column location drop default;
alter table reservations drop constraint reservations_pkey;
alter table reservations add constraint reservations_pkey primary key (order_id, sku, location);

-- A transfer between two locations is a client's stock change like an adjustment: one record (under its
-- Idempotency-Key), a pair of movements. For a transfer `location` is where the units leave, `to_location` where
-- they arrive and `delta` the units moved. Both are locations (the table is cold: keys cost nothing here).
alter table stock_adjustments add column to_location text references locations (code);
alter table stock_adjustments add constraint stock_adjustments_location_fkey
    foreign key (location) references locations (code);
alter table stock_movements drop constraint stock_movements_reason_valid;
alter table stock_movements add constraint stock_movements_reason_valid
    check (reason in ('opening_balance', 'stock_count', 'adjustment', 'transfer', 'order_reserve', 'order_commit',
                      'order_release'));
alter table stock_movements drop constraint stock_movements_adjustment_reason;
alter table stock_movements add constraint stock_movements_adjustment_reason
    check ((adjustment_id is not null) = (reason in ('adjustment', 'transfer')));
alter table stock_adjustments add constraint stock_adjustments_transfer_moves_units
    check (to_location is null or (delta > 0 and to_location <> location));
