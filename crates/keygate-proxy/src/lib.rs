//! keygate's HTTP side: the servers, keygate's own endpoints and the request
//! pipeline. The code is the chart of `docs/architecture.md`:
//!
//! - [`server`] accepts connections and hands each request to
//!   [`dispatch`] (the main listener, past the load-shedding bound of
//!   [`shed`]) or [`admin`] (`listen-admin`);
//! - [`dispatch`] runs phase 1 and sends `/oauth/*` to [`ops`] (health,
//!   metrics, [`forward_auth`], [`login`], [`selfservice`] and [`keypage`]),
//!   everything else through [`pipeline`];
//! - the phases, each a module over one [`context::RequestCtx`]:
//!   1. [`normalize`] — framing, the path parsed once, header hygiene
//!      ([`hygiene`]), the credential taken out;
//!   2. [`route`] — the resource rule (and an override header's);
//!   3. [`authenticate`] — the credential verified (JWT, API key, session),
//!      a bound token's proof checked ([`dpop`]);
//!   4. [`authorize`] — the rule evaluated, then [`limits`] — the
//!      caller's rate limit (per subject or per address);
//!   5. [`forward`] — the upstream request (with the token exchanged for
//!      the upstream's audience when it asks for one), streamed by [`upstream`]; in
//!      forward-auth mode, 200 with the headers to inject;
//!   6. [`log`] — one structured line and metrics;
//! - beside them: [`cors`] (preflights answered, CORS headers on every
//!   response) and [`trace`] (the request's OpenTelemetry span);
//! - below them: [`gateway`] (what a request needs, built once), [`sites`]
//!   (the upstreams and the choice of one for a request),
//!   [`session`] (the browser-session service), [`respond`] (the one error
//!   edge), [`metrics`] and [`error`].

#![forbid(unsafe_code)]

pub mod admin;
mod admin_input;
pub mod authenticate;
pub mod authorize;
pub mod context;
pub mod cors;
pub mod dispatch;
pub mod dpop;
pub mod error;
pub mod forward;
pub mod forward_auth;
pub mod gateway;
pub mod hygiene;
pub mod keypage;
pub mod limits;
pub mod log;
pub mod login;
pub mod metrics;
pub mod normalize;
pub mod ops;
pub mod pipeline;
pub mod respond;
pub mod route;
pub mod selfservice;
pub mod server;
pub mod session;
pub mod shed;
pub mod sites;
pub mod trace;
pub mod upstream;

pub use error::GatewayError;
pub use gateway::Gateway;
pub use server::{LiveGateway, Server};
