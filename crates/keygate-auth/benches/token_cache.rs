//! The verified-token cache, on every cached bearer request: a keyed fast
//! hash of a Keycloak-sized token, a lookup, and the full comparison.
//! `cargo bench -p keygate-auth`.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_auth::jwt::TokenCache;
use keygate_core::{AuthMethod, Identity, Secret};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn token(n: usize) -> String {
    // A Keycloak access token is about 1 to 1.5 KB.
    format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        "x".repeat(1000 + n % 7),
        n
    )
}

fn cache(c: &mut Criterion) {
    let cache = TokenCache::new(100_000, Duration::from_secs(30));
    let tokens: Vec<String> = (0..10_000).map(token).collect();
    for t in &tokens {
        let claims = serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64});
        let identity = Identity::from_claims(
            claims.as_object().unwrap().clone(),
            Secret::new(t.as_str()),
            AuthMethod::Jwt,
        );
        cache.insert(t, Arc::new(identity));
    }
    let hit = tokens[1234].clone();
    let miss = token(99_999);
    let mut g = c.benchmark_group("token_cache");
    g.bench_function("hit", |b| b.iter(|| cache.get(black_box(&hit)).unwrap()));
    g.bench_function("miss", |b| b.iter(|| cache.get(black_box(&miss))));
    g.finish();
}

criterion_group!(benches, cache);
criterion_main!(benches);
