//! The `keygate` binary: `check-config`, `version`, and `serve` with JSON
//! logs and graceful shutdown on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keygate_testkit::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn keygate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    // Tests must not inherit a developer's KEYGATE_* settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

const MINIMAL: &str = "discovery-url: http://127.0.0.1:1/realms/acme\nclient-id: keygate\nclient-secret: very-secret-value\nupstream-url: http://127.0.0.1:2\n";

#[test]
fn check_config_prints_effective_config_with_secrets_redacted() {
    let f = write_config(MINIMAL);
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("client-secret: '[redacted]'")
            || stdout.contains("client-secret: \"[redacted]\""),
        "{stdout}"
    );
    assert!(!stdout.contains("very-secret-value"));
    assert!(
        stdout.contains("access-token-audience:\n- keygate"),
        "{stdout}"
    );
    assert!(stdout.contains("enable-default-deny: true"));
}

#[test]
fn flags_beat_env_beat_file() {
    let f = write_config(&format!("{MINIMAL}listen: 127.0.0.1:1111\n"));
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = keygate();
        cmd.args(["check-config", "--config"]).arg(f.path());
        if let Some(e) = env {
            cmd.env("KEYGATE_LISTEN", e);
        }
        if let Some(fl) = flag {
            cmd.args(["--listen", fl]);
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    assert!(run(None, None).contains("listen: 127.0.0.1:1111"));
    assert!(run(Some("127.0.0.1:2222"), None).contains("listen: 127.0.0.1:2222"));
    assert!(run(Some("127.0.0.1:2222"), Some("127.0.0.1:3333")).contains("listen: 127.0.0.1:3333"));
}

#[test]
fn config_errors_name_the_key_and_the_file_and_exit_1() {
    let f = write_config(&format!("{MINIMAL}enable-default-denny: false\n"));
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown key `enable-default-denny`"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    assert!(err.contains("did you mean `enable-default-deny`"), "{err}");

    let f = write_config(&format!("{MINIMAL}clock-skew: 5m\n"));
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("clock-skew")
    );

    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("KEYGATE_MAX_TOKEN_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("KEYGATE_MAX_TOKEN_SIZE") && err.contains("expects a number"),
        "{err}"
    );
}

#[test]
fn seed_000_gatekeeper_config_loads_and_names_unsupported_options() {
    let f = write_config(
        "discovery-url: https://login.example.com/auth/realms/REALM_NAME\n\
         skip-openid-provider-tls-verify: true\n\
         client-id:  gatekeeper\n\
         client-secret: <CLIENT_SECRET>\n\
         listen: :3000\n\
         enable-refresh-tokens: true\n\
         secure-cookie: false\n\
         enable-logging: true\n\
         enable-default-deny: true\n\
         enable-session-cookies: true\n\
         no-redirects: true\n\
         ingress.enabled: true\n\
         debug: false\n\
         encryption-key: random-char-sequence-0123456789a\n\
         upstream-url: http://127.0.0.1:8080/\n",
    );
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    for opt in [
        "enable-logging",
        "enable-session-cookies",
        "ingress.enabled",
        "debug",
    ] {
        assert!(
            err.contains(&format!("`{opt}` is not supported")),
            "{opt}: {err}"
        );
    }
    assert!(err.contains("skip-openid-provider-tls-verify is ON"));
    assert!(
        !String::from_utf8(out.stdout)
            .unwrap()
            .contains("random-char-sequence")
    );
}

