//! Header work on every proxied request: the client's headers cleaned in
//! phase 1 (hop-by-hop, forwarding) and the identity headers keygate sets in
//! phase 5 (prebuilt once per cached identity). `cargo bench -p keygate-proxy`.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use keygate_core::{AuthMethod, Identity, Secret};
use keygate_proxy::{Gateway, forward, hygiene};
use std::hint::black_box;

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
        ),
        ("content-type", "application/json"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn hygiene_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("hygiene");
    g.bench_function("clean_request_headers", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| {
                hygiene::strip_client_hop_by_hop(&Method::GET, h);
                hygiene::strip_untrusted_forwarding(h);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("clean_response_headers", |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                h.insert("content-type", HeaderValue::from_static("text/plain"));
                h.insert("content-length", HeaderValue::from_static("2"));
                h.insert("connection", HeaderValue::from_static("keep-alive"));
                h.insert(
                    "date",
                    HeaderValue::from_static("Mon, 07 Dec 2026 20:00:00 GMT"),
                );
                h
            },
            hygiene::strip_response_hop_by_hop,
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn identity_headers(c: &mut Criterion) {
    let config: keygate_core::config::Config = serde_yaml_ng::from_str(
        "discovery-url: http://127.0.0.1:1/realms/acme\nclient-id: keygate\n\
         upstream-url: http://127.0.0.1:2\n",
    )
    .unwrap();
    let mut config = config;
    config.validate().unwrap();
    let gw = Gateway::new(config).unwrap();
    let claims = serde_json::json!({
        "sub": "a11ce000-0000-4000-a000-000000000001", "exp": 4_000_000_000u64,
        "preferred_username": "alice", "email": "alice@example.com",
        "realm_access": {"roles": ["offline_access", "user", "admin"]},
        "resource_access": {"APP-backend": {"roles": ["editor"]}},
        "groups": ["/ops", "/ops/oncall"], "scope": "openid email profile",
    });
    let identity = Identity::from_claims(
        claims.as_object().unwrap().clone(),
        Secret::new("x".repeat(1200)),
        AuthMethod::Jwt,
    );
    let site = &gw.sites[0];
    let mut g = c.benchmark_group("forward");
    g.bench_function("identity_headers", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| forward::identity_headers(&gw, site, black_box(&identity), None, h),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, hygiene_bench, identity_headers);
criterion_main!(benches);
