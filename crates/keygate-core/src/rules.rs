//! Route rules: phase 2 (route) and phase 4 (authorize) of the request
//! pipeline.
//!
//! The `resources:` and `match-claims:` settings are compiled once at start-up
//! into a [`RuleSet`]. For each request, [`RuleSet::route`] picks the one rule
//! that applies to the method and the normalized path (see
//! [`crate::normalize`]); [`RuleSet::authorize`] then decides whether the
//! caller's [`Identity`] may pass.
//!
//! # Writing `uri`
//!
//! | `uri` | matches |
//! |---|---|
//! | `/api/users` | exactly `/api/users` (and `/api/users/`) |
//! | `/api/*` | `/api`, `/api/` and everything below `/api/` — not `/apis` |
//! | `/api/*/items` | `/api/<one non-empty segment>/items` |
//! | `/api/*/items/*` | everything at or below `/api/<one segment>/items` |
//! | `/*` or `*` | every path |
//!
//! - A `*` ending the uri makes it a prefix; a `*` anywhere else is exactly one
//!   non-empty segment. `*` must be a whole segment (`/api*` is rejected).
//! - The uri must start with `/` (or be `*`) and be written the way
//!   normalization writes paths: no `.` or `..` segments, no `//`, no `?` or
//!   `#`, unreserved characters not percent-encoded, other escapes in
//!   upper-case hex.
//! - A trailing slash is ignored, on the rule and on the request path alike:
//!   `/admin/` matches the rule `/admin`. Only one trailing slash is ignored;
//!   `//` is not otherwise special (turn on `merge-slashes` for that).
//! - Paths match case-sensitively, as URIs are, unless
//!   `case-insensitive-paths` is on (for upstreams that ignore case); then
//!   ASCII case is ignored.
//! - The query string and fragment never take part in matching.
//! - Path parameters (`;…` inside a segment, as in `/admin;jsessionid=1`) are
//!   ignored for matching — Java servlet containers ignore them when routing,
//!   so `/admin;x` must meet the rules of `/admin`. Segments left empty by
//!   this are dropped. The upstream still receives the path as it was.
//!
//! # Methods
//!
//! `methods` lists the methods a rule applies to, in any case (`get` is
//! `GET`); an empty list means every method. A request whose method is not
//! listed is not matched by that rule, and matching goes on to the next one.
//! `HEAD` is a method like any other: list it next to `GET` if needed.
//!
//! # Which rule wins
//!
//! When several rules match, the most specific one applies:
//!
//! 1. an exact path beats any pattern;
//! 2. among patterns, the one with more literal (non-`*`) segments wins;
//! 3. then a pattern that is not a prefix beats a prefix (`/…/*`);
//! 4. then a rule with a `methods` list beats one without;
//! 5. then the rule written first wins.
//!
//! A rule that can never win (same uri as an earlier rule, and its methods all
//! covered by that rule) is a configuration error, as is a white-listed rule
//! that also names roles, groups or scopes.
//!
//! A request no rule matches is *unmatched*: with `enable-default-deny` it
//! needs a valid credential (and passes `match-claims`); without, it is
//! forwarded without authentication. On white-listed and such open paths a
//! client's `Authorization` header is passed through unverified (the
//! upstream may do optional authentication of its own); keygate's `X-Auth-*`
//! headers are never set there, and client-sent ones are always removed.
//!
//! # Authorization
//!
//! - A `white-listed` rule needs no credential and no check.
//! - `match-claims` apply to every authenticated request, matched or not.
//!   Each names a top-level claim of the access token and a regular expression
//!   that must match the *whole* value (it is anchored as `^(?:regex)$`). The
//!   claim must be present; a string claim must match; an array claim passes
//!   when any of its string elements matches; any other type fails.
//! - `roles`: every listed role is required, or any one of them with
//!   `require-any-role`. Realm roles are written `name`, client roles
//!   `client:name` (e.g. `APP-backend:editor`).
//! - `groups`: membership in **any one** of the listed groups suffices. Groups
//!   compare exactly, as the provider writes them (Keycloak: full paths such
//!   as `/ops`; membership of `/ops/oncall` does not imply `/ops`).
//! - `scopes`: every listed scope must be in the token's `scope` claim.
//!
//! A refusal carries a short reason that names what is missing (`missing
//! role: admin`) but never the caller's claim values.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use crate::Identity;
use crate::config::{ConfigError, Resource};
use crate::normalize::{NormalizeOptions, normalize_path};

/// How a [`RuleSet`] treats unmatched requests and path case.
#[derive(Clone, Copy, Debug)]
pub struct RuleOptions {
    /// Unmatched requests need a credential (`enable-default-deny`).
    pub default_deny: bool,
    /// Ignore ASCII case when matching paths (`case-insensitive-paths`).
    pub case_insensitive: bool,
}

