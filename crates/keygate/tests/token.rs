//! `keygate token` end to end: the real binary, with tokens from dev/idp
//! (client credentials) and from an in-process gateway (API key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Runs `keygate token ARGS` with only `vars` from the KEYGATE_*/OIDC_*
/// families and the cache in `cache`.
async fn token(cache: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("token").args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("KEYGATE_") || name.starts_with("OIDC_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("KEYGATE_TOKEN_CACHE", cache);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn oidc_vars<'a>(issuer: &'a str, secret: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("OIDC_ISSUER", issuer),
        ("OIDC_CLIENT_ID", "svc-reporting"),
        ("OIDC_CLIENT_SECRET", secret),
    ]
}

async fn cc_count(idp: &Idp) -> u64 {
    let stats: Value = reqwest::get(format!("{}/admin/stats", idp.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["by_grant"]["client_credentials"]
        .as_u64()
        .unwrap_or(0)
}

/// One line, a JWT, for svc-reporting.
fn assert_token_for_svc_reporting(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", stderr(out));
    let text = stdout(out);
    assert_eq!(text.lines().count(), 1, "only the token: {text:?}");
    let token = text.trim_end_matches('\n').to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(claims_of(&token)["azp"], "svc-reporting");
    token
}

#[tokio::test]
async fn oidc_source_prints_a_token_and_caches_it() {
    let idp = Idp::start().await;
    let cache = tempfile::tempdir().unwrap();
    let vars = oidc_vars(&idp.issuer, "svc-reporting-secret");

    let before = cc_count(&idp).await;
    let out = token(cache.path(), &vars, &[]).await;
    let first = assert_token_for_svc_reporting(&out);
    assert_eq!(cc_count(&idp).await, before + 1);
    assert!(
        !stderr(&out).contains("svc-reporting-secret"),
        "{}",
        stderr(&out)
    );

    // Second call: the cache, no provider call.
    let out = token(cache.path(), &vars, &[]).await;
    assert_eq!(assert_token_for_svc_reporting(&out), first);
    assert_eq!(cc_count(&idp).await, before + 1);

    // The cache file: 0600, named by a hash, never by the secret.
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !name.contains("secret") && !name.contains("svc-reporting"),
        "{name}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let cached: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(cached["access_token"], first.as_str());
    assert!(cached["expires_at"].as_u64().is_some());

    // --no-cache asks the provider again.
    let out = token(cache.path(), &vars, &["--no-cache"]).await;
    assert_token_for_svc_reporting(&out);
    assert_eq!(cc_count(&idp).await, before + 2);

    // --json
    let out = token(cache.path(), &vars, &["--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["access_token"], first.as_str());
    assert!(json["expires_in"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(cc_count(&idp).await, before + 2);
}

#[cfg(unix)]
#[tokio::test]
async fn a_cache_file_open_to_others_is_ignored_and_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let idp = Idp::start().await;
    let cache = tempfile::tempdir().unwrap();
    let vars = oidc_vars(&idp.issuer, "svc-reporting-secret");
    let out = token(cache.path(), &vars, &[]).await;
    assert_token_for_svc_reporting(&out);
    let file = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let before = cc_count(&idp).await;
    let out = token(cache.path(), &vars, &[]).await;
    assert_token_for_svc_reporting(&out);
    assert_eq!(cc_count(&idp).await, before + 1, "loose file not used");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "replaced: {mode:o}");
}

#[tokio::test]
async fn missing_variables_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("KEYGATE_URL", "http://127.0.0.1:1")],
            "error: KEYGATE_API_KEY is not set (KEYGATE_URL is); or set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET",
        ),
        (
            &[("KEYGATE_API_KEY", "kgs_x")],
            "error: KEYGATE_URL is not set (KEYGATE_API_KEY is); or set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET",
        ),
        (
            &[("OIDC_ISSUER", "http://127.0.0.1:1")],
            "error: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are not set (OIDC_ISSUER is); or set KEYGATE_URL and KEYGATE_API_KEY",
        ),
        (
            &[
                ("OIDC_ISSUER", "http://127.0.0.1:1"),
                ("OIDC_CLIENT_ID", "c"),
            ],
            "error: OIDC_CLIENT_SECRET is not set (OIDC_ISSUER and OIDC_CLIENT_ID are); or set KEYGATE_URL and KEYGATE_API_KEY",
        ),
        (
            &[("OIDC_CLIENT_ID", "c"), ("OIDC_CLIENT_SECRET", "s")],
            "error: OIDC_ISSUER is not set (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET are); or set KEYGATE_URL and KEYGATE_API_KEY",
        ),
        (
            &[
                ("KEYGATE_URL", "http://127.0.0.1:1"),
                ("OIDC_CLIENT_SECRET", "s"),
            ],
            "error: KEYGATE_API_KEY is not set (KEYGATE_URL is); OIDC_ISSUER and OIDC_CLIENT_ID are not set (OIDC_CLIENT_SECRET is)",
        ),
    ];
    for (vars, expected) in cases {
        let out = token(cache.path(), vars, &[]).await;
        assert_eq!(out.status.code(), Some(1), "{vars:?}");
        assert!(out.stdout.is_empty(), "{vars:?}");
        assert_eq!(stderr(&out).trim_end(), *expected, "{vars:?}");
    }

    // Nothing set: both options, one line each.
    let out = token(cache.path(), &[], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains("KEYGATE_URL and KEYGATE_API_KEY"),
        "{err}"
    );
    assert!(
        lines[1].contains("OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET"),
        "{err}"
    );
}

