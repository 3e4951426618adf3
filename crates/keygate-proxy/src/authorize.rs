//! Phase 4, **authorize**: the rule (roles, groups, `match-claims`)
//! evaluated for the verified identity.

use crate::respond::{Refusal, Refused};
use crate::route::Routes;
use keygate_core::Identity;
use keygate_core::Reason;
use keygate_core::rules::{Route, RuleSet};

/// Phase 4: both rules of [`Routes`] must allow the identity.
pub fn run(routes: &Routes<'_>, identity: Option<&Identity>) -> Result<(), Refused> {
    authorize(&routes.site.rules, &routes.route, identity)?;
    if let Some(other) = &routes.overridden {
        authorize(&routes.site.rules, other, identity)?;
    }
    Ok(())
}

/// Phase 4: evaluates the rule (and `match-claims`) for the identity.
pub fn authorize(
    rules: &RuleSet,
    route: &Route<'_>,
    identity: Option<&Identity>,
) -> Result<(), Refused> {
    let Some(identity) = identity else {
        return Ok(());
    };
    rules.authorize(route, identity).map_err(|denied| Refused {
        refusal: Refusal::Forbidden(denied.reason),
        reason: Reason::NotAllowed,
    })
}
