//! The listener: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, h2 over TLS by
//! ALPN) on one port, graceful shutdown that lets in-flight requests finish,
//! and the bounds on every connection: a cap on open connections, a header
//! timeout, and an idle timeout. On the main listener, each request first
//! passes the load-shedding bound on concurrent requests ([`crate::shed`]).

use crate::dispatch;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::shed::{self, Shedder};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// The gateway requests are served with: swapped whole by a reload, so a
/// request keeps the one it started with until it ends.
pub type LiveGateway = Arc<arc_swap::ArcSwap<Gateway>>;

/// A bound listener, ready to serve.
pub struct Server {
    /// The gateway at bind time: the listener's own settings (address, TLS,
    /// connection bounds) come from it and change only with a restart.
    gateway: Arc<Gateway>,
    live: LiveGateway,
    admin: bool,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// `max-concurrent-requests` (the main listener only: the operations
    /// port must stay reachable under load).
    shedder: Option<Arc<Shedder>>,
}

impl Server {
    /// Binds `listen` (and loads the TLS certificate when configured).
    pub async fn bind(gateway: Arc<Gateway>) -> Result<Self, GatewayError> {
        Self::bind_live(Arc::new(arc_swap::ArcSwap::new(gateway))).await
    }

    /// Binds `listen` for a gateway that a reload may swap.
    pub async fn bind_live(live: LiveGateway) -> Result<Self, GatewayError> {
        let addr = live.load().config.listen.0;
        Self::bind_to(live, addr, false).await
    }

    /// Binds `listen-admin` for the admin API, when configured.
    pub async fn bind_admin(gateway: Arc<Gateway>) -> Result<Option<Self>, GatewayError> {
        Self::bind_admin_live(Arc::new(arc_swap::ArcSwap::new(gateway))).await
    }

    /// Binds `listen-admin` for a gateway that a reload may swap.
    pub async fn bind_admin_live(live: LiveGateway) -> Result<Option<Self>, GatewayError> {
        let addr = live.load().config.listen_admin.clone();
        match addr {
            Some(addr) => Self::bind_to(live, addr.0, true).await.map(Some),
            None => Ok(None),
        }
    }

