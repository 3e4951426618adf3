//! Types shared by every keygate crate: the configuration model, the verified
//! [`Identity`] of a caller, path normalization and the route rules.
//!
//! Nothing here does I/O; everything is pure and unit-tested in place. The
//! dependencies' circuit [`breaker`] reports through the `metrics` and
//! `tracing` facades only.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod config;
pub mod encoding;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod normalize;
pub mod reason;
pub mod rules;
pub mod secret;

pub use identity::{AuthMethod, Identity};
pub use reason::Reason;
pub use secret::Secret;

/// The current time in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
