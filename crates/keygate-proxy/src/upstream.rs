//! Phase 5, forward: stream the request to the upstream and the response
//! back. Bodies are never buffered; `Upgrade` (websockets) is spliced through
//! after the upstream answers 101; SSE and chunked responses stream as they come.
//!
//! Upstream connections are HTTP/1.1 keep-alive connections kept in one
//! pool per worker thread ([`crate::server::worker_index`]): a connection is
//! opened, used and reused by one thread only, so a request never waits
//! for another thread's event loop. A connection goes back to its pool when
//! the response body has been read to its end (an unfinished body, an
//! upgrade or an error closes it), and one idle for longer than
//! `upstream-keepalive-timeout` is closed instead of reused.
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
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use keygate_core::config::Config;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per worker at most.
const MAX_IDLE: usize = 1024;

/// The upstream: its address and one keep-alive pool per worker thread.
pub struct Upstream {
    scheme: Scheme,
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header of every request.
    host: HeaderValue,
    /// Base path without a trailing slash ("" for `/`).
    base_path: String,
    /// TLS for an `https` upstream.
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Index: [`crate::server::worker_index`] (0 for other threads).
    pools: Box<[Arc<Pool>]>,
    connect_timeout: Duration,
    response_timeout: Duration,
    keepalive_timeout: Duration,
    idle_timeout: Duration,
}

/// One thread's idle connections, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<ClientBody>,
    since: Instant,
}

impl Pool {
    fn take(&self, keepalive: Duration) -> Option<SendRequest<ClientBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < keepalive && !conn.sender.is_closed() {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<ClientBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Why the upstream exchange failed.
enum SendError {
    /// Connecting (or the TLS handshake) failed or timed out.
    Connect(String),
    /// The exchange failed after connecting.
    Exchange(hyper::Error),
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
        let https = scheme == Scheme::HTTPS;
        let host_name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let address = match host_name.contains(':') {
            true => format!("[{host_name}]:{port}"),
            false => format!("{host_name}:{port}"),
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| GatewayError::config("upstream-url", e))?;
        let tls = match https {
            false => None,
            true => {
                let mut tls = tls_config(config)?;
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = rustls::pki_types::ServerName::try_from(host_name.to_owned())
                    .map_err(|e| GatewayError::config("upstream-url", e))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(tls)), name))
            }
        };
        let pools = (0..=config.workers())
            .map(|_| Arc::new(Pool::default()))
            .collect();
        Ok(Upstream {
            scheme,
            address,
            host,
            base_path,
            tls,
            pools,
            connect_timeout: config.upstream_timeout,
            response_timeout: config.upstream_response_header_timeout,
            keepalive_timeout: config.upstream_keepalive_timeout,
            idle_timeout: config.upstream_idle_timeout,
        })
    }

    /// The request target (origin form) for a normalized path and the
    /// original query.
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
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq))
            .map(Uri::from)
            .map_err(|_| Refusal::BadRequest("the request target cannot be forwarded".into()))
    }

    /// The `Host` header value of upstream requests.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// This thread's pool.
    fn pool(&self) -> &Arc<Pool> {
        let i = crate::server::worker_index();
        self.pools.get(i).unwrap_or(&self.pools[0])
    }

    /// Opens a connection and starts driving it on this thread.
    async fn connect(&self) -> Result<SendRequest<ClientBody>, SendError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| SendError::Connect(format!("connecting to {} timed out", self.address)))?
            .map_err(|e| SendError::Connect(format!("connecting to {}: {e}", self.address)))?;
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let handshake = hyper::client::conn::http1::Builder::new();
        match &self.tls {
            None => {
                let (sender, conn) = handshake
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(SendError::Exchange)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), tcp),
                )
                .await
                .map_err(|_| SendError::Connect("the TLS handshake timed out".into()))?
                .map_err(|e| SendError::Connect(format!("TLS with {}: {e}", self.address)))?;
                let (sender, conn) = handshake
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(SendError::Exchange)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                Ok(sender)
            }
        }
    }

    /// One exchange: an idle connection of this thread's pool (or a new
    /// one), the request, the response head. A request a reused connection
    /// turns out to be closed for (it was never sent) is sent once more on
    /// a new connection.
    async fn exchange(
        &self,
        mut req: Request<ClientBody>,
    ) -> Result<(Response<Incoming>, SendRequest<ClientBody>), SendError> {
        let pool = self.pool();
        while let Some(mut sender) = pool.take(self.keepalive_timeout) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was gone; try another.
                    Some(back) => req = back,
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(SendError::Exchange)?;
        sender
            .send_request(req)
            .await
            .map(|resp| (resp, sender))
            .map_err(SendError::Exchange)
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
        let sent = tokio::time::timeout(self.response_timeout, self.exchange(req)).await;
        let (mut resp, sender) = match sent {
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
                match e {
                    SendError::Connect(why) => {
                        tracing::warn!(error = %why, "upstream request failed");
                    }
                    SendError::Exchange(e) => {
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                    }
                }
                return Err(Refusal::BadGateway);
            }
            Ok(Ok(exchanged)) => exchanged,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // An upgraded connection is never pooled again.
            drop(sender);
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
            return Ok(
                resp.map(|body| Either::Left(UpstreamBody::closing(body, self.idle_timeout)))
            );
        }
        strip_response_hop_by_hop(resp.headers_mut());
        let pool = Arc::clone(self.pool());
        let idle = self.idle_timeout;
        Ok(resp.map(|body| Either::Left(UpstreamBody::pooled(body, sender, pool, idle))))
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
    /// upstream sends nothing for `upstream-idle-timeout`; when it has been
    /// read to its end, its connection goes back to the pool it came from
    /// (otherwise the connection is closed with it).
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        idle: IdleTimer,
        back: Option<(SendRequest<ClientBody>, Arc<Pool>)>,
    }

    impl PinnedDrop for UpstreamBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body hyper never polled because it was empty is finished too.
            if http_body::Body::is_end_stream(&*this.inner)
                && let Some((sender, pool)) = this.back.take()
            {
                pool.put(sender);
            }
        }
    }
}

impl UpstreamBody {
    fn pooled(
        inner: Incoming,
        sender: SendRequest<ClientBody>,
        pool: Arc<Pool>,
        idle: Duration,
    ) -> Self {
        UpstreamBody {
            inner,
            idle: IdleTimer::new(idle),
            back: Some((sender, pool)),
        }
    }

    fn closing(inner: Incoming, idle: Duration) -> Self {
        UpstreamBody {
            inner,
            idle: IdleTimer::new(idle),
            back: None,
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
            match &frame {
                None => {
                    if let Some((sender, pool)) = this.back.take() {
                        pool.put(sender);
                    }
                }
                Some(Err(_)) => *this.back = None,
                Some(Ok(_)) => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(UpstreamBodyError::Upstream)));
        }
        match this.idle.poll_expired(cx) {
            Poll::Ready(()) => {
                *this.back = None;
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
