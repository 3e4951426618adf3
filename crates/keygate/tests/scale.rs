//! Scale-out: three keygate replicas sharing one PostgreSQL (keys, audit,
//! change announcements) and one Redis (sessions, exchange and negative
//! caches, rate-limit counters), all real servers on loopback, with the
//! OpenID provider from dev/idp. Revocation reaches every replica within a
//! second; Redis and PostgreSQL are stopped and started again mid-test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use keygate_store::testing::{PgServer, RedisServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SERVER_SECRET: &str = "scale-test-server-secret-0123456789abcdef-0123";
const ENCRYPTION_KEY: &str = "3q2+7wAAAAC0a5Fj8HfG1m0nR2sT9uVwXyZ4b6c8d0E=";

/// The shared servers and N replicas in front of one upstream.
struct Cluster {
    idp: Idp,
    upstream: Upstream,
    pg: PgServer,
    redis: RedisServer,
    store_url: String,
    replicas: Vec<Keygate>,
    http: reqwest::Client,
}

impl Cluster {
    /// `extra` is appended to every replica's config.
    async fn start(n: usize, extra: &str) -> Cluster {
        let idp = Idp::start().await;
        let upstream = Upstream::start().await;
        let pg = PgServer::start().await;
        let store_url = pg.create_database("keygate").await;
        let redis = RedisServer::start().await;
        let mut cluster = Cluster {
            idp,
            upstream,
            pg,
            redis,
            store_url,
            replicas: Vec::new(),
            http: client(),
        };
        for _ in 0..n {
            let replica = Keygate::start_yaml(&cluster.config(extra)).await;
            replica.wait_ready().await;
            cluster.replicas.push(replica);
        }
        cluster
    }

    fn config(&self, extra: &str) -> String {
        base_config(
            &self.idp.issuer,
            &self.upstream.url(),
            &format!(
                "store-url: {}\n\
                 redis-url: {}\n\
                 listen-admin: 127.0.0.1:0\n\
                 encryption-key: {ENCRYPTION_KEY}\n\
                 secure-cookie: false\n\
                 api-keys:\n  server-secret: {SERVER_SECRET}\n  admin-role: admin\n\
                 {extra}",
                self.store_url,
                self.redis.url()
            ),
        )
    }

