-- The outbox's two readers: the NATS relay (unpublished events, in id order) and the polling feed
-- (GET /v1/events). The feed pages by (txid, id) and only serves events whose transaction is older than every
-- transaction still running, so an event can never appear behind a cursor a client already holds: ids are taken
-- at insert, not at commit, so id order alone could skip an event that commits late.
alter table order_events add column txid xid8 not null default pg_current_xact_id();
create index order_events_txid_id_idx on order_events (txid, id);

-- "published per second" reads recent publications.
create index order_events_published_at_idx on order_events (published_at) where published_at is not null;
