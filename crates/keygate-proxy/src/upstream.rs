//! Phase 5, forward: stream the request to the upstream and the response
//! back. Bodies are never buffered; `Upgrade` (websockets) is spliced through
//! after the upstream answers 101; SSE and chunked responses stream as they come.
//!
//! Every wait is bounded: connecting by `upstream-timeout`, connecting and
//! the response headers together by `upstream-response-header-timeout`
//! (then 504), and each pause in a body — the client's on its way up, the
//! upstream's on its way back — by `upstream-idle-timeout`: a stalled upload
//! is the client's 408; a response body that stalls after its headers were
//! sent is cut (the client sees the response end early) and counted in
//! `keygate_upstream_errors_total{kind="idle"}`.

use crate::error::GatewayError;
use crate::hygiene::strip_response_hop_by_hop;
use crate::respond::{Body, Refusal};
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_core::config::Config;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The upstream: its base URL and a keep-alive connection pool.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Base path without a trailing slash ("" for `/`).
    base_path: String,
    client: Client<Connector, ClientBody>,
    response_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// Builds the upstream client from `upstream-url`, `upstream-ca` and the timeouts.
    pub fn new(config: &Config) -> Result<Self, GatewayError> {
        let url = config.upstream_url.as_deref().unwrap_or_default();
        let uri: Uri = url
            .parse()
            .map_err(|e| GatewayError::config("upstream-url", e))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| GatewayError::config("upstream-url", format!("`{url}` has no host")))?;
        if uri.query().is_some() {
            return Err(GatewayError::config(
                "upstream-url",
                "must not contain a query",
            ));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.upstream_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls_config(config)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.upstream_keepalive_timeout)
            .pool_max_idle_per_host(1024)
            .set_host(true)
            .build(connector);
        Ok(Upstream {
            scheme,
            authority,
            base_path,
            client,
            response_timeout: config.upstream_response_header_timeout,
            idle_timeout: config.upstream_idle_timeout,
        })
    }

    /// The upstream URI for a normalized path and the original query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, Refusal> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Refusal::BadRequest("the request target cannot be forwarded".into()))
    }

    /// Sends the prepared request and returns the upstream's response,
    /// splicing an upgraded connection when the upstream switches protocols.
    /// The request carries no hop-by-hop header any more (phase 1 removed
    /// the client's); `Connection: upgrade` and `Upgrade: websocket` are
    /// added back for an authorized websocket upgrade only.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, Refusal> {
        let client_failed = Arc::new(AtomicU8::new(CLIENT_OK));
        let mut req = req.map(|body| ClientBody {
            inner: body,
            failed: Arc::clone(&client_failed),
            idle: IdleTimer::new(self.idle_timeout),
        });
        if client_upgrade.is_some() {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let sent = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let mut resp = match sent {
            Err(_) => {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                return Err(Refusal::GatewayTimeout);
            }
            Ok(Err(_)) if client_failed.load(Ordering::Relaxed) == CLIENT_IDLE => {
                // The client stopped sending its body: its error.
                metrics::counter!("keygate_client_errors_total", "kind" => "body_idle")
                    .increment(1);
                return Err(Refusal::RequestTimeout);
            }
            Ok(Err(_)) if client_failed.load(Ordering::Relaxed) == CLIENT_BROKEN => {
                // The client's body broke off or was malformed: its error,
                // not the upstream's.
                metrics::counter!("keygate_client_errors_total", "kind" => "body").increment(1);
                return Err(Refusal::BadRequest(
                    "the request body was malformed or ended early".into(),
                ));
            }
            Ok(Err(e)) => {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "connect")
                    .increment(1);
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                return Err(Refusal::BadGateway);
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // Nothing was asked to upgrade: an upstream that switches
                // anyway is broken, and its bytes are not passed on.
                metrics::counter!("keygate_upstream_errors_total", "kind" => "unrequested_upgrade")
                    .increment(1);
                return Err(Refusal::BadGateway);
            };
            let upgrade = resp.headers().get(header::UPGRADE).cloned();
            if !upgrade
                .as_ref()
                .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
            {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "unrequested_upgrade")
                    .increment(1);
                return Err(Refusal::BadGateway);
            }
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            strip_response_hop_by_hop(resp.headers_mut());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            return Ok(resp.map(|body| Either::Left(UpstreamBody::new(body, self.idle_timeout))));
        }
        strip_response_hop_by_hop(resp.headers_mut());
        Ok(resp.map(|body| Either::Left(UpstreamBody::new(body, self.idle_timeout))))
    }
}

