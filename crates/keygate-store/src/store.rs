//! [`KeyStore`]: the API-key records and their audit trail, in SQLite or
//! PostgreSQL.
//!
//! The SQL is written once with numbered parameters (`$1`), which both
//! backends accept, and run against whichever pool `store-url` chose. Every
//! change to a key and its audit line are written in one transaction.
//!
//! Every operation is bounded: at most `store-acquire-timeout` for its
//! connection, then `store-query-timeout` for its statements. On PostgreSQL
//! it also goes through a [`Breaker`]: after the server failed or did not
//! answer, operations fail fast ([`StoreError::Unavailable`]) for
//! [`BREAKER_OPEN`], then one at a time probes it, so an outage costs one
//! timeout, not one per request. (SQLite is a local file: it has no outage
//! to wait out, and a busy writer must not stop the readers.)

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::breaker::{Breaker, BreakerStats};

use keygate_core::keys::{Backing, KeyKind};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Decode, PgPool, Row, SqlitePool, Type};

use crate::record::{AuditEntry, HashMatch, KeyFilter, KeyRecord};
use crate::{StoreError, migrate};

/// Connections in a SQLite file pool (readers run in parallel under WAL).
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// Connections in a PostgreSQL pool, per keygate process.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long operations fail fast after PostgreSQL failed, before one is let
/// through to probe it.
pub const BREAKER_OPEN: Duration = Duration::from_millis(500);

/// How long the store may take (`store-acquire-timeout`,
/// `store-query-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTimeouts {
    /// Longest wait for a connection: from the pool, or a new one (at
    /// start, the first connection to the server).
    pub acquire: Duration,
    /// Longest time one operation's statements may take once it has its
    /// connection (also SQLite's wait for its write lock).
    pub query: Duration,
}

impl Default for StoreTimeouts {
    /// The configuration's defaults: 1 s and 2 s.
    fn default() -> Self {
        StoreTimeouts {
            acquire: Duration::from_secs(1),
            query: Duration::from_secs(2),
        }
    }
}

impl StoreTimeouts {
    /// `store-acquire-timeout` and `store-query-timeout`.
    pub fn from_config(config: &keygate_core::config::Config) -> Self {
        StoreTimeouts {
            acquire: config.store_acquire_timeout,
            query: config.store_query_timeout,
        }
    }
}

/// The columns of `api_keys`, in the order [`record_from_row`] reads them.
macro_rules! columns {
    () => {
        "id, prefix, kind, owner, description, client_id, scopes, allowed_methods, \
         allowed_prefixes, allowed_cidrs, key_hash, sealed_secret, secret_version, \
         previous_hash, previous_sealed_secret, previous_valid_until, created_at, expires_at, \
         last_used_at, revoked_at, rate_limit, quota, backing"
    };
}

/// Runs `$body` with `$conn` bound to a connection of the backend's pool
/// (`&mut` to it) and `$db` naming its `sqlx::Database`, through
/// [`KeyStore::guarded`]: the breaker, `store-acquire-timeout` for the
/// connection and `store-query-timeout` for `$body`.
macro_rules! with_pool {
    ($store:expr, |$conn:ident, $db:ident| $body:block) => {
        $store
            .guarded(async {
                match &$store.pool {
                    Pool::Sqlite(pool) => {
                        type $db = sqlx::Sqlite;
                        let mut held = pool.acquire().await?;
                        $store
                            .bounded(async {
                                let $conn = &mut *held;
                                $body
                            })
                            .await
                    }
                    Pool::Postgres(pool) => {
                        type $db = sqlx::Postgres;
                        let mut held = pool.acquire().await?;
                        $store
                            .bounded(async {
                                let $conn = &mut *held;
                                $body
                            })
                            .await
                    }
                }
            })
            .await
    };
}

