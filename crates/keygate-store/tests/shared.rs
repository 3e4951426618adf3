//! The shared state against a real Redis server (Debian's `redis-server`,
//! started per test on loopback): values with a TTL, the session indexes
//! used by back-channel logout, the GCRA rate limit and quotas, and what
//! callers see while Redis is stopped and after it returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_store::{Redis, SharedError};
use keygate_testkit::RedisServer;
use std::time::{Duration, Instant};

fn connect(server: &RedisServer) -> Redis {
    Redis::connect(&server.url(), "kgtest:", Duration::from_millis(300), None).unwrap()
}

#[tokio::test]
async fn values_expire_and_keys_are_prefixed() {
    let server = RedisServer::start().await;
    let redis = connect(&server);
    let key = redis.key("x:1");
    assert_eq!(key, "kgtest:x:1");
    redis
        .set(&key, b"sealed", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        redis.get(&key).await.unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    assert!(redis.exists(&key).await.unwrap());
    assert!(redis.replace(&key, b"newer").await.unwrap());
    assert_eq!(
        redis.get(&key).await.unwrap().as_deref(),
        Some(&b"newer"[..])
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(redis.get(&key).await.unwrap(), None, "the TTL was kept");
    assert!(
        !redis.replace(&key, b"gone").await.unwrap(),
        "XX: no resurrection"
    );
    assert_eq!(redis.del(&[key]).await.unwrap(), 0);
}

#[tokio::test]
async fn sessions_end_by_index() {
    let server = RedisServer::start().await;
    let redis = connect(&server);
    let (a, b, c) = (redis.key("s:a"), redis.key("s:b"), redis.key("s:c"));
    let (sid1, sub) = (redis.key("sid:1"), redis.key("sub:alice"));
    let ttl = Duration::from_secs(60);
    redis
        .save_session(&a, b"A", ttl, &[sid1.clone(), sub.clone()])
        .await
        .unwrap();
    redis
        .save_session(&b, b"B", ttl, &[redis.key("sid:2"), sub.clone()])
        .await
        .unwrap();
    redis
        .save_session(&c, b"C", ttl, &[redis.key("sid:3"), redis.key("sub:bob")])
        .await
        .unwrap();
    // By sid: only that session.
    assert_eq!(redis.end_sessions(&sid1).await.unwrap(), 1);
    assert!(!redis.exists(&a).await.unwrap());
    assert!(redis.exists(&b).await.unwrap());
    // By sub: every session of alice that is left; bob's stays.
    assert_eq!(redis.end_sessions(&sub).await.unwrap(), 1);
    assert!(!redis.exists(&b).await.unwrap());
    assert!(redis.exists(&c).await.unwrap());
    assert!(!redis.exists(&sub).await.unwrap(), "the index is gone too");
}

#[tokio::test]
async fn gcra_allows_the_burst_then_the_rate() {
    let server = RedisServer::start().await;
    let redis = connect(&server);
    let key = redis.key("rl:k1");
    // 10 per second, bursts of 5.
    let interval = Duration::from_millis(100);
    let mut allowed = 0;
    for _ in 0..8 {
        if redis.gcra(&key, interval, 5).await.unwrap().allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "the burst, no more");
    let refused = redis.gcra(&key, interval, 5).await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= interval,
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after + Duration::from_millis(5)).await;
    assert!(redis.gcra(&key, interval, 5).await.unwrap().allowed);
    // Another key has its own budget.
    assert!(
        redis
            .gcra(&redis.key("rl:k2"), interval, 5)
            .await
            .unwrap()
            .allowed
    );
    // Over two seconds at most burst + rate × time get through.
    let key = redis.key("rl:k3");
    let start = Instant::now();
    let mut allowed = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        if redis.gcra(&key, interval, 5).await.unwrap().allowed {
            allowed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let most = 5.0 + elapsed * 10.0 + 1.0;
    assert!(
        f64::from(allowed) <= most && f64::from(allowed) >= most - 3.0,
        "{allowed} in {elapsed:.2}s"
    );
}

#[tokio::test]
async fn quotas_count_what_they_let_through() {
    let server = RedisServer::start().await;
    let redis = connect(&server);
    let key = redis.key("q:k1:2026-12-01");
    for i in 1..=3 {
        assert_eq!(
            redis
                .quota(&key, 3, Duration::from_secs(100))
                .await
                .unwrap(),
            (true, i)
        );
    }
    assert_eq!(
        redis
            .quota(&key, 3, Duration::from_secs(100))
            .await
            .unwrap(),
        (false, 3)
    );
    assert_eq!(
        redis
            .quota(&key, 3, Duration::from_secs(100))
            .await
            .unwrap(),
        (false, 3),
        "refused requests are not counted"
    );
}

#[tokio::test]
async fn a_stopped_redis_fails_fast_and_is_used_again_when_it_returns() {
    let mut server = RedisServer::start().await;
    let redis = connect(&server);
    let key = redis.key("persist");
    redis
        .set(&key, b"kept", Duration::from_secs(60))
        .await
        .unwrap();
    server.stop_server();
    let start = Instant::now();
    let err = redis.get(&key).await.unwrap_err();
    assert!(matches!(err, SharedError::Unavailable(_)), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );
    // The breaker is open: the next call fails without waiting.
    let start = Instant::now();
    assert!(redis.get(&key).await.is_err());
    assert!(start.elapsed() < Duration::from_millis(50));
    assert!(!redis.is_up());
    server.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redis.get(&key).await {
            Ok(v) => {
                assert_eq!(
                    v.as_deref(),
                    Some(&b"kept"[..]),
                    "data survives the restart"
                );
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "Redis never came back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(redis.is_up());
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server = RedisServer::start_tls().await;
    assert!(server.url().starts_with("rediss://"));
    let ca = std::fs::read(server.ca().unwrap()).unwrap();
    let redis =
        Redis::connect(&server.url(), "kgtest:", Duration::from_secs(2), Some(&ca)).unwrap();
    let key = redis.key("tls");
    redis
        .set(&key, b"over TLS", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        redis.get(&key).await.unwrap().as_deref(),
        Some(&b"over TLS"[..])
    );
    // Without the CA the server's certificate is not trusted: no connection.
    let untrusting =
        Redis::connect(&server.url(), "kgtest:", Duration::from_secs(2), None).unwrap();
    assert!(matches!(
        untrusting.get(&key).await,
        Err(SharedError::Unavailable(_))
    ));
    // A CA with a plain redis:// URL is a configuration error.
    assert!(matches!(
        Redis::connect(
            "redis://127.0.0.1:1",
            "k:",
            Duration::from_secs(1),
            Some(&ca)
        ),
        Err(SharedError::InvalidUrl(_))
    ));
}

/// `n` calls at once; how many took at least `slow` (the rest were answered
/// at once), and how many failed.
async fn burst<F, Fut, T, E>(n: usize, slow: Duration, call: F) -> (usize, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let fut = call();
            tokio::spawn(async move {
                let start = Instant::now();
                let ok = fut.await.is_ok();
                (start.elapsed(), ok)
            })
        })
        .collect();
    let (mut slow_calls, mut failed) = (0, 0);
    for t in tasks {
        let (took, ok) = t.await.unwrap();
        slow_calls += usize::from(took >= slow);
        failed += usize::from(!ok);
    }
    (slow_calls, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_is_probed_by_one_call_at_a_time_and_used_again_within_a_second() {
    let mut server = RedisServer::start().await;
    let timeout = Duration::from_millis(500);
    let redis = Redis::connect(&server.url(), "kgtest:", timeout, None).unwrap();
    let key = redis.key("hung");
    redis
        .set(&key, b"v", Duration::from_secs(60))
        .await
        .unwrap();

    server.freeze();
    // The first call waits out redis-timeout, and opens the breaker.
    let start = Instant::now();
    assert!(redis.get(&key).await.is_err());
    assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
    assert!(!redis.is_up());

    // Four rounds of 50 concurrent calls, each round after the open window
    // (500 ms) closed: one call per round probes and waits out the timeout,
    // the 49 others fail at once.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = redis.breaker_stats();
        let r = redis.clone();
        let k = key.clone();
        let (slow, failed) = burst(50, timeout / 2, move || {
            let (r, k) = (r.clone(), k.clone());
            async move { r.get(&k).await }
        })
        .await;
        let after = redis.breaker_stats();
        eprintln!("round {round}: {slow} of 50 waited, {failed} failed");
        assert_eq!(failed, 50, "round {round}: nothing answers a hung Redis");
        assert_eq!(after.probes - before.probes, 1, "round {round}: one probe");
        assert_eq!(after.fail_fast - before.fail_fast, 49, "round {round}");
        assert!(slow <= 1, "round {round}: {slow} calls waited for Redis");
    }

    // Redis answers again: keygate uses it within a second, on its own.
    server.thaw();
    let thawed = Instant::now();
    loop {
        if let Ok(v) = redis.get(&key).await {
            assert_eq!(v.as_deref(), Some(&b"v"[..]));
            break;
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(5),
            "Redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = thawed.elapsed();
    eprintln!(
        "Redis used again {:.0} ms after it answered",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(redis.is_up());
}
