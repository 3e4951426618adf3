//! Request hygiene: nothing a client sends can remove, smuggle past, or
//! override what keygate decided. Each test is named after the attack it
//! replays against a running keygate with a real provider and upstream.

use keygate_testkit::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes on a fresh connection and returns everything the server
/// sends back until it closes (at most 20 s).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body_of(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

async fn metrics(stack: &Stack) -> String {
    stack.keygate.metrics().await
}

// ------------------------------------------------------------ hop-by-hop

/// Apache CVE-2022-31813, Traefik CVE-2024-45410: a client lists keygate's
/// headers in `Connection` hoping the proxy drops them after setting them.
#[tokio::test(flavor = "multi_thread")]
async fn connection_header_cannot_delete_the_headers_keygate_sets() {
    let stack = Stack::start("headers:\n  X-Team: blue\n").await;
    let bob = stack.idp.token("bob").await;
    let response = raw(
        stack.keygate.addr,
        &format!(
            "GET /api HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {bob}\r\n\
             Connection: close, X-Auth-Subject, X-Auth-Username, X-Auth-Roles, X-Forwarded-For, \
             X-Forwarded-Proto, X-Forwarded-Host, X-Request-Id, X-Team, X-Hop\r\n\
             X-Hop: the-client-said-so\r\nX-Kept: yes\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    let echo = Echo(serde_json::from_str(body_of(&response)).unwrap());
    assert_eq!(
        echo.header("authorization").unwrap(),
        format!("Bearer {bob}")
    );
    assert_eq!(echo.header("x-auth-username").unwrap(), "bob");
    assert!(echo.header("x-auth-subject").is_some());
    assert!(echo.header("x-auth-roles").is_some());
    assert_eq!(echo.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "http");
    assert_eq!(echo.header("x-forwarded-host").unwrap(), "test");
    assert!(echo.header("x-request-id").is_some());
    assert_eq!(echo.header("x-team").unwrap(), "blue");
    // What the client named as its own hop-by-hop header is its own to drop.
    assert!(echo.header("x-hop").is_none());
    assert!(echo.header("connection").is_none());
    assert_eq!(echo.header("x-kept").unwrap(), "yes");
}

/// Forwarding headers from a client that is not a trusted proxy: keygate
/// writes its own, the client's (`Forwarded`, `X-Real-IP`, …) never arrive.
#[tokio::test(flavor = "multi_thread")]
async fn spoofed_forwarding_headers_never_reach_the_upstream() {
    let stack = Stack::start("").await;
    let bob = stack.idp.token("bob").await;
    let (code, body) = raw_get(
        stack.keygate.addr,
        "/api",
        &[
            ("Authorization", &format!("Bearer {bob}")),
            ("Forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Host", "admin.internal"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Prefix", "/admin"),
            ("X-Forwarded-Port", "443"),
            ("X-Real-IP", "10.0.0.1"),
            ("True-Client-IP", "10.0.0.1"),
            ("X-Original-URI", "/admin"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let echo = Echo(serde_json::from_str(&body).unwrap());
    for name in [
        "forwarded",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x-real-ip",
        "true-client-ip",
        "x-original-uri",
    ] {
        assert!(echo.header(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(echo.header("x-forwarded-for").unwrap(), "127.0.0.1");
    assert_eq!(echo.header("x-forwarded-host").unwrap(), "test");
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "http");
}

// ------------------------------------------------------------ h2c smuggling

/// Hypercorn serving `dev/h2c-upstream/app.py`: an upstream that accepts
/// `Upgrade: h2c`, with a secret under `/admin`.
struct Hypercorn {
    child: Child,
    port: u16,
}

impl Hypercorn {
    async fn start() -> Hypercorn {
        let dir = repo_root().join("dev/h2c-upstream");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "hypercorn",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "app:app",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start python3 (needed for Hypercorn)");
        let mut server = Hypercorn { child, port };
        for _ in 0..200 {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "Hypercorn exited ({status}): install it with `pip install -r dev/h2c-upstream/requirements.txt` (dev/test.sh does)"
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.child.kill().ok();
        panic!("Hypercorn did not listen on 127.0.0.1:{port} within 20 s");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dev/h2c-upstream/smuggle.py` against `port`.
async fn smuggle(port: u16, allowed: &str, protected: &str) -> Value {
    let script = repo_root().join("dev/h2c-upstream/smuggle.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string(), allowed, protected])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "smuggle.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// h2c smuggling (BishopFox, 2020): upgrade a request for a white-listed
/// path to h2c, then ask for `/admin` over the HTTP/2 connection the proxy
/// no longer inspects. Against Hypercorn directly the attack works (the
/// control); through keygate the upgrade never reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn h2c_upgrade_smuggling_cannot_read_admin_through_a_white_listed_path() {
    let upstream = Hypercorn::start().await;
    let direct = smuggle(upstream.port, "/public/x", "/admin/secret").await;
    assert_eq!(
        direct["upgraded"], true,
        "control: Hypercorn accepts h2c: {direct}"
    );
    assert_eq!(direct["smuggled_body"], "ADMIN-SECRET-c0ffee");

    let idp = Idp::start().await;
    let keygate = Keygate::start_yaml(&base_config(
        &idp.issuer,
        &upstream.url(),
        "resources:\n  - uri: /public/*\n    white-listed: true\n  - uri: /admin/*\n    roles: [admin]\n",
    ))
    .await;
    keygate.wait_ready().await;
    let port = keygate.addr.port();
    let through = smuggle(port, "/public/x", "/admin/secret").await;
    assert_eq!(through["upgraded"], false, "{through}");
    assert_eq!(through["status"], 200, "{through}");
    assert!(!through.to_string().contains("ADMIN-SECRET"), "{through}");
    // The upstream saw a plain HTTP/1.1 request: no Upgrade, no HTTP2-Settings.
    let seen: Value = serde_json::from_str(through["body"].as_str().unwrap()).unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            !headers.contains_key(name),
            "{name} reached Hypercorn: {seen}"
        );
    }
    // And /admin itself is closed to the anonymous client.
    let (code, _) = raw_get(keygate.addr, "/admin/secret", &[]).await;
    assert_eq!(code, 401);
}

/// Other upgrade tokens are stripped too, and a websocket upgrade is
/// passed only for the methods and credentials that may make it.
#[tokio::test(flavor = "multi_thread")]
async fn only_websocket_upgrades_reach_the_upstream() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    for upgrade in ["h2c", "TLS/1.2", "websocket, h2c", "HTTP/2.0"] {
        let response = raw(
            stack.keygate.addr,
            &format!(
                "GET /public/x HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
                 Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status_of(&response), 200, "{upgrade}: {response}");
        let echo = Echo(serde_json::from_str(body_of(&response)).unwrap());
        assert!(echo.header("upgrade").is_none(), "{upgrade}");
        assert!(echo.header("http2-settings").is_none(), "{upgrade}");
    }
    // A websocket upgrade on POST is not a websocket handshake: stripped.
    let response = raw(
        stack.keygate.addr,
        "POST /public/x HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        Echo(serde_json::from_str(body_of(&response)).unwrap())
            .header("upgrade")
            .is_none()
    );
}

// ------------------------------------------------------------ connections

/// Slowloris and idle connections: one that sends nothing, one that sends
/// its headers a byte at a time, and an idle keep-alive connection are all
/// closed within their timeouts.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed_within_their_timeouts() {
    let stack = Stack::start("server-read-header-timeout: 1s\nserver-idle-timeout: 2s\n").await;
    let addr = stack.keygate.addr;
    // Nothing at all.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("a silent connection was not closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Headers trickled in one byte every 200 ms.
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = b"GET /api HTTP/1.1\r\nHost: test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    if !closed {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.contains(" 200 ") && !text.contains(" 401 "),
            "a slowloris request was served: {text}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    // An idle keep-alive connection after one request (HTTP/1.1 counts the
    // wait for the next request as header time, so the shorter bound wins).
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /oauth/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let n = idle.read(&mut [0u8; 4096]).await.unwrap();
    assert!(n > 0);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("an idle keep-alive connection was not closed within 10 s")
        .unwrap();
    // An idle HTTP/2 connection after one request: closed by the idle timeout.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(stack.keygate.url("/oauth/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let mut idle_closed = 0.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = metrics(&stack).await;
        idle_closed = counter(&m, "keygate_connections_timed_out_total", &["idle"]);
        if idle_closed >= 1.0 {
            break;
        }
    }
    assert!(
        idle_closed >= 1.0,
        "an idle HTTP/2 connection was not closed within 10 s"
    );
    let m = metrics(&stack).await;
    assert!(
        counter(&m, "keygate_connections_timed_out_total", &["no_request"]) >= 1.0,
        "{m}"
    );
}

/// Connection exhaustion: past `max-connections` new connections are
/// closed at once and counted; the gauge shows the open ones.
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_and_counted() {
    let stack = Stack::start("max-connections: 20\n").await;
    let addr = stack.keygate.addr;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /oauth/health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut out)).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("200"),
        "served past the cap"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = metrics(&stack).await;
    assert!(
        counter(&m, "keygate_connections_refused_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(m.contains("keygate_connections_open"), "{m}");
}

/// Thousands of idle connections do not starve a valid request.
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_do_not_starve_a_valid_request() {
    let stack = Stack::start("server-read-header-timeout: 60s\n").await;
    let addr = stack.keygate.addr;
    let token = stack.idp.token("alice").await;
    let mut idle = Vec::new();
    for _ in 0..3000 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let resp = stack.get("/api", Some(&token)).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    // A generous bound: this machine is shared, but a starved listener
    // would take the whole header timeout.
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with 3000 idle connections"
    );
    let m = metrics(&stack).await;
    let open = m
        .lines()
        .find(|l| l.starts_with("keygate_connections_open") && l.contains("public"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert!(open >= 3000.0, "{open}");
    drop(idle);
}

// ------------------------------------------------------------ overrides

const OVERRIDE_RULES: &str = "resources:\n  - uri: /items/*\n    methods: [DELETE]\n    roles: [admin]\n  - uri: /admin/*\n    roles: [admin]\n";

/// Method override (`X-HTTP-Method-Override`, `X-HTTP-Method`,
/// `X-Method-Override`) and URL override (`X-Original-URL`,
/// `X-Rewrite-URL`): removed by default, so a framework behind keygate
/// cannot be told to run another method or path than the authorized one.
#[tokio::test(flavor = "multi_thread")]
async fn method_and_url_override_headers_are_removed_by_default() {
    let stack = Stack::start(OVERRIDE_RULES).await;
    let bob = stack.idp.token("bob").await;
    let resp = stack
        .http
        .post(stack.keygate.url("/items/1"))
        .bearer_auth(&bob)
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-HTTP-Method", "DELETE")
        .header("X-Method-Override", "DELETE")
        .header("X-Original-URL", "/admin/panel")
        .header("X-Rewrite-URL", "/admin/panel")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(echo.header(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(echo.0["method"], "POST");
}

/// With `pass-override-headers`, the named header reaches the upstream and
/// the request is authorized for the overriding method or URL as well.
#[tokio::test(flavor = "multi_thread")]
async fn allowed_override_headers_are_authorized_as_the_upstream_reads_them() {
    let stack = Stack::start(&format!(
        "{OVERRIDE_RULES}pass-override-headers: [X-HTTP-Method-Override, X-Original-URL]\n"
    ))
    .await;
    let bob = stack.idp.token("bob").await;
    let admin = stack.idp.token("alice").await;
    let send = |token: &str, name: &'static str, value: &'static str| {
        stack
            .http
            .post(stack.keygate.url("/items/1"))
            .bearer_auth(token)
            .header(name, value)
            .send()
    };
    assert_eq!(
        send(&bob, "X-HTTP-Method-Override", "DELETE")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        send(&bob, "X-Original-URL", "/admin/panel")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        send(&bob, "X-Original-URL", "/public/../admin/x")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        send(&bob, "X-HTTP-Method-Override", "PATCH")
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = send(&admin, "X-HTTP-Method-Override", "DELETE")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-http-method-override").unwrap(), "DELETE");
    // A header still not named is removed.
    let resp = send(&admin, "X-Rewrite-URL", "/admin/panel").await.unwrap();
    assert!(
        Echo(resp.json().await.unwrap())
            .header("x-rewrite-url")
            .is_none()
    );
}

// ------------------------------------------------------------ client errors

/// Request smuggling and malformed framing (RFC 9112): a broken chunked
/// body, duplicate `Host`, conflicting `Content-Length` are the client's
/// 4xx, never a 502, and never counted as upstream errors.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_the_clients_error_not_the_upstreams() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    let before = metrics(&stack).await;
    let upstream_errors = counter(&before, "keygate_upstream_errors_total", &[]);
    let cases = [
        // A chunk size that is not hex.
        "POST /public/x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        // The body ends before Content-Length says.
        "POST /public/x HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort",
        // Two Host headers.
        "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        // No Host in HTTP/1.1.
        "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        // Absolute form naming another host than Host.
        "GET http://other.example/public/x HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        // Two different Content-Lengths.
        "POST /public/x HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
        // An obsolete line folding (RFC 9112 §5.2).
        "GET /public/x HTTP/1.1\r\nHost: test\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n",
        // A space before the colon.
        "GET /public/x HTTP/1.1\r\nHost: test\r\nX-Bad : a\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let addr = stack.keygate.addr;
        let task = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(case.as_bytes()).await.unwrap();
            // Half-close, as a client that gave up on its body would.
            let _ = stream.shutdown().await;
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        let response = task.await.unwrap();
        let status = status_of(&response);
        assert!(
            status == 0 || (400..500).contains(&status),
            "{case:?} got {status}: {response}"
        );
    }
    let after = metrics(&stack).await;
    assert_eq!(
        counter(&after, "keygate_upstream_errors_total", &[]),
        upstream_errors,
        "a client's malformed request counted as an upstream error"
    );
    assert!(
        counter(&after, "keygate_requests_total", &["decision=\"invalid\""]) >= 1.0,
        "{after}"
    );
    assert_eq!(
        counter(
            &after,
            "keygate_requests_total",
            &["reason=\"bad_gateway\""]
        ),
        0.0
    );
}

/// CL.TE / TE.CL request smuggling (PortSwigger, 2019): a request whose
/// framing two servers could read differently hides a second request for
/// `/admin` in its body. keygate parses once and re-frames what it forwards,
/// so a hidden request is either refused or authorized on its own, and
/// never reaches the upstream unauthorized.
#[tokio::test(flavor = "multi_thread")]
async fn cl_te_request_smuggling_cannot_reach_the_upstream_unauthorized() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    let hidden = "GET /admin/secret HTTP/1.1\r\nHost: test\r\n\r\n";
    let cases = [
        format!(
            "POST /public/x HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
            5 + hidden.len()
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nTransfer-Encoding: xchunked\r\n\r\n{hidden}"
        ),
        format!(
            "POST /public/x HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{hidden}"
        ),
    ];
    for case in cases {
        let response = raw(stack.keygate.addr, &case).await;
        assert!(
            !response.contains("\"/admin/secret\""),
            "a smuggled request reached the upstream: {case:?} -> {response}"
        );
        // Whatever keygate made of the hidden request, it was not let through.
        for status in response
            .match_indices("HTTP/1.1 ")
            .filter_map(|(i, _)| response[i + 9..].get(..3))
        {
            assert!(
                ["200", "400", "401", "501"].contains(&status),
                "{case:?} -> {response}"
            );
        }
    }
}

/// WebSocket smuggling (Mikhail Egorov, 2019): the client asks for an
/// upgrade the upstream refuses; a proxy that opens the tunnel anyway lets
/// the next bytes through uninspected. keygate splices only after a 101 and
/// keeps parsing (and authorizing) what follows.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_the_upstream_refused_opens_no_tunnel() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    let response = raw(
        stack.keygate.addr,
        "GET /public/x HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 1337\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         GET /admin/secret HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("\"/admin/secret\""), "{response}");
    assert!(
        response.contains("HTTP/1.1 401"),
        "the second request was not authorized: {response}"
    );
}

// ------------------------------------------------------------ double decoding

/// Paths some upstreams decode twice (`%252e%252e` becomes `..`) and
/// non-UTF-8 escapes (the overlong `%C0%AE` some decoders read as `.`),
/// under a white-listed prefix too: refused by default (as Spring Security's
/// StrictHttpFirewall does).
#[tokio::test(flavor = "multi_thread")]
async fn double_encoded_and_non_utf8_paths_are_refused_by_default() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    for path in [
        "/public/%252e%252e/admin",
        "/public/%252E%252E%252Fadmin",
        "/public/%25",
        "/public/%C0%AE%C0%AE/admin",
        "/public/%FF",
        "/public/%E9",
    ] {
        let (code, body) = raw_get(stack.keygate.addr, path, &[]).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("invalid_request"), "{body}");
    }
    // UTF-8 escapes are fine.
    let (code, body) = raw_get(stack.keygate.addr, "/public/caf%C3%A9", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        Echo(serde_json::from_str(&body).unwrap()).path(),
        "/public/caf%C3%A9"
    );
}

/// Loosened explicitly, the escapes are forwarded as written, never decoded.
#[tokio::test(flavor = "multi_thread")]
async fn encoded_percent_passes_only_when_allowed_and_undecoded() {
    let stack = Stack::start(
        "allow-encoded-percent: true\nallow-non-utf8-paths: true\nresources:\n  - uri: /public/*\n    white-listed: true\n",
    )
    .await;
    let (code, body) = raw_get(stack.keygate.addr, "/public/%252e%252e/admin", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        Echo(serde_json::from_str(&body).unwrap()).path(),
        "/public/%252e%252e/admin"
    );
    let (code, body) = raw_get(stack.keygate.addr, "/public/%c0%ae", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        Echo(serde_json::from_str(&body).unwrap()).path(),
        "/public/%C0%AE"
    );
}

// ------------------------------------------------------------ found in review

/// Cross-site tracing: `TRACE` would have the upstream echo back the
/// `Authorization` keygate adds, so a restricted API key could read the
/// provider token it stands for. `TRACE`, `TRACK` and `CONNECT` get 405.
#[tokio::test(flavor = "multi_thread")]
async fn trace_and_connect_cannot_reflect_or_tunnel_past_keygate() {
    let stack = Stack::start("resources:\n  - uri: /public/*\n    white-listed: true\n").await;
    let bob = stack.idp.token("bob").await;
    for method in ["TRACE", "TRACK", "trace"] {
        let response = raw(
            stack.keygate.addr,
            &format!(
                "{method} /api HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {bob}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status_of(&response), 405, "{method}: {response}");
        assert!(
            !response.contains(&bob[bob.len() - 20..]),
            "{method} echoed the token"
        );
    }
    let response = raw(
        stack.keygate.addr,
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        [400, 405].contains(&status_of(&response)),
        "CONNECT: {response}"
    );
}

/// Header names with `_`: WSGI, CGI, PHP and Rack read `X_Forwarded_For`
/// as `X-Forwarded-For`, so a client could pose as a header keygate writes.
/// Removed by default, as nginx does; with `underscores-in-headers` only
/// the ones posing as keygate's headers are.
#[tokio::test(flavor = "multi_thread")]
async fn underscore_headers_cannot_pose_as_the_headers_keygate_sets() {
    for (extra, custom_passes) in [("", false), ("underscores-in-headers: true\n", true)] {
        let stack = Stack::start(&format!("headers:\n  X-Team: blue\n{extra}")).await;
        let bob = stack.idp.token("bob").await;
        let (code, body) = raw_get(
            stack.keygate.addr,
            "/api",
            &[
                ("Authorization", &format!("Bearer {bob}")),
                ("X_Forwarded_For", "10.0.0.1"),
                ("X_Real_IP", "10.0.0.1"),
                ("X_HTTP_Method_Override", "DELETE"),
                ("X_Request_Id", "forged"),
                ("X_Team", "red"),
                ("X_Custom", "1"),
            ],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let echo = Echo(serde_json::from_str(&body).unwrap());
        for name in [
            "x_forwarded_for",
            "x_real_ip",
            "x_http_method_override",
            "x_request_id",
            "x_team",
        ] {
            assert!(
                echo.header(name).is_none(),
                "{extra}: {name} reached the upstream"
            );
        }
        assert_eq!(echo.header("x-team").unwrap(), "blue");
        assert_eq!(echo.header("x_custom").is_some(), custom_passes, "{extra}");
    }
}

/// Forward-auth: a client adds its own `X-Forwarded-Uri` next to the
/// proxy's, or makes the proxy's unreadable (non-ASCII), hoping keygate
/// reads the other header pair, which the client chose. Refused with 400.
#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_headers_sent_twice_or_unreadable_cannot_choose_the_authorized_uri() {
    let stack = Stack::start(
        "trusted-proxies: [127.0.0.1]\nresources:\n  - uri: /public/*\n    white-listed: true\n",
    )
    .await;
    let ask = |extra: &str| {
        let addr = stack.keygate.addr;
        let request = format!(
            "GET /oauth/auth HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Forwarded-Method: GET\r\n{extra}\r\n"
        );
        async move { status_of(&raw(addr, &request).await) }
    };
    // The controls: the proxy's URI alone decides.
    assert_eq!(ask("X-Forwarded-Uri: /public/x\r\n").await, 200);
    assert_eq!(ask("X-Forwarded-Uri: /admin/x\r\n").await, 401);
    // Sent twice, in either order.
    assert_eq!(
        ask("X-Forwarded-Uri: /public/x\r\nX-Forwarded-Uri: /admin/x\r\n").await,
        400
    );
    assert_eq!(
        ask("X-Forwarded-Uri: /admin/x\r\nX-Forwarded-Uri: /public/x\r\n").await,
        400
    );
    // The proxy's unreadable, the client's X-Original-URI white-listed.
    assert_eq!(
        ask("X-Forwarded-Uri: /admin/é\r\nX-Original-Method: GET\r\nX-Original-URI: /public/x\r\n")
            .await,
        400
    );
}