/// Runs `$body` inside a write transaction `$tx` and commits it if `$body`
/// did not return early, bounded like [`with_pool!`]; evaluates to `$body`'s
/// value (returning the error from the enclosing function). SQLite takes the
/// write lock up front (`BEGIN IMMEDIATE`), so concurrent writers wait on
/// `busy_timeout` instead of failing on a lock upgrade.
macro_rules! with_tx {
    ($store:expr, |$tx:ident, $db:ident| $body:block) => {
        $store
            .guarded(async {
                match &$store.pool {
                    Pool::Sqlite(pool) => {
                        type $db = sqlx::Sqlite;
                        let mut held = pool.acquire().await?;
                        $store
                            .bounded(async {
                                let mut $tx =
                                    sqlx::Connection::begin_with(&mut *held, "BEGIN IMMEDIATE")
                                        .await?;
                                let out = $body;
                                $tx.commit().await?;
                                Ok(out)
                            })
                            .await
                    }
                    Pool::Postgres(pool) => {
                        type $db = sqlx::Postgres;
                        let mut held = pool.acquire().await?;
                        $store
                            .bounded(async {
                                let mut $tx = sqlx::Connection::begin(&mut *held).await?;
                                let out = $body;
                                $tx.commit().await?;
                                Ok(out)
                            })
                            .await
                    }
                }
            })
            .await?
    };
}

