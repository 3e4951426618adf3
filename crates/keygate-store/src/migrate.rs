//! Embedded schema migrations, applied in order at start.
//!
//! Each backend has its own SQL (column types differ: `BLOB`/`BYTEA`,
//! `INTEGER`/`BIGINT`), the same schema otherwise. Applied versions are
//! recorded in `keygate_migrations(version, applied_at)`; all pending
//! migrations run in one transaction, so a failure leaves the schema as it
//! was. PostgreSQL replicas starting together serialize on an advisory lock;
//! SQLite uses `BEGIN IMMEDIATE`.

use sqlx::{PgPool, Row, SqlitePool};

use crate::StoreError;

/// A migration: its version and its SQL (one or more statements).
type Migration = (i64, &'static str);

/// SQLite migrations, in order.
const SQLITE: &[Migration] = &[
    (1, include_str!("../migrations/sqlite/0001_api_keys.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_limits_and_changes.sql"),
    ),
    (
        3,
        include_str!("../migrations/sqlite/0003_offline_keepalive.sql"),
    ),
    (4, include_str!("../migrations/sqlite/0004_key_backing.sql")),
];

/// PostgreSQL migrations, in order.
const POSTGRES: &[Migration] = &[
    (1, include_str!("../migrations/postgres/0001_api_keys.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_limits_and_changes.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_offline_keepalive.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_key_backing.sql"),
    ),
];

/// The PostgreSQL advisory lock held while migrating (`"keygate"` in ASCII).
const PG_LOCK_ID: i64 = 0x006b_6579_6761_7465;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS keygate_migrations (\
     version BIGINT PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)";

/// Runs the migrations not yet recorded, inside the open transaction `$tx`.
/// The same code for both backends (sqlx's executor traits make a generic
/// function unwieldy).
macro_rules! apply_pending {
    ($tx:ident, $migrations:expr) => {
        sqlx::query(CREATE_TABLE).execute(&mut *$tx).await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM keygate_migrations")
            .fetch_all(&mut *$tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for &(version, sql) in $migrations {
            if applied.contains(&version) {
                continue;
            }
            sqlx::raw_sql(sql)
                .execute(&mut *$tx)
                .await
                .map_err(|source| StoreError::Migration { version, source })?;
            sqlx::query("INSERT INTO keygate_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(i64::try_from(keygate_core::unix_now()).unwrap_or(i64::MAX))
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// Brings a SQLite database up to the current schema.
pub(crate) async fn sqlite(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    apply_pending!(tx, SQLITE);
    tx.commit().await?;
    Ok(())
}

/// Brings a PostgreSQL database up to the current schema.
pub(crate) async fn postgres(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PG_LOCK_ID)
        .execute(&mut *tx)
        .await?;
    apply_pending!(tx, POSTGRES);
    tx.commit().await?;
    Ok(())
}
