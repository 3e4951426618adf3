//! The configuration model. The `keygate` binary merges the YAML file,
//! `KEYGATE_*` environment variables and `--flags` into one document and
//! deserializes it into [`Config`]; unknown keys are rejected there, and
//! [`Config::validate`] checks what serde cannot.
//!
//! Key names follow keycloak-gatekeeper where it had the same setting.

use crate::Secret;
use crate::keys::PersonalBacking;
use crate::limits::{Quota, RateLimit};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The largest clock-skew leeway keygate accepts.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// The whole configuration. Field docs are the reference (`docs/config.md`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Address to listen on: `host:port` or gatekeeper's `:port` (all interfaces).
    #[serde(default = "default_listen")]
    pub listen: ListenAddr,
    /// The upstream every authorized request is proxied to (with
    /// `upstreams`: the one for requests none of them takes).
    #[serde(default)]
    pub upstream_url: Option<String>,
    /// Further upstreams, chosen by host and path prefix, each with its own
    /// rules, audiences and headers.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// The provider's issuer URL; `/.well-known/openid-configuration` is optional.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// keygate's client id at the provider.
    #[serde(default)]
    pub client_id: String,
    /// keygate's client secret (never printed).
    #[serde(default)]
    pub client_secret: Secret,
    /// Audiences accepted in access tokens; one must be in `aud`. Default: `[client-id]`.
    #[serde(default)]
    pub access_token_audience: Vec<String>,
    /// Clients (`azp`) whose access tokens are accepted; empty: any client.
    #[serde(default)]
    pub access_token_azp: Vec<String>,
    /// Which tokens keygate asks the provider about (RFC 7662 introspection,
    /// with its own client credentials): `auto` (lightweight tokens, which
    /// carry no `aud` or `sub`), `always`, or `never`.
    #[serde(default)]
    pub token_introspection: TokenIntrospection,
    /// Paths no resource matches need a valid credential.
    #[serde(default = "yes")]
    pub enable_default_deny: bool,
    /// Per-route rules.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Claim name → regular expression (anchored) every authenticated request must match.
    #[serde(default)]
    pub match_claims: BTreeMap<String, String>,
    /// Claims copied to `X-Auth-<Name>` upstream headers.
    #[serde(default)]
    pub add_claims: Vec<String>,
    /// Static headers added to every upstream request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Forward `Authorization: Bearer <access token>` upstream.
    #[serde(default = "yes")]
    pub enable_authorization_header: bool,
    /// Also forward the access token as `X-Auth-Token`.
    #[serde(default)]
    pub enable_token_header: bool,
    /// Addresses or CIDRs whose `X-Forwarded-*` / `X-Original-*` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Accept any TLS certificate from the provider. Dangerous; warns at start-up.
    #[serde(default)]
    pub skip_openid_provider_tls_verify: bool,
    /// PEM file with the CA(s) that sign the upstream's certificate.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// PEM certificate chain to serve TLS (with `tls-private-key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key to serve TLS.
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// Exchange the caller's token for one whose audience is just the
    /// upstream of `upstream-url` (RFC 8693); each `upstreams` entry has its
    /// own.
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
    /// Refuse bearer tokens that are not DPoP-bound (RFC 9449): every JWT
    /// must come with a proof of its key. Bound tokens always need one.
    #[serde(default)]
    pub require_dpop: bool,
    /// How old a DPoP proof may be.
    #[serde(default = "default_dpop_max_age", with = "duration")]
    pub dpop_max_age: Duration,
    /// Accepted JWT signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub signing_algorithms: Vec<String>,
    /// Clock-skew leeway for `exp`/`nbf`/`iat`, at most 60 s.
    #[serde(default = "default_leeway", with = "duration")]
    pub clock_skew: Duration,
    /// Tokens longer than this many bytes are refused unread.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: usize,
    /// Verified tokens kept in memory (under a keyed hash), each until its `exp`.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: u64,
    /// How often the provider's keys are re-read in the background.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub jwks_refresh_interval: Duration,
    /// Least time between two key fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_min", with = "duration")]
    pub jwks_min_refresh_interval: Duration,
    /// Timeout of one request to the provider (discovery, keys, token,
    /// introspection, revocation), connecting included.
    #[serde(default = "default_provider_timeout", with = "duration")]
    pub openid_provider_timeout: Duration,
    /// Timeout to connect to the upstream.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub upstream_timeout: Duration,
    /// Timeout for the upstream's response headers (connecting included).
    #[serde(default = "default_response_timeout", with = "duration")]
    pub upstream_response_header_timeout: Duration,
    /// Longest pause in a request or response body streaming between the
    /// client and the upstream; then the stream is cut.
    #[serde(default = "default_upstream_idle_timeout", with = "duration")]
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections are closed after this.
    #[serde(default = "default_idle", with = "duration")]
    pub upstream_keepalive_timeout: Duration,
    /// Time a client has to send its request headers.
    #[serde(default = "default_read_header_timeout", with = "duration")]
    pub server_read_header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    #[serde(default = "default_server_idle", with = "duration")]
    pub server_idle_timeout: Duration,
    /// Most client connections open at once (per listener); more are
    /// closed as soon as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Threads serving the main listener, each with its own event loop and
    /// upstream connections; 0: one per CPU core.
    #[serde(default)]
    pub worker_threads: usize,
    /// Most requests keygate works on at once (on the public listener);
    /// more are answered 503 with `Retry-After` at once instead of queued.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Reload the configuration when the config file or the API keys'
    /// server-secret file changes (besides on SIGHUP).
    #[serde(default)]
    pub watch_config: bool,
    /// Time in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_shutdown", with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Largest accepted request header section, in bytes.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: usize,
    /// Collapse `//` into `/` before matching (and forwarding).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// Match resource URIs case-insensitively (for case-insensitive upstreams).
    #[serde(default)]
    pub case_insensitive_paths: bool,
    /// Accept `%25` (an encoded `%`) in request paths. Off: an upstream that
    /// decodes twice could see another path than the one authorized.
    #[serde(default)]
    pub allow_encoded_percent: bool,
    /// Accept percent-escapes that do not decode to UTF-8 (`%FF`, `%C0%AE`).
    #[serde(default)]
    pub allow_non_utf8_paths: bool,
    /// Method- or URL-override headers (`X-HTTP-Method-Override`,
    /// `X-Original-URL`, …) let through to the upstream; every other one is
    /// removed. A request carrying one is authorized for the overriding
    /// method or URL too.
    #[serde(default)]
    pub pass_override_headers: Vec<String>,
    /// Pass client headers whose names hold `_` (nginx's option of the same
    /// name). Off: they are removed, since WSGI, CGI and Rack read `_` as
    /// `-`. On: only those that would read as a header keygate manages are.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// `text` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `keygate_proxy=debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// OpenTelemetry: the OTLP/HTTP traces endpoint
    /// (`http://collector:4318`, `/v1/traces` added when no path is given);
    /// tracing is off when unset.
    #[serde(default)]
    pub otel_endpoint: Option<String>,
    /// OpenTelemetry: the `service.name` of keygate's spans.
    #[serde(default = "default_otel_service_name")]
    pub otel_service_name: String,
    /// OpenTelemetry: whose W3C `traceparent`/`tracestate` keygate continues.
    #[serde(default)]
    pub otel_trace_context: TraceContextFrom,
    /// Where API keys and their audit trail live: `sqlite://path` or `postgres://…`.
    #[serde(default = "default_store_url")]
    pub store_url: StoreUrl,
    /// Longest wait for a connection to the key store (from the pool, or a
    /// new one).
    #[serde(default = "default_store_acquire_timeout", with = "duration")]
    pub store_acquire_timeout: Duration,
    /// Longest time one key-store operation's statements may take once it
    /// has its connection.
    #[serde(default = "default_store_query_timeout", with = "duration")]
    pub store_query_timeout: Duration,
    /// Address of the operations port: the admin API (`/admin/v1/…`),
    /// metrics and the detailed health; off when unset. When set, the
    /// public listener serves neither metrics nor the detailed health.
    #[serde(default)]
    pub listen_admin: Option<ListenAddr>,
    /// Serve Prometheus metrics (at `/metrics` on `listen-admin`, else at
    /// `/oauth/metrics`). keygate's default is on (gatekeeper's was off).
    #[serde(default = "yes")]
    pub enable_metrics: bool,
    /// The public `/oauth/metrics` answers only requests from a loopback
    /// address that no proxy relayed (gatekeeper's option).
    #[serde(default)]
    pub localhost_metrics: bool,
    /// API keys: presentation, lifetimes, caches. Off until a server secret is set.
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Browser login's callback URL; default: this gateway's `/oauth/callback`.
    #[serde(default)]
    pub redirection_url: Option<String>,
    /// Extra scopes asked for at browser login (`openid` always is).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The ID token's audience (the relying party); default: `client-id`.
    #[serde(default)]
    pub id_token_audience: Option<String>,
    /// 32-byte key sealing the session cookies; setting it turns browser login on.
    #[serde(default)]
    pub encryption_key: Secret,
    /// Session cookies are `Secure` (HTTPS only).
    #[serde(default = "yes")]
    pub secure_cookie: bool,
    /// Never redirect to login; answer 401 instead (APIs).
    #[serde(default)]
    pub no_redirects: bool,
    /// Refresh a session's expired access token with its refresh token.
    #[serde(default)]
    pub enable_refresh_tokens: bool,
    /// Rate limit of each subject (`sub`) calling with a bearer token or a
    /// session, e.g. `50/s burst 100`; API keys have their own.
    #[serde(default)]
    pub rate_limit_subject: Option<RateLimit>,
    /// Rate limit of each client address on routes that need no
    /// credential (IPv6 counted per /64), e.g. `20/s`.
    #[serde(default)]
    pub rate_limit_address: Option<RateLimit>,
    /// CORS: the origins (`https://app.example.com`) whose pages may call
    /// through keygate; `*` for any (never with `cors-credentials`). Empty:
    /// keygate does not answer CORS.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// CORS: regular expressions (matched against the whole origin) for
    /// origins that cannot be listed, e.g. `https://[a-z0-9-]+\.preview\.example\.com`.
    #[serde(default)]
    pub cors_origin_patterns: Vec<String>,
    /// CORS: methods a preflight may ask for.
    #[serde(default = "default_cors_methods")]
    pub cors_methods: Vec<String>,
    /// CORS: request headers a preflight may ask for; default:
    /// `Authorization`, `Content-Type` and the API-key header.
    #[serde(default)]
    pub cors_headers: Vec<String>,
    /// CORS: response headers a page's script may read.
    #[serde(default)]
    pub cors_exposed_headers: Vec<String>,
    /// CORS: allow credentialed requests (cookies, `Authorization`) from the
    /// allowed origins; their cookie-authenticated writes pass the CSRF check.
    #[serde(default)]
    pub cors_credentials: bool,
    /// CORS: how long a browser may cache a preflight's answer.
    #[serde(default = "default_cors_max_age", with = "duration")]
    pub cors_max_age: Duration,
    /// Redis for state shared by replicas: `redis://…` or `rediss://…` (TLS).
    #[serde(default)]
    pub redis_url: Option<StoreUrl>,
    /// PEM file of the CA that issues the Redis server's certificate (`rediss://`);
    /// default: the public web roots.
    #[serde(default)]
    pub redis_ca: Option<PathBuf>,
    /// Prefix of every Redis key keygate writes (several deployments may share one Redis).
    #[serde(default = "default_redis_prefix")]
    pub redis_key_prefix: String,
    /// Longest wait for one Redis command; slower counts as Redis being down.
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub redis_timeout: Duration,
    /// Where browser sessions live: `cookie` (sealed into the cookie) or `redis`.
    #[serde(default)]
    pub session_store: SessionStore,
}

