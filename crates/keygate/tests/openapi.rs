//! The admin API against its own OpenAPI document: schemathesis (PyPI,
//! pinned in dev/schemathesis/requirements.txt, installed by dev/test.sh)
//! generates requests from `/admin/v1/openapi.json`, valid and invalid, and
//! the run fails on a 5xx, on a status the document does not list, on a
//! request the document calls valid that is refused, and on one it calls
//! invalid that is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

const SERVER_SECRET: &str = "test-server-secret-0123456789abcdef-0123456789";

/// The checks of the run (schemathesis 4 names).
const CHECKS: &str =
    "not_a_server_error,status_code_conformance,positive_data_acceptance,negative_data_rejection";

/// schemathesis is installed: a missing one fails the test, never skips it.
fn require_schemathesis() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import schemathesis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "schemathesis is not installed: run ./dev/test.sh (it installs dev/schemathesis/requirements.txt)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_does_exactly_what_its_openapi_document_says() {
    require_schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "store-url: sqlite://{}/keys.db\n\
         listen-admin: 127.0.0.1:0\n\
         api-keys:\n  server-secret: {SERVER_SECRET}\n  admin-role: admin\n",
        dir.path().display()
    );
    // Admin tokens that outlive the run.
    let stack = Stack::start_with(&["--access-token-ttl", "900"], &config).await;
    let admin = stack.keygate.admin_addr.expect("admin API on");
    let alice = stack.idp.token("alice").await;
    // A key to find: the run's show, renew, limits and rotate calls reach a
    // record when they ask for this id.
    let created: serde_json::Value = stack
        .http
        .post(format!("http://{admin}/admin/v1/keys"))
        .bearer_auth(&alice)
        .json(&json!({"client_id": "svc-reporting", "client_secret": "svc-reporting-secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["id"].is_string(), "{created}");

    // What the first run found, one by one. A malformed client id is
    // refused by keygate itself (400), before the provider is asked; a
    // well-formed one the provider does not know is a 403 in keygate's
    // words, never the provider's description ("Authentication failed").
    let post = |body: serde_json::Value| {
        stack
            .http
            .post(format!("http://{admin}/admin/v1/keys"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };
    let grants = stack.idp.grant_count("client_credentials").await;
    let resp = post(json!({"client_id": "sv\u{e9}c", "client_secret": "x"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error_description"],
        "`client_id` must be one or more printable ASCII characters"
    );
    assert_eq!(stack.idp.grant_count("client_credentials").await, grants);
    let resp = post(json!({"client_id": "no-such-client", "client_secret": "x"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.text().await.unwrap();
    assert!(body.contains("(invalid_client)"), "{body}");
    assert!(!body.contains("Authentication failed"), "{body}");
    for (query, status) in [
        ("limit=0", 400),
        ("limit=1", 200),
        ("include_revoked=yes", 400),
    ] {
        let resp = stack
            .http
            .get(format!("http://{admin}/admin/v1/keys?{query}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{query}");
    }

    // A fixed seed and a bounded run by default; longer or other runs by
    // hand with KEYGATE_SCHEMATHESIS_EXAMPLES and KEYGATE_SCHEMATHESIS_SEED.
    let examples = std::env::var("KEYGATE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("KEYGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20240612".into());
    let report = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{admin}/admin/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {alice}")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(report.path())
        .current_dir(report.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("schemathesis ran longer than 150 s")
        .expect("cannot start python3 -m schemathesis.cli");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found the API and its document disagree ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // It really tested every operation of the document (a run that
    // reached nothing would pass vacuously), with a few hundred requests.
    let doc: serde_json::Value = stack
        .http
        .get(format!("http://{admin}/admin/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .count()
        })
        .sum();
    assert!(
        stdout.contains(&format!("Tested: {operations}\n")),
        "not all {operations} operations were tested:\n{stdout}"
    );
    let generated: u64 = stdout
        .lines()
        .find_map(|l| l.trim().split_once(" generated"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 200, "only {generated} test cases:\n{stdout}");
}
