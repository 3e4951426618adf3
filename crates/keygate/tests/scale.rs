//! Scale-out: three keygate replicas sharing one PostgreSQL (keys, audit,
//! change announcements) and one Redis (sessions, exchange and negative
//! caches, rate-limit counters), all real servers on loopback, with the
//! OpenID provider from dev/idp. Revocation reaches every replica within a
//! second; Redis and PostgreSQL are stopped and started again mid-test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::browser::{Browser, login_at};
use keygate_testkit::*;
use keygate_testkit::{PgServer, RedisServer};
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
    ports: Vec<u16>,
    http: reqwest::Client,
}

impl Cluster {
    /// `extra` is appended to every replica's config.
    async fn start(n: usize, extra: &str) -> Cluster {
        Cluster::start_with(n, &[], extra).await
    }

    /// Like [`Cluster::start`], with extra arguments for the provider.
    async fn start_with(n: usize, idp_args: &[&str], extra: &str) -> Cluster {
        Cluster::start_full(n, idp_args, extra, false).await
    }

    /// Like [`Cluster::start`], with Redis over TLS (`rediss://`, a private CA).
    async fn start_tls(n: usize, extra: &str) -> Cluster {
        Cluster::start_full(n, &[], extra, true).await
    }

    async fn start_full(n: usize, idp_args: &[&str], extra: &str, tls: bool) -> Cluster {
        // Hold the replicas' ports while the other servers pick theirs: the
        // provider must know their callback URLs.
        // One more than the in-process replicas: for a replica process.
        let reserved: Vec<std::net::TcpListener> = (0..n + 1)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = reserved
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let callbacks: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/oauth/callback"))
            .collect();
        let mut args: Vec<&str> = Vec::new();
        for cb in &callbacks {
            args.extend(["--redirect-uri", cb.as_str()]);
        }
        args.extend_from_slice(idp_args);
        let idp = Idp::start_with(&args).await;
        let upstream = Upstream::start().await;
        let pg = PgServer::start().await;
        let store_url = pg.create_database("keygate").await;
        let redis = match tls {
            true => RedisServer::start_tls().await,
            false => RedisServer::start().await,
        };
        let mut cluster = Cluster {
            idp,
            upstream,
            pg,
            redis,
            store_url,
            replicas: Vec::new(),
            ports,
            http: client(),
        };
        drop(reserved);
        for i in 0..n {
            let replica = Keygate::start_yaml(&cluster.config(cluster.ports[i], extra)).await;
            replica.wait_ready().await;
            cluster.replicas.push(replica);
        }
        cluster
    }

