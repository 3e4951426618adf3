-- keygate API-key store, SQLite schema v1. Keep in step with ../postgres/0001_api_keys.sql.
CREATE TABLE api_keys (
    id                     TEXT    PRIMARY KEY NOT NULL,
    prefix                 TEXT    NOT NULL,
    kind                   TEXT    NOT NULL CHECK (kind IN ('service', 'personal')),
    owner                  TEXT    NOT NULL,
    description            TEXT    NOT NULL DEFAULT '',
    client_id              TEXT,
    scopes                 TEXT    NOT NULL DEFAULT '[]',
    allowed_methods        TEXT    NOT NULL DEFAULT '[]',
    allowed_prefixes       TEXT    NOT NULL DEFAULT '[]',
    allowed_cidrs          TEXT    NOT NULL DEFAULT '[]',
    key_hash               BLOB    NOT NULL,
    sealed_secret          BLOB,
    secret_version         INTEGER NOT NULL DEFAULT 0,
    previous_hash          BLOB,
    previous_sealed_secret BLOB,
    previous_valid_until   INTEGER,
    created_at             INTEGER NOT NULL,
    expires_at             INTEGER,
    last_used_at           INTEGER,
    revoked_at             INTEGER
);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash);
CREATE INDEX api_keys_owner ON api_keys (owner);

-- No foreign key to api_keys: the audit trail outlives any future purge of key rows.
CREATE TABLE api_key_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT    NOT NULL,
    action TEXT    NOT NULL,
    actor  TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    detail TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX api_key_audit_key_id ON api_key_audit (key_id, id);
