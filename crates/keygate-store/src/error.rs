//! The store's error type.
//!
//! Messages never contain key hashes, sealed secrets or the password of a
//! `store-url`.

/// Everything that can go wrong in the key store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `store-url` is malformed or names an unsupported backend. The message
    /// says why without repeating the URL, which may hold a password.
    #[error("invalid store-url: {0}")]
    InvalidUrl(String),
    /// The directory that should hold the SQLite file could not be created.
    #[error("cannot create the directory {path} for the SQLite key store: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record with the same id or the same key hash already exists.
    #[error("an API key with the same id or key hash already exists")]
    Duplicate,
    /// A stored row could not be turned back into a [`crate::KeyRecord`].
    #[error("stored API key {id} is malformed: {reason}")]
    Corrupt {
        /// The id of the record.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Applying an embedded schema migration failed.
    #[error("applying key store migration {version} failed: {source}")]
    Migration {
        /// The migration that failed.
        version: i64,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database (or the connection to it) failed.
    #[error("key store database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The store did not answer within `store-query-timeout`, or failed
    /// recently and is failing fast until a probe succeeds.
    #[error("the key store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the error says the store cannot be reached or does not answer
    /// (a lost or refused connection, an exhausted pool, a timeout, a server
    /// shutting down), rather than that it answered this operation with an
    /// error (a duplicate, a malformed row).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE classes 08 (connection exception), 53
                // (insufficient resources), 57 (operator intervention:
                // shutting down, cannot connect now) and 58 (system error).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| ["08", "53", "57", "58"].iter().any(|p| c.starts_with(p))),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate,
            sqlx::Error::PoolTimedOut => StoreError::Unavailable(
                "no connection to the key store within store-acquire-timeout".into(),
            ),
            _ => StoreError::Database(e),
        }
    }
}
