//! The client side of `keygate token` (and of scripts and notebooks): an
//! access token taken only from the environment, so credentials never sit
//! in code.
//!
//! Sources, first complete set wins ([`Source::from_env`]):
//! 1. `KEYGATE_URL` + `KEYGATE_API_KEY`: `GET {KEYGATE_URL}/oauth/token` with
//!    the key as a bearer credential; the gateway answers the provider token
//!    the key stands for.
//! 2. `OIDC_ISSUER` + `OIDC_CLIENT_ID` + `OIDC_CLIENT_SECRET` (and optional
//!    `OIDC_SCOPE`): the provider's discovery document, then the
//!    client-credentials grant at its token endpoint ([`crate::oauth`]).
//!
//! [`obtain`] caches the token in a user-only file (dir 0700, file 0600)
//! until shortly before it expires; the file name is a SHA-256 of the
//! source's identity, never a secret. Warnings (plain http, an unusable
//! cache) go to stderr: this is a command-line client.

use keygate_core::Secret;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How long before expiry a cached token stops being used (at most; half the
/// lifetime for tokens shorter than twice this).
const MARGIN_SECS: u64 = 60;

// ---------------------------------------------------------------- sources

/// Where the token comes from.
#[derive(Debug)]
pub enum Source {
    /// A keygate gateway and an API key for it.
    Gateway {
        /// `KEYGATE_URL`, without a trailing `/`.
        url: String,
        /// `KEYGATE_API_KEY`.
        key: Secret,
    },
    /// A provider client with the client-credentials grant.
    Oidc {
        /// `OIDC_ISSUER`, without a trailing `/`.
        issuer: String,
        /// `OIDC_CLIENT_ID`.
        client_id: String,
        /// `OIDC_CLIENT_SECRET`.
        secret: Secret,
        /// `OIDC_SCOPE`.
        scope: Option<String>,
    },
}

const GATEWAY_VARS: [&str; 2] = ["KEYGATE_URL", "KEYGATE_API_KEY"];
const OIDC_VARS: [&str; 3] = ["OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET"];

impl Source {
    /// Reads the environment through `get` (empty counts as unset); the error
    /// names exactly what is missing.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Source, String> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let (Some(url), Some(key)) = (get(GATEWAY_VARS[0]), get(GATEWAY_VARS[1])) {
            return Ok(Source::Gateway {
                url: url.trim().trim_end_matches('/').to_owned(),
                key: Secret::new(key.trim().to_owned()),
            });
        }
        if let (Some(issuer), Some(client_id), Some(secret)) =
            (get(OIDC_VARS[0]), get(OIDC_VARS[1]), get(OIDC_VARS[2]))
        {
            return Ok(Source::Oidc {
                issuer: issuer.trim().trim_end_matches('/').to_owned(),
                client_id,
                secret: Secret::new(secret),
                scope: get("OIDC_SCOPE"),
            });
        }
        let gateway = partial(&GATEWAY_VARS, &get);
        let oidc = partial(&OIDC_VARS, &get);
        Err(match (gateway, oidc) {
            (None, None) => "set KEYGATE_URL and KEYGATE_API_KEY (a keygate gateway and an API key for it),\n   \
                 or OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET (a provider client with the client-credentials grant)"
                .to_owned(),
            (Some(g), None) => {
                format!("{g}; or set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET")
            }
            (None, Some(o)) => format!("{o}; or set KEYGATE_URL and KEYGATE_API_KEY"),
            (Some(g), Some(o)) => format!("{g}; {o}"),
        })
    }

    /// What identifies this source's tokens: the cache file's name is a hash
    /// of it.
    fn identity(&self) -> Vec<u8> {
        let parts: Vec<&str> = match self {
            Source::Gateway { url, key } => vec!["keygate", url, key.expose()],
            Source::Oidc {
                issuer,
                client_id,
                secret,
                scope,
            } => vec![
                "oidc",
                issuer,
                client_id,
                secret.expose(),
                scope.as_deref().unwrap_or(""),
            ],
        };
        parts.join("\0").into_bytes()
    }
}

/// For a set with some but not all variables: "B is not set (A is)".
fn partial(vars: &[&str], get: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let (set, missing): (Vec<&str>, Vec<&str>) = vars.iter().partition(|v| get(v).is_some());
    if set.is_empty() || missing.is_empty() {
        return None;
    }
    let verb = |names: &[&str], one: &str, many: &str| {
        format!(
            "{} {}",
            and_list(names),
            if names.len() == 1 { one } else { many }
        )
    };
    Some(format!(
        "{} not set ({})",
        verb(&missing, "is", "are"),
        verb(&set, "is", "are")
    ))
}

fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

