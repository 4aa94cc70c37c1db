-- Secrets the API processes share: the key that signs customer tokens (and, later, other signed values). Each is
-- 32 random bytes written by the first API process that needs it (insert ... on conflict do nothing), so every
-- process signs and verifies alike with no setting to give. Deleting a row and restarting the API processes
-- rotates it: every token it signed stops verifying.
create table server_secrets (
    name       text primary key,
    secret     bytea not null check (length(secret) >= 32),
    created_at timestamptz not null default now()
);