/// The compiled `resources` and `match-claims`. Built once at start-up,
/// shared read-only by all requests.
#[derive(Debug)]
pub struct RuleSet {
    /// Most specific first; [`RuleSet::route`] takes the first match.
    rules: Vec<Rule>,
    claims: Vec<ClaimMatcher>,
    options: RuleOptions,
}

/// One compiled `resources` entry.
#[derive(Debug)]
pub struct Rule {
    resource: Resource,
    pattern: Pattern,
    /// Upper case; empty means every method.
    methods: Vec<String>,
}

#[derive(Debug)]
enum Pattern {
    /// `*` or `/*`.
    Any,
    /// A path without `*`, trailing slash removed (except for `/`).
    Exact(String),
    /// Segments after the leading `/`; with `prefix`, any further segments
    /// (including none) may follow.
    Glob {
        segments: Vec<Segment>,
        prefix: bool,
    },
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    /// Exactly one non-empty segment.
    Wild,
}

#[derive(Debug)]
struct ClaimMatcher {
    name: String,
    regex: Regex,
}

/// The outcome of routing one request.
#[derive(Clone, Copy, Debug)]
pub enum Route<'a> {
    /// A `white-listed` rule: no credential needed.
    WhiteListed(&'a Rule),
    /// A rule whose requirements the caller must meet.
    Protected(&'a Rule),
    /// No rule applies.
    Unmatched,
}

/// Why an authenticated caller may not pass (403). The reason is short and
/// safe to show the client: it names what is missing, never claim values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    /// E.g. `missing role: admin`.
    pub reason: String,
}

impl Denied {
    fn new(reason: impl Into<String>) -> Self {
        Denied {
            reason: reason.into(),
        }
    }
}

impl<'a> Route<'a> {
    /// The rule's `uri`, or `unmatched`; bounded, so usable as a metrics label.
    pub fn label(&self) -> &'a str {
        match self {
            Route::WhiteListed(rule) | Route::Protected(rule) => rule.uri(),
            Route::Unmatched => "unmatched",
        }
    }

    /// The matched rule, if any.
    pub fn rule(&self) -> Option<&'a Rule> {
        match self {
            Route::WhiteListed(rule) | Route::Protected(rule) => Some(rule),
            Route::Unmatched => None,
        }
    }
}

impl Rule {
    /// The `uri` as written in the configuration.
    pub fn uri(&self) -> &str {
        &self.resource.uri
    }

    /// The configuration entry this rule was compiled from.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// `path` has had its trailing slash removed already.
    fn matches_path(&self, path: &str, case_insensitive: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if case_insensitive {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.pattern {
            Pattern::Any => true,
            Pattern::Exact(exact) => eq(exact, path),
            Pattern::Glob { segments, prefix } => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments {
                    let Some(part) = parts.next() else {
                        return false;
                    };
                    let ok = match segment {
                        Segment::Wild => !part.is_empty(),
                        Segment::Literal(literal) => eq(literal, part),
                    };
                    if !ok {
                        return false;
                    }
                }
                *prefix || parts.next().is_none()
            }
        }
    }

    /// Sort key: smaller is more specific (see the module documentation).
    fn specificity(&self, index: usize) -> (bool, std::cmp::Reverse<usize>, bool, bool, usize) {
        let (exact, literals, prefix) = match &self.pattern {
            Pattern::Any => (false, 0, true),
            Pattern::Exact(_) => (true, 0, false),
            Pattern::Glob { segments, prefix } => {
                let literals = segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count();
                (false, literals, *prefix)
            }
        };
        (
            !exact,
            std::cmp::Reverse(literals),
            prefix,
            self.methods.is_empty(),
            index,
        )
    }
}

/// Removes one trailing slash, except from `/` itself.
fn trim_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => path,
    }
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

