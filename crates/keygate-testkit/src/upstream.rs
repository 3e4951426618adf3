//! [`Upstream`]: an echo server that answers with what it received.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// An echo upstream. `GET /sse` streams three events; `/slow` answers after
/// one second; a websocket upgrade on `/ws` echoes messages; anything else
/// answers JSON `{method, path, query, headers, body}`, under
/// `/upstream-cors` with permissive CORS headers of its own.
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
    let mut builder = Response::builder();
    if path.starts_with("/upstream-cors") {
        // An upstream that answers CORS itself (permissively).
        builder = builder
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-methods", "*");
    }
    Ok(builder
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
