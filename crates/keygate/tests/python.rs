//! The Python client (`clients/python`, package `keygate`) against a real
//! keygate and dev/idp: this test starts them, creates a service key, and
//! runs the package's pytest suite with the source tree on `PYTHONPATH`.
//! pytest, requests and httpx come from `clients/python/requirements-test.txt`
//! (dev/test.sh installs them); when they are missing the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use serde_json::json;

const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_passes_its_tests_against_keygate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let probe = std::process::Command::new("python3")
        .args(["-c", "import pytest, requests, httpx"])
        .status()
        .expect("python3 is required");
    assert!(
        probe.success(),
        "pytest, requests or httpx is missing: run ./dev/test.sh (it installs clients/python/requirements-test.txt)"
    );
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(&format!(
        "store-url: sqlite://{}/keys.db\nlisten-admin: 127.0.0.1:0\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n  admin-role: admin\n",
        dir.path().display()
    ))
    .await;
    let alice = stack.idp.token("alice").await;
    let created: serde_json::Value = stack
        .http
        .post(format!(
            "http://{}/admin/v1/keys",
            stack.keygate.admin_addr.unwrap()
        ))
        .bearer_auth(&alice)
        .json(&json!({"client_id": "svc-reporting", "client_secret": "svc-reporting-secret", "description": "pytest"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().expect("a service key").to_owned();
    let out = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .current_dir(&root)
        .env("PYTHONPATH", root.join("clients/python/src"))
        .env("KG_TEST_URL", stack.keygate.url(""))
        .env("KG_TEST_KEY", &key)
        .env("KG_TEST_ISSUER", &stack.idp.issuer)
        .env_remove("KEYGATE_URL")
        .env_remove("KEYGATE_API_KEY")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed"), "{stdout}");
    assert!(
        !stdout.contains(&key) && !stderr.contains(&key),
        "the key was printed"
    );
}