// ---------------------------------------------------------------- fetching

/// A token and when it expires (Unix seconds), if known.
#[derive(Debug)]
pub struct Token {
    /// The access token.
    pub access_token: Secret,
    /// When it expires (Unix seconds), if known.
    pub expires_at: Option<u64>,
    /// When the cache stops handing it out.
    pub refresh_at: Option<u64>,
}

impl Token {
    fn new(access_token: String, expires_in: Option<u64>) -> Token {
        let now = keygate_core::unix_now();
        Token {
            access_token: Secret::new(access_token),
            expires_at: expires_in.map(|e| now.saturating_add(e)),
            refresh_at: expires_in.map(|e| now.saturating_add(e - MARGIN_SECS.min(e / 2))),
        }
    }
}

/// A valid token for `source`: from the cache (when `use_cache`) while it
/// is fresh, else fetched (and cached). The error is one line for the user,
/// naming what failed, never a secret.
pub fn obtain(source: &Source, use_cache: bool) -> Result<Token, String> {
    let cache = if use_cache {
        cache::Cache::open()
    } else {
        None
    };
    let name = cache_name(source);
    if let Some(token) = cache.as_ref().and_then(|c| c.load(&name)) {
        return Ok(token);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let token = runtime.block_on(fetch(source))?;
    if let Some(cache) = &cache {
        cache.store(&name, &token);
    }
    Ok(token)
}

/// The cache file's name: a SHA-256 of the source identity.
fn cache_name(source: &Source) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &source.identity());
    let hex = keygate_core::encoding::hex(digest.as_ref());
    format!("token-{hex}.json")
}

async fn fetch(source: &Source) -> Result<Token, String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("keygate-token/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    match source {
        Source::Gateway { url, key } => {
            warn_plain_http("KEYGATE_URL", url, "the API key");
            let endpoint = format!("{url}/oauth/token");
            // `Authorization: Bearer <key>` works whatever `api-keys.header` the gateway uses.
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        "KEYGATE_API_KEY holds characters a header cannot carry".to_owned()
                    })?;
            value.set_sensitive(true);
            let resp = http
                .get(&endpoint)
                .header(reqwest::header::AUTHORIZATION, value)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "cannot reach the gateway at {endpoint}: {}",
                        chain(&e.without_url())
                    )
                })?;
            token_response(resp, "the gateway").await
        }
        Source::Oidc {
            issuer,
            client_id,
            secret,
            scope,
        } => {
            warn_plain_http("OIDC_ISSUER", issuer, "the client secret");
            let discovery = format!("{issuer}/.well-known/openid-configuration");
            let resp = http.get(&discovery).send().await.map_err(|e| {
                format!(
                    "cannot reach the provider at {discovery}: {}",
                    chain(&e.without_url())
                )
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!(
                    "the provider's discovery document {discovery} answered {status}"
                ));
            }
            let doc: Value = resp.json().await.map_err(|e| {
                format!("the provider's discovery document {discovery} is not JSON: {e}")
            })?;
            let Some(token_endpoint) = doc.get("token_endpoint").and_then(Value::as_str) else {
                return Err(format!(
                    "the provider's discovery document {discovery} has no token_endpoint"
                ));
            };
            let mut form = vec![("grant_type", "client_credentials")];
            if let Some(scope) = scope {
                form.push(("scope", scope.as_str()));
            }
            let answer = crate::oauth::post_form(
                &http,
                token_endpoint,
                Some((client_id.as_str(), secret)),
                &form,
            )
            .await
            .map_err(|crate::oauth::Unreachable(why)| {
                format!("cannot get a token from the provider: {why}")
            })?;
            match answer {
                crate::oauth::Answer::Ok(body) => token_from(&body, "the provider", 200),
                crate::oauth::Answer::OAuth(status, e) => Err(refusal(
                    "the provider",
                    status,
                    Some(e.error.as_str()),
                    e.error_description.as_deref(),
                )),
            }
        }
    }
}

/// Reads the gateway's answer: `{access_token, expires_in}`, or an OAuth
/// error as a message.
async fn token_response(resp: reqwest::Response, who: &str) -> Result<Token, String> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| {
        format!(
            "{who} answered {status} and then failed: {}",
            chain(&e.without_url())
        )
    })?;
    if !status.is_success() {
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|j| j.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        return Err(refusal(
            who,
            status.as_u16(),
            field("error"),
            field("error_description"),
        ));
    }
    token_from(&body, who, status.as_u16())
}

