//! Small HTTP and JWT helpers for assertions.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

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

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The value of the Prometheus sample `series` (name and labels exactly as
/// exported, e.g. `keygate_x_total{result="ok"}`) in `metrics`, 0 if absent.
pub fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}
