//! keygate's test kit: real servers on loopback, one set per test, each
//! stopped when its handle is dropped. Every crate's integration tests use
//! it, so a test lives in the crate whose code it tests.
//!
//! | handle | what runs |
//! |---|---|
//! | [`Idp`] | the OpenID provider from `dev/idp` (Node), with token forging for attacks |
//! | [`Keycloak`] | the run's real Keycloak (`dev/keycloak`), realm `acme` |
//! | [`Upstream`] | an echo server that answers with what it received |
//! | [`Nginx`] | Debian's nginx, for forward-auth |
//! | [`PgServer`] | a private PostgreSQL server |
//! | [`RedisServer`] | a private Redis server, plain or TLS |
//! | [`Browser`] | a cookie-keeping client that fills in the provider's pages |
//! | [`chromium_script`] | headless Chromium, driven by a Playwright script of `dev/browser` |
//! | `Keygate`, `Stack` | keygate in this process (feature `gateway`) |
//! | [`KeygateProcess`] | the keygate binary's `serve` in a child process |
//! | [`OtlpReceiver`] | an OTLP/HTTP JSON trace receiver |
//! | [`DpopKey`] | a client's DPoP key that makes proofs (RFC 9449) |
//!
//! [`RedisServer`], [`PgServer`] and [`Idp`] can also be frozen (SIGSTOP) and
//! thawed, to test what a hung dependency costs.
//!
//! A test that needs a server fails when it is missing; it never skips.
//! Never used by the keygate binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod browser;
mod chromium;
mod dpop;
mod freeze;
#[cfg(feature = "gateway")]
mod gateway;
mod http;
mod idp;
pub mod keycloak;
mod nginx;
mod otlp;
mod postgres;
mod process;
mod redis;
mod upstream;

pub use browser::{Browser, Page};
pub use chromium::{CHROMIUM, chromium_script};
pub use dpop::DpopKey;
#[cfg(feature = "gateway")]
pub use gateway::{Keygate, Stack, base_config};
pub use http::*;
pub use idp::Idp;
pub use keycloak::Keycloak;
pub use nginx::{Nginx, nginx_binary};
pub use otlp::{OtlpReceiver, attribute};
pub use postgres::PgServer;
pub use process::KeygateProcess;
pub use redis::RedisServer;
pub use upstream::{Echo, Upstream};

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}
