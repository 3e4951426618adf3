-- keygate API-key store, PostgreSQL schema v4. Keep in step with ../sqlite/0004_key_backing.sql.
-- What a key is exchanged with at the provider: `client-credentials` (service keys),
-- `offline-session` or `jwt-grant` (personal keys). Chosen when the key is made and kept
-- with it, so existing keys keep working when `api-keys.personal-backing` changes. Every
-- key made before this version is a service key with client credentials or a personal key
-- with an offline session.
ALTER TABLE api_keys ADD COLUMN backing TEXT NOT NULL DEFAULT 'offline-session';
UPDATE api_keys SET backing = 'client-credentials' WHERE kind = 'service';

-- A changed backing changes how the key is used: announce it like the rest (see v2).
DROP TRIGGER api_keys_announce_update ON api_keys;
CREATE TRIGGER api_keys_announce_update AFTER UPDATE ON api_keys FOR EACH ROW
WHEN (ROW(OLD.revoked_at, OLD.expires_at, OLD.key_hash, OLD.secret_version, OLD.previous_hash,
          OLD.previous_valid_until, OLD.allowed_methods, OLD.allowed_prefixes, OLD.allowed_cidrs,
          OLD.scopes, OLD.client_id, OLD.rate_limit, OLD.quota, OLD.backing)
      IS DISTINCT FROM
      ROW(NEW.revoked_at, NEW.expires_at, NEW.key_hash, NEW.secret_version, NEW.previous_hash,
          NEW.previous_valid_until, NEW.allowed_methods, NEW.allowed_prefixes, NEW.allowed_cidrs,
          NEW.scopes, NEW.client_id, NEW.rate_limit, NEW.quota, NEW.backing))
EXECUTE FUNCTION keygate_announce_key_change();
