//! [`Keygate`]: keygate in this process on 127.0.0.1:0, and [`Stack`], the
//! provider, upstream and keygate most tests need.

use crate::{Idp, Upstream, client};
use std::net::SocketAddr;
use std::time::Duration;

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

    /// The Prometheus text: `/metrics` on the operations port when
    /// `listen-admin` is set, else the public `/oauth/metrics`.
    pub async fn metrics(&self) -> String {
        let url = match self.admin_addr {
            Some(admin) => format!("http://{admin}/metrics"),
            None => self.url("/oauth/metrics"),
        };
        client()
            .get(url)
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