/// Compiles a `uri`, returning the pattern and its canonical spelling (used
/// to find rules that shadow each other).
fn compile_uri(uri: &str) -> Result<(Pattern, String), String> {
    if uri == "*" || uri == "/*" {
        return Ok((Pattern::Any, "/*".to_owned()));
    }
    if !uri.starts_with('/') {
        return Err(format!("`{uri}` must start with `/` (or be `*`)"));
    }
    if uri.contains(['?', '#']) {
        return Err(format!(
            "`{uri}` must not contain a query (`?`) or fragment (`#`)"
        ));
    }
    if uri.ends_with("*/") {
        return Err(format!(
            "`{uri}`: write a prefix as `…/*`, without a trailing `/`"
        ));
    }
    let path = trim_trailing_slash(uri);
    if path == "/" {
        return Ok((Pattern::Exact("/".to_owned()), "/".to_owned()));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    for part in &parts {
        if part.is_empty() {
            return Err(format!("`{uri}` must not contain an empty segment (`//`)"));
        }
        if *part == "." || *part == ".." {
            return Err(format!("`{uri}` must not contain `.` or `..` segments"));
        }
        if part.contains('*') && *part != "*" {
            return Err(format!("`{uri}`: `*` must be a whole segment"));
        }
    }
    // Requests are matched after normalization, so a rule spelled any other
    // way could never match what it seems to say.
    match normalize_path(path, NormalizeOptions::strict(true)) {
        Ok(normal) if normal == path => {}
        Ok(normal) => {
            return Err(format!(
                "`{uri}` is not in normalized form; write it as `{normal}`"
            ));
        }
        Err(e) => return Err(format!("`{uri}`: {e}")),
    }
    let canonical = path.to_owned();
    if !parts.contains(&"*") {
        return Ok((Pattern::Exact(canonical.clone()), canonical));
    }
    let prefix = parts.last() == Some(&"*");
    let body = if prefix {
        &parts[..parts.len() - 1]
    } else {
        &parts[..]
    };
    let segments = body
        .iter()
        .map(|p| {
            if *p == "*" {
                Segment::Wild
            } else {
                Segment::Literal((*p).to_owned())
            }
        })
        .collect();
    Ok((Pattern::Glob { segments, prefix }, canonical))
}

/// Upper-cases a method after checking it looks like an HTTP method token.
fn compile_method(uri: &str, method: &str) -> Result<String, String> {
    if method == "*" {
        return Err(format!(
            "`{uri}`: leave `methods` empty to match every method, not `*`"
        ));
    }
    let plausible = method.len() <= 32
        && method
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return Err(format!("`{uri}`: `{method}` is not an HTTP method"));
    }
    Ok(method.to_ascii_uppercase())
}

fn compile_rule(resource: &Resource) -> Result<(Rule, String), ConfigError> {
    let uri = &resource.uri;
    let (pattern, canonical) = compile_uri(uri).map_err(|m| invalid("resources", m))?;
    let methods = resource
        .methods
        .iter()
        .map(|m| compile_method(uri, m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| invalid("resources", m))?;
    for (what, names) in [
        ("roles", &resource.roles),
        ("groups", &resource.groups),
        ("scopes", &resource.scopes),
    ] {
        if names.iter().any(|n| n.is_empty()) {
            return Err(invalid(
                "resources",
                format!("`{uri}`: `{what}` has an empty entry"),
            ));
        }
        if resource.white_listed && !names.is_empty() {
            return Err(invalid(
                "resources",
                format!("`{uri}` is white-listed, so its `{what}` would never be checked"),
            ));
        }
    }
    Ok((
        Rule {
            resource: resource.clone(),
            pattern,
            methods,
        },
        canonical,
    ))
}

fn compile_claim(name: &str, regex: &str) -> Result<ClaimMatcher, ConfigError> {
    if name.is_empty() {
        return Err(invalid("match-claims", "a claim name is empty".to_owned()));
    }
    let regex = Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
        invalid(
            "match-claims",
            format!("claim `{name}`: invalid regex: {e}"),
        )
    })?;
    Ok(ClaimMatcher {
        name: name.to_owned(),
        regex,
    })
}

impl ClaimMatcher {
    fn check(&self, identity: &Identity) -> Result<(), Denied> {
        let matched = match identity.claims.get(&self.name) {
            None => return Err(Denied::new(format!("missing claim: {}", self.name))),
            Some(Value::String(s)) => self.regex.is_match(s),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .any(|s| self.regex.is_match(s)),
            Some(_) => false,
        };
        if matched {
            Ok(())
        } else {
            Err(Denied::new(format!("claim `{}` does not match", self.name)))
        }
    }
}

