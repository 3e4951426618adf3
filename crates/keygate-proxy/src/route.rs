//! Phase 2, **route**: the resource rule for the request's method and
//! path, and, when an override header that is let through names another
//! method or URL, the rule for that one too: the request must be allowed as
//! the upstream will read it.

use crate::context::RequestCtx;
use crate::gateway::Gateway;
use crate::hygiene::Overrides;
use crate::normalize::normalize;
use crate::respond::{Refusal, Refused};
use crate::sites::{self, Site};
use http::HeaderMap;
use keygate_core::Reason;
use keygate_core::rules::Route;

/// The rules a request is checked against.
pub struct Routes<'g> {
    /// The upstream that serves it, whose rules these are.
    pub site: &'g Site,
    /// The rule of the request's own method and path.
    pub route: Route<'g>,
    /// The rule of the method and path an override header names.
    pub overridden: Option<Route<'g>>,
}

impl Routes<'_> {
    /// Whether either rule needs a credential.
    pub fn need_credential(&self) -> bool {
        let rules = &self.site.rules;
        rules.needs_credential(&self.route)
            || self
                .overridden
                .as_ref()
                .is_some_and(|r| rules.needs_credential(r))
    }
}

/// Phase 2: finds the upstream (by host and path) and its rules; sets
/// `ctx.site`, and `ctx.route` for the log.
pub fn run<'g>(
    gw: &'g Gateway,
    ctx: &mut RequestCtx,
    overrides: &Overrides,
    headers: &HeaderMap,
) -> Result<Routes<'g>, Refused> {
    let host = match gw.sites.len() {
        1 => None,
        _ => ctx.client_host(headers),
    };
    let Some(index) = sites::choose(&gw.sites, host, &ctx.path) else {
        ctx.route = "unmatched".into();
        return Err(Refused::new(Refusal::NoUpstream, Reason::NoUpstream));
    };
    ctx.site = index;
    let site = &gw.sites[index];
    let route = site.rules.route(ctx.method.as_str(), &ctx.path);
    ctx.route = match &site.name {
        None => route.label().to_owned(),
        Some(name) => format!("{name}:{}", route.label()),
    };
    let overridden = match (&overrides.method, &overrides.target) {
        (None, None) => None,
        (method, target) => {
            let path = match target {
                Some(t) => normalize(gw, t)?.0,
                None => ctx.path.clone(),
            };
            let method = method.clone().unwrap_or_else(|| ctx.method.clone());
            Some(site.rules.route(method.as_str(), &path))
        }
    };
    Ok(Routes {
        site,
        route,
        overridden,
    })
}
