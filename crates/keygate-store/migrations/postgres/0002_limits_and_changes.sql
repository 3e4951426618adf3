-- keygate API-key store, PostgreSQL schema v2. Keep in step with ../sqlite/0002_limits_and_changes.sql.
-- Per-key rate limit ("100/s burst 200") and usage quota ("10000/day"); NULL: the kind's default.
ALTER TABLE api_keys ADD COLUMN rate_limit TEXT;
ALTER TABLE api_keys ADD COLUMN quota TEXT;

-- Every change that decides whether or how a key may be used is announced on
-- the channel `keygate_key_changes`, whoever makes it (a replica, the CLI, an
-- operator's SQL). PostgreSQL delivers the notification when the transaction
-- commits, and never for one that rolls back. The payload carries the key's
-- id and the hashes it was and is known by, hex-encoded, so every replica can
-- drop what it cached about the key at once.
CREATE FUNCTION keygate_announce_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('keygate_key_changes', json_build_object(
            'id', OLD.id,
            'hashes', json_build_array(encode(OLD.key_hash, 'hex'), encode(OLD.previous_hash, 'hex'))
        )::text);
    ELSE
        PERFORM pg_notify('keygate_key_changes', json_build_object(
            'id', NEW.id,
            'hashes', json_build_array(encode(OLD.key_hash, 'hex'), encode(OLD.previous_hash, 'hex'),
                                       encode(NEW.key_hash, 'hex'))
        )::text);
    END IF;
    RETURN NULL;
END
$$;

-- Not for last-use updates, which are written in batches and change nothing.
CREATE TRIGGER api_keys_announce_update AFTER UPDATE ON api_keys FOR EACH ROW
WHEN (ROW(OLD.revoked_at, OLD.expires_at, OLD.key_hash, OLD.secret_version, OLD.previous_hash,
          OLD.previous_valid_until, OLD.allowed_methods, OLD.allowed_prefixes, OLD.allowed_cidrs,
          OLD.scopes, OLD.client_id, OLD.rate_limit, OLD.quota)
      IS DISTINCT FROM
      ROW(NEW.revoked_at, NEW.expires_at, NEW.key_hash, NEW.secret_version, NEW.previous_hash,
          NEW.previous_valid_until, NEW.allowed_methods, NEW.allowed_prefixes, NEW.allowed_cidrs,
          NEW.scopes, NEW.client_id, NEW.rate_limit, NEW.quota))
EXECUTE FUNCTION keygate_announce_key_change();

CREATE TRIGGER api_keys_announce_delete AFTER DELETE ON api_keys FOR EACH ROW
EXECUTE FUNCTION keygate_announce_key_change();