#[tokio::test]
async fn exec_runs_the_command_with_access_token() {
    let idp = Idp::start().await;
    let cache = tempfile::tempdir().unwrap();
    let vars = oidc_vars(&idp.issuer, "svc-reporting-secret");

    let out = token(
        cache.path(),
        &vars,
        &[
            "--exec",
            "--",
            "sh",
            "-c",
            "test -n \"$ACCESS_TOKEN\" && echo ok",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok\n");

    // The variable holds the token itself.
    let out = token(
        cache.path(),
        &vars,
        &["--exec", "--", "sh", "-c", "printf %s \"$ACCESS_TOKEN\""],
    )
    .await;
    assert_eq!(claims_of(&stdout(&out))["azp"], "svc-reporting");

    let out = token(cache.path(), &vars, &["--exec", "--", "sh", "-c", "exit 7"]).await;
    assert_eq!(out.status.code(), Some(7));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn a_bad_client_secret_shows_the_providers_error() {
    let idp = Idp::start().await;
    let cache = tempfile::tempdir().unwrap();
    let out = token(cache.path(), &oidc_vars(&idp.issuer, "wrong-secret"), &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.starts_with("error: the provider refused"), "{err}");
    assert!(err.contains("invalid_client"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_source_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "store-url: sqlite://{}/keys.db\n\
         api-keys:\n  server-secret: test-server-secret-0123456789abcdef-0123456789\n",
        dir.path().display()
    );
    let stack = Stack::start(&extra).await;
    let created = stack
        .keygate
        .gateway
        .api_keys
        .as_ref()
        .unwrap()
        .create_service(
            keygate_keys::NewServiceKey {
                client_id: "svc-reporting".into(),
                client_secret: keygate_core::Secret::new("svc-reporting-secret"),
                owner: String::new(),
                description: String::new(),
                expires_in: None,
                scopes: vec![],
                allowed_methods: vec![],
                allowed_prefixes: vec![],
                allowed_cidrs: vec![],
                verify: true,
                rate_limit: None,
                quota: None,
            },
            "test",
        )
        .await
        .unwrap();
    let url = stack.keygate.url("");
    let cache = tempfile::tempdir().unwrap();

    let out = token(
        cache.path(),
        &[
            ("KEYGATE_URL", &url),
            ("KEYGATE_API_KEY", created.key.expose()),
        ],
        &[],
    )
    .await;
    let jwt = assert_token_for_svc_reporting(&out);
    assert_eq!(claims_of(&jwt)["iss"], stack.idp.issuer.as_str());
    assert!(!stderr(&out).contains(created.key.expose()));

    let unknown = keygate_auth::apikey::generate(keygate_core::keys::KeyKind::Service).unwrap();
    let out = token(
        cache.path(),
        &[("KEYGATE_URL", &url), ("KEYGATE_API_KEY", unknown.expose())],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("unknown API key"), "{err}");
    assert!(!err.contains(unknown.expose()), "{err}");
}
