//! A real browser end to end: `dev/browser/e2e.mjs` drives Debian's Chromium
//! (Playwright) against keygate with the seed-001 two-client set-up and API
//! keys on: login at dev/idp, an SPA's API call with the session cookie, the
//! self-service key page (a personal key approved at the provider's device
//! confirmation) and logout. Its screenshots go to a temporary directory, or to
//! `$KEYGATE_SCREENSHOTS` (`KEYGATE_SCREENSHOTS=docs/img` refreshes the README's).
//!
//! Needs /usr/bin/chromium and `dev/browser/node_modules`: `./dev/test.sh`
//! installs both. Without them the test fails, it never skips.

use keygate_testkit::*;
use std::process::Stdio;
use std::time::Duration;

const KEY: &str = "0123456789abcdefghijklmnopqrstuv";
const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn login_api_call_key_page_and_logout_in_chromium() {
    let shots = tempfile::tempdir().unwrap();

    // keygate as APP-frontend on a known port (the provider must know the
    // callback URL); hold the port while the provider and upstream pick theirs.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start_with(&["--redirect-uri", &format!("{base}/oauth/callback")]).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/keys.db", dir.path().display());
    drop(reserved);
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: APP-frontend\nclient-secret: frontend-secret\n\
         upstream-url: {}\nlog-level: warn\nencryption-key: {KEY}\nsecure-cookie: false\n\
         access-token-audience: [APP-backend]\nstore-url: {store_url}\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n",
        idp.issuer,
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;

    let child = chromium_script("e2e.mjs", shots.path())
        .arg("--keygate")
        .arg(&base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start node: is Node.js installed?");
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("dev/browser/e2e.mjs did not finish within 180 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("E2E OK"),
        "dev/browser/e2e.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    drop(keygate);
    drop(upstream);
    drop(idp);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_fetch_with_credentials_from_another_port_in_chromium() {
    let shots = tempfile::tempdir().unwrap();
    // keygate and the two other sites on known ports: the provider must know
    // the callback URL, and cors-origins names the allowed site.
    let reserved: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = reserved
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let (port, allowed, other) = (ports[0], ports[1], ports[2]);
    let base = format!("http://127.0.0.1:{port}");
    let idp = Idp::start_with(&["--redirect-uri", &format!("{base}/oauth/callback")]).await;
    let upstream = Upstream::start().await;
    drop(reserved);
    let yaml = format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: APP-frontend\nclient-secret: frontend-secret\n\
         upstream-url: {}\nlog-level: warn\nencryption-key: {KEY}\nsecure-cookie: false\n\
         access-token-audience: [APP-backend, keygate]\n\
         cors-origins: [http://127.0.0.1:{allowed}]\ncors-credentials: true\n\
         cors-exposed-headers: [X-Request-Id]\n",
        idp.issuer,
        upstream.url()
    );
    let keygate = Keygate::start_yaml(&yaml).await;
    keygate.wait_ready().await;
    let token = idp.token("alice").await;

    let child = chromium_script("cors.mjs", shots.path())
        .arg("--keygate")
        .arg(&base)
        .arg("--allowed-port")
        .arg(allowed.to_string())
        .arg("--other-port")
        .arg(other.to_string())
        .arg("--token")
        .arg(&token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start node: is Node.js installed?");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("dev/browser/cors.mjs did not finish within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("E2E OK"),
        "dev/browser/cors.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
