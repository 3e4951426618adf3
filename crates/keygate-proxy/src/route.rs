//! Phase 2, **route**: the resource rule for the request's method and
//! path, and, when an override header that is let through names another
//! method or URL, the rule for that one too: the request must be allowed as
//! the upstream will read it.

use crate::context::RequestCtx;
use crate::gateway::Gateway;
use crate::hygiene::Overrides;
use crate::normalize::normalize;
use crate::respond::Refused;
use keygate_core::rules::Route;

/// The rules a request is checked against.
pub struct Routes<'g> {
    /// The rule of the request's own method and path.
    pub route: Route<'g>,
    /// The rule of the method and path an override header names.
    pub overridden: Option<Route<'g>>,
}

impl Routes<'_> {
    /// Whether either rule needs a credential.
    pub fn need_credential(&self, gw: &Gateway) -> bool {
        gw.rules.needs_credential(&self.route)
            || self
                .overridden
                .as_ref()
                .is_some_and(|r| gw.rules.needs_credential(r))
    }
}

/// Phase 2: finds the rules; sets `ctx.route` for the log.
pub fn run<'g>(
    gw: &'g Gateway,
    ctx: &mut RequestCtx,
    overrides: &Overrides,
) -> Result<Routes<'g>, Refused> {
    let route = gw.rules.route(ctx.method.as_str(), &ctx.path);
    ctx.route = route.label().to_owned();
    let overridden = match (&overrides.method, &overrides.target) {
        (None, None) => None,
        (method, target) => {
            let path = match target {
                Some(t) => normalize(gw, t)?.0,
                None => ctx.path.clone(),
            };
            let method = method.clone().unwrap_or_else(|| ctx.method.clone());
            Some(gw.rules.route(method.as_str(), &path))
        }
    };
    Ok(Routes { route, overridden })
}
