-- The lapsed hold (issue 18, part 7). A card authorization lasts about seven days; a shipment order can wait
-- longer. The provider then cancels the hold (what was captured stays), and Stripe has no way to renew it: the
-- ship step that finds its capture refused by a lapsed hold authorizes what is left to capture again, as a new
-- PaymentIntent under the key of the order's next authorization, and captures the shipment from it.
--
-- `payments` stays one row per order: the order's authorization as it now is. `attempt` numbers it (1 for the pay
-- step's, then one more per re-authorization; its key is derived from it, so every repeat of a re-authorization
-- asks under the same key with the same amount); `replaces` is the lapsed intent the current one replaced (the
-- intents before it are named by the shipments that captured from them). `capture_before` is when the provider
-- says the current hold lapses (Stripe's `payment_method_details.card.capture_before`): read by the reconciler,
-- outside the saga's steps, for the warning before a waiting order's hold lapses; null until read.
-- `hold_checked_at` is when the reconciler last asked (a hold whose charge does not say, or whose read failed, is
-- asked again an hour later, not ahead of every other). None is indexed, so the pay step's writes have no index more
-- to write and stay as HOT-eligible as they were; every column has a constant default or none, so nothing is rewritten (the check scans `payments`
-- once, under the migration's lock).
alter table payments add column attempt integer not null default 1;
alter table payments add column replaces text;
alter table payments add column capture_before timestamptz;
alter table payments add column hold_checked_at timestamptz;
alter table payments add constraint payments_attempt_positive check (attempt >= 1);

-- After a re-authorization an order's captured money lies on more than one intent, and a refund is made per
-- intent. A refund's parts are the intents it draws on and how much from each, fixed in the transaction that
-- makes it REFUNDING (so every repeat asks the same of each) and asked in order: part 1 under the refund's own
-- key, part n under that key with `-n` after it. `provider_ref` is the provider's refund of the part once made. A
-- refund whose later part is refused for good ends FAILED with what its earlier parts gave back still counted as
-- refunded (their `provider_ref` says so).
create table refund_parts (
    refund_id      uuid not null references refunds (id),
    part           integer not null,
    payment_intent text not null,
    amount         bigint not null,
    provider_ref   text,
    constraint refund_parts_pkey primary key (refund_id, part),
    constraint refund_parts_one_per_intent unique (refund_id, payment_intent),
    constraint refund_parts_part_positive check (part >= 1),
    constraint refund_parts_amount_positive check (amount > 0)
);

-- The refunds asked of the provider before this migration drew on the order's one intent: their single part.
insert into refund_parts (refund_id, part, payment_intent, amount, provider_ref)
select f.id, 1, p.provider_ref, f.amount, f.provider_ref
from refunds f join payments p on p.order_id = f.order_id
where f.status in ('REFUNDING', 'DONE') and p.provider_ref is not null;