    fn config(&self, port: u16, extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:{port}\n\
             discovery-url: {}\n\
             client-id: keygate\n\
             client-secret: keygate-secret\n\
             upstream-url: {}\n\
             log-level: warn\n\
             store-url: {}\n\
             redis-url: {}\n\
             listen-admin: 127.0.0.1:0\n\
             encryption-key: {ENCRYPTION_KEY}\n\
             secure-cookie: false\n\
             {}\
             api-keys:\n  server-secret: {SERVER_SECRET}\n  admin-role: admin\n\
             {extra}",
            self.idp.issuer,
            self.upstream.url(),
            self.store_url,
            self.redis.url(),
            self.redis
                .ca()
                .map(|ca| format!("redis-ca: {}\n", ca.display()))
                .unwrap_or_default(),
        )
    }

    fn base(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[replica])
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

    /// An API call with a session cookie: the status and the upstream's echo.
    async fn with_session(&self, replica: usize, cookie: &str) -> (u16, Option<Echo>) {
        let resp = self
            .http
            .get(self.replicas[replica].url("/api/data"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let echo = (status == 200).then_some(Echo(resp.json().await.unwrap()));
        (status, echo)
    }

    /// Logs `user` in through `replica`; the `Cookie` header of the session.
    async fn login(&self, replica: usize, user: &str) -> String {
        let mut browser = Browser::new();
        let page = login_at(
            &mut browser,
            &self.base(replica),
            "/oauth/authorize?return_to=/app",
            user,
        )
        .await;
        assert_eq!(
            page.status,
            200,
            "{}: {} {:?}",
            page.url,
            page.body,
            browser.cookies.keys()
        );
        let cookies: Vec<String> = browser
            .cookies
            .iter()
            .filter(|(k, _)| k.starts_with("kg_session"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(cookies.len(), 1, "one cookie: {cookies:?}");
        cookies[0].clone()
    }

    /// Every key and value in Redis, as text.
    fn redis_dump(&self) -> String {
        let cli = |args: &[&str]| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &self.redis.port().to_string()])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut dump = String::new();
        for key in cli(&["--scan"]).lines() {
            dump.push_str(key);
            dump.push('=');
            dump.push_str(&cli(&["GET", key]));
            dump.push_str(&cli(&["SMEMBERS", key]));
            dump.push('\n');
        }
        dump
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
    std::fs::write(&config, cluster.config(0, "")).unwrap();
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
    // Each replica within a second: one that saw a failure just before the
    // server came back waits out its breaker's open window (500 ms) first.
    let back = Instant::now();
    while cluster.with_key(0, &cold).await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "replica 1 did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    // The detailed health is on the operations port (listen-admin).
    let health_urls: Vec<String> = (0..2).map(|r| cluster.admin(r, "/health")).collect();
    let health = |r: usize| {
        let url = health_urls[r].clone();
        let http = cluster.http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "health is for liveness: always 200");
            resp.json::<Value>().await.unwrap()
        }
    };
    let h = health(0).await;
    assert_eq!(
        (h["status"].as_str(), h["redis"]["reachable"].as_bool()),
        (Some("ok"), Some(true))
    );
    cluster.redis.stop_server();
    let h = health(0).await;
    assert_eq!(
        (h["status"].as_str(), h["redis"]["reachable"].as_bool()),
        (Some("degraded"), Some(false))
    );
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

const REDIS_SESSIONS: &str = "session-store: redis\nenable-refresh-tokens: true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_created_on_one_replica_works_on_the_others_and_ends_everywhere() {
    let cluster = Cluster::start(3, REDIS_SESSIONS).await;
    let cookie = cluster.login(0, "alice").await;
    // The cookie holds a sealed id, not the tokens.
    assert!(cookie.len() < 200, "{cookie}");
    let mut token = String::new();
    for r in 0..3 {
        let (status, echo) = cluster.with_session(r, &cookie).await;
        assert_eq!(status, 200, "replica {r}");
        let echo = echo.unwrap();
        assert_eq!(echo.header("x-auth-method").as_deref(), Some("session"));
        assert_eq!(echo.header("x-auth-username").as_deref(), Some("alice"));
        token = echo.header("authorization").unwrap()["Bearer ".len()..].to_owned();
    }
    // Redis holds the session sealed: no token, no session id in clear.
    let dump = cluster.redis_dump();
    assert!(dump.contains("keygate:s:"), "{dump}");
    for part in token.split('.') {
        assert!(!dump.contains(part), "a token part is in Redis in clear");
    }
    let id = cookie.split_once('=').unwrap().1;
    assert!(!dump.contains(id));

    // A forged cookie is no session on any replica.
    let forged = format!("kg_session={}x", &id[..id.len() - 1]);
    assert_eq!(cluster.with_session(1, &forged).await.0, 401);

    // Logging out on replica 3 ends the session on 1 and 2 at once.
    let resp = cluster
        .http
        .get(format!("{}/oauth/logout", cluster.base(2)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    for r in 0..3 {
        assert_eq!(cluster.with_session(r, &cookie).await.0, 401, "replica {r}");
    }
}

/// CWE-613 across replicas: a cookie session logged out on one replica is
/// over on every replica, though its cookie carries the tokens itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_of_a_cookie_session_on_one_replica_ends_it_on_every_replica() {
    let cluster = Cluster::start(3, "session-store: cookie\n").await;
    let cookie = cluster.login(0, "alice").await;
    for r in 0..3 {
        assert_eq!(cluster.with_session(r, &cookie).await.0, 200, "replica {r}");
    }
    let resp = cluster
        .http
        .get(format!("{}/oauth/logout", cluster.base(1)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    for r in 0..3 {
        assert_eq!(cluster.with_session(r, &cookie).await.0, 401, "replica {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backchannel_logout_on_one_replica_ends_the_session_on_all() {
    backchannel_logout_everywhere(REDIS_SESSIONS).await;
}

/// Cookie sessions carry their tokens themselves; with Redis the replicas
/// still share which sessions a back-channel logout ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backchannel_logout_of_cookie_sessions_reaches_every_replica_through_redis() {
    backchannel_logout_everywhere("session-store: cookie\n").await;
}

async fn backchannel_logout_everywhere(sessions: &str) {
    let cluster = Cluster::start(3, sessions).await;
    let alice1 = cluster.login(0, "alice").await;
    let alice2 = cluster.login(1, "alice").await;
    let bob = cluster.login(2, "bob").await;
    for cookie in [&alice1, &alice2, &bob] {
        assert_eq!(cluster.with_session(2, cookie).await.0, 200);
    }
    let event = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    let (cluster_ref, event_ref) = (&cluster, &event);
    let logout = |claims: Value| async move {
        let (cluster, event) = (cluster_ref, event_ref);
        let mut c = json!({"typ": "Logout", "aud": "keygate", "events": event, "realm_access": null,
            "resource_access": null, "scope": null, "azp": null});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let token = cluster.idp.sign(c, json!({})).await;
        cluster
            .http
            .post(format!("{}/oauth/backchannel-logout", cluster.base(1)))
            .form(&[("logout_token", token)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // By sub: every session of alice, on every replica; bob's stays.
    assert_eq!(logout(json!({"sid": null})).await, 200);
    for r in 0..3 {
        assert_eq!(cluster.with_session(r, &alice1).await.0, 401);
        assert_eq!(cluster.with_session(r, &alice2).await.0, 401);
        assert_eq!(cluster.with_session(r, &bob).await.0, 200);
    }
    // A new login of alice afterwards works.
    let again = cluster.login(2, "alice").await;
    assert_eq!(cluster.with_session(0, &again).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_sessions_are_refreshed_once_across_replicas() {
    let cluster = Cluster::start_with(
        3,
        &["--access-token-ttl", "3", "--rotate-refresh-tokens"],
        &format!("{REDIS_SESSIONS}clock-skew: 0s\n"),
    )
    .await;
    let cookie = cluster.login(0, "alice").await;
    let first = cluster.with_session(1, &cookie).await.1.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let before = cluster.idp.grant_count("refresh_token").await;
    // Twelve requests at once, four per replica: the provider rotates
    // refresh tokens, so a second refresh would be refused and end the session.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (http, url, cookie) = (
                cluster.http.clone(),
                cluster.replicas[i % 3].url("/api/data"),
                cookie.clone(),
            );
            tokio::spawn(async move {
                let resp = http.get(url).header("cookie", cookie).send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let echo = Echo(serde_json::from_str(&body).unwrap());
        assert_ne!(echo.header("authorization"), first.header("authorization"));
    }
    assert_eq!(
        cluster.idp.grant_count("refresh_token").await - before,
        1,
        "one refresh for the session, whichever replica"
    );
    // The cookie did not change: the session's id names the refreshed tokens.
    assert_eq!(cluster.with_session(2, &cookie).await.0, 200);
}

/// A session whose refresh failed while the provider hung is refreshed as
/// soon as the provider answers again, on any replica. The replica whose
/// refresh failed lets the session's refresh lock go; kept until it expired
/// (10 s), every request of the session waited 5 s for a refresh nobody was
/// doing and got 503 (bench/soak.sh saw sessions at 503 for 8 s after the
/// provider came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_refreshes_as_soon_as_a_hung_provider_answers_again() {
    let cluster = Cluster::start_with(
        2,
        &["--access-token-ttl", "2"],
        &format!("{REDIS_SESSIONS}clock-skew: 0s\nopenid-provider-timeout: 1s\n"),
    )
    .await;
    let cookie = cluster.login(0, "alice").await;
    assert_eq!(cluster.with_session(1, &cookie).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.idp.freeze();
    // The access token has expired and cannot be refreshed: 503, on both.
    assert_eq!(cluster.with_session(0, &cookie).await.0, 503);
    assert_eq!(cluster.with_session(1, &cookie).await.0, 503);
    cluster.idp.thaw();
    let took = until("the session refreshed", || async {
        cluster.with_session(1, &cookie).await.0 == 200
    })
    .await;
    eprintln!(
        "session refreshed {:.0} ms after the provider answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(cluster.with_session(0, &cookie).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_wait_out_a_redis_outage_with_503_and_survive_it() {
    let mut cluster = Cluster::start(2, REDIS_SESSIONS).await;
    let cookie = cluster.login(0, "alice").await;
    let jwt = cluster.idp.token("alice").await;
    assert_eq!(cluster.with_session(1, &cookie).await.0, 200);
    cluster.redis.stop_server();
    // A session cannot be verified without Redis: 503, never a pass and
    // never a 401 that would send the user to log in again.
    let resp = cluster
        .http
        .get(cluster.replicas[1].url("/api/data"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "the cookie is kept"
    );
    assert_eq!(cluster.with_token(1, &jwt).await, 200, "JWTs need no Redis");
    cluster.redis.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.with_session(1, &cookie).await.0 != 200 {
        assert!(Instant::now() < deadline, "the session did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.with_session(0, &cookie).await.0, 200);
}

/// Fires requests with `key` at the replicas in turn, `concurrency` at a
/// time, for `length`; the statuses seen and the time taken.
async fn hammer(
    cluster: &Cluster,
    key: &str,
    concurrency: usize,
    length: Duration,
) -> (Vec<u16>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let http = cluster.http.clone();
            let urls: Vec<String> = cluster
                .replicas
                .iter()
                .map(|r| r.url("/api/data"))
                .collect();
            let key = key.to_owned();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut i = worker;
                while start.elapsed() < length {
                    let resp = http
                        .get(&urls[i % urls.len()])
                        .header("X-API-Key", &key)
                        .send()
                        .await
                        .unwrap();
                    statuses.push(resp.status().as_u16());
                    i += 1;
                }
                statuses
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_replicas() {
    let cluster = Cluster::start(3, "").await;
    let admin = cluster.idp.token("alice").await;
    let mut body = svc();
    body["rate_limit"] = json!("20/s burst 10");
    let (_, key) = cluster.create_key(0, &admin, body).await;
    // Requests spread over three replicas; the shared counter in Redis lets
    // through the burst plus 20 per second, whichever replica counts.
    let (statuses, took) = hammer(&cluster, &key, 6, Duration::from_secs(4)).await;
    let ok = statuses.iter().filter(|s| **s == 200).count() as f64;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok as usize + limited, statuses.len(), "only 200 and 429");
    let expected = 10.0 + 20.0 * took.as_secs_f64();
    eprintln!(
        "rate limit 20/s burst 10 over 3 replicas: {ok} of {} requests let through in {:.2} s (expected {expected:.0})",
        statuses.len(),
        took.as_secs_f64()
    );
    // Tolerance: the last interval in flight, and nothing more.
    assert!(
        ok <= expected + 2.0 && ok >= expected * 0.9,
        "{ok} allowed, expected about {expected:.0}"
    );
    assert!(limited > 0, "the load exceeded the limit");

    // A refusal says when to come back, with the limit's headers.
    let resp = loop {
        let resp = cluster
            .http
            .get(cluster.replicas[1].url("/api/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            break resp;
        }
    };
    let h = resp.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-limit"], "10");
    assert_eq!(h["ratelimit-remaining"], "0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("20/s burst 10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_and_limit_changes_apply_on_every_replica() {
    let cluster =
        Cluster::start(3, "  rate-limit-service: 1000/s\n  record-cache-ttl: 60s\n").await;
    let admin = cluster.idp.token("alice").await;
    let mut body = svc();
    body["quota"] = json!("5/day");
    let (id, key) = cluster.create_key(0, &admin, body).await;
    let mut ok = 0;
    for i in 0..9 {
        let resp = cluster
            .http
            .get(cluster.replicas[i % 3].url("/api/data"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(resp.headers()["x-quota-limit"], "5");
                assert_eq!(
                    resp.headers()["x-quota-remaining"],
                    (5 - ok).to_string().as_str()
                );
                assert_eq!(
                    resp.headers()["ratelimit-limit"],
                    "1000",
                    "the kind's default"
                );
            }
            429 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=86_400).contains(&retry));
                let body: Value = resp.json().await.unwrap();
                assert!(
                    body["error_description"]
                        .as_str()
                        .unwrap()
                        .contains("quota")
                );
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(ok, 5, "five a day, across the replicas");
    // Raising the quota on one replica applies on all at once (announced
    // by PostgreSQL; records are otherwise trusted for a minute).
    let resp = cluster
        .http
        .post(cluster.admin(2, &format!("/admin/v1/keys/{id}/limits")))
        .bearer_auth(&admin)
        .json(&json!({"quota": "unlimited", "rate_limit": "2/s burst 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["key"]["quota"], "unlimited");
    assert_eq!(view["key"]["rate_limit"], "2/s burst 1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(cluster.with_key(0, &key).await, 200);
    assert_eq!(cluster.with_key(1, &key).await, 429, "burst 1, shared");
    // Bad limits are refused with the reason.
    let resp = cluster
        .http
        .post(cluster.admin(0, &format!("/admin/v1/keys/{id}/limits")))
        .bearer_auth(&admin)
        .json(&json!({"rate_limit": "lots"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("`rate_limit` must be a rate limit"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_are_kept_per_replica_while_redis_is_down() {
    let mut cluster = Cluster::start(2, "").await;
    let admin = cluster.idp.token("alice").await;
    let mut body = svc();
    body["rate_limit"] = json!("1/min burst 2");
    let (_, key) = cluster.create_key(0, &admin, body).await;
    assert_eq!(cluster.with_key(0, &key).await, 200);
    assert_eq!(cluster.with_key(1, &key).await, 200);
    assert_eq!(
        cluster.with_key(0, &key).await,
        429,
        "shared: the burst is used up"
    );
    cluster.redis.stop_server();
    // Each replica now counts alone — still limited, never unlimited.
    let statuses = [
        cluster.with_key(0, &key).await,
        cluster.with_key(0, &key).await,
        cluster.with_key(0, &key).await,
    ];
    assert_eq!(statuses, [200, 200, 429]);
}

/// keygate as a process of its own (the real binary), on the cluster's
/// spare port, sharing the cluster's servers: a replica that can be killed.
struct ReplicaProcess {
    child: std::process::Child,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl ReplicaProcess {
    async fn spawn(cluster: &Cluster, extra: &str) -> ReplicaProcess {
        let port = *cluster.ports.last().unwrap();
        let admin_port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keygate.yaml");
        std::fs::write(
            &config,
            cluster.config(port, extra).replace(
                "listen-admin: 127.0.0.1:0",
                &format!("listen-admin: 127.0.0.1:{admin_port}"),
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
        for (k, _) in std::env::vars() {
            if k.starts_with("KEYGATE_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let replica = ReplicaProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = cluster
                .http
                .get(format!("{}/oauth/ready", replica.base))
                .send()
                .await
                && resp.status() == 200
            {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "the keygate process did not get ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_traffic_loses_no_key_session_or_audit_record() {
    let cluster = Cluster::start(1, REDIS_SESSIONS).await;
    let mut doomed = ReplicaProcess::spawn(&cluster, REDIS_SESSIONS).await;
    let admin = cluster.idp.token("alice").await;
    // A session created through the process that will die.
    let mut browser = Browser::new();
    login_at(
        &mut browser,
        &doomed.base,
        "/oauth/authorize?return_to=/app",
        "alice",
    )
    .await;
    let cookie = format!("kg_session={}", browser.cookies["kg_session"]);
    // Keys created through it, one after another, while requests flow; it
    // is killed (SIGKILL, no shutdown) in the middle.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let (http, url, admin, stop) = (
            cluster.http.clone(),
            format!("{}/admin/v1/keys", doomed.admin),
            admin.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(resp) = http
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&svc())
                    .send()
                    .await
                else {
                    break;
                };
                if resp.status() != 201 {
                    break;
                }
                let Ok(created) = resp.json::<Value>().await else {
                    break;
                };
                acknowledged.push((
                    created["id"].as_str().unwrap().to_owned(),
                    created["key"].as_str().unwrap().to_owned(),
                ));
            }
            acknowledged
        })
    };
    let traffic = {
        let (http, url, cookie) = (
            cluster.http.clone(),
            format!("{}/api/data", doomed.base),
            cookie.clone(),
        );
        tokio::spawn(async move {
            let mut served = 0;
            while http
                .get(&url)
                .header("cookie", &cookie)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                served += 1;
            }
            served
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = creator.await.unwrap();
    let served = traffic.await.unwrap();
    assert!(
        acknowledged.len() >= 3,
        "only {} keys created",
        acknowledged.len()
    );
    assert!(served > 10, "only {served} requests before the kill");

    // The surviving replica has every key the dead one acknowledged, with
    // its audit record, and they work.
    for (id, key) in &acknowledged {
        let shown: Value = cluster
            .http
            .get(cluster.admin(0, &format!("/admin/v1/keys/{id}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shown["key"]["status"], "active", "{id}");
        assert_eq!(shown["audit"][0]["action"], "create");
        assert_eq!(shown["audit"][0]["actor"], "alice");
        assert_eq!(cluster.with_key(0, key).await, 200, "{id}");
    }
    // And the session goes on.
    let (status, echo) = cluster.with_session(0, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(
        echo.unwrap().header("x-auth-username").as_deref(),
        Some("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_with_a_private_ca() {
    let cluster = Cluster::start_tls(2, REDIS_SESSIONS).await;
    assert!(cluster.redis.url().starts_with("rediss://"));
    let cookie = cluster.login(0, "alice").await;
    assert_eq!(
        cluster.with_session(1, &cookie).await.0,
        200,
        "the session is in Redis"
    );
    let admin = cluster.idp.token("alice").await;
    let mut body = svc();
    body["rate_limit"] = json!("1/min burst 1");
    let (_, key) = cluster.create_key(0, &admin, body).await;
    assert_eq!(cluster.with_key(0, &key).await, 200);
    assert_eq!(
        cluster.with_key(1, &key).await,
        429,
        "the counter is shared over TLS"
    );
}

// ---------------------------------------------------------------- outages
//
// A hung dependency (SIGSTOP: connections open, nothing answers) costs one
// timeout, not one per request: while it hangs, one request at a time
// probes it and every other request gets its answer at once. Each test
// sends rounds of 50 concurrent requests, each round after the breaker's
// 500 ms open window, and counts the probes on the replica's breaker.

/// One request's answer: status, time taken, `Retry-After`.
struct Answer {
    status: u16,
    took: Duration,
    retry_after: Option<String>,
}

/// The API keys `keys`, one request each, all at once, to replica 0.
async fn burst_keys(cluster: &Cluster, keys: &[String]) -> Vec<Answer> {
    let tasks: Vec<_> = keys
        .iter()
        .map(|key| {
            let (http, url, key) = (
                cluster.http.clone(),
                cluster.replicas[0].url("/api/data"),
                key.clone(),
            );
            tokio::spawn(async move {
                let start = Instant::now();
                let resp = http.get(url).header("X-API-Key", key).send().await.unwrap();
                Answer {
                    status: resp.status().as_u16(),
                    took: start.elapsed(),
                    retry_after: resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// How many of `answers` waited at least `slow`.
fn waited(answers: &[Answer], slow: Duration) -> usize {
    answers.iter().filter(|a| a.took >= slow).count()
}

/// Polls `ok` every 10 ms until it holds; how long that took (panics after 5 s).
async fn until<F, Fut>(what: &str, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_costs_one_probe_and_every_other_request_its_answer_at_once() {
    let timeout = Duration::from_millis(500);
    let mut cluster = Cluster::start(
        1,
        "  rate-limit-service: 1000/s burst 1000\nredis-timeout: 500ms\n",
    )
    .await;
    let admin = cluster.idp.token("alice").await;
    let (_, key) = cluster.create_key(0, &admin, svc()).await;
    assert_eq!(cluster.with_key(0, &key).await, 200);
    let redis = cluster.replicas[0].gateway.redis.clone().unwrap();

    cluster.redis.freeze();
    // The first request waits out redis-timeout (its rate limit is then
    // counted in memory) and opens the breaker.
    assert_eq!(cluster.with_key(0, &key).await, 200);
    assert!(!redis.is_up());
    let keys = vec![key.clone(); 50];
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = redis.breaker_stats();
        let answers = burst_keys(&cluster, &keys).await;
        let probes = redis.breaker_stats().probes - before.probes;
        let slow = waited(&answers, timeout / 2);
        eprintln!("hung Redis, round {round}: {probes} probe, {slow} of 50 waited");
        assert!(
            answers.iter().all(|a| a.status == 200),
            "API keys need no Redis"
        );
        assert_eq!(probes, 1, "round {round}");
        assert!(slow <= 1, "round {round}: {slow} requests waited for Redis");
    }
    cluster.redis.thaw();
    let took = until("Redis used again", || async {
        cluster.with_key(0, &key).await == 200 && redis.is_up()
    })
    .await;
    eprintln!(
        "Redis used again {:.0} ms after it answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_postgres_costs_one_probe_and_every_other_request_503_at_once() {
    let mut cluster =
        Cluster::start(1, "store-acquire-timeout: 500ms\nstore-query-timeout: 1s\n").await;
    let admin = cluster.idp.token("alice").await;
    let (_, cold) = cluster.create_key(0, &admin, svc()).await;
    let store = cluster.replicas[0]
        .gateway
        .api_keys
        .as_ref()
        .unwrap()
        .store()
        .clone();
    let unknown = || -> Vec<String> {
        (0..50)
            .map(|_| {
                keygate_auth::apikey::generate(keygate_core::keys::KeyKind::Service)
                    .unwrap()
                    .expose()
                    .to_owned()
            })
            .collect()
    };

    cluster.pg.freeze();
    // The first request waits out the store's timeouts, opens the breaker,
    // and gets 503.
    assert_eq!(cluster.with_key(0, &cold).await, 503);
    assert!(!store.is_up());
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = store.breaker_stats();
        // Keys this replica has never seen, each needs the store: fifty,
        // or one fifty times (requests for one key do not wait for the
        // probe of another request for it either).
        let burst = match round % 2 {
            0 => unknown(),
            _ => vec![unknown().remove(0); 50],
        };
        let answers = burst_keys(&cluster, &burst).await;
        let probes = store.breaker_stats().probes - before.probes;
        let slow = waited(&answers, Duration::from_millis(250));
        eprintln!("hung PostgreSQL, round {round}: {probes} probe, {slow} of 50 waited");
        assert!(
            answers.iter().all(|a| a.status == 503),
            "never a pass, never a 401"
        );
        assert!(
            answers
                .iter()
                .all(|a| a.retry_after.as_deref() == Some("1"))
        );
        assert_eq!(probes, 1, "round {round}");
        assert!(
            slow <= 1,
            "round {round}: {slow} requests waited for the store"
        );
    }
    // `keygate keys create` gives up after store-acquire-timeout, not 10 s.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        cluster.config(0, "store-acquire-timeout: 500ms\nstore-query-timeout: 1s\n"),
    )
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "svc-reporting-secret\n").unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args([
            "keys",
            "create",
            "--kind",
            "service",
            "--client-id",
            "svc-reporting",
        ])
        .arg("--client-secret-file")
        .arg(&secret)
        .arg("--config")
        .arg(&config)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("keys create against a hung PostgreSQL: {took:?}: {stderr}");
    assert!(!out.status.success());
    assert!(stderr.contains("store"), "{stderr}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    cluster.pg.thaw();
    let took = until("the store used again", || async {
        cluster.with_key(0, &cold).await == 200
    })
    .await;
    eprintln!(
        "PostgreSQL used again {:.0} ms after it answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(store.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_provider_costs_one_probe_and_every_other_request_503_at_once() {
    let cluster = Cluster::start(1, "openid-provider-timeout: 1s\n").await;
    let admin = cluster.idp.token("alice").await;
    let jwt = cluster.idp.token("alice").await;
    // Fifty keys never exchanged yet: each needs the provider's token endpoint.
    let mut keys = Vec::new();
    for _ in 0..50 {
        keys.push(cluster.create_key(0, &admin, svc()).await.1);
    }
    let provider = std::sync::Arc::clone(cluster.replicas[0].gateway.verifier.provider());

    cluster.idp.freeze();
    // The first exchange waits out openid-provider-timeout and opens the breaker.
    assert_eq!(cluster.with_key(0, &keys[0]).await, 503);
    assert!(!provider.is_up());
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = provider.breaker_stats();
        // Fifty keys, or one key fifty times: requests for one key do not
        // wait for the probe of another request for it either.
        let burst = match round % 2 {
            0 => keys.clone(),
            _ => vec![keys[0].clone(); 50],
        };
        let answers = burst_keys(&cluster, &burst).await;
        let probes = provider.breaker_stats().probes - before.probes;
        let slow = waited(&answers, Duration::from_millis(500));
        eprintln!("hung provider, round {round}: {probes} probe, {slow} of 50 waited");
        assert!(
            answers.iter().all(|a| a.status == 503),
            "never a pass, never a 401"
        );
        assert!(
            answers
                .iter()
                .all(|a| a.retry_after.as_deref() == Some("1"))
        );
        assert_eq!(probes, 1, "round {round}");
        assert!(
            slow <= 1,
            "round {round}: {slow} requests waited for the provider"
        );
    }
    // Tokens verify with the cached keys: no provider needed.
    assert_eq!(cluster.with_token(0, &jwt).await, 200);
    let metrics = cluster.replicas[0].metrics().await;
    assert!(
        counter(
            &metrics,
            "keygate_dependency_probes_total",
            &["dependency=\"provider\""]
        ) >= 4.0,
        "the probes are counted"
    );
    cluster.idp.thaw();
    let took = until("the provider used again", || async {
        cluster.with_key(0, &keys[1]).await == 200
    })
    .await;
    eprintln!(
        "provider used again {:.0} ms after it answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(provider.is_up());
}