/// The path with every `;parameter` cut from its segments and the segments
/// this leaves empty removed (`/a;x/;y/b` → `/a/b`). Borrowed when there is no `;`.
fn strip_path_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or("");
        if !name.is_empty() {
            out.push('/');
            out.push_str(name);
        }
    }
    if path.ends_with('/') || out.is_empty() {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

impl RuleSet {
    /// Compiles and validates the rules. Errors name the config key
    /// (`resources` or `match-claims`) and the offending uri or claim.
    pub fn new(
        resources: &[Resource],
        match_claims: &BTreeMap<String, String>,
        options: RuleOptions,
    ) -> Result<Self, ConfigError> {
        let mut compiled: Vec<(Rule, String)> = Vec::with_capacity(resources.len());
        for resource in resources {
            let (rule, canonical) = compile_rule(resource)?;
            if let Some((earlier, _)) = compiled
                .iter()
                .find(|(earlier, c)| same_path(c, &canonical, options) && shadows(earlier, &rule))
            {
                return Err(invalid(
                    "resources",
                    format!(
                        "`{}` can never match: the earlier rule `{}` has the same uri and covers its methods",
                        rule.uri(),
                        earlier.uri()
                    ),
                ));
            }
            compiled.push((rule, canonical));
        }
        let mut ordered: Vec<(usize, Rule)> = compiled
            .into_iter()
            .map(|(rule, _)| rule)
            .enumerate()
            .collect();
        ordered.sort_by_key(|(index, rule)| rule.specificity(*index));
        let rules = ordered.into_iter().map(|(_, rule)| rule).collect();

        let claims = match_claims
            .iter()
            .map(|(name, regex)| compile_claim(name, regex))
            .collect::<Result<_, _>>()?;
        Ok(RuleSet {
            rules,
            claims,
            options,
        })
    }

    /// Finds the rule for a request. `path` is the normalized path, without
    /// the query. Does not allocate unless the path has `;` parameters.
    pub fn route(&self, method: &str, path: &str) -> Route<'_> {
        let stripped = strip_path_parameters(path);
        let path = trim_trailing_slash(&stripped);
        let case_insensitive = self.options.case_insensitive;
        for rule in &self.rules {
            if rule.allows_method(method) && rule.matches_path(path, case_insensitive) {
                return if rule.resource.white_listed {
                    Route::WhiteListed(rule)
                } else {
                    Route::Protected(rule)
                };
            }
        }
        Route::Unmatched
    }

    /// Whether the request must carry a valid credential: never for a
    /// white-listed rule, always for a protected one, and for an unmatched
    /// request when default deny is on.
    pub fn needs_credential(&self, route: &Route<'_>) -> bool {
        match route {
            Route::WhiteListed(_) => false,
            Route::Protected(_) => true,
            Route::Unmatched => self.options.default_deny,
        }
    }

    /// Checks an authenticated caller against `match-claims` and the route's
    /// rule (see the module documentation).
    pub fn authorize(&self, route: &Route<'_>, identity: &Identity) -> Result<(), Denied> {
        let rule = match route {
            Route::WhiteListed(_) => return Ok(()),
            Route::Protected(rule) => Some(*rule),
            Route::Unmatched => None,
        };
        for claim in &self.claims {
            claim.check(identity)?;
        }
        let Some(rule) = rule else {
            return Ok(());
        };
        let resource = &rule.resource;
        if !resource.roles.is_empty() {
            if resource.require_any_role {
                if !resource.roles.iter().any(|r| identity.has_role(r)) {
                    return Err(Denied::new(format!(
                        "missing one of roles: {}",
                        resource.roles.join(", ")
                    )));
                }
            } else if let Some(missing) = resource.roles.iter().find(|r| !identity.has_role(r)) {
                return Err(Denied::new(format!("missing role: {missing}")));
            }
        }
        if !resource.groups.is_empty()
            && !resource
                .groups
                .iter()
                .any(|g| identity.groups.iter().any(|h| h == g))
        {
            return Err(Denied::new("not in any required group"));
        }
        if let Some(missing) = resource
            .scopes
            .iter()
            .find(|s| !identity.scopes.contains(s))
        {
            return Err(Denied::new(format!("missing scope: {missing}")));
        }
        Ok(())
    }
}

