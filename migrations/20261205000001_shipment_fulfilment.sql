-- Fulfilment by shipment (issue 18, first part): a sku is fulfilled `auto` (today's behaviour, for digital goods:
-- the saga fulfils the order right after capture) or by `shipment` (the warehouse ships it). An order is a
-- shipment order when any of its skus is, decided at creation and kept on the order, so a later change of a sku
-- does not move an order already placed. A shipment order's saga stops in PAID with its authorization open,
-- asked for with multicapture so each shipment can capture its own part.
--
-- Every column comes with a constant default, so adding it rewrites no table; existing skus and orders are
-- `auto` and behave as they did.
alter table skus add column fulfilment text not null default 'auto';
alter table skus add constraint skus_fulfilment_valid check (fulfilment in ('auto', 'shipment'));

alter table orders add column fulfilment text not null default 'auto';
alter table orders add constraint orders_fulfilment_valid check (fulfilment in ('auto', 'shipment'));

-- Whether the authorization asked the provider for multicapture. Kept on the row because every repeat of the
-- authorization must send exactly the same parameters under its idempotency key.
alter table payments add column multicapture boolean not null default false;

-- A shipment order waiting in PAID has no step to run (its `current_step` is null) and is not stranded: the
-- reconciler's scan of live sagas leaves it out by the index's own predicate, so orders that wait for days for
-- the warehouse cost the scan nothing. Every live saga that runs has a current step (creation sets the first,
-- every move that queues a job sets its step), so the index holds exactly the sagas the reconciler watches.
-- Built in place of the old one (no index more on `orders`, whose every move writes each index); the build locks
-- `orders` against writes while it runs.
drop index orders_live_updated_at_idx;
create index orders_live_updated_at_idx on orders (updated_at)
    where status in ('CREATED', 'RESERVED', 'PAID', 'CANCELLING') and current_step is not null;
