//! [`Keycloak`]: the test run's real Keycloak (`dev/keycloak/keycloak.sh`,
//! realm `acme` from `dev/keycloak/realm-acme.json`).
//!
//! Keycloak starts slowly, so one server serves the whole run: `dev/test.sh`
//! starts it and passes its URL in `KEYGATE_KEYCLOAK_URL`. Without that
//! variable (a single test run by hand) the first test of the process
//! starts one, which stops when the process ends. Tests stay independent by
//! creating what they change (clients, users) through the admin REST API.
//! A test that needs Keycloak fails when it cannot be started; it never skips.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The realm every test uses.
pub const REALM: &str = "acme";

/// The run's Keycloak.
pub struct Keycloak {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

static SHARED: OnceLock<String> = OnceLock::new();

impl Keycloak {
    /// The run's Keycloak: `KEYGATE_KEYCLOAK_URL`, or one started for this
    /// process. Panics (fails the test) when it cannot be started.
    pub async fn shared() -> Keycloak {
        let base = tokio::task::spawn_blocking(|| {
            SHARED
                .get_or_init(|| match std::env::var("KEYGATE_KEYCLOAK_URL") {
                    Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
                    _ => start_for_this_process(),
                })
                .clone()
        })
        .await
        .unwrap();
        let kc = Keycloak { base };
        kc.wait_until_up().await;
        kc
    }

    /// The realm's issuer, keygate's `discovery-url`.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{REALM}", self.base)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    async fn wait_until_up(&self) {
        let url = format!("{}/.well-known/openid-configuration", self.issuer());
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Keycloak at {} does not answer {url}", self.base);
    }

    /// A token from the password grant (`client`, `secret`, `user`, whose
    /// password is its name).
    pub async fn password_token(&self, client: &str, secret: &str, user: &str) -> Value {
        let resp = reqwest::Client::new()
            .post(self.token_endpoint())
            .form(&[
                ("grant_type", "password"),
                ("client_id", client),
                ("client_secret", secret),
                ("username", user),
                ("password", user),
                ("scope", "openid"),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(
            status.is_success(),
            "password grant for {user} at {client}: {body}"
        );
        body
    }

    /// Just the access token of [`Keycloak::password_token`].
    pub async fn access_token(&self, client: &str, secret: &str, user: &str) -> String {
        self.password_token(client, secret, user).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An admin access token (master realm, `admin-cli`).
    pub async fn admin_token(&self) -> String {
        crate::access_token(
            &format!("{}/realms/master/protocol/openid-connect/token", self.base),
            &[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", "admin"),
                ("password", "admin"),
            ],
        )
        .await
    }

    /// `method` on the admin REST API of the realm (`path` after
    /// `/admin/realms/acme`), with a JSON body; the status and JSON answer.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.realm_admin(REALM, method, path, body).await
    }

    /// `method` on the admin REST API of `realm` (`path` after
    /// `/admin/realms/<realm>`; empty: the realm itself).
    pub async fn realm_admin(
        &self,
        realm: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let token = self.admin_token().await;
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/admin/realms/{realm}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(json!(text)))
    }
}

/// Starts `dev/keycloak/keycloak.sh` for this process and waits for its
/// `READY <base-url>` line (the first start downloads Keycloak: minutes).
fn start_for_this_process() -> String {
    let script = crate::repo_root().join("dev/keycloak/keycloak.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["start", "--exit-with", &std::process::id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("READY ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(url) => {
            // The script stops Keycloak when this process ends.
            std::mem::forget(child);
            url
        }
        Err(_) => {
            let _ = child.kill();
            panic!(
                "Keycloak did not start within 10 minutes ({} start): see its output above",
                script.display()
            );
        }
    }
}

/// Helpers of the JWT-authorization-grant tests (`tests/keycloak_jwt_grant.rs`):
/// users, realm roles and identity providers in a realm, through the admin
/// REST API.
impl Keycloak {
    /// Creates user `username` in `realm`, password = username, e-mail
    /// verified, enabled; returns its id.
    pub async fn create_user_in(&self, realm: &str, username: &str) -> String {
        let rep = json!({
            "username": username,
            "enabled": true,
            "email": format!("{username}@example.com"),
            "emailVerified": true,
            "firstName": "Test",
            "lastName": "User",
            "credentials": [{"type": "password", "value": username, "temporary": false}],
        });
        let (status, body) = self
            .realm_admin(realm, reqwest::Method::POST, "/users", Some(rep))
            .await;
        assert_eq!(status, 201, "creating user {username}: {body}");
        let (_, found) = self
            .realm_admin(
                realm,
                reqwest::Method::GET,
                &format!("/users?username={username}&exact=true"),
                None,
            )
            .await;
        found[0]["id"].as_str().unwrap().to_owned()
    }

