//! keygate's HTTP side: the request pipeline and the servers that run it.
//!
//! Every request walks the same phases, each a plain function over one
//! [`pipeline::RequestCtx`] (see `docs/architecture.md` for the chart):
//!
//! 1. **normalize** ([`pipeline::normalize`]) — parse the path once; strip
//!    client-sent identity headers, and everything else [`hygiene`] removes
//!    (hop-by-hop headers, upgrades other than websocket, forwarding and
//!    override headers, keygate's own cookies);
//! 2. **route** ([`RuleSet::route`](keygate_core::rules::RuleSet::route)) — find the
//!    resource rule;
//! 3. **authenticate** ([`pipeline::authenticate`]) — verify the credential;
//! 4. **authorize** ([`pipeline::authorize`]) — evaluate the rule;
//! 5. **forward** ([`forward`]) — stream to the upstream, or, in forward-auth
//!    mode ([`forward_auth`]), answer 200 with the headers to inject;
//! 6. **log** ([`pipeline::log`]) — one structured line and metrics.

#![forbid(unsafe_code)]

pub mod admin;
pub mod forward;
pub mod forward_auth;
pub mod gateway;
pub mod hygiene;
pub mod keypage;
pub mod ops;
pub mod pipeline;
pub mod respond;
pub mod selfservice;
pub mod server;
pub mod sessions;

pub use gateway::{Gateway, GatewayError};
pub use server::Server;