/// A refusal as one line: `{who} refused (400): description [code]`.
fn refusal(who: &str, status: u16, code: Option<&str>, description: Option<&str>) -> String {
    let code = code.filter(|c| !c.is_empty());
    match (code, description.filter(|d| !d.is_empty())) {
        (Some(code), Some(description)) => {
            format!("{who} refused ({status}): {description} [{code}]")
        }
        (None, Some(description)) => format!("{who} refused ({status}): {description}"),
        (Some(code), None) => format!("{who} refused ({status}): {code}"),
        (None, None) => format!("{who} answered {status}"),
    }
}

/// The token of a successful answer's body.
fn token_from(body: &[u8], who: &str, status: u16) -> Result<Token, String> {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Err(format!("{who} answered {status} without a JSON body"));
    };
    let Some(token) = json.get("access_token").and_then(Value::as_str) else {
        return Err(format!("{who}'s answer has no access_token"));
    };
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{who}'s access_token is empty or not a single line"
        ));
    }
    let expires_in = json.get("expires_in").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    Ok(Token::new(token.to_owned(), expires_in))
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Warns when a credential would cross a network in clear text.
fn warn_plain_http(var: &str, url: &str, what: &str) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return;
    };
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() == "http" && !loopback {
        eprintln!("warning: {var} uses plain http: {what} crosses the network unencrypted");
    }
}

// ---------------------------------------------------------------- cache

#[cfg(unix)]
mod cache {
    //! The token cache: a directory only the user can enter, files only the
    //! user can read, written whole (temp file + rename). A file that is not
    //! a regular file, is owned by someone else or is readable by others is
    //! ignored and replaced.

    use super::{PathBuf, Secret, Token};
    use std::fs;
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

    /// An open cache directory.
    pub(super) struct Cache {
        dir: PathBuf,
        uid: u32,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Entry {
        access_token: String,
        expires_at: u64,
        #[serde(default)]
        refresh_at: Option<u64>,
    }

    /// `$KEYGATE_TOKEN_CACHE`, `$XDG_CACHE_HOME/keygate`, `~/.cache/keygate`.
    fn location() -> Option<PathBuf> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(dir) = var("KEYGATE_TOKEN_CACHE") {
            return Some(dir);
        }
        if let Some(xdg) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            return Some(xdg.join("keygate"));
        }
        var("HOME").map(|home| home.join(".cache").join("keygate"))
    }

    impl Cache {
        /// Creates the directory (0700) if needed; `None` (with a warning)
        /// when it cannot be used safely.
        pub(super) fn open() -> Option<Cache> {
            let dir = location()?;
            if let Err(e) = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                eprintln!("warning: token cache {} unusable: {e}", dir.display());
                return None;
            }
            let uid = current_uid(&dir)?;
            let meta = match fs::symlink_metadata(&dir) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("warning: token cache {} unusable: {e}", dir.display());
                    return None;
                }
            };
            if !meta.is_dir() || meta.uid() != uid {
                eprintln!(
                    "warning: token cache {} is not a directory owned by you; not caching",
                    dir.display()
                );
                return None;
            }
            if meta.mode() & 0o077 != 0
                && let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            {
                eprintln!(
                    "warning: token cache {} is open to others and cannot be restricted ({e}); not caching",
                    dir.display()
                );
                return None;
            }
            Some(Cache { dir, uid })
        }

        /// A cached token still good for use, from a file only we can read.
        pub(super) fn load(&self, name: &str) -> Option<Token> {
            let path = self.dir.join(name);
            let meta = fs::symlink_metadata(&path).ok()?;
            if !meta.file_type().is_file() {
                return None;
            }
            let file = fs::File::open(&path).ok()?;
            let meta = file.metadata().ok()?;
            if !meta.is_file() || meta.uid() != self.uid || meta.mode() & 0o077 != 0 {
                return None;
            }
            let mut text = String::new();
            file.take(64 * 1024).read_to_string(&mut text).ok()?;
            let entry: Entry = serde_json::from_str(&text).ok()?;
            let refresh_at = entry
                .refresh_at
                .unwrap_or(entry.expires_at.saturating_sub(super::MARGIN_SECS))
                .min(entry.expires_at);
            if keygate_core::unix_now() >= refresh_at
                || entry.access_token.is_empty()
                || entry
                    .access_token
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return None;
            }
            Some(Token {
                access_token: Secret::new(entry.access_token),
                expires_at: Some(entry.expires_at),
                refresh_at: Some(refresh_at),
            })
        }

        /// Writes the token (0600, temp file + rename); tokens without a
        /// known lifetime are not cached. Failures only warn.
        pub(super) fn store(&self, name: &str, token: &Token) {
            let (Some(expires_at), Some(refresh_at)) = (token.expires_at, token.refresh_at) else {
                return;
            };
            if refresh_at <= keygate_core::unix_now() {
                return;
            }
            let entry = Entry {
                access_token: token.access_token.expose().to_owned(),
                expires_at,
                refresh_at: Some(refresh_at),
            };
            let Ok(body) = serde_json::to_vec(&entry) else {
                return;
            };
            let tmp = self.dir.join(format!(
                ".{name}.{}.{}.tmp",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            ));
            let written = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| {
                    // The mode above is filtered by the umask; never looser than 0600.
                    f.set_permissions(fs::Permissions::from_mode(0o600))?;
                    f.write_all(&body)?;
                    f.sync_all()
                })
                .and_then(|()| fs::rename(&tmp, self.dir.join(name)));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                eprintln!(
                    "warning: cannot write the token cache in {}: {e}",
                    self.dir.display()
                );
            }
        }
    }

    /// This process's effective uid, without `unsafe`: from
    /// `/proc/self/status` where there is one, else the owner of a file we
    /// create in `dir`.
    fn current_uid(dir: &std::path::Path) -> Option<u32> {
        if let Ok(status) = fs::read_to_string("/proc/self/status")
            && let Some(euid) = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
        {
            return Some(euid);
        }
        let probe = dir.join(format!(".uid-probe.{}", std::process::id()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe);
        let uid = file.and_then(|f| f.metadata()).map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        match uid {
            Ok(uid) => Some(uid),
            Err(e) => {
                eprintln!("warning: token cache {} unusable: {e}", dir.display());
                None
            }
        }
    }
}