    /// Creates realm role `role` in `realm`.
    pub async fn create_realm_role_in(&self, realm: &str, role: &str) {
        let (status, body) = self
            .realm_admin(
                realm,
                reqwest::Method::POST,
                "/roles",
                Some(json!({ "name": role })),
            )
            .await;
        assert_eq!(status, 201, "creating role {role}: {body}");
    }

    /// Grants (`grant`) or removes realm role `role` of user `id` in `realm`.
    pub async fn set_realm_role_in(&self, realm: &str, id: &str, role: &str, grant: bool) {
        let (status, rep) = self
            .realm_admin(realm, reqwest::Method::GET, &format!("/roles/{role}"), None)
            .await;
        assert_eq!(status, 200, "reading role {role}: {rep}");
        let method = if grant {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        let (status, body) = self
            .realm_admin(
                realm,
                method,
                &format!("/users/{id}/role-mappings/realm"),
                Some(json!([rep])),
            )
            .await;
        assert_eq!(status, 204, "changing role {role} of {id}: {body}");
    }

    /// Enables or disables user `id` in `realm`.
    pub async fn set_user_enabled_in(&self, realm: &str, id: &str, enabled: bool) {
        let (status, body) = self
            .realm_admin(
                realm,
                reqwest::Method::PUT,
                &format!("/users/{id}"),
                Some(json!({ "enabled": enabled })),
            )
            .await;
        assert_eq!(status, 204, "enabling={enabled} user {id}: {body}");
    }

    /// Gives the service account of client `client_uuid` in `realm` the
    /// `realm-management` client role `role` (e.g. `manage-users`).
    pub async fn grant_realm_management_in(&self, realm: &str, client_uuid: &str, role: &str) {
        let (_, sa) = self
            .realm_admin(
                realm,
                reqwest::Method::GET,
                &format!("/clients/{client_uuid}/service-account-user"),
                None,
            )
            .await;
        let sa = sa["id"].as_str().unwrap().to_owned();
        let (_, rm) = self
            .realm_admin(
                realm,
                reqwest::Method::GET,
                "/clients?clientId=realm-management",
                None,
            )
            .await;
        let rm = rm[0]["id"].as_str().unwrap().to_owned();
        let (status, rep) = self
            .realm_admin(
                realm,
                reqwest::Method::GET,
                &format!("/clients/{rm}/roles/{role}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "reading realm-management role {role}: {rep}");
        let (status, body) = self
            .realm_admin(
                realm,
                reqwest::Method::POST,
                &format!("/users/{sa}/role-mappings/clients/{rm}"),
                Some(json!([rep])),
            )
            .await;
        assert_eq!(status, 204, "granting {role}: {body}");
    }

    /// Creates an identity provider of type `jwt-authorization-grant` in
    /// `realm`: `alias`, trusting assertions whose `iss` is `issuer`,
    /// verified with the keys at `jwks_url`, `clock_skew` seconds allowed.
    pub async fn create_jwt_grant_idp_in(
        &self,
        realm: &str,
        alias: &str,
        issuer: &str,
        jwks_url: &str,
        clock_skew: u32,
    ) {
        let rep = json!({
            "alias": alias,
            "providerId": "jwt-authorization-grant",
            "enabled": true,
            "hideOnLogin": true,
            "config": {
                "issuer": issuer,
                "useJwksUrl": "true",
                "jwksUrl": jwks_url,
                "jwtAuthorizationGrantEnabled": "true",
                "jwtAuthorizationGrantAllowedClockSkew": clock_skew.to_string(),
            },
        });
        let (status, body) = self
            .realm_admin(
                realm,
                reqwest::Method::POST,
                "/identity-provider/instances",
                Some(rep),
            )
            .await;
        assert_eq!(status, 201, "creating identity provider {alias}: {body}");
    }

    /// The identity-provider links (federated identities) of user `id`.
    pub async fn links_in(&self, realm: &str, id: &str) -> Vec<Value> {
        let (status, body) = self
            .realm_admin(
                realm,
                reqwest::Method::GET,
                &format!("/users/{id}/federated-identity"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }
}
