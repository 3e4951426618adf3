//! Forwarding: websockets, SSE streaming, HTTP/2 (h2c and h2 over TLS),
//! request bodies, upstream failures, and the operations endpoints.

use futures_util::{SinkExt, StreamExt};
use keygate_testkit::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_passes_through() {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let url = format!("ws://{}/ws", stack.keygate.addr);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through keygate"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "hello through keygate");
    // Without a credential the upgrade is refused.
    let err = tokio_tungstenite::connect_async(url).await.err().unwrap();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_sent_events_stream_without_buffering() {
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let resp = stack.get("/sse", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    // The upstream sends one event every 300 ms; a buffering proxy would hand
    // over all three at once.
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(rest).unwrap(), "data: 1\n\ndata: 2\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_inbound_http1_upstream() {
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(stack.keygate.url("/api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.0["version"], "HTTP/1.1");
    assert_eq!(echo.header("x-auth-username").unwrap(), "alice");
    assert!(
        echo.header("x-forwarded-host")
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make a test certificate");
    assert!(status.success());
    let stack = Stack::start(&format!(
        "tls-cert: {}\ntls-private-key: {}\n",
        cert.display(),
        key.display()
    ))
    .await;
    let token = stack.idp.token("alice").await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/api", stack.keygate.addr.port());
    let resp = https.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.header("x-forwarded-proto").unwrap(), "https");
    assert_eq!(https.get(&url).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_stream_to_the_upstream() {
    let stack = Stack::start("").await;
    let token = stack.idp.token("alice").await;
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 256 * 1024])),
    );
    let resp = stack
        .http
        .post(stack.keygate.url("/upload"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = Echo(resp.json().await.unwrap());
    assert_eq!(echo.0["method"], "POST");
    assert_eq!(echo.0["body_len"], 64 * 256 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_json() {
    let idp = Idp::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let keygate = Keygate::start_yaml(&base_config(&idp.issuer, &dead, "")).await;
    keygate.wait_ready().await;
    let token = idp.token("alice").await;
    let resp = client()
        .get(keygate.url("/api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert!(!body.to_string().contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_port_serves_metrics_and_details_the_public_listener_does_not() {
    let stack = Stack::start("listen-admin: 127.0.0.1:0\n").await;
    let admin = stack.keygate.admin_addr.unwrap();
    let token = stack.idp.token("alice").await;
    assert_eq!(stack.get("/api", Some(&token)).await.status(), 200);
    // Public: no metrics, and a health answer without the provider's state.
    assert_eq!(stack.get("/oauth/metrics", None).await.status(), 404);
    let health = stack.get("/oauth/health", None).await;
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health, serde_json::json!({ "status": "ok" }));
    assert_eq!(stack.get("/oauth/ready", None).await.status(), 200);
    // Private: all of it, without a credential.
    let get = |path: &str| stack.http.get(format!("http://{admin}{path}")).send();
    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("decision=\"allow\""), "{text}");
    let health: serde_json::Value = get("/health").await.unwrap().json().await.unwrap();
    assert_eq!(health["provider"]["keys_loaded"], true, "{health}");
    assert_eq!(get("/ready").await.unwrap().status(), 200);
    // The admin API still wants its bearer token.
    assert_eq!(get("/admin/v1/keys").await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off_or_kept_to_localhost() {
    let off = Stack::start("enable-metrics: false\n").await;
    assert_eq!(off.get("/oauth/metrics", None).await.status(), 404);
    let off_admin = Stack::start("enable-metrics: false\nlisten-admin: 127.0.0.1:0\n").await;
    let admin = off_admin.keygate.admin_addr.unwrap();
    let resp = off_admin
        .http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let local = Stack::start("localhost-metrics: true\n").await;
    assert_eq!(local.get("/oauth/metrics", None).await.status(), 200);
    // A request relayed by a proxy on this host is not a local one.
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let resp = local
            .http
            .get(local.keygate.url("/oauth/metrics"))
            .header(header, "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{header}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body.to_string().contains("localhost only"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_and_metrics() {
    let stack = Stack::start("").await;
    let health = stack.get("/oauth/health", None).await;
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["provider"]["keys_loaded"], true);
    assert!(health["provider"]["keys"].as_u64().unwrap() >= 1);
    assert_eq!(stack.get("/oauth/ready", None).await.status(), 200);
    assert_eq!(stack.get("/oauth/nope", None).await.status(), 404);
    let token = stack.idp.token("alice").await;
    stack.get("/api", Some(&token)).await;
    stack.get("/api", Some(&token)).await;
    stack.get("/api", None).await;
    let text = stack
        .get("/oauth/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    for needle in [
        "keygate_requests_total{",
        "decision=\"allow\"",
        "reason=\"no_credential\"",
        "keygate_request_duration_seconds_bucket",
        "keygate_jwks_fetches_total",
        "keygate_token_cache_total{result=\"hit\"}",
        "keygate_token_cache_total{result=\"miss\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    assert!(!text.contains(&token));
}
