//! Phase 4, **authorize**: the rule (roles, groups, `match-claims`)
//! evaluated for the verified identity.

use crate::gateway::Gateway;
use crate::respond::{Refusal, Refused};
use crate::route::Routes;
use keygate_core::Identity;
use keygate_core::Reason;
use keygate_core::rules::Route;

/// Phase 4: both rules of [`Routes`] must allow the identity.
pub fn run(gw: &Gateway, routes: &Routes<'_>, identity: Option<&Identity>) -> Result<(), Refused> {
    authorize(gw, &routes.route, identity)?;
    if let Some(other) = &routes.overridden {
        authorize(gw, other, identity)?;
    }
    Ok(())
}

/// Phase 4: evaluates the rule (and `match-claims`) for the identity.
pub fn authorize(
    gw: &Gateway,
    route: &Route<'_>,
    identity: Option<&Identity>,
) -> Result<(), Refused> {
    let Some(identity) = identity else {
        return Ok(());
    };
    gw.rules
        .authorize(route, identity)
        .map_err(|denied| Refused {
            refusal: Refusal::Forbidden(denied.reason),
            reason: Reason::NotAllowed,
        })
}
