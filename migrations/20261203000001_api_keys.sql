-- API keys: who may call /v1, with which scopes. Only a hash of each key is stored; the key itself is shown
-- once, when it is created. Keys are 32 random bytes, so a fast hash (SHA-256) already makes a copy of this
-- table useless to an attacker (there is nothing to guess); the `ofk_` prefix of every key lets secret scanners
-- find one that leaked.
create table api_keys (
    id            uuid primary key,
    name          text not null,
    -- The key's first characters (`ofk_` and 8 more), shown in lists so that an operator can tell keys apart.
    hint          text not null,
    secret_hash   bytea not null,
    -- Stable names (`orders:read`, ...), checked by the code that reads them.
    scopes        text[] not null,
    -- Requests per second this key may make (a token bucket per API process, bursts of twice as many).
    rate_per_second integer not null,
    -- The operator who created it (an admin token's name).
    created_by    text not null,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    -- Written at most once a minute per key and process, so that a busy key costs no write per request.
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    constraint api_keys_secret_hash_unique unique (secret_hash),
    constraint api_keys_name_length check (char_length(name) between 1 and 100),
    constraint api_keys_rate_positive check (rate_per_second > 0)
);

-- The admin audit records operators' acts on keys as well as on sagas: an act names an order or a key.
alter table admin_actions alter column order_id drop not null;
alter table admin_actions add column api_key_id uuid references api_keys (id);
alter table admin_actions drop constraint admin_actions_action_valid;
alter table admin_actions add constraint admin_actions_action_valid
    check (action in ('retry', 'compensate', 'resolve', 'key_create', 'key_revoke'));
alter table admin_actions add constraint admin_actions_names_its_object
    check ((order_id is null) <> (api_key_id is null));
create index admin_actions_api_key_id_idx on admin_actions (api_key_id, id) where api_key_id is not null;