/// The time allowed between two frames of a body, armed only while the
/// body waits for its sender (never while the receiver is slow to take
/// what it was given). One timer per body, allocated at its first wait.
struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// A frame (or the end) arrived: the next wait starts afresh.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// The body is waiting: `Ready` once it has waited `limit`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx)
    }
}

/// Why the upstream's response body ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamBodyError {
    /// The upstream's connection failed.
    #[error("the upstream's response body failed: {0}")]
    Upstream(#[source] hyper::Error),
    /// The upstream sent nothing for `upstream-idle-timeout`.
    #[error("the upstream's response body stalled for {0:?} (upstream-idle-timeout)")]
    Idle(Duration),
}

pin_project_lite::pin_project! {
    /// The upstream's response body on its way to the client: cut when the
    /// upstream sends nothing for `upstream-idle-timeout`.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        idle: IdleTimer,
    }
}

impl UpstreamBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        UpstreamBody {
            inner,
            idle: IdleTimer::new(limit),
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            this.idle.disarm();
            return Poll::Ready(frame.map(|f| f.map_err(UpstreamBodyError::Upstream)));
        }
        match this.idle.poll_expired(cx) {
            Poll::Ready(()) => {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "idle").increment(1);
                tracing::debug!(
                    idle = ?this.idle.limit,
                    "the upstream's response body stalled; cutting it"
                );
                Poll::Ready(Some(Err(UpstreamBodyError::Idle(this.idle.limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// [`ClientBody::failed`]: the body is fine.
const CLIENT_OK: u8 = 0;
/// [`ClientBody::failed`]: the body broke off or was malformed.
const CLIENT_BROKEN: u8 = 1;
/// [`ClientBody::failed`]: the client sent nothing for `upstream-idle-timeout`.
const CLIENT_IDLE: u8 = 2;

/// Why the client's request body did not reach the upstream whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientBodyError {
    /// The client's connection failed or its framing was malformed.
    #[error("the request body failed: {0}")]
    Client(#[source] hyper::Error),
    /// The client sent nothing for `upstream-idle-timeout`.
    #[error("the request body stalled for {0:?} (upstream-idle-timeout)")]
    Idle(Duration),
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream; remembers whether it
    /// failed or stalled, so that a broken or malformed upload is answered
    /// as the client's error (400, or 408 when it stalled for
    /// `upstream-idle-timeout`), not the upstream's (502).
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        failed: Arc<AtomicU8>,
        idle: IdleTimer,
    }
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            this.idle.disarm();
            if let Some(Err(_)) = &frame {
                this.failed.store(CLIENT_BROKEN, Ordering::Relaxed);
            }
            return Poll::Ready(frame.map(|f| f.map_err(ClientBodyError::Client)));
        }
        match this.idle.poll_expired(cx) {
            Poll::Ready(()) => {
                this.failed.store(CLIENT_IDLE, Ordering::Relaxed);
                Poll::Ready(Some(Err(ClientBodyError::Idle(this.idle.limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, GatewayError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.upstream_ca {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                GatewayError::config("upstream-ca", format!("{}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    GatewayError::config("upstream-ca", format!("{}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    GatewayError::config("upstream-ca", format!("{}: {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::config("upstream-ca", e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
