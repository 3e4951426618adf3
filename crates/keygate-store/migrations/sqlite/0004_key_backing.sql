-- keygate API-key store, SQLite schema v4. Keep in step with ../postgres/0004_key_backing.sql.
-- What a key is exchanged with at the provider: `client-credentials` (service keys),
-- `offline-session` or `jwt-grant` (personal keys). Chosen when the key is made and kept
-- with it, so existing keys keep working when `api-keys.personal-backing` changes. Every
-- key made before this version is a service key with client credentials or a personal key
-- with an offline session.
ALTER TABLE api_keys ADD COLUMN backing TEXT NOT NULL DEFAULT 'offline-session';
UPDATE api_keys SET backing = 'client-credentials' WHERE kind = 'service';
