//! The request path's pure functions: path normalization (phase 1) and rule
//! matching and evaluation (phases 2 and 4). `cargo bench -p keygate-core`.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_core::config::Resource;
use keygate_core::normalize::{NormalizeOptions, normalize_path};
use keygate_core::rules::{RuleOptions, RuleSet};
use keygate_core::{AuthMethod, Identity, Secret};
use std::collections::BTreeMap;
use std::hint::black_box;

fn normalize(c: &mut Criterion) {
    let opts = NormalizeOptions {
        merge_slashes: true,
        allow_encoded_percent: false,
        allow_non_utf8: false,
    };
    let mut g = c.benchmark_group("normalize_path");
    for (name, path) in [
        ("plain", "/api/v1/orders/12345/items"),
        ("dot_segments", "/api/v1/./orders/../orders/12345//items"),
        ("escapes", "/api/v1/%6Frders/caf%C3%A9/items%20list"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| normalize_path(black_box(path), opts).unwrap())
        });
    }
    g.finish();
}

fn resource(uri: &str, methods: &[&str], roles: &[&str], white_listed: bool) -> Resource {
    serde_json::from_value(serde_json::json!({
        "uri": uri, "methods": methods, "roles": roles, "white-listed": white_listed,
    }))
    .unwrap()
}

fn rules(c: &mut Criterion) {
    let resources = vec![
        resource("/public/*", &[], &[], true),
        resource("/health", &["GET"], &[], true),
        resource("/admin/*", &[], &["admin"], false),
        resource(
            "/api/v1/orders/*",
            &["POST", "PUT", "DELETE"],
            &["orders:writer"],
            false,
        ),
        resource("/api/v1/orders/*", &["GET"], &["orders:reader"], false),
        resource("/api/v1/users/*/profile", &["GET"], &["user"], false),
        resource("/api/*", &[], &["user"], false),
    ];
    let set = RuleSet::new(
        &resources,
        &BTreeMap::new(),
        RuleOptions {
            default_deny: true,
            case_insensitive: false,
        },
    )
    .unwrap();
    let claims = serde_json::json!({
        "sub": "a11ce000-0000-4000-a000-000000000001", "exp": 4_000_000_000u64,
        "realm_access": {"roles": ["offline_access", "default-roles-acme", "user", "admin"]},
        "resource_access": {"orders": {"roles": ["reader", "writer"]}, "account": {"roles": ["view-profile"]}},
        "scope": "openid email profile",
    });
    let identity = Identity::from_claims(
        claims.as_object().unwrap().clone(),
        Secret::new("token"),
        AuthMethod::Jwt,
    );
    let mut g = c.benchmark_group("rules");
    g.bench_function("route_and_authorize_orders", |b| {
        b.iter(|| {
            let route = set.route(black_box("GET"), black_box("/api/v1/orders/12345"));
            set.authorize(&route, &identity).unwrap();
        })
    });
    g.bench_function("route_pattern", |b| {
        b.iter(|| set.route(black_box("GET"), black_box("/api/v1/users/42/profile")))
    });
    g.bench_function("route_unmatched", |b| {
        b.iter(|| set.route(black_box("GET"), black_box("/elsewhere/x")))
    });
    g.finish();
}

criterion_group!(benches, normalize, rules);
criterion_main!(benches);
