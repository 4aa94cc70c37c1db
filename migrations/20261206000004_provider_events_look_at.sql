-- When a worker looks at an unapplied provider event next. An event skipped for now (its order locked by a step,
-- or its pay step running) is looked at again a second later, behind newer events, instead of staying at the
-- head of every round (the oldest first) and keeping newer wake-ups waiting.
alter table provider_events add column look_at timestamptz not null default now();
drop index provider_events_unapplied;
create index provider_events_unapplied on provider_events (look_at) where applied_at is null;
