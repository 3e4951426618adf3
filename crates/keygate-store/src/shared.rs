//! [`Redis`]: the state keygate replicas share through a Redis server —
//! server-side browser sessions, the API-key exchange cache, the negative
//! cache and rate-limit counters.
//!
//! keygate never stores a secret in Redis in clear: callers hand this module
//! values they have already sealed (AES-256-GCM), and session ids are stored
//! by their SHA-256, so a dump of Redis yields nothing usable.
//!
//! Redis is a shared *cache and counter*, never the source of truth for a
//! credential: when it is slow or down every call here returns
//! [`SharedError::Unavailable`] within `redis-timeout`, and the caller
//! decides (the pipeline refuses what it cannot verify with 503 and never
//! lets a request through because Redis failed). Calls go through a
//! [`Breaker`]: after a failure they fail fast for [`BREAKER_OPEN`], then one
//! call at a time probes Redis while the others keep failing fast, so a hung
//! Redis costs one `redis-timeout`, not one per request. The connection is
//! re-established in the background, so keygate recovers on its own when
//! Redis returns (within [`BREAKER_OPEN`] and one round trip).

use std::sync::Arc;
use std::time::Duration;

use keygate_core::breaker::{Breaker, BreakerStats};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, Script, ServerErrorKind};

use crate::store::redact_password;

/// How long calls fail fast after Redis failed, before one is let through
/// to probe it.
pub const BREAKER_OPEN: Duration = Duration::from_millis(500);

/// Errors of the shared state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// `redis-url` cannot be used; the message never repeats its password.
    #[error("invalid redis-url: {0}")]
    InvalidUrl(String),
    /// Redis did not answer in time, refused the connection or failed.
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
}

/// A connection to the shared Redis, cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    gcra: Script,
    quota: Script,
    end_sessions: Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// GCRA (the generic cell rate algorithm) on the server's clock, so every
/// replica sees one timeline. KEYS[1]: the key's theoretical arrival time
/// (µs). ARGV: emission interval (µs), burst. Returns
/// `{allowed, retry_after_us, tat_minus_now_us}`.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > burst * interval then
  return {0, new_tat - now - burst * interval, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0, new_tat - now}
";

/// A fixed-window counter: KEYS[1] the window's counter, ARGV[1] the
/// window's remaining seconds, ARGV[2] the quota. Counts only requests
/// that are let through. Returns `{allowed, used}`.
const QUOTA_LUA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[2]) then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]) + 60) end
return {1, used}
";

/// Ends every session listed in the index set KEYS[1] and the set itself.
/// Returns how many sessions existed.
const END_SESSIONS_LUA: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, k in ipairs(members) do
  n = n + redis.call('DEL', k)
end
redis.call('DEL', KEYS[1])
return n
";

/// Whether an error says Redis is down or unreachable (a connection that
/// failed, a server that is loading or failing over), rather than that it
/// answered this one command with an error.
fn is_outage(e: &redis::RedisError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
            | ErrorKind::Server(
                ServerErrorKind::ResponseError
                    | ServerErrorKind::ExecAbort
                    | ServerErrorKind::NoScript
                    | ServerErrorKind::CrossSlot
            )
    )
}

/// What the rate limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcraOutcome {
    /// Let through.
    pub allowed: bool,
    /// When refused: how long until one request would be let through.
    pub retry_after: Duration,
    /// How far the key's schedule runs ahead of now (0 = idle, full burst
    /// available).
    pub ahead: Duration,
}