fn same_path(a: &str, b: &str, options: RuleOptions) -> bool {
    if options.case_insensitive {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// True when `earlier`, on the same path, wins every request `later` could
/// match.
fn shadows(earlier: &Rule, later: &Rule) -> bool {
    match (earlier.methods.is_empty(), later.methods.is_empty()) {
        (true, true) => true,
        (false, false) => later.methods.iter().all(|m| earlier.methods.contains(m)),
        // A rule with methods beats one without, whatever the order.
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{AuthMethod, Secret};
    use serde_json::json;

    const DENY: RuleOptions = RuleOptions {
        default_deny: true,
        case_insensitive: false,
    };

    fn res(uri: &str) -> Resource {
        Resource {
            uri: uri.to_owned(),
            methods: vec![],
            roles: vec![],
            groups: vec![],
            scopes: vec![],
            require_any_role: false,
            white_listed: false,
        }
    }

    fn with_methods(uri: &str, methods: &[&str]) -> Resource {
        Resource {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            ..res(uri)
        }
    }

    fn rules(resources: &[Resource]) -> RuleSet {
        RuleSet::new(resources, &BTreeMap::new(), DENY).unwrap()
    }

    fn label(set: &RuleSet, method: &str, path: &str) -> String {
        set.route(method, path).label().to_owned()
    }

    fn identity(claims: serde_json::Value) -> Identity {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        Identity::from_claims(map, Secret::new("token"), AuthMethod::Jwt)
    }

    fn claims_rules(claims: &[(&str, &str)]) -> RuleSet {
        let map = claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RuleSet::new(&[res("/api/*")], &map, DENY).unwrap()
    }

    fn invalid_key(resources: &[Resource], claims: &[(&str, &str)]) -> (&'static str, String) {
        let map = claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match RuleSet::new(resources, &map, DENY) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn rule_set_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RuleSet>();
    }

    #[test]
    fn exact_beats_prefix_in_either_order() {
        for set in [
            rules(&[res("/api/*"), res("/api/users")]),
            rules(&[res("/api/users"), res("/api/*")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/users"), "/api/users");
            assert_eq!(label(&set, "GET", "/api/users/1"), "/api/*");
            assert_eq!(label(&set, "GET", "/api"), "/api/*");
        }
    }

    #[test]
    fn exact_beats_glob_in_either_order() {
        for set in [
            rules(&[res("/api/*/items"), res("/api/v1/items")]),
            rules(&[res("/api/v1/items"), res("/api/*/items")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/v1/items"), "/api/v1/items");
            assert_eq!(label(&set, "GET", "/api/v2/items"), "/api/*/items");
        }
    }

    #[test]
    fn glob_beats_prefix_with_same_literals_in_either_order() {
        for set in [
            rules(&[res("/api/v1/*"), res("/api/*/items")]),
            rules(&[res("/api/*/items"), res("/api/v1/*")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/v1/items"), "/api/*/items");
            assert_eq!(label(&set, "GET", "/api/v1/other"), "/api/v1/*");
        }
    }

    #[test]
    fn more_literal_segments_win_in_either_order() {
        for set in [
            rules(&[res("/api/*"), res("/api/admin/*")]),
            rules(&[res("/api/admin/*"), res("/api/*")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/admin/x"), "/api/admin/*");
            assert_eq!(label(&set, "GET", "/api/admin"), "/api/admin/*");
            assert_eq!(label(&set, "GET", "/api/adminx"), "/api/*");
        }
        // A prefix with more literals beats a glob with fewer.
        for set in [
            rules(&[res("/*/items"), res("/api/v1/*")]),
            rules(&[res("/api/v1/*"), res("/*/items")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/v1/items"), "/api/v1/*");
        }
    }

    #[test]
    fn catch_all_loses_to_everything() {
        for set in [
            rules(&[res("/*"), res("/api/*")]),
            rules(&[res("/api/*"), res("*")]),
        ] {
            assert_eq!(label(&set, "GET", "/api/x"), "/api/*");
            assert_ne!(label(&set, "GET", "/other"), "unmatched");
            assert_ne!(label(&set, "GET", "/"), "unmatched");
        }
    }

    #[test]
    fn prefix_matches_base_and_below_but_not_siblings() {
        let set = rules(&[res("/api/*")]);
        for p in ["/api", "/api/", "/api/x", "/api/x/y/"] {
            assert_eq!(label(&set, "GET", p), "/api/*", "{p}");
        }
        for p in ["/apis", "/ap", "/", "/x/api"] {
            assert_eq!(label(&set, "GET", p), "unmatched", "{p}");
        }
    }

    #[test]
    fn wildcard_segment_matches_exactly_one_non_empty_segment() {
        let set = rules(&[res("/api/*/items")]);
        assert_eq!(label(&set, "GET", "/api/v1/items"), "/api/*/items");
        assert_eq!(label(&set, "GET", "/api/v1/items/"), "/api/*/items");
        for p in [
            "/api/items",
            "/api//items",
            "/api/a/b/items",
            "/api/v1/items/x",
        ] {
            assert_eq!(label(&set, "GET", p), "unmatched", "{p}");
        }
    }

    #[test]
    fn trailing_slash_is_ignored_on_both_sides() {
        let set = rules(&[res("/admin"), res("/docs/")]);
        assert_eq!(label(&set, "GET", "/admin/"), "/admin");
        assert_eq!(label(&set, "GET", "/admin"), "/admin");
        assert_eq!(label(&set, "GET", "/docs"), "/docs/");
        assert_eq!(label(&set, "GET", "/admin//"), "unmatched");
        let root = rules(&[res("/")]);
        assert_eq!(label(&root, "GET", "/"), "/");
        assert_eq!(label(&root, "GET", "/x"), "unmatched");
    }

    #[test]
    fn path_case_is_sensitive_by_default() {
        let set = rules(&[res("/admin"), res("/api/*")]);
        assert_eq!(label(&set, "GET", "/ADMIN"), "unmatched");
        assert_eq!(label(&set, "GET", "/API/x"), "unmatched");
    }

    #[test]
    fn path_case_is_ignored_when_configured() {
        let options = RuleOptions {
            default_deny: true,
            case_insensitive: true,
        };
        let set = RuleSet::new(
            &[res("/admin"), res("/api/*/items")],
            &BTreeMap::new(),
            options,
        )
        .unwrap();
        assert_eq!(label(&set, "GET", "/ADMIN"), "/admin");
        assert_eq!(label(&set, "GET", "/Api/X/ITEMS"), "/api/*/items");
    }

    #[test]
    fn method_case_is_ignored() {
        let set = rules(&[with_methods("/a", &["get"]), with_methods("/b", &["POST"])]);
        assert_eq!(label(&set, "GET", "/a"), "/a");
        assert_eq!(label(&set, "get", "/a"), "/a");
        assert_eq!(label(&set, "post", "/b"), "/b");
        assert_eq!(set.rules[0].methods, ["GET"]);
    }

    #[test]
    fn method_filter_falls_through_to_next_rule() {
        let set = rules(&[
            Resource {
                white_listed: true,
                ..with_methods("/public/*", &["GET", "HEAD"])
            },
            Resource {
                roles: vec!["admin".into()],
                ..res("/*")
            },
        ]);
        assert!(matches!(
            set.route("GET", "/public/x"),
            Route::WhiteListed(_)
        ));
        assert!(matches!(set.route("POST", "/public/x"), Route::Protected(r) if r.uri() == "/*"));
        assert!(matches!(
            set.route("DELETE", "/public/x"),
            Route::Protected(_)
        ));
    }

    #[test]
    fn rule_with_methods_beats_rule_without_in_either_order() {
        let get_open = Resource {
            white_listed: true,
            ..with_methods("/x", &["GET"])
        };
        for set in [
            rules(&[res("/x"), get_open.clone()]),
            rules(&[get_open.clone(), res("/x")]),
        ] {
            assert!(matches!(set.route("GET", "/x"), Route::WhiteListed(_)));
            assert!(matches!(set.route("PUT", "/x"), Route::Protected(_)));
        }
    }

    #[test]
    fn earlier_rule_wins_a_tie() {
        let a = Resource {
            roles: vec!["a".into()],
            ..with_methods("/x", &["GET"])
        };
        let b = Resource {
            roles: vec!["b".into()],
            ..with_methods("/x", &["GET", "POST"])
        };
        let set = rules(&[a, b]);
        let Route::Protected(rule) = set.route("GET", "/x") else {
            panic!()
        };
        assert_eq!(rule.resource().roles, ["a"]);
        let Route::Protected(rule) = set.route("POST", "/x") else {
            panic!()
        };
        assert_eq!(rule.resource().roles, ["b"]);
    }

    #[test]
    fn white_listed_needs_no_credential_or_check() {
        let set = rules(&[Resource {
            white_listed: true,
            ..res("/health")
        }]);
        let route = set.route("GET", "/health");
        assert!(matches!(route, Route::WhiteListed(_)));
        assert!(!set.needs_credential(&route));
        let map = [("email".to_owned(), ".*@example\\.com".to_owned())].into();
        let set = RuleSet::new(
            &[Resource {
                white_listed: true,
                ..res("/health")
            }],
            &map,
            DENY,
        )
        .unwrap();
        assert_eq!(
            set.authorize(&set.route("GET", "/health"), &identity(json!({}))),
            Ok(())
        );
    }

    #[test]
    fn unmatched_follows_default_deny() {
        let on = rules(&[res("/api/*")]);
        let route = on.route("GET", "/other");
        assert!(matches!(route, Route::Unmatched));
        assert_eq!(route.label(), "unmatched");
        assert!(on.needs_credential(&route));
        let off = RuleSet::new(
            &[res("/api/*")],
            &BTreeMap::new(),
            RuleOptions {
                default_deny: false,
                case_insensitive: false,
            },
        )
        .unwrap();
        assert!(!off.needs_credential(&off.route("GET", "/other")));
        assert!(off.needs_credential(&off.route("GET", "/api/x")));
    }

    #[test]
    fn requires_all_realm_and_client_roles() {
        let set = rules(&[Resource {
            roles: vec!["admin".into(), "APP-backend:editor".into()],
            ..res("/admin/*")
        }]);
        let route = set.route("GET", "/admin/x");
        let both = identity(json!({
            "realm_access": {"roles": ["admin"]},
            "resource_access": {"APP-backend": {"roles": ["editor"]}}
        }));
        assert_eq!(set.authorize(&route, &both), Ok(()));
        let realm_only = identity(json!({"realm_access": {"roles": ["admin"]}}));
        assert_eq!(
            set.authorize(&route, &realm_only).unwrap_err().reason,
            "missing role: APP-backend:editor"
        );
        // A client role does not satisfy a realm role of the same name.
        let client_admin = identity(json!({
            "resource_access": {"APP-backend": {"roles": ["admin", "editor"]}}
        }));
        assert_eq!(
            set.authorize(&route, &client_admin).unwrap_err().reason,
            "missing role: admin"
        );
    }

    #[test]
    fn require_any_role_accepts_one_of_them() {
        let set = rules(&[Resource {
            roles: vec!["admin".into(), "APP-backend:editor".into()],
            require_any_role: true,
            ..res("/admin/*")
        }]);
        let route = set.route("GET", "/admin");
        let editor = identity(json!({"resource_access": {"APP-backend": {"roles": ["editor"]}}}));
        assert_eq!(set.authorize(&route, &editor), Ok(()));
        let nobody = identity(json!({"realm_access": {"roles": ["user"]}}));
        assert_eq!(
            set.authorize(&route, &nobody).unwrap_err().reason,
            "missing one of roles: admin, APP-backend:editor"
        );
    }

    #[test]
    fn any_one_group_suffices() {
        let set = rules(&[Resource {
            groups: vec!["/ops".into(), "/dev".into()],
            ..res("/ops/*")
        }]);
        let route = set.route("GET", "/ops");
        assert_eq!(
            set.authorize(&route, &identity(json!({"groups": ["/dev"]}))),
            Ok(())
        );
        let sub = identity(json!({"groups": ["/ops/oncall", "/sales"]}));
        assert_eq!(
            set.authorize(&route, &sub).unwrap_err().reason,
            "not in any required group"
        );
        assert!(set.authorize(&route, &identity(json!({}))).is_err());
    }

    #[test]
    fn requires_all_scopes() {
        let set = rules(&[Resource {
            scopes: vec!["api".into(), "write".into()],
            ..res("/api/*")
        }]);
        let route = set.route("POST", "/api/x");
        assert_eq!(
            set.authorize(&route, &identity(json!({"scope": "openid write api"}))),
            Ok(())
        );
        assert_eq!(
            set.authorize(&route, &identity(json!({"scope": "openid api"})))
                .unwrap_err()
                .reason,
            "missing scope: write"
        );
        // `apiv2` is not `api`.
        assert!(
            set.authorize(&route, &identity(json!({"scope": "apiv2 write"})))
                .is_err()
        );
    }

    #[test]
    fn match_claims_string_claim() {
        let set = claims_rules(&[("email", ".*@example\\.com")]);
        let route = set.route("GET", "/api/x");
        assert_eq!(
            set.authorize(&route, &identity(json!({"email": "a@example.com"}))),
            Ok(())
        );
        let err = set
            .authorize(&route, &identity(json!({"email": "secret@evil.com"})))
            .unwrap_err();
        assert_eq!(err.reason, "claim `email` does not match");
        assert!(!err.reason.contains("evil"));
    }

    #[test]
    fn match_claims_array_claim_needs_one_matching_string() {
        let set = claims_rules(&[("aud", "APP-.*")]);
        let route = set.route("GET", "/api/x");
        assert_eq!(
            set.authorize(
                &route,
                &identity(json!({"aud": ["account", "APP-backend"]}))
            ),
            Ok(())
        );
        assert!(
            set.authorize(&route, &identity(json!({"aud": ["account", 7]})))
                .is_err()
        );
        assert!(
            set.authorize(&route, &identity(json!({"aud": []})))
                .is_err()
        );
    }

    #[test]
    fn match_claims_missing_or_non_string_claim_fails() {
        let set = claims_rules(&[("tenant", "acme")]);
        let route = set.route("GET", "/api/x");
        assert_eq!(
            set.authorize(&route, &identity(json!({})))
                .unwrap_err()
                .reason,
            "missing claim: tenant"
        );
        for value in [
            json!(null),
            json!(true),
            json!(1),
            json!({"tenant": "acme"}),
        ] {
            assert!(
                set.authorize(&route, &identity(json!({"tenant": value})))
                    .is_err(),
                "{value}"
            );
        }
    }

    #[test]
    fn match_claims_are_anchored() {
        let set = claims_rules(&[
            ("tenant", "a.*"),
            ("email", "alice@example\\.com|bob@example\\.com"),
        ]);
        let route = set.route("GET", "/api/x");
        let ok = identity(json!({"tenant": "acme", "email": "bob@example.com"}));
        assert_eq!(set.authorize(&route, &ok), Ok(()));
        for (tenant, email) in [
            ("xa", "bob@example.com"),
            ("ab\n", "bob@example.com"),
            ("acme", "mallory+bob@example.com"),
            ("acme", "alice@example.com.evil"),
        ] {
            let id = identity(json!({"tenant": tenant, "email": email}));
            assert!(set.authorize(&route, &id).is_err(), "{tenant:?} {email:?}");
        }
    }

    #[test]
    fn match_claims_apply_to_unmatched_requests() {
        let set = claims_rules(&[("tenant", "acme")]);
        let route = set.route("GET", "/elsewhere");
        assert!(matches!(route, Route::Unmatched));
        assert!(
            set.authorize(&route, &identity(json!({"tenant": "other"})))
                .is_err()
        );
        assert_eq!(
            set.authorize(&route, &identity(json!({"tenant": "acme"}))),
            Ok(())
        );
    }

    #[test]
    fn match_claims_are_checked_before_rule_requirements() {
        let map = [("tenant".to_owned(), "acme".to_owned())].into();
        let set = RuleSet::new(
            &[Resource {
                roles: vec!["admin".into()],
                ..res("/a")
            }],
            &map,
            DENY,
        )
        .unwrap();
        let id = identity(json!({"tenant": "x", "realm_access": {"roles": ["admin"]}}));
        assert_eq!(
            set.authorize(&set.route("GET", "/a"), &id)
                .unwrap_err()
                .reason,
            "claim `tenant` does not match"
        );
    }

    #[test]
    fn rejects_invalid_uris() {
        for uri in [
            "", "api", "/api*", "/a/*x", "/a?b=1", "/a#b", "/a/../b", "/a/./b", "/a//b", "/api/*/",
            "/a%2fb", "/%61", "/a b", "/%3a",
        ] {
            let (key, message) = invalid_key(&[res(uri)], &[]);
            assert_eq!(key, "resources", "{uri}");
            assert!(message.contains(&format!("`{uri}`")), "{uri}: {message}");
        }
    }

    #[test]
    fn rejects_implausible_methods() {
        for method in ["", "*", "GET,POST", "GET POST", "1GET", "GÉT"] {
            let (key, message) = invalid_key(&[with_methods("/a", &[method])], &[]);
            assert_eq!(key, "resources", "{method}");
            assert!(message.contains("`/a`"), "{message}");
        }
        assert!(
            RuleSet::new(
                &[with_methods("/a", &["PROPFIND", "M-SEARCH", "patch"])],
                &BTreeMap::new(),
                DENY
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_bad_claim_regex() {
        let (key, message) = invalid_key(&[], &[("email", "(unclosed")]);
        assert_eq!(key, "match-claims");
        assert!(message.contains("`email`"), "{message}");
    }

    #[test]
    fn rejects_shadowed_rules() {
        let (key, message) = invalid_key(
            &[
                res("/a/*"),
                Resource {
                    white_listed: true,
                    ..res("/a/*")
                },
            ],
            &[],
        );
        assert_eq!(key, "resources");
        assert!(message.contains("`/a/*`"), "{message}");
        assert_eq!(invalid_key(&[res("*"), res("/*")], &[]).0, "resources");
        assert_eq!(invalid_key(&[res("/a"), res("/a/")], &[]).0, "resources");
        assert_eq!(
            invalid_key(
                &[
                    with_methods("/a", &["GET", "POST"]),
                    with_methods("/a", &["get"])
                ],
                &[]
            )
            .0,
            "resources"
        );
        // Not shadowed: the later rule has methods the earlier one does not cover.
        assert!(
            RuleSet::new(
                &[
                    with_methods("/a", &["GET"]),
                    with_methods("/a", &["GET", "POST"])
                ],
                &BTreeMap::new(),
                DENY
            )
            .is_ok()
        );
        assert!(
            RuleSet::new(
                &[with_methods("/a", &["GET"]), res("/a")],
                &BTreeMap::new(),
                DENY
            )
            .is_ok()
        );
    }

    #[test]
    fn rejects_requirements_on_white_listed_rule() {
        let (key, message) = invalid_key(
            &[Resource {
                white_listed: true,
                roles: vec!["admin".into()],
                ..res("/a")
            }],
            &[],
        );
        assert_eq!(key, "resources");
        assert!(message.contains("roles"), "{message}");
    }

    #[test]
    fn route_labels_use_the_uri_as_written() {
        let set = rules(&[res("/docs/")]);
        assert_eq!(set.route("GET", "/docs").label(), "/docs/");
        assert_eq!(
            set.route("GET", "/docs").rule().map(Rule::uri),
            Some("/docs/")
        );
    }
}

#[cfg(test)]
mod path_parameter_tests {
    use super::strip_path_parameters;

    #[test]
    fn path_parameters_do_not_dodge_rules() {
        assert_eq!(strip_path_parameters("/admin;jsessionid=1"), "/admin");
        assert_eq!(strip_path_parameters("/a;x/;y/b"), "/a/b");
        assert_eq!(strip_path_parameters("/;x/admin/"), "/admin/");
        assert_eq!(strip_path_parameters("/;x"), "/");
        assert_eq!(strip_path_parameters("/plain"), "/plain");
    }
}
