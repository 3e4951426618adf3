-- keygate API-key store, SQLite schema v2. Keep in step with ../postgres/0002_limits_and_changes.sql.
-- Per-key rate limit ("100/s burst 200") and usage quota ("10000/day"); NULL: the kind's default.
-- (SQLite has no notifications: other processes see changes within record-cache-ttl.)
ALTER TABLE api_keys ADD COLUMN rate_limit TEXT;
ALTER TABLE api_keys ADD COLUMN quota TEXT;
