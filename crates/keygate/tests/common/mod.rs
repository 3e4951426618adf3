//! Test harness: real servers on 127.0.0.1:0, each test with its own.
//! - [`Idp`]: the OpenID provider from `dev/idp` (a Node child process);
//! - [`Upstream`]: an echo server that answers with what it received;
//! - [`Keygate`]: keygate in-process on port 0, or [`KeygateProcess`] as the real binary.
//!
//! Everything is stopped when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod browser;
pub mod keycloak;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

// ---------------------------------------------------------------- provider

pub struct Idp {
    child: Child,
    pub issuer: String,
    pub port: u16,
    http: reqwest::Client,
}

impl Idp {
    pub async fn start() -> Idp {
        Idp::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Idp {
        Idp::start_on(0, args).await
    }

    /// Starts the provider on `port` (0 = any), waiting for its READY line.
    pub async fn start_on(port: u16, args: &[&str]) -> Idp {
        let root = repo_root();
        let idp_dir = root.join("dev/idp");
        assert!(
            idp_dir.join("node_modules/oidc-provider").exists(),
            "dev/idp has no node_modules: run `npm ci --prefix dev/idp` (dev/test.sh does it)"
        );
        let port_s = port.to_string();
        let mut child = Command::new("node")
            .arg(idp_dir.join("server.js"))
            .args(["--port", &port_s])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start node: is Node.js installed?");
        let stdout = child.stdout.take().unwrap();
        // The guard kills the child even if we panic before `Idp` exists.
        let mut guard = ChildGuard(Some(child));
        // A thread reads the READY line, then keeps draining stdout so the
        // provider never blocks or fails on a full or closed pipe.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("IDP READY ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("dev/idp did not print its READY line within 30 s");
        let issuer = line
            .trim()
            .strip_prefix("IDP READY issuer=")
            .unwrap()
            .to_owned();
        let port = issuer
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let child = guard.0.take().unwrap();
        Idp {
            child,
            issuer,
            port,
            http: reqwest::Client::new(),
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer)
    }

    /// A user's access token from the password grant (client `keygate`).
    pub async fn token(&self, user: &str) -> String {
        self.token_with_scope(user, "openid").await
    }

    pub async fn token_with_scope(&self, user: &str, scope: &str) -> String {
        access_token(
            &self.token_endpoint(),
            &[
                ("grant_type", "password"),
                ("username", user),
                ("password", user),
                ("client_id", "keygate"),
                ("client_secret", "keygate-secret"),
                ("scope", scope),
            ],
        )
        .await
    }

    /// A service account's token from the client-credentials grant.
    pub async fn client_credentials(&self, client: &str, secret: &str) -> String {
        access_token(
            &self.token_endpoint(),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", secret),
            ],
        )
        .await
    }

    /// A token signed by the provider's current key with alice's claims
    /// overridden by `claims` (`null` removes a claim) and header fields `header`.
    pub async fn sign(&self, claims: Value, header: Value) -> String {
        let resp: Value = self
            .http
            .post(format!("{}/admin/sign", self.base()))
            .json(&json!({ "claims": claims, "header": header, "defaults": true }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["token"]
            .as_str()
            .unwrap_or_else(|| panic!("sign failed: {resp}"))
            .to_owned()
    }

    /// Rotates the signing key; returns the new kid.
    pub async fn rotate(&self) -> String {
        let resp: Value = self
            .http
            .post(format!("{}/admin/rotate", self.base()))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["kid"].as_str().unwrap().to_owned()
    }

    pub async fn jwks(&self) -> Value {
        self.http
            .get(format!("{}/protocol/openid-connect/certs", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// How many token requests with `grant` the provider has answered.
    pub async fn grant_count(&self, grant: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/admin/stats", self.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["by_grant"][grant].as_u64().unwrap_or(0)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- upstream

/// An echo upstream. `GET /sse` streams three events; `/slow` answers after
/// one second; a websocket upgrade on `/ws` echoes messages; anything else
/// answers JSON `{method, path, query, headers, body}`.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(echo);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn echo(mut req: Request<Incoming>) -> Result<Response<EchoBody>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" && req.headers().contains_key("upgrade") {
        let key = req.headers().get("sec-websocket-key").unwrap().clone();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let upgraded = upgrade.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if path == "/sse" {
        let frames = futures_util::stream::unfold(0u32, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!(
                    "data: {i}\n\n"
                )))),
                i + 1,
            ))
        });
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(frames).boxed())
            .unwrap());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| json!([]));
        entry
            .as_array_mut()
            .unwrap()
            .push(json!(String::from_utf8_lossy(value.as_bytes())));
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_owned);
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = json!({
        "method": method, "path": path, "query": query, "version": version,
        "headers": headers, "body_len": body.len(),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("connection", "x-hop")
        .header("x-hop", "must-not-reach-client")
        .body(Full::new(Bytes::from(reply.to_string())).boxed())
        .unwrap())
}