/// Appends one line to the audit trail inside transaction `$tx`.
macro_rules! audit {
    ($db:ty, $tx:ident, $key_id:expr, $action:expr, $actor:expr, $at:expr, $detail:expr) => {
        sqlx::query::<$db>(
            "INSERT INTO api_key_audit (key_id, action, actor, at, detail) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($key_id)
        .bind($action)
        .bind($actor)
        .bind($at)
        .bind($detail)
        .execute(&mut *$tx)
        .await?
    };
}

/// The API-key store. Cheap to clone (the clones share one connection pool
/// and one breaker).
#[derive(Clone)]
pub struct KeyStore {
    pool: Pool,
    timeouts: StoreTimeouts,
    /// PostgreSQL's breaker; none for SQLite.
    breaker: Option<Arc<Breaker>>,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens the store named by `store-url` and brings its schema up to date.
    ///
    /// - `sqlite://PATH` (also `sqlite:PATH`): the file and its directory are
    ///   created if missing; WAL journal, foreign keys on, a busy timeout.
    /// - `sqlite::memory:`: a private in-memory database on one connection
    ///   (tests).
    /// - `postgres://…` / `postgresql://…`: a connection pool; the server must
    ///   be reachable now.
    ///
    /// A malformed URL gives [`StoreError::InvalidUrl`], whose message never
    /// repeats the URL's password. The timeouts are the defaults
    /// ([`KeyStore::connect_with`] takes others).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreTimeouts::default()).await
    }

    /// [`KeyStore::connect`] with these timeouts.
    pub async fn connect_with(url: &str, timeouts: StoreTimeouts) -> Result<Self, StoreError> {
        let url = url.trim();
        let store = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, timeouts).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, timeouts).await?
        } else {
            let scheme = url.split_once(':').map(|(s, _)| s).filter(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            });
            return Err(StoreError::InvalidUrl(match scheme {
                Some(s) => format!(
                    "unsupported scheme `{s}:`; expected sqlite://PATH, sqlite::memory: or postgres://…"
                ),
                None => "expected sqlite://PATH, sqlite::memory: or postgres://…".to_owned(),
            }));
        };
        match &store.pool {
            Pool::Sqlite(pool) => migrate::sqlite(pool).await?,
            Pool::Postgres(pool) => migrate::postgres(pool).await?,
        }
        Ok(store)
    }

    async fn connect_sqlite(url: &str, timeouts: StoreTimeouts) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("cannot parse the SQLite URL: {e}")))?
            .foreign_keys(true)
            .busy_timeout(timeouts.query);
        let memory = url.starts_with("sqlite::memory:");
        let pool = if memory {
            // One connection that never closes: the database lives as long as it.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(timeouts.acquire)
                .connect_with(opts)
                .await?
        } else {
            let file = opts.get_filename();
            if let Some(dir) = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty() && !d.exists())
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let opts = opts
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            SqlitePoolOptions::new()
                .max_connections(SQLITE_MAX_CONNECTIONS)
                .acquire_timeout(timeouts.acquire)
                .connect_with(opts)
                .await?
        };
        Ok(KeyStore {
            pool: Pool::Sqlite(pool),
            timeouts,
            breaker: None,
        })
    }

    async fn connect_postgres(url: &str, timeouts: StoreTimeouts) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::InvalidUrl(format!(
                "cannot parse the PostgreSQL URL: {}",
                redact_password(&e.to_string(), url)
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .acquire_timeout(timeouts.acquire)
            .connect_with(opts)
            .await?;
        Ok(KeyStore {
            pool: Pool::Postgres(pool),
            timeouts,
            breaker: Some(Arc::new(Breaker::new("store", BREAKER_OPEN))),
        })
    }

    /// Runs one operation through the breaker (PostgreSQL): refused at once
    /// while the store is failing, except for the one probe.
    async fn guarded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(breaker) = &self.breaker else {
            return op.await;
        };
        let call = breaker
            .enter()
            .map_err(|open| StoreError::Unavailable(open.to_string()))?;
        let result = op.await;
        match &result {
            Err(e) if e.is_unavailable() => call.failed(e),
            // An answer, even an error about this operation: the store is up.
            _ => call.succeeded(),
        }
        result
    }

    /// Bounds an operation's statements by `store-query-timeout`.
    async fn bounded<T>(
        &self,
        statements: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeouts.query, statements)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "no answer within store-query-timeout ({} ms)",
                    self.timeouts.query.as_millis()
                )))
            })
    }

    /// Whether the store answers (the breaker is closed; always on SQLite).
    pub fn is_up(&self) -> bool {
        self.breaker.as_ref().is_none_or(|b| b.is_closed())
    }

    /// How many operations probed a failing PostgreSQL, and how many failed
    /// fast (zero on SQLite).
    pub fn breaker_stats(&self) -> BreakerStats {
        self.breaker.as_ref().map(|b| b.stats()).unwrap_or_default()
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Stores a new key and audits it as `create` by `actor` at `rec.created_at`.
    ///
    /// An id or key hash that already exists gives [`StoreError::Duplicate`].
    #[tracing::instrument(target = "keygate::trace", name = "store insert", skip_all, fields(otel.kind = "client"))]
    pub async fn insert(&self, rec: &KeyRecord, actor: &str) -> Result<(), StoreError> {
        let scopes = to_json(&rec.id, &rec.scopes)?;
        let methods = to_json(&rec.id, &rec.allowed_methods)?;
        let prefixes = to_json(&rec.id, &rec.allowed_prefixes)?;
        let cidrs = to_json(&rec.id, &rec.allowed_cidrs)?;
        if !rec.backing.fits(rec.kind) {
            return Err(StoreError::Corrupt {
                id: rec.id.clone(),
                reason: format!(
                    "a {} key cannot be backed by {}",
                    rec.kind.as_str(),
                    rec.backing.as_str()
                ),
            });
        }
        let detail = format!(
            "kind={} prefix={} backing={}",
            rec.kind.as_str(),
            rec.prefix,
            rec.backing.as_str()
        );
        with_tx!(self, |tx, Db| {
            sqlx::query::<Db>(concat!(
                "INSERT INTO api_keys (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16, $17, $18, $19, $20, $21, $22, $23)"
            ))
            .bind(&rec.id)
            .bind(&rec.prefix)
            .bind(rec.kind.as_str())
            .bind(&rec.owner)
            .bind(&rec.description)
            .bind(&rec.client_id)
            .bind(&scopes)
            .bind(&methods)
            .bind(&prefixes)
            .bind(&cidrs)
            .bind(&rec.key_hash)
            .bind(&rec.sealed_secret)
            .bind(rec.secret_version)
            .bind(&rec.previous_hash)
            .bind(&rec.previous_sealed_secret)
            .bind(rec.previous_valid_until)
            .bind(rec.created_at)
            .bind(rec.expires_at)
            .bind(rec.last_used_at)
            .bind(rec.revoked_at)
            .bind(&rec.rate_limit)
            .bind(&rec.quota)
            .bind(rec.backing.as_str())
            .execute(&mut *tx)
            .await?;
            audit!(Db, tx, &rec.id, "create", actor, rec.created_at, &detail);
        });
        Ok(())
    }

    /// The record with this id, if any.
    #[tracing::instrument(target = "keygate::trace", name = "store get", skip_all, fields(otel.kind = "client"))]
    pub async fn get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        with_pool!(self, |conn, Db| {
            sqlx::query::<Db>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(record_from_row)
            .transpose()
        })
    }

    /// The record whose current key hashes to `hash`, or whose previous key
    /// (replaced by a rotation) does and is still in its grace period
    /// (`now < previous_valid_until`).
    ///
    /// Revoked and expired records are returned too: the caller decides, and
    /// can say why it refuses.
    #[tracing::instrument(target = "keygate::trace", name = "store find_by_hash", skip_all, fields(otel.kind = "client"))]
    pub async fn find_by_hash(
        &self,
        hash: &[u8],
        now: i64,
    ) -> Result<Option<(KeyRecord, HashMatch)>, StoreError> {
        with_pool!(self, |conn, Db| {
            let current = sqlx::query::<Db>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE key_hash = $1"
            ))
            .bind(hash)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = current {
                return Ok(Some((record_from_row(&row)?, HashMatch::Current)));
            }
            let previous = sqlx::query::<Db>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE previous_hash = $1 AND previous_valid_until > $2 LIMIT 1"
            ))
            .bind(hash)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            match previous {
                Some(row) => Ok(Some((record_from_row(&row)?, HashMatch::Previous))),
                None => Ok(None),
            }
        })
    }

    /// The records matching `filter`, newest first.
    #[tracing::instrument(target = "keygate::trace", name = "store list", skip_all, fields(otel.kind = "client"))]
    pub async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        let mut sql = String::from(concat!("SELECT ", columns!(), " FROM api_keys WHERE TRUE"));
        let mut n = 0;
        if filter.owner.is_some() {
            n += 1;
            sql.push_str(&format!(" AND owner = ${n}"));
        }
        if filter.kind.is_some() {
            n += 1;
            sql.push_str(&format!(" AND kind = ${n}"));
        }
        if !filter.include_revoked {
            sql.push_str(" AND revoked_at IS NULL");
        }
        n += 1;
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${n}"));
        let limit = filter.limit.unwrap_or(i64::MAX).max(0);
        with_pool!(self, |conn, Db| {
            let mut q = sqlx::query::<Db>(&sql);
            if let Some(owner) = &filter.owner {
                q = q.bind(owner);
            }
            if let Some(kind) = filter.kind {
                q = q.bind(kind.as_str());
            }
            q.bind(limit)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(record_from_row)
                .collect()
        })
    }

    /// Revokes a key at `at`: sets `revoked_at` and deletes its sealed secret
    /// and everything left of a previous key. Audited as `revoke`.
    ///
    /// `false` if there is no such key or it was already revoked.
    #[tracing::instrument(target = "keygate::trace", name = "store revoke", skip_all, fields(otel.kind = "client"))]
    pub async fn revoke(&self, id: &str, actor: &str, at: i64) -> Result<bool, StoreError> {
        let done = with_tx!(self, |tx, Db| {
            let done = sqlx::query::<Db>(
                "UPDATE api_keys SET revoked_at = $2, sealed_secret = NULL, previous_hash = NULL, \
                 previous_sealed_secret = NULL, previous_valid_until = NULL \
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                audit!(Db, tx, id, "revoke", actor, at, "");
            }
            done
        });
        Ok(done)
    }

    /// Replaces a key by a new one on the same record: the current hash and
    /// sealed secret become the previous ones, accepted until `grace_until`
    /// (`None`: the old key stops working now and its secret is deleted); the
    /// new hash, display prefix and sealed secret (sealed under the new key;
    /// `None` = no secret) are installed and `secret_version` is bumped.
    /// Audited as `rotate`.
    ///
    /// `false` if there is no such key or it is revoked.
    #[tracing::instrument(target = "keygate::trace", name = "store rotate", skip_all, fields(otel.kind = "client"))]
    pub async fn rotate(
        &self,
        id: &str,
        new_hash: &[u8],
        new_prefix: &str,
        new_sealed: Option<&[u8]>,
        grace_until: Option<i64>,
        actor: &str,
    ) -> Result<bool, StoreError> {
        // In an UPDATE, the right-hand sides read the row as it was before.
        let sql = if grace_until.is_some() {
            "UPDATE api_keys SET previous_hash = key_hash, \
             previous_sealed_secret = sealed_secret, previous_valid_until = $5, \
             key_hash = $2, prefix = $3, sealed_secret = $4, secret_version = secret_version + 1 \
             WHERE id = $1 AND revoked_at IS NULL"
        } else {
            "UPDATE api_keys SET previous_hash = NULL, \
             previous_sealed_secret = NULL, previous_valid_until = $5, \
             key_hash = $2, prefix = $3, sealed_secret = $4, secret_version = secret_version + 1 \
             WHERE id = $1 AND revoked_at IS NULL"
        };
        let detail = match grace_until {
            Some(t) => format!("prefix={new_prefix} grace_until={t}"),
            None => format!("prefix={new_prefix} grace_until=none"),
        };
        let at = unix_now();
        let done = with_tx!(self, |tx, Db| {
            let done = sqlx::query::<Db>(sql)
                .bind(id)
                .bind(new_hash)
                .bind(new_prefix)
                .bind(new_sealed)
                .bind(grace_until)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if done {
                audit!(Db, tx, id, "rotate", actor, at, &detail);
            }
            done
        });
        Ok(done)
    }

    /// Sets a new expiry (`None` = never). Audited as `renew`.
    ///
    /// `false` if there is no such key or it is revoked.
    #[tracing::instrument(target = "keygate::trace", name = "store renew", skip_all, fields(otel.kind = "client"))]
    pub async fn renew(
        &self,
        id: &str,
        new_expires_at: Option<i64>,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let detail = match new_expires_at {
            Some(t) => format!("expires_at={t}"),
            None => "expires_at=never".to_owned(),
        };
        let at = unix_now();
        let done = with_tx!(self, |tx, Db| {
            let done = sqlx::query::<Db>(
                "UPDATE api_keys SET expires_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(new_expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                audit!(Db, tx, id, "renew", actor, at, &detail);
            }
            done
        });
        Ok(done)
    }

    /// Sets a key's own rate limit and quota (`None`: its kind's default;
    /// the text is the caller's, already validated). Audited as `limits`.
    ///
    /// `false` if there is no such key or it is revoked.
    #[tracing::instrument(target = "keygate::trace", name = "store set_limits", skip_all, fields(otel.kind = "client"))]
    pub async fn set_limits(
        &self,
        id: &str,
        rate_limit: Option<&str>,
        quota: Option<&str>,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let detail = format!(
            "rate_limit={} quota={}",
            rate_limit.unwrap_or("default"),
            quota.unwrap_or("default")
        );
        let at = unix_now();
        let done = with_tx!(self, |tx, Db| {
            let done = sqlx::query::<Db>(
                "UPDATE api_keys SET rate_limit = $2, quota = $3 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(rate_limit)
            .bind(quota)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                audit!(Db, tx, id, "limits", actor, at, &detail);
            }
            done
        });
        Ok(done)
    }

    /// Compare-and-swap of the sealed secret: stores `sealed` and bumps
    /// `secret_version` only if it still equals `expected_version` (and the key
    /// is not revoked). Of several concurrent callers with the same expected
    /// version exactly one gets `true`.
    #[tracing::instrument(target = "keygate::trace", name = "store update_secret", skip_all, fields(otel.kind = "client"))]
    pub async fn update_secret(
        &self,
        id: &str,
        expected_version: i64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        with_pool!(self, |conn, Db| {
            let rows = sqlx::query::<Db>(
                "UPDATE api_keys SET sealed_secret = $3, secret_version = secret_version + 1 \
                 WHERE id = $1 AND secret_version = $2 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(expected_version)
            .bind(sealed)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(rows == 1)
        })
    }

    /// Live personal keys backed by an offline session whose provider
    /// session keygate last refreshed
    /// (or, if never, created) before `before`, and that have not expired at
    /// `now`: the ones an offline-session keep-alive is due for. Oldest
    /// refresh first, at most `limit`.
    #[tracing::instrument(target = "keygate::trace", name = "store keepalive_due", skip_all, fields(otel.kind = "client"))]
    pub async fn keepalive_due(
        &self,
        before: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        with_pool!(self, |conn, Db| {
            sqlx::query::<Db>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE kind = 'personal' AND backing = 'offline-session' \
                 AND revoked_at IS NULL AND sealed_secret IS NOT NULL AND (expires_at IS NULL OR expires_at > $2) \
                 AND COALESCE(session_refreshed_at, created_at) < $1 \
                 ORDER BY COALESCE(session_refreshed_at, created_at), id LIMIT $3"
            ))
            .bind(before)
            .bind(now)
            .bind(limit.max(0))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
        })
    }

    /// Claims a key's keep-alive: sets its `session_refreshed_at` to `now`
    /// only if it is still before `before` (and the key is live). Of several
    /// replicas sweeping at once exactly one gets `true` and refreshes.
    #[tracing::instrument(target = "keygate::trace", name = "store claim_keepalive", skip_all, fields(otel.kind = "client"))]
    pub async fn claim_keepalive(
        &self,
        id: &str,
        before: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_pool!(self, |conn, Db| {
            let rows = sqlx::query::<Db>(
                "UPDATE api_keys SET session_refreshed_at = $3 \
                 WHERE id = $1 AND revoked_at IS NULL \
                 AND COALESCE(session_refreshed_at, created_at) < $2",
            )
            .bind(id)
            .bind(before)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(rows == 1)
        })
    }

    /// Records that the key's provider session was refreshed at `at` (an
    /// exchange): `session_refreshed_at` becomes the later of the two.
    #[tracing::instrument(target = "keygate::trace", name = "store session_refreshed", skip_all, fields(otel.kind = "client"))]
    pub async fn session_refreshed(&self, id: &str, at: i64) -> Result<(), StoreError> {
        with_pool!(self, |conn, Db| {
            sqlx::query::<Db>(
                "UPDATE api_keys SET session_refreshed_at = $2 \
                 WHERE id = $1 AND (session_refreshed_at IS NULL OR session_refreshed_at < $2)",
            )
            .bind(id)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }

    /// Records uses in one transaction: `last_used_at` becomes the later of
    /// its stored value and the given time. Several entries for one id are
    /// fine; unknown ids are ignored.
    #[tracing::instrument(target = "keygate::trace", name = "store touch", skip_all, fields(otel.kind = "client"))]
    pub async fn touch(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        // Latest time per id; a sorted order also makes concurrent batches from
        // several replicas lock rows in the same order (no deadlocks).
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, at) in used {
            let slot = latest.entry(id.as_str()).or_insert(*at);
            *slot = (*slot).max(*at);
        }
        if latest.is_empty() {
            return Ok(());
        }
        with_tx!(self, |tx, Db| {
            for (id, at) in &latest {
                sqlx::query::<Db>(
                    "UPDATE api_keys SET last_used_at = $2 \
                     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                )
                .bind(*id)
                .bind(*at)
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }

    /// The audit trail of a key, oldest first. Kept after revocation.
    #[tracing::instrument(target = "keygate::trace", name = "store audit", skip_all, fields(otel.kind = "client"))]
    pub async fn audit(&self, key_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        with_pool!(self, |conn, Db| {
            sqlx::query::<Db>(
                "SELECT key_id, action, actor, at, detail FROM api_key_audit \
                 WHERE key_id = $1 ORDER BY id",
            )
            .bind(key_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    key_id: row.try_get("key_id")?,
                    action: row.try_get("action")?,
                    actor: row.try_get("actor")?,
                    at: row.try_get("at")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
        })
    }
}

/// The PostgreSQL channel on which every change to a key is announced (by
/// the trigger of migration 2).
pub const CHANGES_CHANNEL: &str = "keygate_key_changes";

/// What a [`ChangeListener`] hears.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyChange {
    /// A key was changed (revoked, renewed, rotated, its secret or limits
    /// updated) or deleted: the id and the hashes it was and is known by.
    Key {
        /// The key's id.
        id: String,
        /// Its current, previous and former hashes (any may be missing).
        hashes: Vec<Vec<u8>>,
    },
    /// The listening connection was lost and is back: changes made
    /// meanwhile were not heard, so everything cached may be stale.
    Resync,
}

/// Hears the changes PostgreSQL announces on [`CHANGES_CHANNEL`], on a
/// connection of its own.
pub struct ChangeListener {
    pool: PgPool,
    /// `None` after a failure: the next call starts a new listener.
    listener: Option<sqlx::postgres::PgListener>,
}

impl fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl KeyStore {
    /// On PostgreSQL, a listener for key changes; `None` on SQLite, which
    /// cannot notify other processes.
    pub async fn listen_changes(&self) -> Result<Option<ChangeListener>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let listener = ChangeListener::start(pool).await?;
        Ok(Some(ChangeListener {
            pool: pool.clone(),
            listener: Some(listener),
        }))
    }
}

impl ChangeListener {
    /// The next change. After the connection was lost and re-established it
    /// answers [`KeyChange::Resync`] once; while the server cannot be reached
    /// it answers errors (call again after a pause: it reconnects).
    pub async fn next(&mut self) -> Result<KeyChange, StoreError> {
        let Some(listener) = self.listener.as_mut() else {
            // Anything may have changed while no one was listening.
            self.listener = Some(ChangeListener::start(&self.pool).await?);
            return Ok(KeyChange::Resync);
        };
        loop {
            match listener.try_recv().await {
                Ok(None) => return Ok(KeyChange::Resync),
                Ok(Some(n)) => {
                    if let Some(change) = parse_change(n.payload()) {
                        return Ok(change);
                    }
                    tracing::warn!("ignoring a malformed key-change notification");
                }
                Err(e) => {
                    // A server shutting down sends an error, not EOF, and
                    // sqlx keeps that connection: start afresh next time.
                    self.listener = None;
                    return Err(e.into());
                }
            }
        }
    }

    async fn start(pool: &PgPool) -> Result<sqlx::postgres::PgListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(listener)
    }
}

fn parse_change(payload: &str) -> Option<KeyChange> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let id = v.get("id")?.as_str()?.to_owned();
    let hashes = v
        .get("hashes")?
        .as_array()?
        .iter()
        .filter_map(|h| h.as_str())
        .filter_map(keygate_core::encoding::hex_decode)
        .collect();
    Some(KeyChange::Key { id, hashes })
}

/// Rebuilds a [`KeyRecord`] from a row of [`columns!`], on either backend.
fn record_from_row<R>(row: &R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let Some(kind) = KeyKind::parse(&kind) else {
        return Err(StoreError::Corrupt {
            id,
            reason: format!("unknown kind `{kind}`"),
        });
    };
    let backing: String = row.try_get("backing")?;
    let backing = match Backing::parse(&backing) {
        Some(b) if b.fits(kind) => b,
        _ => {
            return Err(StoreError::Corrupt {
                id,
                reason: format!("backing `{backing}` is not one of a {} key", kind.as_str()),
            });
        }
    };
    let list = |column: &'static str| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("column {column} is not a JSON list of strings: {e}"),
        })
    };
    Ok(KeyRecord {
        prefix: row.try_get("prefix")?,
        kind,
        owner: row.try_get("owner")?,
        description: row.try_get("description")?,
        client_id: row.try_get("client_id")?,
        scopes: list("scopes")?,
        allowed_methods: list("allowed_methods")?,
        allowed_prefixes: list("allowed_prefixes")?,
        allowed_cidrs: list("allowed_cidrs")?,
        key_hash: row.try_get("key_hash")?,
        sealed_secret: row.try_get("sealed_secret")?,
        secret_version: row.try_get("secret_version")?,
        previous_hash: row.try_get("previous_hash")?,
        previous_sealed_secret: row.try_get("previous_sealed_secret")?,
        previous_valid_until: row.try_get("previous_valid_until")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rate_limit: row.try_get("rate_limit")?,
        quota: row.try_get("quota")?,
        backing,
        id,
    })
}

