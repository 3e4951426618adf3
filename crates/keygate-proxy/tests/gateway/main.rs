//! The gateway end to end, in one test binary (one link instead of ten):
//! keygate in this process in front of the echo upstream, with the provider
//! from `dev/idp`, nginx for forward-auth and Chromium for the browser flow,
//! all from `keygate-testkit`. Run one area with its module name, e.g.
//! `cargo test -p keygate-proxy --test gateway jwt::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod cors;
mod forward_auth;
mod headers;
mod hygiene;
mod jwt;
mod limits;
mod paths;
mod provider;
mod proxy;
mod rules;
mod sessions;
mod upstreams;