/// What the upstream saw, from its echo.
pub struct Echo(pub Value);

impl Echo {
    pub fn header(&self, name: &str) -> Option<String> {
        self.0["headers"][name.to_ascii_lowercase()][0]
            .as_str()
            .map(str::to_owned)
    }
    pub fn header_names(&self) -> Vec<String> {
        self.0["headers"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }
}

// ---------------------------------------------------------------- keygate

/// keygate in this process, on 127.0.0.1:0.
pub struct Keygate {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub gateway: std::sync::Arc<keygate_proxy::Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    refresh: tokio::task::JoinHandle<()>,
}

/// The config YAML every test starts from; `extra` is appended.
pub fn base_config(idp_issuer: &str, upstream: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         discovery-url: {idp_issuer}\n\
         client-id: keygate\n\
         client-secret: keygate-secret\n\
         upstream-url: {upstream}\n\
         log-level: warn\n\
         {extra}"
    )
}

impl Keygate {
    pub async fn start(idp: &Idp, upstream: &Upstream, extra: &str) -> Keygate {
        Keygate::start_yaml(&base_config(&idp.issuer, &upstream.url(), extra)).await
    }

    pub async fn start_yaml(yaml: &str) -> Keygate {
        // As the binary does: one crypto provider for rustls' process default.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config: keygate_core::config::Config =
            serde_yaml_ng::from_str(yaml).expect("test config parses");
        config.validate().expect("test config is valid");
        let gateway = keygate_proxy::Gateway::build(config)
            .await
            .expect("gateway builds");
        let server = keygate_proxy::Server::bind(gateway.clone()).await.unwrap();
        let addr = server.local_addr();
        let admin_addr = match keygate_proxy::Server::bind_admin(gateway.clone())
            .await
            .unwrap()
        {
            Some(admin) => {
                let addr = admin.local_addr();
                tokio::spawn(admin.run(std::future::pending::<()>()));
                Some(addr)
            }
            None => None,
        };
        let refresh = gateway.start_background();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Keygate {
            addr,
            admin_addr,
            gateway,
            stop: Some(tx),
            refresh,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The Prometheus text of `/oauth/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/oauth/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the provider's keys are loaded.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.gateway.verifier.provider().keys().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keygate never loaded the provider's keys");
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.refresh.abort();
    }
}

/// The three servers most tests need, keygate ready.
pub struct Stack {
    pub idp: Idp,
    pub upstream: Upstream,
    pub keygate: Keygate,
    pub http: reqwest::Client,
}

impl Stack {
    pub async fn start(extra: &str) -> Stack {
        Stack::start_with(&[], extra).await
    }

    /// A stack whose provider gets `idp_args` (e.g. a short token lifetime).
    pub async fn start_with(idp_args: &[&str], extra: &str) -> Stack {
        let idp = Idp::start_with(idp_args).await;
        let upstream = Upstream::start().await;
        let keygate = Keygate::start(&idp, &upstream, extra).await;
        keygate.wait_ready().await;
        Stack {
            idp,
            upstream,
            keygate,
            http: client(),
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.keygate.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// The access token a token endpoint answers to `form` (any provider).
pub async fn access_token(token_endpoint: &str, form: &[(&str, &str)]) -> String {
    let resp: Value = reqwest::Client::new()
        .post(token_endpoint)
        .form(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token from {token_endpoint}: {resp}"))
        .to_owned()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends a raw HTTP/1.1 request (for paths reqwest would normalize) and
/// returns the status and body.
pub async fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    tokio::time::timeout(
        Duration::from_secs(20),
        raw_get_inner(addr, target, headers),
    )
    .await
    .unwrap_or_else(|_| panic!("no complete answer to GET {target} within 20 s"))
}

async fn raw_get_inner(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A free loopback port (bound and released; for servers that cannot take port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// base64url without padding.
pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub fn b64_decode(data: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(data)
        .unwrap()
}

/// The payload of a JWT, unverified (for test assertions only).
pub fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&b64_decode(token.split('.').nth(1).unwrap())).unwrap()
}

/// The sum of a counter's samples (in Prometheus text) whose labels contain
/// every `labels` part.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `error_description` of one of keygate's JSON refusals.
pub async fn refusal_text(resp: reqwest::Response) -> String {
    let body: Value = resp.json().await.unwrap();
    body["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