    fn admin(&self, replica: usize, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.replicas[replica].admin_addr.unwrap()
        )
    }

    /// A new service key, created through `replica`'s admin API.
    async fn create_key(&self, replica: usize, admin_token: &str, body: Value) -> (String, String) {
        let resp = self
            .http
            .post(self.admin(replica, "/admin/v1/keys"))
            .bearer_auth(admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
        let created: Value = resp.json().await.unwrap();
        (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn revoke(&self, replica: usize, admin_token: &str, id: &str) {
        let resp = self
            .http
            .post(self.admin(replica, &format!("/admin/v1/keys/{id}/revoke")))
            .bearer_auth(admin_token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }

    async fn with_key(&self, replica: usize, key: &str) -> u16 {
        self.http
            .get(self.replicas[replica].url("/api/data"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn with_token(&self, replica: usize, token: &str) -> u16 {
        self.http
            .get(self.replicas[replica].url("/api/data"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn svc() -> Value {
    json!({"client_id": "svc-reporting", "client_secret": "svc-reporting-secret", "verify": false})
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Polls until `replicas` all refuse `key`; the time that took.
async fn until_refused(
    cluster: &Cluster,
    replicas: &[usize],
    key: &str,
    since: Instant,
) -> Duration {
    let mut pending: Vec<usize> = replicas.to_vec();
    while !pending.is_empty() {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "replicas {pending:?} still accept a revoked key after 10 s"
        );
        let mut still = Vec::new();
        for &r in &pending {
            if cluster.with_key(r, key).await != 401 {
                still.push(r);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_replica_is_refused_by_the_others_within_a_second() {
    // Records are trusted for a minute: only the store's announcement can
    // make the other replicas refuse the key this fast.
    let cluster = Cluster::start(3, "  record-cache-ttl: 60s\n").await;
    let admin = cluster.idp.token("alice").await;
    let mut times = Vec::new();
    for _ in 0..100 {
        let (id, key) = cluster.create_key(1, &admin, svc()).await;
        // Replicas 1 and 3 (indexes 0 and 2) have the record and a token cached.
        assert_eq!(cluster.with_key(0, &key).await, 200);
        assert_eq!(cluster.with_key(2, &key).await, 200);
        let start = Instant::now();
        cluster.revoke(1, &admin, &id).await;
        // The replica that revoked refuses at once.
        assert_eq!(cluster.with_key(1, &key).await, 401);
        times.push(until_refused(&cluster, &[0, 2], &key, start).await);
    }
    times.sort();
    let (med, max) = (median(&times), *times.last().unwrap());
    eprintln!(
        "revocation propagation over {} revocations: median {:.1} ms, max {:.1} ms",
        times.len(),
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(max < Duration::from_secs(1), "max {max:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_with_the_cli_is_refused_by_every_replica_within_a_second() {
    let cluster = Cluster::start(3, "  record-cache-ttl: 60s\n").await;
    let admin = cluster.idp.token("alice").await;
    let (id, key) = cluster.create_key(0, &admin, svc()).await;
    for r in 0..3 {
        assert_eq!(cluster.with_key(r, &key).await, 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.yaml");
    std::fs::write(&config, cluster.config("")).unwrap();
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["keys", "revoke", "--config"])
        .arg(&config)
        .arg(&id)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = until_refused(&cluster, &[0, 1, 2], &key, Instant::now()).await;
    eprintln!(
        "CLI revoke seen by all replicas {:.1} ms after the CLI exited ({:.0} ms with the CLI's start)",
        took.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_keeps_cached_keys_and_refuses_the_rest_until_it_returns() {
    let mut cluster = Cluster::start(2, "  record-cache-ttl: 1s\n").await;
    let admin = cluster.idp.token("alice").await;
    let (_, warm) = cluster.create_key(0, &admin, svc()).await;
    let (cold_id, cold) = cluster.create_key(0, &admin, svc()).await;
    assert_eq!(cluster.with_key(0, &warm).await, 200);
    let jwt = cluster.idp.token("alice").await;

    cluster.pg.stop_server();
    // Past the record cache's TTL: the records must be read again, and cannot be.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cluster.with_token(0, &jwt).await, 200, "JWTs need no store");
    assert_eq!(
        cluster.with_key(0, &warm).await,
        200,
        "a key whose token is cached keeps working"
    );
    // Replica 2 never exchanged the warm key (Redis has its token, sealed
    // under the key, but no record can be read): it cannot verify it.
    assert_eq!(cluster.with_key(1, &warm).await, 503);
    assert_eq!(cluster.with_key(0, &cold).await, 503, "never a pass");
    let unknown = keygate_auth::apikey::generate(keygate_core::keys::KeyKind::Service).unwrap();
    assert_eq!(cluster.with_key(0, unknown.expose()).await, 503);

    cluster.pg.start_again().await;
    // keygate reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.with_key(1, &cold).await != 200 {
        assert!(
            Instant::now() < deadline,
            "keygate did not recover from the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cluster.with_key(0, &cold).await, 200);
    // And the change listener is back: a revoke reaches the other replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    cluster.revoke(1, &admin, &cold_id).await;
    let took = until_refused(&cluster, &[0], &cold, start).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_keeps_jwts_and_cached_keys_and_recovers() {
    let mut cluster = Cluster::start(2, "").await;
    let admin = cluster.idp.token("alice").await;
    let (_, key) = cluster.create_key(0, &admin, svc()).await;
    assert_eq!(cluster.with_key(0, &key).await, 200);
    let jwt = cluster.idp.token("alice").await;

    cluster.redis.stop_server();
    assert_eq!(cluster.with_token(0, &jwt).await, 200);
    assert_eq!(cluster.with_token(1, &jwt).await, 200);
    assert_eq!(cluster.with_key(0, &key).await, 200, "cached locally");
    // Redis is only a cache for keys: replica 2 checks the key in the store
    // and exchanges it at the provider itself.
    assert_eq!(cluster.with_key(1, &key).await, 200);

    cluster.redis.start_again().await;
    let (_, fresh) = cluster.create_key(1, &admin, svc()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if cluster.with_key(0, &fresh).await == 200
            && cluster.replicas[0].gateway.redis.as_ref().unwrap().is_up()
        {
            break;
        }
        assert!(Instant::now() < deadline, "keygate did not use Redis again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
