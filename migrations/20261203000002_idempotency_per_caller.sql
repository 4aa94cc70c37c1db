-- Idempotency-Keys belong to their caller (an API key; a customer, for customer tokens), as Stripe's belong to
-- an account: two callers may use the same key without colliding. Records made before callers existed keep the
-- empty caller, which no request has, and expire with the rest.
alter table idempotency_keys add column caller text not null default '';
alter table idempotency_keys alter column caller drop default;
alter table idempotency_keys drop constraint idempotency_keys_pkey;
alter table idempotency_keys add constraint idempotency_keys_pkey primary key (caller, key);
-- Records are kept for ORDERFLOW_IDEMPOTENCY_RETENTION_SECS (24 h) and then purged by the reconciler, oldest
-- first. Rows arrive in created_at order, so a BRIN index finds the old ones at almost no cost to creation.
create index idempotency_keys_created_at_brin on idempotency_keys using brin (created_at);