#[cfg(not(unix))]
mod cache {
    //! No token cache where user-only file permissions cannot be set.

    use super::Token;

    pub(super) struct Cache;

    impl Cache {
        pub(super) fn open() -> Option<Cache> {
            None
        }
        pub(super) fn load(&self, _name: &str) -> Option<Token> {
            None
        }
        pub(super) fn store(&self, _name: &str, _token: &Token) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn source(vars: &[(&str, &str)]) -> Result<Source, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Source::from_env(|name| map.get(name).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        source(vars).err().unwrap_or_default()
    }

    #[test]
    fn missing_variables_are_named() {
        assert_eq!(
            err(&[("KEYGATE_URL", "http://gw")]),
            "KEYGATE_API_KEY is not set (KEYGATE_URL is); or set OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET"
        );
        assert_eq!(
            err(&[("OIDC_ISSUER", "http://idp"), ("OIDC_CLIENT_SECRET", "s")]),
            "OIDC_CLIENT_ID is not set (OIDC_ISSUER and OIDC_CLIENT_SECRET are); or set KEYGATE_URL and KEYGATE_API_KEY"
        );
        assert_eq!(
            err(&[("KEYGATE_API_KEY", "k"), ("OIDC_CLIENT_ID", "c")]),
            "KEYGATE_URL is not set (KEYGATE_API_KEY is); OIDC_ISSUER and OIDC_CLIENT_SECRET are not set (OIDC_CLIENT_ID is)"
        );
        assert!(err(&[("KEYGATE_URL", "")]).starts_with("set KEYGATE_URL and KEYGATE_API_KEY"));
    }

    #[test]
    fn first_complete_set_wins() {
        let s = source(&[
            ("KEYGATE_URL", "http://gw/"),
            ("KEYGATE_API_KEY", "k"),
            ("OIDC_ISSUER", "http://idp"),
        ]);
        assert!(matches!(s, Ok(Source::Gateway { ref url, .. }) if url == "http://gw"));
        let s = source(&[
            ("KEYGATE_URL", "http://gw/"),
            ("OIDC_ISSUER", "http://idp"),
            ("OIDC_CLIENT_ID", "c"),
            ("OIDC_CLIENT_SECRET", "s"),
        ]);
        assert!(matches!(s, Ok(Source::Oidc { .. })));
    }

    #[test]
    fn cache_name_hides_the_secret() {
        let s = source(&[
            ("KEYGATE_URL", "http://gw"),
            ("KEYGATE_API_KEY", "kgs_secret"),
        ])
        .unwrap();
        let name = cache_name(&s);
        assert!(!name.contains("secret"));
        assert_eq!(name.len(), "token-.json".len() + 64);
        let other = source(&[
            ("KEYGATE_URL", "http://gw"),
            ("KEYGATE_API_KEY", "kgs_other"),
        ])
        .unwrap();
        assert_ne!(name, cache_name(&other));
    }

    #[test]
    fn margin_is_sixty_seconds_or_half_the_lifetime() {
        let t = Token::new("t".into(), Some(300));
        assert_eq!(t.expires_at.unwrap() - t.refresh_at.unwrap(), 60);
        let t = Token::new("t".into(), Some(40));
        assert_eq!(t.expires_at.unwrap() - t.refresh_at.unwrap(), 20);
    }
}
