-- keygate API-key store, PostgreSQL schema v1. Keep in step with ../sqlite/0001_api_keys.sql.
CREATE TABLE api_keys (
    id                     TEXT   PRIMARY KEY NOT NULL,
    prefix                 TEXT   NOT NULL,
    kind                   TEXT   NOT NULL CHECK (kind IN ('service', 'personal')),
    owner                  TEXT   NOT NULL,
    description            TEXT   NOT NULL DEFAULT '',
    client_id              TEXT,
    scopes                 TEXT   NOT NULL DEFAULT '[]',
    allowed_methods        TEXT   NOT NULL DEFAULT '[]',
    allowed_prefixes       TEXT   NOT NULL DEFAULT '[]',
    allowed_cidrs          TEXT   NOT NULL DEFAULT '[]',
    key_hash               BYTEA  NOT NULL,
    sealed_secret          BYTEA,
    secret_version         BIGINT NOT NULL DEFAULT 0,
    previous_hash          BYTEA,
    previous_sealed_secret BYTEA,
    previous_valid_until   BIGINT,
    created_at             BIGINT NOT NULL,
    expires_at             BIGINT,
    last_used_at           BIGINT,
    revoked_at             BIGINT
);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash);
CREATE INDEX api_keys_owner ON api_keys (owner);

-- No foreign key to api_keys: the audit trail outlives any future purge of key rows.
CREATE TABLE api_key_audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id TEXT   NOT NULL,
    action TEXT   NOT NULL,
    actor  TEXT   NOT NULL,
    at     BIGINT NOT NULL,
    detail TEXT   NOT NULL DEFAULT ''
);
CREATE INDEX api_key_audit_key_id ON api_key_audit (key_id, id);