/// When keygate introspects an access token (RFC 7662) instead of trusting
/// the claims in it alone.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenIntrospection {
    /// Only tokens whose signature verifies but that carry no `aud` or no
    /// `sub`: Keycloak's lightweight access tokens.
    #[default]
    Auto,
    /// Every token whose signature verifies (the provider's claims win).
    Always,
    /// Never: a token without `aud` or `sub` is refused.
    Never,
}

/// Where browser sessions are kept.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionStore {
    /// The tokens are sealed into the session cookie itself.
    #[default]
    Cookie,
    /// The tokens are sealed in Redis; the cookie holds an opaque, sealed session id.
    Redis,
}

/// The `api-keys:` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiKeysConfig {
    /// Header that carries a key (besides `Authorization: Bearer kg…` and Basic).
    #[serde(default = "default_key_header")]
    pub header: String,
    /// Server secret (at least 32 bytes): keys the stored hashes and, with each
    /// API key, the encryption of the secrets stored with it. Setting it (or
    /// `server-secret-file`) turns API keys on.
    #[serde(default)]
    pub server_secret: Secret,
    /// A file holding the server secret (e.g. a mounted Kubernetes Secret).
    #[serde(default)]
    pub server_secret_file: Option<PathBuf>,
    /// Longest lifetime of a service key.
    #[serde(default = "default_max_service", with = "duration")]
    pub max_lifetime_service: Duration,
    /// Longest lifetime of a personal key.
    #[serde(default = "default_max_personal", with = "duration")]
    pub max_lifetime_personal: Duration,
    /// Lifetime of a service key when none is asked for.
    #[serde(default = "default_service", with = "duration")]
    pub default_lifetime_service: Duration,
    /// Lifetime of a personal key when none is asked for.
    #[serde(default = "default_personal", with = "duration")]
    pub default_lifetime_personal: Duration,
    /// Allow keys without an expiry (`--expires-in never`).
    #[serde(default)]
    pub allow_no_expiry: bool,
    /// How long an unknown, revoked or expired key is remembered as such.
    #[serde(default = "default_negative_ttl", with = "duration")]
    pub negative_cache_ttl: Duration,
    /// How long a key's stored record is trusted before it is read again
    /// (bounds how late a revoke made by another process is seen).
    #[serde(default = "default_record_ttl", with = "duration")]
    pub record_cache_ttl: Duration,
    /// Exchanged provider tokens are renewed this long before they expire.
    #[serde(default = "default_refresh_margin", with = "duration")]
    pub refresh_margin: Duration,
    /// A personal key's offline session is refreshed by keygate itself once
    /// nothing has refreshed it for this long, so that a key that is not
    /// used does not idle out at the provider (Keycloak's Offline Session
    /// Idle, 30 days by default). Must be shorter than that limit; `0`: off.
    #[serde(default = "default_offline_keepalive", with = "duration")]
    pub offline_keepalive: Duration,
    /// How often keygate looks for personal keys due for a keep-alive.
    #[serde(default = "default_offline_keepalive_check", with = "duration")]
    pub offline_keepalive_check: Duration,
    /// Role (realm role, or `client:role`) the admin API requires.
    #[serde(default = "default_admin_role")]
    pub admin_role: String,
    /// Rate limit of service keys without one of their own (`100/s burst 200`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_service: Option<RateLimit>,
    /// Rate limit of personal keys without one of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_personal: Option<RateLimit>,
    /// Usage quota of service keys without one of their own (`100000/day`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_service: Option<Quota>,
    /// Usage quota of personal keys without one of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_personal: Option<Quota>,
    /// What new personal keys are exchanged with: the user's offline session
    /// (`offline-session`, the default) or the JWT authorization grant
    /// (`jwt-grant`, set up in `jwt-grant`). Existing keys keep theirs.
    #[serde(default)]
    pub personal_backing: PersonalBacking,
    /// keygate as an identity provider the OpenID provider trusts, for
    /// personal keys backed by the JWT authorization grant (RFC 7523).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_grant: Option<JwtGrantConfig>,
}

