-- The payment provider's webhook events, each recorded once: a transactional inbox, the mirror of the outbox.
-- The API writes a row when a signed event arrives (a duplicate delivery finds its id taken and writes nothing)
-- and answers at once; worker processes apply unapplied rows under the order's lock (`provider_event::apply`).
create table provider_events (
    -- The provider's event id (`evt_…`).
    id             text primary key,
    type           text not null,
    -- `data.object.id`: the intent (`pi_…`) or charge (`ch_…`) the event is about.
    object_id      text not null,
    -- The PaymentIntent it concerns (a charge's `payment_intent`), when it names one.
    payment_intent text,
    -- `metadata.order_id` of the intent, or the order whose payment names the intent; null: not an order of ours.
    order_id       uuid,
    -- The event as received (its body parsed), for operators and a replay of the apply.
    payload        jsonb not null,
    -- The event's own `created` (Unix seconds at the provider).
    created        bigint not null,
    received_at    timestamptz not null default now(),
    -- When a worker applied it, and what that did (`provider_event::Effect`).
    applied_at     timestamptz,
    effect         text,
    constraint provider_events_applied_with_effect check ((applied_at is null) = (effect is null))
);

-- What the workers look for: the rows not applied yet, oldest first (a partial index, empty when all is applied).
create index provider_events_unapplied on provider_events (received_at) where applied_at is null;
-- An order's events, for the order's view and for a step looking for an event it is waiting on.
create index provider_events_order on provider_events (order_id, created) where order_id is not null;