/// A list column's stored form: JSON text.
fn to_json(id: &str, list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("cannot encode a list as JSON: {e}"),
    })
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub(crate) fn unix_now() -> i64 {
    i64::try_from(keygate_core::unix_now()).unwrap_or(i64::MAX)
}

/// `message` with the password of `url` (if any, and if it appears) replaced.
pub(crate) fn redact_password(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => message.replace(p, "[redacted]"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_name_store_url_and_hide_the_password() {
        for url in [
            "mysql://root:hunter2@db/keys",
            "hunter2",
            "postgres://u:hunter2@host:notaport/db",
            "postgres://u:hunter2@host/db?sslmode=hunter2",
        ] {
            let err = KeyStore::connect(url)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("store-url"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn change_payloads_parse() {
        assert_eq!(
            parse_change(r#"{"id":"k1","hashes":["00ff",null,"0a"]}"#),
            Some(KeyChange::Key {
                id: "k1".into(),
                hashes: vec![vec![0, 255], vec![10]]
            })
        );
        assert_eq!(parse_change("nope"), None);
    }

    #[tokio::test]
    async fn memory_store_works() {
        let store = KeyStore::connect("sqlite::memory:").await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        assert!(store.get("nope").await.unwrap().is_none());
        assert!(format!("{store:?}").contains("sqlite"));
    }
}