/// The `api-keys.jwt-grant:` section: keygate signs a short assertion for a
/// key's owner with its own key (published at `/oauth/jwks`), and the
/// provider, which trusts keygate as an identity provider, answers with a
/// token carrying the user's current roles.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JwtGrantConfig {
    /// keygate's issuer identifier: the `iss` of its assertions, and the
    /// *Issuer* of keygate's identity provider at the OpenID provider.
    pub issuer: String,
    /// The alias of keygate's identity provider at the provider (Keycloak),
    /// which users are linked to.
    #[serde(default = "default_jwt_grant_idp")]
    pub identity_provider: String,
    /// Link a user to the identity provider when they create a key
    /// (Keycloak's admin REST API, as keygate's client's service account,
    /// which then needs `manage-users`). Off: an administrator links users.
    #[serde(default)]
    pub link_users: bool,
    /// Lifetime of an assertion (each is used once, at once).
    #[serde(default = "default_assertion_lifetime", with = "duration")]
    pub assertion_lifetime: Duration,
    /// Which signing key: derived from the server secret and this number.
    /// Raise it to rotate the key; `/oauth/jwks` publishes this generation's
    /// key and the one before.
    #[serde(default = "default_key_generation")]
    pub key_generation: u32,
}

/// The longest assertion lifetime keygate allows: Keycloak's default
/// *Max allowed assertion expiration*.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

