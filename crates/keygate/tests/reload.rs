//! Reloading without a restart, on the real binary: SIGHUP swaps in a new
//! configuration, a bad file keeps the running one and logs every error,
//! keys that need a restart keep their running value, no request fails
//! while reloads happen under load, and `watch-config` reloads when the file
//! changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

async fn serve(config: &std::path::Path) -> KeygateProcess {
    KeygateProcess::start(env!("CARGO_BIN_EXE_keygate"), config).await
}

/// The status of a GET of `path` through `served` with the bearer `token`.
async fn status_of(served: &KeygateProcess, path: &str, token: &str) -> u16 {
    client()
        .get(served.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn config(idp: &Idp, upstream: &Upstream, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {}\nclient-id: keygate\nupstream-url: {}\nlog-format: json\n{extra}",
        idp.issuer,
        upstream.url()
    )
}

/// Waits until `check` holds (a reload is applied in the background).
async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_config_and_a_bad_file_keeps_the_running_one() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let admins_only = "resources:\n  - uri: /api/*\n    roles: [admin]\n";
    std::fs::write(file.path(), config(&idp, &upstream, admins_only)).unwrap();
    let served = serve(file.path()).await;
    let (alice, bob) = (idp.token("alice").await, idp.token("bob").await);
    let status = async |token: &str| status_of(&served, "/api/items", token).await;
    assert_eq!((status(&alice).await, status(&bob).await), (200, 403));

    // A new rule, and a new listen address (which needs a restart).
    let users = "resources:\n  - uri: /api/*\n    roles: [\"APP-backend:viewer\"]\n";
    std::fs::write(
        file.path(),
        config(&idp, &upstream, users).replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1"),
    )
    .unwrap();
    served.signal("HUP");
    eventually("bob is let in", async || status(&bob).await == 200).await;
    assert_eq!(status(&alice).await, 403, "alice lacks APP-backend:viewer");
    served
        .wait_for_log(|v| v["message"] == "configuration reloaded")
        .await;
    assert_eq!(served.logged("`listen` changes only with a restart"), 1);

    // A bad file: every error is logged, the running config stays.
    std::fs::write(
        file.path(),
        config(
            &idp,
            &upstream,
            "upstrem-url: http://x\nmax-connections: lots\n",
        ),
    )
    .unwrap();
    served.signal("HUP");
    served
        .wait_for_log(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("max-connections"))
        })
        .await;
    assert!(served.logged("reload refused") >= 2);
    assert!(served.logged("unknown key `upstrem-url`") == 1);
    assert_eq!((status(&alice).await, status(&bob).await), (403, 200));
    let metrics = served.metrics().await;
    assert!(
        metrics.contains("keygate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_fail_no_request() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let version = |v: u32| {
        config(
            &idp,
            &upstream,
            &format!("headers:\n  X-Config-Version: \"{v}\"\n"),
        )
    };
    std::fs::write(file.path(), version(0)).unwrap();
    let served = serve(file.path()).await;
    let token = idp.token("alice").await;
    let url = served.url("/api");
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, token, stop) = (url.clone(), token.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let http = client();
            let mut seen = std::collections::BTreeMap::<String, u32>::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == 200 => {
                        let echo = Echo(r.json().await.unwrap());
                        *seen
                            .entry(echo.header("x-config-version").unwrap_or_default())
                            .or_default() += 1;
                    }
                    Ok(r) => failures.push(format!("HTTP {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (seen, failures)
        }));
    }
    for v in 1..=10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::fs::write(file.path(), version(v)).unwrap();
        served.signal("HUP");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut total = 0;
    for w in workers {
        let (seen, failures) = w.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
        total += seen.values().sum::<u32>();
        versions.extend(seen.into_keys());
    }
    assert!(total > 100, "only {total} requests");
    // The reloads took effect while the requests ran.
    assert!(versions.len() >= 5, "configs seen: {versions:?}");
    assert!(versions.contains("10"), "{versions:?}");
    assert_eq!(served.logged("reload refused"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_config_reloads_when_the_file_changes() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let version = |v: &str| {
        config(
            &idp,
            &upstream,
            &format!("watch-config: true\nheaders:\n  X-Config-Version: \"{v}\"\n"),
        )
    };
    std::fs::write(file.path(), version("before")).unwrap();
    let served = serve(file.path()).await;
    let token = idp.token("alice").await;
    let http = client();
    let seen = async || {
        let r = http
            .get(served.url("/api"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        Echo(r.json().await.unwrap()).header("x-config-version")
    };
    assert_eq!(seen().await.as_deref(), Some("before"));
    std::fs::write(file.path(), version("after-the-change")).unwrap();
    for _ in 0..100 {
        if seen().await.as_deref() == Some("after-the-change") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the changed file was never loaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_provider_is_swapped_in_once_its_keys_load_and_never_before() {
    let (first, second) = (Idp::start().await, Idp::start().await);
    let upstream = Upstream::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config(&first, &upstream, "")).unwrap();
    let served = serve(file.path()).await;
    let status = async |token: &str| status_of(&served, "/api", token).await;
    let (old, new) = (first.token("alice").await, second.token("alice").await);
    assert_eq!((status(&old).await, status(&new).await), (200, 401));

    // A provider that never answers: the reload is refused after the wait,
    // and the running provider keeps serving.
    std::fs::write(
        file.path(),
        config(&first, &upstream, "openid-provider-timeout: 1s\n")
            .replace(&first.issuer, "http://127.0.0.1:1/realms/acme"),
    )
    .unwrap();
    served.signal("HUP");
    served
        .wait_for_log(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("keys did not load"))
        })
        .await;
    assert_eq!(status(&old).await, 200);

    // The second provider: its tokens are accepted once its keys are in.
    std::fs::write(file.path(), config(&second, &upstream, "")).unwrap();
    served.signal("HUP");
    eventually("the new provider's tokens are accepted", async || {
        status(&new).await == 200
    })
    .await;
    assert_eq!(status(&old).await, 401, "the old provider's token is not");
}
