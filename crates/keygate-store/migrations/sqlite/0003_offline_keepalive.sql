-- keygate API-key store, SQLite schema v3. Keep in step with ../postgres/0003_offline_keepalive.sql.
-- When keygate last refreshed a personal key's provider session (unix seconds): at every
-- exchange and every keep-alive refresh. NULL: not since the key was created.
ALTER TABLE api_keys ADD COLUMN session_refreshed_at INTEGER;