impl Redis {
    /// The Redis named by `redis-url` (with `redis-ca`, `redis-key-prefix`
    /// and `redis-timeout`), if any; the error names the key at fault.
    /// Connects lazily: keygate starts (and serves what needs no shared
    /// state) while Redis is down.
    pub fn from_config(
        config: &keygate_core::config::Config,
    ) -> Result<Option<Self>, keygate_core::config::ConfigError> {
        use keygate_core::config::ConfigError;
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        let ca = match &config.redis_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| ConfigError::Invalid {
                key: "redis-ca",
                message: format!("{}: {e}", path.display()),
            })?),
            None => None,
        };
        Self::connect(
            &url.0,
            &config.redis_key_prefix,
            config.redis_timeout,
            ca.as_deref(),
        )
        .map(Some)
        .map_err(|e| ConfigError::Invalid {
            key: "redis-url",
            message: e.to_string(),
        })
    }

    /// Prepares a connection to `url` (`redis://…`, `rediss://…`). Does not
    /// wait for the server: keygate starts while Redis is down and connects
    /// when it comes up. Every command waits at most `timeout`.
    ///
    /// Must be called within a tokio runtime (the connection is kept by a
    /// background task); outside one it is an error, not a panic.
    /// With `ca_pem` (`rediss://` only) the server's certificate must be
    /// issued by that CA instead of a public one.
    pub fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, SharedError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SharedError::Unavailable(
                "the Redis client needs a tokio runtime".into(),
            ));
        }
        let invalid =
            |e: redis::RedisError| SharedError::InvalidUrl(redact_password(&e.to_string(), url));
        let client = match ca_pem {
            None => redis::Client::open(url.trim()).map_err(invalid)?,
            Some(_) if !url.trim().starts_with("rediss://") => {
                return Err(SharedError::InvalidUrl(
                    "a CA (redis-ca) needs a rediss:// URL".into(),
                ));
            }
            Some(pem) => redis::Client::build_with_tls(
                url.trim(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )
            .map_err(invalid)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        Ok(Redis {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_owned(),
                timeout,
                breaker: Breaker::new("redis", BREAKER_OPEN),
                gcra: Script::new(GCRA_LUA),
                quota: Script::new(QUOTA_LUA),
                end_sessions: Script::new(END_SESSIONS_LUA),
            }),
        })
    }

    /// `prefix` + `name`: every key keygate writes.
    pub fn key(&self, name: &str) -> String {
        let mut k = String::with_capacity(self.inner.prefix.len() + name.len());
        k.push_str(&self.inner.prefix);
        k.push_str(name);
        k
    }

    async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, SharedError> {
        self.send(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    async fn script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[i64],
    ) -> Result<T, SharedError> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let invocation = &invocation;
        self.send(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs `op` on the connection within `redis-timeout`, through the
    /// breaker. A connection that broke (Redis restarted) is retried once on
    /// the new connection the manager makes, so a restart costs no error.
    #[tracing::instrument(target = "keygate::trace", name = "redis", skip_all, fields(otel.kind = "client", db.system = "redis"))]
    async fn send<T, F, Fut>(&self, op: F) -> Result<T, SharedError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let call = self
            .inner
            .breaker
            .enter()
            .map_err(|open| SharedError::Unavailable(open.to_string()))?;
        let attempt = async {
            match op(self.inner.conn.clone()).await {
                Err(e) if e.is_io_error() || e.is_connection_dropped() => {
                    op(self.inner.conn.clone()).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(Ok(v)) => {
                call.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                // Redis answered with an error about this command: it is up.
                let outage = is_outage(&e);
                let e = SharedError::Unavailable(e.to_string());
                match outage {
                    true => call.failed(&e),
                    false => call.succeeded(),
                }
                Err(e)
            }
            Err(_) => {
                let e = SharedError::Unavailable(format!(
                    "no answer within redis-timeout ({} ms)",
                    self.inner.timeout.as_millis()
                ));
                call.failed(&e);
                Err(e)
            }
        }
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), SharedError> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Whether the breaker is closed: Redis answered the last probe (or
    /// has not failed since).
    pub fn is_up(&self) -> bool {
        self.inner.breaker.is_closed()
    }

    /// How many calls probed a failing Redis, and how many failed fast.
    pub fn breaker_stats(&self) -> BreakerStats {
        self.inner.breaker.stats()
    }

    /// The value under `key` (already prefixed by [`Redis::key`]).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, SharedError> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    /// The values under several keys, in one round trip (`MGET`).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, SharedError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(redis::cmd("MGET").arg(keys)).await
    }

    /// Stores `value` under `key` for `ttl` (at least 1 ms).
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), SharedError> {
        let ms = ttl.as_millis().max(1) as u64;
        let _: () = self
            .run(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms))
            .await?;
        Ok(())
    }

    /// Stores `value` under `key` for `ttl` unless `key` exists; whether it
    /// was stored (a lock taken).
    pub async fn set_nx(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Stores `value` under `key` keeping the key's time to live.
    pub async fn replace(&self, key: &str, value: &[u8]) -> Result<bool, SharedError> {
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL"),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Deletes keys; returns how many existed.
    pub async fn del(&self, keys: &[String]) -> Result<u64, SharedError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(redis::cmd("DEL").arg(keys)).await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, SharedError> {
        let n: u64 = self.run(redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    /// Stores a session under `key` for `ttl` and lists it in each index set
    /// (by `sid`, by `sub`), which live as long as their longest session.
    pub async fn save_session(
        &self,
        key: &str,
        sealed: &[u8],
        ttl: Duration,
        indexes: &[String],
    ) -> Result<(), SharedError> {
        let ms = ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(key)
            .arg(sealed)
            .arg("PX")
            .arg(ms)
            .ignore();
        for index in indexes {
            pipe.cmd("SADD").arg(index).arg(key).ignore();
            pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("GT").ignore();
            // PEXPIRE … GT does not set a TTL on a key that has none yet.
            pipe.cmd("PEXPIRE").arg(index).arg(ms).arg("NX").ignore();
        }
        let pipe = &pipe;
        self.send(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// Ends every session listed in the index set `index`; returns how many
    /// were still alive.
    pub async fn end_sessions(&self, index: &str) -> Result<u64, SharedError> {
        self.script(&self.inner.end_sessions, &[index], &[]).await
    }

    /// One request against a GCRA limit of one request per `interval` with
    /// bursts of `burst`, counted under `key`.
    pub async fn gcra(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<GcraOutcome, SharedError> {
        let interval_us = interval.as_micros().clamp(1, i64::MAX as u128) as i64;
        let (allowed, retry_us, ahead_us): (i64, i64, i64) = self
            .script(
                &self.inner.gcra,
                &[key],
                &[interval_us, i64::from(burst.max(1))],
            )
            .await?;
        Ok(GcraOutcome {
            allowed: allowed == 1,
            retry_after: Duration::from_micros(retry_us.max(0) as u64),
            ahead: Duration::from_micros(ahead_us.max(0) as u64),
        })
    }

    /// One request against a quota of `limit` requests in the window counted
    /// under `key`, which ends in `window_left`. Returns whether it is let
    /// through and how many the window has used.
    pub async fn quota(
        &self,
        key: &str,
        limit: u64,
        window_left: Duration,
    ) -> Result<(bool, u64), SharedError> {
        let (allowed, used): (i64, i64) = self
            .script(
                &self.inner.quota,
                &[key],
                &[
                    window_left.as_secs().max(1) as i64,
                    limit.min(i64::MAX as u64) as i64,
                ],
            )
            .await?;
        Ok((allowed == 1, used.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_do_not_echo_the_password() {
        for url in ["http://:hunter2@x", "redis://:hunter2@host:notaport"] {
            let err = Redis::connect(url, "k:", Duration::from_millis(100), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("redis-url"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }
}
