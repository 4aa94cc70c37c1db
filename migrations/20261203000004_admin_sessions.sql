-- The dashboard's sign-in sessions. The browser holds a random session id (32 bytes, in an HttpOnly cookie); the
-- server keeps only its SHA-256, which admin token opened it (its SHA-256: the session ends when that token
-- leaves ORDERFLOW_ADMIN_TOKENS), when it expires, and when it was signed out. The cookie is never an admin
-- token, so it cannot be used as one, and signing out ends it for good.
create table admin_sessions (
    id_hash     bytea primary key,
    token_hash  bytea not null,
    admin_name  text not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    revoked_at  timestamptz
);
-- Sessions long over are deleted when a new one opens.
create index admin_sessions_expires_at on admin_sessions (expires_at);
