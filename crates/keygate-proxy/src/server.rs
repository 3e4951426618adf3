//! The listener: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, h2 over TLS by
//! ALPN) on one port, graceful shutdown that lets in-flight requests finish.

use crate::gateway::{Gateway, GatewayError};
use crate::pipeline;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A bound listener, ready to serve.
pub struct Server {
    gateway: Arc<Gateway>,
    admin: bool,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Server {
    /// Binds `listen` (and loads the TLS certificate when configured).
    pub async fn bind(gateway: Arc<Gateway>) -> Result<Self, GatewayError> {
        let addr = gateway.config.listen.0;
        Self::bind_to(gateway, addr, false).await
    }

    /// Binds `listen-admin` for the admin API, when configured.
    pub async fn bind_admin(gateway: Arc<Gateway>) -> Result<Option<Self>, GatewayError> {
        match gateway.config.listen_admin.clone() {
            Some(addr) => Self::bind_to(gateway, addr.0, true).await.map(Some),
            None => Ok(None),
        }
    }

    async fn bind_to(
        gateway: Arc<Gateway>,
        addr: SocketAddr,
        admin: bool,
    ) -> Result<Self, GatewayError> {
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
        Ok(Server {
            gateway,
            admin,
            listener,
            tls,
            builder: Arc::new(builder),
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.serve_connection(stream, peer, &graceful),
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
            in_flight = graceful.count(),
            "shutting down; finishing in-flight requests"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }

    fn serve_connection(&self, stream: TcpStream, peer: SocketAddr, graceful: &GracefulShutdown) {
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&self.gateway);
        let admin = self.admin;
        let service = service_fn(move |req| {
            let gateway = Arc::clone(&gateway);
            async move {
                let resp = if admin {
                    crate::admin::handle(gateway, req, peer).await
                } else {
                    pipeline::handle(gateway, req, peer).await
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let builder = Arc::clone(&self.builder);
        match &self.tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let handshake_timeout = self.gateway.config.server_read_header_timeout;
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
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
