//! [`Idp`]: the OpenID provider from `dev/idp` (a Node child process), one per test.

use crate::{access_token, repo_root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

    /// Hangs the provider (SIGSTOP): its port accepts connections but
    /// nothing answers until [`Idp::thaw`].
    pub fn freeze(&self) {
        crate::freeze::signal_all("STOP", &[self.child.id()]);
    }

    /// Lets a frozen provider answer again (SIGCONT).
    pub fn thaw(&self) {
        crate::freeze::signal_all("CONT", &[self.child.id()]);
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