impl Default for ApiKeysConfig {
    fn default() -> Self {
        ApiKeysConfig {
            header: default_key_header(),
            server_secret: Secret::default(),
            server_secret_file: None,
            max_lifetime_service: default_max_service(),
            max_lifetime_personal: default_max_personal(),
            default_lifetime_service: default_service(),
            default_lifetime_personal: default_personal(),
            allow_no_expiry: false,
            negative_cache_ttl: default_negative_ttl(),
            record_cache_ttl: default_record_ttl(),
            refresh_margin: default_refresh_margin(),
            offline_keepalive: default_offline_keepalive(),
            offline_keepalive_check: default_offline_keepalive_check(),
            admin_role: default_admin_role(),
            rate_limit_service: None,
            rate_limit_personal: None,
            quota_service: None,
            quota_personal: None,
            personal_backing: PersonalBacking::default(),
            jwt_grant: None,
        }
    }
}

impl ApiKeysConfig {
    /// The server secret, read from `server-secret-file` when that is set.
    /// `Ok(None)` when API keys are off.
    pub fn load_server_secret(&self) -> Result<Option<Secret>, ConfigError> {
        let secret = match &self.server_secret_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Secret::new(text.trim_end_matches(['\r', '\n'])),
                Err(e) => {
                    return Err(ConfigError::Invalid {
                        key: "api-keys",
                        message: format!("server-secret-file {}: {e}", path.display()),
                    });
                }
            },
            None => self.server_secret.clone(),
        };
        if secret.is_empty() {
            return Ok(None);
        }
        if secret.expose().len() < 32 {
            return Err(ConfigError::Invalid {
                key: "api-keys",
                message: "server-secret must be at least 32 bytes (e.g. `openssl rand -base64 48`)"
                    .into(),
            });
        }
        Ok(Some(secret))
    }
}

/// A server URL (`store-url`, `redis-url`); its password is never printed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StoreUrl(pub String);

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url_password(&self.0))
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:[redacted]@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]@{host}"),
        None => url.to_owned(),
    }
}

/// One `upstreams:` entry: where requests for some hosts and a path prefix
/// go, and the rules, audiences and headers that apply to them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamConfig {
    /// A name for logs and metrics (`name:rule` in the `route` label).
    pub name: String,
    /// The upstream's URL, like `upstream-url`.
    pub url: String,
    /// Hosts it serves (`api.example.com`, or `*.example.com` for any
    /// subdomain); empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path prefix it serves (`/orders`: `/orders` and `/orders/…`);
    /// default: every path.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Remove `path-prefix` from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Accepted access-token audiences; default: the top-level ones.
    #[serde(default)]
    pub access_token_audience: Vec<String>,
    /// Its rules (paths as the client sends them, prefix included); the
    /// top-level `resources` do not apply to it.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Claim checks besides the top-level `match-claims`.
    #[serde(default)]
    pub match_claims: BTreeMap<String, String>,
    /// Headers added to its requests besides (and over) the top-level `headers`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Claims copied to `X-Auth-<Name>` besides the top-level `add-claims`.
    #[serde(default)]
    pub add_claims: Vec<String>,
    /// Exchange the caller's token for one whose audience is just this
    /// upstream (RFC 8693).
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
}

/// `token-exchange:` of an upstream: the caller's access token is exchanged
/// at the provider (RFC 8693; Keycloak's standard token exchange) for one
/// whose audience is just `audience`, and that one is forwarded.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokenExchangeConfig {
    /// The audience to ask for: the upstream's client id at the provider.
    pub audience: String,
    /// Scopes to ask for (Keycloak: the optional client scope whose
    /// Audience mapper makes `audience` available to keygate's client).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One `resources:` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resource {
    /// Exact path, a prefix ending in `/*`, or a pattern with `*` segments.
    pub uri: String,
    /// Methods this rule applies to (case-insensitive); empty means all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Realm roles, or `client:role` for client roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Groups, as the provider writes them (e.g. `/ops`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scopes the token's `scope` claim must contain.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Any one of `roles` suffices (default: all are needed).
    #[serde(default)]
    pub require_any_role: bool,
    /// No credential needed.
    #[serde(default)]
    pub white_listed: bool,
}

/// Whose incoming trace context (`traceparent`, `tracestate`) is continued.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TraceContextFrom {
    /// Only requests from `trusted-proxies`; others start a new trace.
    #[default]
    TrustedProxies,
    /// Every caller's.
    All,
    /// Nobody's: every request starts a new trace.
    None,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A listen address: `host:port`, `[v6]:port` or `:port` (all interfaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub std::net::SocketAddr);

