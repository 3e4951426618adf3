//! keygate's API-key store.
//!
//! A [`KeyStore`] keeps API-key records (never the keys themselves: only a
//! keyed hash of each key and, for keys that are exchanged for provider
//! tokens, a sealed secret) and an append-only audit trail of what was done to
//! them. Two backends sit behind one type, chosen by `store-url`:
//!
//! - **SQLite** (`sqlite://path`, the embedded default): one file in WAL mode,
//!   created on first start. `sqlite::memory:` is available for tests.
//! - **PostgreSQL** (`postgres://…`): for several keygate replicas sharing
//!   their keys.
//!
//! The schema is embedded in the binary and migrated at [`KeyStore::connect`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), keygate_store::StoreError> {
//! use keygate_store::{KeyFilter, KeyStore};
//!
//! let store = KeyStore::connect("sqlite:///var/lib/keygate/keys.db").await?;
//! let keys = store.list(&KeyFilter { owner: Some("alice".into()), ..KeyFilter::default() }).await?;
//! # let _ = keys;
//! # Ok(())
//! # }
//! ```

mod error;
mod migrate;
mod record;
pub mod shared;
mod store;

pub use error::StoreError;
pub use keygate_core::keys::{Backing, KeyKind};
pub use record::{AuditEntry, HashMatch, KeyFilter, KeyRecord};
pub use shared::{Redis, SharedError};
pub use store::{CHANGES_CHANNEL, ChangeListener, KeyChange, KeyStore, StoreTimeouts};