    async fn bind_to(
        live: LiveGateway,
        addr: SocketAddr,
        admin: bool,
    ) -> Result<Self, GatewayError> {
        let gateway = live.load_full();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let tls = match (&gateway.config.tls_cert, &gateway.config.tls_private_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(gateway.config.server_read_header_timeout)
            .max_buf_size(gateway.config.max_header_size.max(8192))
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(gateway.config.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        let shedder =
            (!admin).then(|| Shedder::new(gateway.config.max_concurrent_requests, "public"));
        Ok(Server {
            gateway,
            live,
            admin,
            listener,
            tls,
            builder: Arc::new(builder),
            shedder,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.gateway.config.listen.0)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish for up to `shutdown-grace-period`, and returns.
    ///
    /// Each connection is bounded: at most `max-connections` are open at
    /// once (more are closed as soon as they are accepted, and counted); a
    /// connection that sends no request within `server-read-header-timeout`,
    /// or stays idle for `server-idle-timeout` between requests, is closed
    /// (gracefully: a response being sent is finished first).
    ///
    /// The main listener is served by `worker-threads` threads, each with a
    /// single-threaded event loop of its own: accepted connections are
    /// handed to them in turn and stay on the one they got, with the
    /// upstream connections that thread opened ([`worker_index`]), so a
    /// request is served start to end on one thread and never waits for a
    /// wake-up from another. The operations port is served where `run` is
    /// called.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let open = Arc::new(OpenConnections::default());
        let listener_label = if self.admin { "admin" } else { "public" };
        let workers = match self.admin {
            true => Vec::new(),
            false => self.start_workers(self.gateway.config.workers(), &stop_rx),
        };
        let mut next = 0usize;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if open.count() >= self.gateway.config.max_connections {
                            metrics::counter!("keygate_connections_refused_total", "listener" => listener_label)
                                .increment(1);
                            drop(stream);
                            continue;
                        }
                        let guard = OpenConnection::new(&open, listener_label);
                        if workers.is_empty() {
                            self.conn_settings().serve(stream, peer, guard, stop_rx.clone());
                            continue;
                        }
                        // Handed over as a std socket: the worker registers
                        // it with its own event loop.
                        match stream.into_std() {
                            Ok(std) => {
                                next = (next + 1) % workers.len();
                                let _ = workers[next].connections.send((std, peer, guard));
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let grace = self.gateway.config.shutdown_grace_period;
        tracing::info!(
            in_flight = open.count(),
            "shutting down; finishing in-flight requests"
        );
        let _ = stop_tx.send(true);
        if tokio::time::timeout(grace, open.all_closed())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        for worker in workers {
            drop(worker.connections);
            let _ = worker.finish.send(());
            let _ = worker.done.await;
        }
    }

    /// What serving a connection needs, for any thread.
    fn conn_settings(&self) -> ConnSettings {
        ConnSettings {
            live: Arc::clone(&self.live),
            admin: self.admin,
            builder: Arc::clone(&self.builder),
            limits: ConnLimits {
                header_timeout: self.gateway.config.server_read_header_timeout,
                idle_timeout: self.gateway.config.server_idle_timeout,
            },
            tls: self.tls.clone(),
            shedder: self.shedder.clone(),
        }
    }

    /// Starts the worker threads, each serving the connections it is handed
    /// on a single-threaded runtime of its own until told to finish.
    fn start_workers(
        &self,
        count: usize,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<Worker> {
        let mut workers = Vec::with_capacity(count);
        for index in 1..=count {
            let (connections, mut handed) = tokio::sync::mpsc::unbounded_channel::<Handed>();
            let (finish, finished) = tokio::sync::oneshot::channel::<()>();
            let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
            let settings = self.conn_settings();
            let stop = stop.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a worker's runtime; serving with fewer");
                    break;
                }
            };
            let spawned = std::thread::Builder::new()
                .name(format!("keygate-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async move {
                        while let Some((std, peer, guard)) = handed.recv().await {
                            match TcpStream::from_std(std) {
                                Ok(stream) => settings.serve(stream, peer, guard, stop.clone()),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot take a connection over")
                                }
                            }
                        }
                        // The listener is closed: its connections finish (or
                        // the grace period ends) before the runtime goes.
                        let _ = finished.await;
                    });
                    drop(runtime);
                    let _ = done_tx.send(());
                });
            match spawned {
                Ok(_) => workers.push(Worker {
                    connections,
                    finish,
                    done,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a worker thread; serving with fewer");
                    break;
                }
            }
        }
        workers
    }
}

/// A connection handed to a worker: the socket, its peer, its place in the count.
type Handed = (std::net::TcpStream, SocketAddr, OpenConnection);

/// A worker thread, as the accepting task sees it.
struct Worker {
    connections: tokio::sync::mpsc::UnboundedSender<Handed>,
    finish: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Receiver<()>,
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The worker thread this code runs on: 1 to `worker-threads`, or 0 on any
/// other thread. Per-thread state (the upstream connections) is kept by it.
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// What serving one connection needs (cheap to clone to a worker).
#[derive(Clone)]
struct ConnSettings {
    live: LiveGateway,
    admin: bool,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    shedder: Option<Arc<Shedder>>,
}

impl ConnSettings {
    fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        guard: OpenConnection,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let live = Arc::clone(&self.live);
        let admin = self.admin;
        let activity = Arc::new(Activity::new());
        let requests = Arc::clone(&activity);
        let shedder = self.shedder.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            requests.request_started();
            // Load shedding: the one place a request is counted in (Err: shed).
            let in_flight = match &shedder {
                Some(shedder) if !shed::exempt(req.uri().path()) => {
                    shedder.enter().map(Some).ok_or(())
                }
                _ => Ok(None),
            };
            let gateway = live.load_full();
            async move {
                let resp = match in_flight {
                    Err(()) => shed::overloaded(),
                    Ok(_in_flight) if admin => {
                        Box::pin(crate::admin::handle(gateway, req, peer)).await
                    }
                    // Boxed: hyper keeps (and moves) this future, a pointer
                    // is cheaper to move than the whole request's state.
                    Ok(_in_flight) => Box::pin(dispatch::handle(gateway, req, peer)).await,
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let builder = Arc::clone(&self.builder);
        let limits = self.limits;
        let acceptor = self.tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let stream = Tracked {
                inner: stream,
                activity: Arc::clone(&activity),
            };
            let result = match acceptor {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watch_connection(conn, &activity, limits, stop).await
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watch_connection(conn, &activity, limits, stop).await
                }
            };
            if let Err(e) = result {
                // A request hyper could not parse is the client's error
                // (hyper has answered it 400 or 431 itself).
                let parse = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(|e| e.is_parse() || e.is_parse_too_large());
                if parse {
                    metrics::counter!("keygate_client_errors_total", "kind" => "malformed")
                        .increment(1);
                }
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
}

/// The time bounds of one client connection.
#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
}

/// Drives a connection until it ends, shutting it down gracefully when the
/// server stops, when no first request arrives within the header timeout,
/// or when it has been idle (no byte read or written) for the idle timeout.
async fn watch_connection<C>(
    conn: C,
    activity: &Activity,
    limits: ConnLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConn,
{
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let bound = match activity.requests() {
            0 => limits.header_timeout,
            _ => limits.idle_timeout,
        };
        let deadline = activity.last() + bound;
        tokio::select! {
            result = conn.as_mut() => return result,
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().shutdown_gracefully();
                    closing = true;
                }
            }
            () = tokio::time::sleep_until(deadline), if !closing => {
                if activity.last() + bound <= tokio::time::Instant::now() {
                    let kind = if activity.requests() == 0 { "no_request" } else { "idle" };
                    metrics::counter!("keygate_connections_timed_out_total", "kind" => kind)
                        .increment(1);
                    conn.as_mut().shutdown_gracefully();
                    closing = true;
                }
            }
        }
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait GracefulConn {
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E> GracefulConn for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// When a connection last moved a byte, and how many requests it began.
struct Activity {
    last_ms: AtomicU64,
    requests: AtomicU64,
    base: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            last_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            base: tokio::time::Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// A client stream that records when it last read or wrote a byte.
    struct Tracked<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
    }
}

impl<S: AsyncRead> AsyncRead for Tracked<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// The connections a listener has open, for the cap and the gauge.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    closed: tokio::sync::Notify,
}

impl OpenConnections {
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection; dropping it closes the books on it.
struct OpenConnection {
    open: Arc<OpenConnections>,
    listener: &'static str,
}

impl OpenConnection {
    fn new(open: &Arc<OpenConnections>, listener: &'static str) -> Self {
        open.count.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("keygate_connections_open", "listener" => listener).increment(1.0);
        OpenConnection {
            open: Arc::clone(open),
            listener,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("keygate_connections_open", "listener" => self.listener).decrement(1.0);
        if self.open.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.open.closed.notify_waiters();
        }
    }
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, GatewayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| GatewayError::config("tls-cert", format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| GatewayError::config("tls-private-key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::config("tls-cert", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| GatewayError::config("tls-cert", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
