//! API keys for keygate, as a domain service with no HTTP-server types:
//! `kgs_…` service keys that stand for a service-account client, and
//! `kgp_…` personal keys that stand for a user: backed by the user's
//! offline session, or by the JWT authorization grant (an assertion keygate
//! signs for the user, which the provider trusts).
//!
//! A key is never a token itself: on use it is exchanged for a real
//! provider access token ([`ApiKeys::authenticate`]), which the proxy
//! verifies and forwards like any bearer token. The same service serves
//! the CLI (`keygate keys`), the admin API and the self-service endpoints.
//!
//! - [`service`]: building the service and the request-time check;
//! - [`records`]: the record lookup, its caches and the store's change feed;
//! - [`exchange`]: a key's exchange for a provider token, shared across
//!   requests and (with Redis) replicas;
//! - [`restrictions`]: expiry, revocation, methods, routes and networks;
//! - [`limits`]: rate limits and quotas (GCRA, shared through Redis);
//! - [`manage`]: create, list, show, revoke, renew, rotate, set limits;
//! - [`device`]: personal keys from the device authorization grant (and,
//!   for the JWT grant, the user's link to keygate at the provider);
//! - [`keepalive`]: keeping idle personal keys' offline sessions alive;
//! - [`model`]: what callers send and get back;
//! - [`error`]: the typed errors, each keeping its cause.
//!
//! The cryptography (key format, hashing, sealing, the stored secret) is
//! in `keygate_auth::apikey` and `keygate_auth::stored`.

#![forbid(unsafe_code)]

pub mod device;
pub mod error;
pub mod exchange;
pub mod keepalive;
pub mod limits;
pub mod manage;
pub mod model;
pub mod records;
pub mod restrictions;
pub mod service;
mod state;

pub use error::{DeviceError, DeviceFailure, KeyError, ManageError};
pub use keepalive::KeepaliveSweep;
pub use limits::{LimitHeaders, Limited, Limiter};
pub use model::{CreatedKey, KeyView, NewServiceKey};
pub use state::ApiKeys;
