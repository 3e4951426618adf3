-- keygate API-key store, PostgreSQL schema v3. Keep in step with ../sqlite/0003_offline_keepalive.sql.
-- When keygate last refreshed a personal key's provider session (unix seconds): at every
-- exchange and every keep-alive refresh. NULL: not since the key was created.
-- Not announced on keygate_key_changes: it does not change whether or how a key is used.
ALTER TABLE api_keys ADD COLUMN session_refreshed_at BIGINT;