#[test]
fn version_and_help() {
    let out = keygate().arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("keygate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = keygate().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for key in [
        "--discovery-url",
        "--access-token-audience",
        "--trusted-proxies",
        "KEYGATE_UPSTREAM_URL",
    ] {
        assert!(help.contains(key), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_json_and_finishes_in_flight_requests_on_sigterm() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let cfg = write_config(&format!(
        "listen: 127.0.0.1:0\ndiscovery-url: {}\nclient-id: keygate\nupstream-url: {}\nlog-format: json\n",
        idp.issuer,
        upstream.url()
    ));
    let mut child = keygate()
        .args(["serve", "--config"])
        .arg(cfg.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        lines.push(line);
        if v["message"] == "keygate is serving" {
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    let url = format!("http://{addr}");
    let http = client();
    for _ in 0..100 {
        if http
            .get(format!("{url}/oauth/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = idp.token("alice").await;
    assert_eq!(
        http.get(format!("{url}/api"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A slow request in flight when SIGTERM arrives still completes.
    let slow = tokio::spawn({
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            http.get(format!("{url}/slow"))
                .bearer_auth(&token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    let all = lines.join("\n");
    assert!(!all.contains(&token), "a token reached the log");
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "keygate::access")
        .collect();
    assert!(
        access
            .iter()
            .any(|v| v["path"] == "/api" && v["decision"] == "allow" && v["status"] == 200),
        "{all}"
    );
    assert!(
        access
            .iter()
            .any(|v| v["path"] == "/slow" && v["status"] == 200),
        "{all}"
    );
    assert!(lines.iter().any(|l| l.contains("keygate stopped")));
}

/// `log-level: warn` writes warnings and no access lines: the requests,
/// allowed or refused, leave no line on stdout. (The access log decides with
/// `tracing::enabled!`, which a second filter on the log layer once made true
/// at every level; bench/soak.sh's replicas wrote a line per request.)
#[tokio::test(flavor = "multi_thread")]
async fn serve_at_log_level_warn_writes_no_access_lines() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let port = free_port();
    // `enable-logging` (a gatekeeper option keygate ignores) makes one warning.
    let cfg = write_config(&format!(
        "listen: 127.0.0.1:{port}\ndiscovery-url: {}\nclient-id: keygate\nupstream-url: {}\n\
         log-format: json\nlog-level: warn\nenable-logging: true\n",
        idp.issuer,
        upstream.url()
    ));
    let mut child = keygate()
        .args(["serve", "--config"])
        .arg(cfg.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut out).ok();
        out
    });
    let url = format!("http://127.0.0.1:{port}");
    let http = client();
    let mut ready = false;
    for _ in 0..200 {
        if http
            .get(format!("{url}/oauth/ready"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "keygate did not become ready");
    let token = idp.token("alice").await;
    for _ in 0..3 {
        let allowed = http.get(format!("{url}/api")).bearer_auth(&token).send();
        assert_eq!(allowed.await.unwrap().status(), 200);
        let refused = http.get(format!("{url}/api")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let out = reader.join().unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("enable-logging") && l.contains("WARN")),
        "the warning is logged: {out}"
    );
    assert!(
        !out.contains("keygate::access"),
        "access lines at log-level warn: {out}"
    );
    assert!(!out.contains("INFO"), "info lines at log-level warn: {out}");
}

#[test]
fn personal_keys_refuse_service_key_options() {
    let f = write_config(MINIMAL);
    let out = keygate()
        .args(["keys", "create", "--config"])
        .arg(f.path())
        .args(["--kind", "personal", "--gateway", "http://127.0.0.1:1"])
        .args(["--rate-limit", "1/s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rate-limit does not apply to personal keys"),
        "{err}"
    );
}

/// `${VAR}` in the file, as docs/config.md writes it: expanded from the
/// environment (the value never printed), a default when unset, and a
/// missing variable named with its key, every one at once.
#[test]
fn check_config_expands_variables_and_names_each_missing_one() {
    let f = write_config(
        "discovery-url: ${KG_TEST_ISSUER}\nclient-id: keygate\nclient-secret: ${KG_TEST_SECRET}\n\
         upstream-url: http://127.0.0.1:2\nlisten: ${KG_TEST_LISTEN:-127.0.0.1:4444}\n",
    );
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("KG_TEST_ISSUER", "http://127.0.0.1:1/realms/acme")
        .env("KG_TEST_SECRET", "secret-from-the-environment")
        .env_remove("KG_TEST_LISTEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("discovery-url: http://127.0.0.1:1/realms/acme"),
        "{stdout}"
    );
    assert!(stdout.contains("listen: 127.0.0.1:4444"), "{stdout}");
    assert!(!stdout.contains("secret-from-the-environment"), "{stdout}");

    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .env_remove("KG_TEST_ISSUER")
        .env_remove("KG_TEST_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`discovery-url`") && stderr.contains("`KG_TEST_ISSUER` is not set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`client-secret`") && stderr.contains("`KG_TEST_SECRET` is not set"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_every_error_at_once() {
    // An unknown key, two values of the wrong type and three that fail
    // validation: all six are named, each on its own `error:` line.
    let f = write_config(
        "discovery-url: http://127.0.0.1:1/realms/acme\nclient-id: keygate\n\
         upstrem-url: http://127.0.0.1:2\nupstream-url: ftp://127.0.0.1:2\n\
         max-connections: lots\nsecure-cookie: maybe\n\
         clock-skew: 5m\nsigning-algorithms: [HS256]\n",
    );
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "unknown key `upstrem-url` (did you mean `upstream-url`?)",
        "`max-connections` (from config file",
        "`secure-cookie` (from config file",
        "`upstream-url`: `ftp://127.0.0.1:2` must start with http://",
        "`clock-skew`: 5m is more than the 60s",
        "`signing-algorithms`: `HS256` is not allowed",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        6,
        "{stderr}"
    );
    // A value refused for a missing variable is not also called missing.
    let f = write_config(
        "discovery-url: ${KG_TEST_NOT_SET}\nclient-id: keygate\nupstream-url: http://127.0.0.1:2\n",
    );
    let out = keygate()
        .args(["check-config", "--config"])
        .arg(f.path())
        .env_remove("KG_TEST_NOT_SET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
}