impl ListenAddr {
    /// Parses `host:port` or `:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let full = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.to_owned()
        };
        let full = full.replace("localhost:", "127.0.0.1:");
        full.parse()
            .map(ListenAddr)
            .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:3000 or :3000"))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// An address or network, e.g. `10.0.0.0/8` or `127.0.0.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// True when `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address or CIDR")))
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Durations written as `30s`, `5m`, `1h30m`, or a bare number of seconds.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Deserializes a humantime duration or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|_| {
                serde::de::Error::custom(format!("`{t}` is not a duration like 30s, 5m or 1h"))
            }),
        }
    }

    /// Serializes as [`format()`] text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format(*d))
    }

    /// A duration as people write it in a config: days, hours, minutes,
    /// seconds and milliseconds, each only when not zero (`365d`, `1h30m`,
    /// `30s`, `1s500ms`; `0s`). Never months or years, whose length
    /// humantime guesses (365 days would print as `11months 30days 3h 50m
    /// 24s`). It parses back to the same duration.
    pub fn format(d: Duration) -> String {
        let mut secs = d.as_secs();
        let ms = d.subsec_millis();
        let mut out = String::new();
        for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if secs >= len {
                out.push_str(&format!("{}{unit}", secs / len));
                secs %= len;
            }
        }
        if ms > 0 {
            out.push_str(&format!("{ms}ms"));
        }
        if out.is_empty() {
            out.push_str("0s");
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::format;
        use std::time::Duration;

        #[test]
        fn durations_print_as_written_and_parse_back() {
            for (text, secs, ms) in [
                ("365d", 365 * 86_400, 0),
                ("1h30m", 5_400, 0),
                ("30s", 30, 0),
                ("1m30s", 90, 0),
                ("1d2h3m4s", 93_784, 0),
                ("1s500ms", 1, 500),
                ("250ms", 0, 250),
                ("0s", 0, 0),
            ] {
                let d = Duration::from_secs(secs) + Duration::from_millis(ms);
                assert_eq!(format(d), text);
                assert_eq!(humantime::parse_duration(text).ok(), Some(d), "{text}");
            }
        }
    }
}

/// A configuration that deserialized but is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key has a value outside what it accepts.
    #[error("`{key}`: {message}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A required key is missing.
    #[error("`{key}` is required: {why}")]
    Missing {
        /// The config key.
        key: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
}

