//! Phase 5, forward: stream the request to the upstream and the response
//! back. Bodies are never buffered; `Upgrade` (websockets) is spliced through
//! after the upstream answers 101; SSE and chunked responses stream as they come.

use crate::gateway::GatewayError;
use crate::respond::{Body, Refusal};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_core::config::Config;
use std::time::Duration;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The upstream: its base URL and a keep-alive connection pool.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Base path without a trailing slash ("" for `/`).
    base_path: String,
    client: Client<Connector, Incoming>,
    response_timeout: Duration,
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
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, Refusal> {
        let upgrade_type = client_upgrade
            .as_ref()
            .and(req.headers().get(header::UPGRADE).cloned());
        strip_hop_by_hop(req.headers_mut());
        if let Some(proto) = &upgrade_type {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, proto.clone());
        }
        let sent = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let mut resp = match sent {
            Err(_) => {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                return Err(Refusal::GatewayTimeout);
            }
            Ok(Err(e)) => {
                metrics::counter!("keygate_upstream_errors_total", "kind" => "connect")
                    .increment(1);
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                return Err(Refusal::BadGateway);
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
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
            let upgrade = resp.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(resp.headers_mut());
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = upgrade {
                resp.headers_mut().insert(header::UPGRADE, u);
            }
            return Ok(resp.map(Either::Left));
        }
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(Either::Left))
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

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 7.6.1), including those the
/// `Connection` header names, and `Upgrade` (re-added for upgrades).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    headers.remove(header::PROXY_AUTHORIZATION);
}