/// Algorithms keygate accepts at all; `signing-algorithms` picks among them.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Config {
    /// The threads serving the main listener: `worker-threads`, or one per
    /// CPU core when it is 0.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// A `token-exchange` block needs an audience and keygate's client
    /// secret (the provider authenticates the requesting client).
    fn check_token_exchange(
        &self,
        exchange: &TokenExchangeConfig,
        key: &'static str,
    ) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if exchange.audience.trim().is_empty() || exchange.audience.contains(char::is_whitespace) {
            errors.push(ConfigError::Invalid {
                key,
                message:
                    "token-exchange needs `audience`: the upstream's client id at the provider"
                        .into(),
            });
        }
        if exchange
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(char::is_whitespace))
        {
            errors.push(ConfigError::Invalid {
                key,
                message: "token-exchange `scopes` are scope names without spaces".into(),
            });
        }
        if self.client_secret.expose().is_empty() {
            errors.push(ConfigError::Missing {
                key: "client-secret",
                why: "token-exchange asks the provider for tokens as keygate's confidential client",
            });
        }
        errors
    }

    /// Checks what serde cannot: required keys, ranges, cross-key rules, and
    /// fills defaults that depend on other keys. Every problem is reported,
    /// not just the first, so that `check-config` lists them all at once.
    pub fn validate(&mut self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if !self.api_keys.offline_keepalive.is_zero()
            && self.api_keys.offline_keepalive_check.is_zero()
        {
            errors.push(ConfigError::Invalid {
                key: "api-keys",
                message: "offline-keepalive-check must be longer than 0 (how often keygate looks for personal keys due for a keep-alive, e.g. 1h), or set offline-keepalive: 0 to turn the keep-alive off".into(),
            });
        }
        errors.extend(self.jwt_grant_errors());
        if self.discovery_url.as_deref().unwrap_or("").is_empty() {
            errors.push(ConfigError::Missing {
                key: "discovery-url",
                why: "keygate needs the provider's issuer URL to verify tokens",
            });
        }
        if self.client_id.is_empty() {
            errors.push(ConfigError::Missing {
                key: "client-id",
                why: "it names keygate at the provider and is the default token audience",
            });
        }
        match self.upstream_url.as_deref() {
            None | Some("") if !self.upstreams.is_empty() => {}
            None | Some("") => {
                errors.push(ConfigError::Missing {
                    key: "upstream-url",
                    why: "keygate must know where to forward authorized requests (or list `upstreams`)",
                });
            }
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                errors.push(ConfigError::Invalid {
                    key: "upstream-url",
                    message: format!("`{u}` must start with http:// or https://"),
                });
            }
            Some(_) => {}
        }
        if let Some(endpoint) = &self.otel_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            errors.push(ConfigError::Invalid {
                key: "otel-endpoint",
                message: format!(
                    "`{endpoint}` must be an http:// or https:// URL (OTLP over HTTP, e.g. http://collector:4318)"
                ),
            });
        }
        let mut seen: Vec<(&str, Vec<String>, &str)> = Vec::new();
        for u in &self.upstreams {
            let invalid = |message: String| ConfigError::Invalid {
                key: "upstreams",
                message: format!("`{}`: {message}", u.name),
            };
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                errors.push(invalid(
                    "a name is letters, digits, `-`, `_` and `.`".into(),
                ));
            }
            if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
                errors.push(invalid(format!(
                    "url `{}` must start with http:// or https://",
                    u.url
                )));
            }
            let prefix = u.path_prefix.as_deref().unwrap_or("");
            if !prefix.is_empty()
                && (!prefix.starts_with('/')
                    || prefix.ends_with('/')
                    || prefix.contains(['*', '?', '#', '%'])
                    || prefix.split('/').any(|s| s == "." || s == ".."))
            {
                errors.push(invalid(format!(
                    "path-prefix `{prefix}` must start with `/`, not end with `/`, and hold no `*`, `?`, `#`, `%`, `.` or `..` segment"
                )));
            }
            if u.strip_prefix && prefix.is_empty() {
                errors.push(invalid("strip-prefix needs a path-prefix".into()));
            }
            for host in &u.hosts {
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if bare.is_empty()
                    || !bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
                {
                    errors.push(invalid(format!(
                        "host `{host}` is not a host name (or `*.domain`)"
                    )));
                }
            }
            for name in u.headers.keys() {
                if is_identity_header(name) || http_header_name_invalid(name) {
                    errors.push(invalid(format!("header `{name}` is not one it may set")));
                }
            }
            let mut hosts: Vec<String> = u.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            hosts.sort();
            if seen
                .iter()
                .any(|(name, h, p)| *name == u.name || (*h == hosts && *p == prefix))
            {
                errors.push(invalid(
                    "another upstream has the same name, or the same hosts and path-prefix".into(),
                ));
            }
            seen.push((&u.name, hosts, prefix));
            if let Some(exchange) = &u.token_exchange {
                errors.extend(self.check_token_exchange(exchange, "upstreams"));
            }
        }
        if let Some(exchange) = &self.token_exchange {
            if self.upstream_url.as_deref().unwrap_or("").is_empty() {
                errors.push(ConfigError::Invalid {
                    key: "token-exchange",
                    message: "the top-level token-exchange is for the upstream of `upstream-url`, which is not set; give each `upstreams` entry its own token-exchange".into(),
                });
            }
            errors.extend(self.check_token_exchange(exchange, "token-exchange"));
        }
        if self.dpop_max_age.is_zero() || self.dpop_max_age > Duration::from_secs(300) {
            errors.push(ConfigError::Invalid {
                key: "dpop-max-age",
                message: format!(
                    "{} must be between 1s and 5m (a proof is made for one request)",
                    duration::format(self.dpop_max_age)
                ),
            });
        }
        if self.access_token_audience.is_empty() {
            self.access_token_audience = vec![self.client_id.clone()];
        }
        if self.token_introspection == TokenIntrospection::Always
            && self.client_secret.expose().is_empty()
        {
            errors.push(ConfigError::Missing {
                key: "client-secret",
                why: "`token-introspection: always` asks the provider about every token with keygate's client credentials",
            });
        }
        if self.clock_skew > MAX_LEEWAY {
            errors.push(ConfigError::Invalid {
                key: "clock-skew",
                message: format!(
                    "{} is more than the 60s keygate allows",
                    duration::format(self.clock_skew)
                ),
            });
        }
        for alg in &self.signing_algorithms {
            if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                errors.push(ConfigError::Invalid {
                    key: "signing-algorithms",
                    message: format!(
                        "`{alg}` is not allowed; choose from {}",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ),
                });
            }
        }
        if self.signing_algorithms.is_empty() {
            errors.push(ConfigError::Invalid {
                key: "signing-algorithms",
                message: "must name at least one algorithm".into(),
            });
        }
        if self.tls_cert.is_some() != self.tls_private_key.is_some() {
            errors.push(ConfigError::Invalid {
                key: "tls-cert",
                message: "`tls-cert` and `tls-private-key` must be given together".into(),
            });
        }
        if self.server_idle_timeout.is_zero() {
            errors.push(ConfigError::Invalid {
                key: "server-idle-timeout",
                message: "must be more than 0".into(),
            });
        }
        if self.server_read_header_timeout.is_zero() {
            errors.push(ConfigError::Invalid {
                key: "server-read-header-timeout",
                message: "must be more than 0".into(),
            });
        }
        if self.max_connections == 0 {
            errors.push(ConfigError::Invalid {
                key: "max-connections",
                message: "must be at least 1".into(),
            });
        }
        if self.max_concurrent_requests == 0 {
            errors.push(ConfigError::Invalid {
                key: "max-concurrent-requests",
                message: "must be at least 1".into(),
            });
        }
        for (key, value) in [
            ("openid-provider-timeout", self.openid_provider_timeout),
            ("upstream-timeout", self.upstream_timeout),
            (
                "upstream-response-header-timeout",
                self.upstream_response_header_timeout,
            ),
            ("upstream-idle-timeout", self.upstream_idle_timeout),
            ("store-acquire-timeout", self.store_acquire_timeout),
            ("store-query-timeout", self.store_query_timeout),
        ] {
            if value.is_zero() {
                errors.push(ConfigError::Invalid {
                    key,
                    message: "must be more than 0".into(),
                });
            }
        }
        if self.max_token_size < 512 {
            errors.push(ConfigError::Invalid {
                key: "max-token-size",
                message: "must be at least 512 bytes".into(),
            });
        }
        if self.api_keys.default_lifetime_service > self.api_keys.max_lifetime_service
            || self.api_keys.default_lifetime_personal > self.api_keys.max_lifetime_personal
        {
            errors.push(ConfigError::Invalid {
                key: "api-keys",
                message: "a default lifetime is longer than the maximum lifetime of its kind"
                    .into(),
            });
        }
        if http_header_name_invalid(&self.api_keys.header)
            || is_identity_header(&self.api_keys.header)
        {
            errors.push(ConfigError::Invalid {
                key: "api-keys",
                message: format!(
                    "header `{}` is not a usable header name",
                    self.api_keys.header
                ),
            });
        }
        if let Err(e) = self.api_keys.load_server_secret() {
            errors.push(e);
        }
        if let Some(url) = &self.redis_url {
            let u = url.0.trim();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                errors.push(ConfigError::Invalid {
                    key: "redis-url",
                    message: format!(
                        "`{}` must start with redis:// or rediss:// (TLS)",
                        redact_url_password(u)
                    ),
                });
            }
        }
        if self.redis_ca.is_some()
            && !self
                .redis_url
                .as_ref()
                .is_some_and(|u| u.0.trim().starts_with("rediss://"))
        {
            errors.push(ConfigError::Invalid {
                key: "redis-ca",
                message: "needs a rediss:// redis-url (TLS)".into(),
            });
        }
        if self.redis_timeout.is_zero() || self.redis_timeout > Duration::from_secs(30) {
            errors.push(ConfigError::Invalid {
                key: "redis-timeout",
                message: "must be more than 0 and at most 30s".into(),
            });
        }
        if self.session_store == SessionStore::Redis {
            if self.redis_url.is_none() {
                errors.push(ConfigError::Missing {
                    key: "redis-url",
                    why: "`session-store: redis` keeps sessions in Redis",
                });
            }
            if self.encryption_key.is_empty() {
                errors.push(ConfigError::Missing {
                    key: "encryption-key",
                    why: "`session-store: redis` seals sessions (in Redis and the cookie) with it",
                });
            }
        }
        if self.cors_credentials && self.cors_origins.iter().any(|o| o.trim() == "*") {
            errors.push(ConfigError::Invalid {
                key: "cors-origins",
                message: "`*` with `cors-credentials: true` would let every site make requests with your users' cookies and tokens; list the origins (or use cors-origin-patterns)".into(),
            });
        }
        for (name, value) in &self.headers {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                || value.bytes().any(|b| b < 0x20 || b == 0x7f)
            {
                errors.push(ConfigError::Invalid {
                    key: "headers",
                    message: format!("`{name}` is not a valid header name and value"),
                });
            }
            if is_identity_header(name) {
                errors.push(ConfigError::Invalid {
                    key: "headers",
                    message: format!("`{name}`: X-Auth-* headers are set by keygate only"),
                });
            }
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors),
        }
    }

    /// What is wrong with `api-keys.personal-backing` and `api-keys.jwt-grant`.
    fn jwt_grant_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let invalid = |message: String| ConfigError::Invalid {
            key: "api-keys",
            message,
        };
        let Some(grant) = &self.api_keys.jwt_grant else {
            if self.api_keys.personal_backing == PersonalBacking::JwtGrant {
                errors.push(ConfigError::Missing {
                    key: "api-keys.jwt-grant",
                    why: "`personal-backing: jwt-grant` needs keygate's issuer and identity provider (jwt-grant: {issuer: …})",
                });
            }
            return errors;
        };
        let issuer = grant.issuer.as_str();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://"))
            || issuer.len() <= "https://".len()
            || issuer.contains(|c: char| c.is_whitespace() || c == '#' || c == '?')
        {
            errors.push(invalid(format!(
                "jwt-grant.issuer `{issuer}` must be an http:// or https:// URL without query or fragment (keygate's issuer identifier, as set at the provider)"
            )));
        }
        if grant.identity_provider.is_empty()
            || grant
                .identity_provider
                .contains(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            errors.push(invalid(format!(
                "jwt-grant.identity-provider `{}` must be the identity provider's alias at the provider: letters, digits, `-`, `_` and `.`",
                grant.identity_provider
            )));
        }
        if grant.assertion_lifetime.is_zero() || grant.assertion_lifetime > MAX_ASSERTION_LIFETIME {
            errors.push(invalid(format!(
                "jwt-grant.assertion-lifetime {} must be more than 0 and at most 5m (Keycloak refuses longer ones by default)",
                duration::format(grant.assertion_lifetime)
            )));
        }
        if grant.key_generation == 0 {
            errors.push(invalid(
                "jwt-grant.key-generation must be at least 1".into(),
            ));
        }
        if self.client_secret.is_empty() {
            errors.push(ConfigError::Missing {
                key: "client-secret",
                why: "`api-keys.jwt-grant` exchanges assertions as keygate's confidential client",
            });
        }
        errors
    }
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// True for `X-Auth-*` header names in any case and with `_` or `-`.
pub fn is_identity_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 7
        && b[0].eq_ignore_ascii_case(&b'x')
        && (b[1] == b'-' || b[1] == b'_')
        && b[2..6].eq_ignore_ascii_case(b"auth")
        && (b[6] == b'-' || b[6] == b'_')
}

fn yes() -> bool {
    true
}
fn default_listen() -> ListenAddr {
    ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 3000)))
}
fn default_algorithms() -> Vec<String> {
    SUPPORTED_ALGORITHMS
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
fn default_dpop_max_age() -> Duration {
    Duration::from_secs(60)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_max_token_size() -> usize {
    16 * 1024
}
fn default_token_cache_size() -> u64 {
    100_000
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min() -> Duration {
    Duration::from_secs(1)
}
fn default_provider_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_read_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_server_idle() -> Duration {
    Duration::from_secs(75)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_concurrent_requests() -> usize {
    4096
}
fn default_upstream_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_store_acquire_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_store_query_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_otel_service_name() -> String {
    "keygate".into()
}
fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(30)
}
fn default_max_header_size() -> usize {
    64 * 1024
}
fn default_log_level() -> String {
    "info".into()
}
fn default_redis_prefix() -> String {
    "keygate:".into()
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_store_url() -> StoreUrl {
    StoreUrl("sqlite://keygate.db".into())
}
fn default_key_header() -> String {
    "X-API-Key".into()
}
const DAY: u64 = 86_400;
fn default_max_service() -> Duration {
    Duration::from_secs(365 * DAY)
}
fn default_max_personal() -> Duration {
    Duration::from_secs(90 * DAY)
}
fn default_service() -> Duration {
    Duration::from_secs(90 * DAY)
}
fn default_personal() -> Duration {
    Duration::from_secs(14 * DAY)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_record_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_jwt_grant_idp() -> String {
    "keygate".into()
}

fn default_assertion_lifetime() -> Duration {
    Duration::from_secs(60)
}

fn default_key_generation() -> u32 {
    1
}

fn default_offline_keepalive() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn default_offline_keepalive_check() -> Duration {
    Duration::from_secs(3600)
}

fn default_refresh_margin() -> Duration {
    Duration::from_secs(30)
}
fn default_admin_role() -> String {
    "keygate-admin".into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_names_in_every_spelling() {
        for n in [
            "X-Auth-Subject",
            "x-auth-roles",
            "X_Auth_Email",
            "x_auth-foo",
            "X-AUTH_x",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["X-Authz", "Authorization", "X-Auth", "X-Author-Name"] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn store_url_password_is_redacted() {
        assert_eq!(
            redact_url_password("postgres://kg:pw@db:5432/kg"),
            "postgres://kg:[redacted]@db:5432/kg"
        );
        assert_eq!(
            redact_url_password("sqlite://keygate.db"),
            "sqlite://keygate.db"
        );
        assert_eq!(
            redact_url_password("postgres://kg@db/kg"),
            "postgres://kg@db/kg"
        );
    }

    #[test]
    fn listen_accepts_gatekeeper_port_only_form() {
        assert_eq!(ListenAddr::parse(":3000").unwrap().0.port(), 3000);
        assert!(ListenAddr::parse("3000").is_err());
    }

    /// A config with `api-keys` as given (JSON) and the required keys.
    fn with_api_keys(api_keys: serde_json::Value, secret: &str) -> Config {
        serde_json::from_value(serde_json::json!({
            "discovery-url": "https://login.example.com/realms/acme",
            "client-id": "keygate",
            "client-secret": secret,
            "upstream-url": "http://127.0.0.1:8080",
            "api-keys": api_keys,
        }))
        .unwrap()
    }

    fn messages(config: &mut Config) -> String {
        match config.validate() {
            Ok(()) => String::new(),
            Err(errors) => errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn jwt_grant_backing_needs_its_section_and_sane_values() {
        let mut c = with_api_keys(serde_json::json!({}), "s");
        assert_eq!(c.api_keys.personal_backing, PersonalBacking::OfflineSession);
        assert_eq!(messages(&mut c), "");

        let mut c = with_api_keys(serde_json::json!({"personal-backing": "jwt-grant"}), "s");
        assert!(
            messages(&mut c).contains("`api-keys.jwt-grant` is required"),
            "{}",
            messages(&mut c)
        );

        let mut c = with_api_keys(
            serde_json::json!({"personal-backing": "jwt-grant", "jwt-grant": {"issuer": "https://api.example.com"}}),
            "s",
        );
        assert_eq!(messages(&mut c), "");
        let grant = c.api_keys.jwt_grant.clone().unwrap();
        assert_eq!(grant.identity_provider, "keygate");
        assert!(!grant.link_users);
        assert_eq!(grant.assertion_lifetime, Duration::from_secs(60));
        assert_eq!(grant.key_generation, 1);

        let mut c = with_api_keys(
            serde_json::json!({"jwt-grant": {"issuer": "api.example.com", "identity-provider": "a b",
                "assertion-lifetime": "10m", "key-generation": 0}}),
            "",
        );
        let text = messages(&mut c);
        for needle in [
            "jwt-grant.issuer `api.example.com`",
            "jwt-grant.identity-provider `a b`",
            "jwt-grant.assertion-lifetime 10m",
            "jwt-grant.key-generation",
            "`client-secret` is required",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }

        // Unknown keys and backings are refused.
        let bad = serde_json::from_value::<Config>(serde_json::json!({
            "api-keys": {"jwt-grant": {"issuer": "https://x", "audience": "y"}}
        }));
        assert!(bad.is_err());
        let bad = serde_json::from_value::<Config>(serde_json::json!({
            "api-keys": {"personal-backing": "client-credentials"}
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn cidr_matches_v4_mapped_v6() {
        let c: Cidr = serde_json::from_str("\"127.0.0.0/8\"").unwrap();
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));
    }
}
