//! Loading the configuration: YAML file, `KEYGATE_*` environment variables
//! and `--flags`, merged with precedence flag > env > file > default, then
//! deserialized (unknown keys and wrong types rejected, naming the key and
//! where it came from) and validated.

use keygate_core::config::Config;
use serde_yaml_ng::{Mapping, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// How a key's value is written on the command line or in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// `true` or `false`.
    Bool,
    /// A number.
    Num,
    /// A duration (`30s`) or a number of seconds.
    Duration,
    /// Comma-separated values.
    List,
    /// `name=value,name=value`.
    Map,
    /// A YAML (or JSON) document, for structured keys such as `resources`.
    Yaml,
}

/// One configuration key: its name, how it is written, and its help text.
pub struct Key {
    /// kebab-case name, as in the file and as `--name`.
    pub name: &'static str,
    /// How flag and env values are parsed.
    pub kind: Kind,
    /// One line for `--help`.
    pub help: &'static str,
    /// A secret: never printed.
    pub secret: bool,
}

const fn key(name: &'static str, kind: Kind, help: &'static str) -> Key {
    Key {
        name,
        kind,
        help,
        secret: false,
    }
}

/// Every configuration key. `keys_match_the_config_struct` keeps this table
/// and `Config` in step.
pub const KEYS: &[Key] = &[
    key(
        "listen",
        Kind::Str,
        "address to listen on, host:port or :port [default: 127.0.0.1:3000]",
    ),
    key(
        "upstream-url",
        Kind::Str,
        "the upstream authorized requests are forwarded to",
    ),
    key(
        "upstreams",
        Kind::Yaml,
        "further upstreams by host and path prefix, each with its own rules, audiences and headers (see docs/config.md)",
    ),
    key(
        "discovery-url",
        Kind::Str,
        "the provider's issuer URL (/.well-known/openid-configuration optional)",
    ),
    key(
        "client-id",
        Kind::Str,
        "keygate's client id at the provider; default token audience",
    ),
    Key {
        name: "client-secret",
        kind: Kind::Str,
        help: "keygate's client secret",
        secret: true,
    },
    key(
        "access-token-audience",
        Kind::List,
        "accepted access-token audiences [default: client-id]",
    ),
    key(
        "access-token-azp",
        Kind::List,
        "clients (azp) whose access tokens are accepted [default: any]",
    ),
    key(
        "token-introspection",
        Kind::Str,
        "introspect tokens at the provider: auto (lightweight tokens), always or never [default: auto]",
    ),
    key(
        "enable-default-deny",
        Kind::Bool,
        "paths no resource matches need a valid credential [default: true]",
    ),
    key(
        "resources",
        Kind::Yaml,
        "route rules, as YAML/JSON list (see docs/config.md)",
    ),
    key(
        "match-claims",
        Kind::Map,
        "claim=regex pairs every authenticated request must match",
    ),
    key(
        "add-claims",
        Kind::List,
        "claims copied to X-Auth-<Name> upstream headers",
    ),
    key(
        "headers",
        Kind::Map,
        "name=value headers added to every upstream request",
    ),
    key(
        "enable-authorization-header",
        Kind::Bool,
        "forward Authorization: Bearer <token> [default: true]",
    ),
    key(
        "enable-token-header",
        Kind::Bool,
        "also forward the token as X-Auth-Token [default: false]",
    ),
    key(
        "trusted-proxies",
        Kind::List,
        "addresses/CIDRs whose X-Forwarded-*/X-Original-* headers are believed",
    ),
    key(
        "skip-openid-provider-tls-verify",
        Kind::Bool,
        "DANGEROUS: accept any provider certificate",
    ),
    key(
        "upstream-ca",
        Kind::Str,
        "PEM file of CAs for an https upstream",
    ),
    key("tls-cert", Kind::Str, "PEM certificate chain to serve TLS"),
    key("tls-private-key", Kind::Str, "PEM private key to serve TLS"),
    key(
        "token-exchange",
        Kind::Yaml,
        "exchange the caller's token for one whose audience is just the upstream: {audience, scopes} (RFC 8693; see docs/config.md)",
    ),
    key(
        "require-dpop",
        Kind::Bool,
        "refuse bearer JWTs that are not DPoP-bound (RFC 9449); bound tokens always need a proof [default: false]",
    ),
    key(
        "dpop-max-age",
        Kind::Duration,
        "how old a DPoP proof may be [default: 60s]",
    ),
    key(
        "signing-algorithms",
        Kind::List,
        "accepted JWT algorithms [default: RS*, PS*, ES256, ES384, EdDSA]",
    ),
    key(
        "clock-skew",
        Kind::Duration,
        "leeway for exp/nbf/iat, at most 60s [default: 30s]",
    ),
    key(
        "max-token-size",
        Kind::Num,
        "longest accepted token in bytes [default: 16384]",
    ),
    key(
        "token-cache-size",
        Kind::Num,
        "verified tokens kept in memory [default: 100000]",
    ),
    key(
        "jwks-refresh-interval",
        Kind::Duration,
        "background refresh of the provider's keys [default: 5m]",
    ),
    key(
        "jwks-min-refresh-interval",
        Kind::Duration,
        "least time between fetches for unknown kids [default: 1s]",
    ),
    key(
        "openid-provider-timeout",
        Kind::Duration,
        "timeout of each request to the provider, connecting included [default: 5s]",
    ),
    key(
        "upstream-timeout",
        Kind::Duration,
        "timeout to connect to the upstream [default: 10s]",
    ),
    key(
        "upstream-response-header-timeout",
        Kind::Duration,
        "timeout for the upstream's response headers, connecting included [default: 60s]",
    ),
    key(
        "upstream-idle-timeout",
        Kind::Duration,
        "longest pause in a body streamed to or from the upstream [default: 60s]",
    ),
    key(
        "upstream-keepalive-timeout",
        Kind::Duration,
        "idle upstream connections closed after [default: 90s]",
    ),
    key(
        "server-read-header-timeout",
        Kind::Duration,
        "time a client has to send its headers [default: 10s]",
    ),
    key(
        "server-idle-timeout",
        Kind::Duration,
        "idle keep-alive client connections closed after [default: 75s]",
    ),
    key(
        "max-connections",
        Kind::Num,
        "most client connections open at once, per listener [default: 10000]",
    ),
    key(
        "worker-threads",
        Kind::Num,
        "threads serving requests, each with its own event loop and upstream connections; 0: one per CPU core [default: 0]",
    ),
    key(
        "max-concurrent-requests",
        Kind::Num,
        "most requests worked on at once; more get 503 with Retry-After [default: 4096]",
    ),
    key(
        "watch-config",
        Kind::Bool,
        "reload when the config file or api-keys.server-secret-file changes, not only on SIGHUP [default: false]",
    ),
    key(
        "shutdown-grace-period",
        Kind::Duration,
        "time in-flight requests get after SIGTERM [default: 30s]",
    ),
    key(
        "max-header-size",
        Kind::Num,
        "largest request header section in bytes [default: 65536]",
    ),
    key(
        "merge-slashes",
        Kind::Bool,
        "collapse // in paths before matching [default: true]",
    ),
    key(
        "case-insensitive-paths",
        Kind::Bool,
        "match resource URIs ignoring ASCII case [default: false]",
    ),
    key(
        "allow-encoded-percent",
        Kind::Bool,
        "accept %25 in paths (unsafe with upstreams that decode twice) [default: false]",
    ),
    key(
        "allow-non-utf8-paths",
        Kind::Bool,
        "accept percent-escapes that are not UTF-8, e.g. %FF [default: false]",
    ),
    key(
        "pass-override-headers",
        Kind::List,
        "method/URL-override headers let through (and authorized), e.g. X-HTTP-Method-Override",
    ),
    key(
        "underscores-in-headers",
        Kind::Bool,
        "pass client headers whose names hold _ (never those posing as keygate's) [default: false]",
    ),
    key("log-format", Kind::Str, "text or json [default: text]"),
    key(
        "log-level",
        Kind::Str,
        "tracing filter, e.g. info or keygate=debug [default: info]",
    ),
    key(
        "otel-endpoint",
        Kind::Str,
        "OpenTelemetry: OTLP/HTTP traces endpoint, e.g. http://collector:4318; tracing off when unset",
    ),
    key(
        "otel-service-name",
        Kind::Str,
        "OpenTelemetry: service.name of keygate's spans [default: keygate]",
    ),
    key(
        "otel-trace-context",
        Kind::Str,
        "OpenTelemetry: continue incoming traceparent from trusted-proxies, all or none [default: trusted-proxies]",
    ),
    Key {
        name: "store-url",
        kind: Kind::Str,
        help: "API-key store: sqlite://path or postgres://… [default: sqlite://keygate.db]",
        secret: true,
    },
    key(
        "store-acquire-timeout",
        Kind::Duration,
        "longest wait for a key-store connection [default: 1s]",
    ),
    key(
        "store-query-timeout",
        Kind::Duration,
        "longest time of one key-store operation's statements [default: 2s]",
    ),
    key(
        "listen-admin",
        Kind::Str,
        "operations port: admin API (/admin/v1/keys), /metrics, detailed /health; off when unset",
    ),
    key(
        "enable-metrics",
        Kind::Bool,
        "serve Prometheus metrics (/metrics on listen-admin, else /oauth/metrics) [default: true]",
    ),
    key(
        "localhost-metrics",
        Kind::Bool,
        "the public /oauth/metrics answers loopback clients only [default: false]",
    ),
    key(
        "api-keys",
        Kind::Yaml,
        "API-key settings as YAML/JSON (server-secret, header, lifetimes; see docs/api-keys.md)",
    ),
    key(
        "redirection-url",
        Kind::Str,
        "browser login callback URL [default: this gateway's /oauth/callback]",
    ),
    key(
        "scopes",
        Kind::List,
        "extra scopes asked for at browser login (openid always is)",
    ),
    key(
        "id-token-audience",
        Kind::Str,
        "the ID token's audience (relying party) [default: client-id]",
    ),
    Key {
        name: "encryption-key",
        kind: Kind::Str,
        help: "32-byte key (raw, base64 or hex) sealing session cookies; turns browser login on",
        secret: true,
    },
    key(
        "secure-cookie",
        Kind::Bool,
        "session cookies are Secure (HTTPS only) [default: true]",
    ),
    key(
        "no-redirects",
        Kind::Bool,
        "never redirect to login; answer 401 [default: false]",
    ),
    key(
        "enable-refresh-tokens",
        Kind::Bool,
        "refresh expired session access tokens transparently [default: false]",
    ),
    key(
        "rate-limit-subject",
        Kind::Str,
        "rate limit of each subject using a bearer token or session, e.g. 50/s burst 100 [default: none]",
    ),
    key(
        "rate-limit-address",
        Kind::Str,
        "rate limit of each client address on routes that need no credential, e.g. 20/s [default: none]",
    ),
    key(
        "cors-origins",
        Kind::List,
        "CORS: origins allowed to call from a browser (https://app.example.com), or * [default: none, CORS off]",
    ),
    key(
        "cors-origin-patterns",
        Kind::List,
        "CORS: regular expressions for allowed origins, matched against the whole origin",
    ),
    key(
        "cors-methods",
        Kind::List,
        "CORS: methods a preflight may ask for [default: GET,HEAD,POST,PUT,PATCH,DELETE]",
    ),
    key(
        "cors-headers",
        Kind::List,
        "CORS: request headers a preflight may ask for [default: Authorization,Content-Type,the API-key header]",
    ),
    key(
        "cors-exposed-headers",
        Kind::List,
        "CORS: response headers a page may read",
    ),
    key(
        "cors-credentials",
        Kind::Bool,
        "CORS: allow cookies and Authorization from the allowed origins [default: false]",
    ),
    key(
        "cors-max-age",
        Kind::Duration,
        "CORS: how long a browser may cache a preflight answer [default: 10m]",
    ),
    Key {
        name: "redis-url",
        kind: Kind::Str,
        help: "Redis shared by replicas: redis://… or rediss://… (TLS); off when unset",
        secret: true,
    },
    key(
        "redis-ca",
        Kind::Str,
        "PEM file of the CA of Redis's certificate (rediss://) [default: public roots]",
    ),
    key(
        "redis-key-prefix",
        Kind::Str,
        "prefix of every Redis key keygate writes [default: keygate:]",
    ),
    key(
        "redis-timeout",
        Kind::Duration,
        "longest wait for one Redis command [default: 500ms]",
    ),
    key(
        "session-store",
        Kind::Str,
        "where browser sessions live: cookie or redis [default: cookie]",
    ),
];

/// keycloak-gatekeeper options keygate does not support (yet), with what to do instead.
/// They are accepted and ignored with a warning so existing configs load.
pub const GATEKEEPER_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "enable-logging",
        "keygate always logs one line per request; use log-format/log-level",
    ),
    ("enable-json-logging", "use `log-format: json`"),
    ("debug", "use `log-level: debug`"),
    ("verbose", "use `log-level: debug`"),
    (
        "enable-session-cookies",
        "keygate's session cookie lives as long as the session; ignored",
    ),
    (
        "enable-login-handler",
        "browser login is on when `encryption-key` is set; ignored",
    ),
    ("http-only-cookie", "keygate's cookies are always HttpOnly"),
    (
        "same-site-cookie",
        "keygate's session cookie is always SameSite=Lax; ignored",
    ),
    ("cookie-domain", "keygate's cookies are host-only; ignored"),
    (
        "cookie-access-name",
        "keygate's session cookie is kg_session; ignored",
    ),
    (
        "cookie-refresh-name",
        "keygate keeps the refresh token in its session (cookie or Redis); ignored",
    ),
    ("ingress.enabled", "not a keygate setting; ignored"),
    ("enable-profiling", "not supported; ignored"),
    (
        "enable-security-filter",
        "not supported; put security headers in the upstream; ignored",
    ),
    ("enable-https-redirection", "not supported; ignored"),
    (
        "preserve-host",
        "keygate sends the upstream's host and the client's in X-Forwarded-Host",
    ),
    (
        "upstream-keepalives",
        "keygate always keeps upstream connections alive",
    ),
    ("server-read-timeout", "use `server-read-header-timeout`"),
    (
        "server-write-timeout",
        "not supported (responses stream); ignored",
    ),
    (
        "openid-provider-proxy",
        "not supported; set HTTPS_PROXY for the process",
    ),
    ("oauth-uri", "keygate's endpoints are always under /oauth"),
    ("base-uri", "not supported; ignored"),
    ("revocation-url", "not supported; ignored"),
    ("enable-encrypted-token", "not supported; ignored"),
    ("enable-authorization-cookies", "not supported; ignored"),
    (
        "skip-upstream-tls-verify",
        "keygate always verifies the upstream; give its CA with `upstream-ca`",
    ),
    ("listen-http", "not supported; use one `listen`"),
    ("enable-forwarding", "forward-signing mode is not supported"),
    ("hostnames", "not supported; ignored"),
    ("tls-ca-certificate", "mutual TLS is not supported yet"),
    ("tls-client-certificate", "mutual TLS is not supported yet"),
    ("use-letsencrypt", "not supported; terminate ACME elsewhere"),
];

/// Options that would make keygate unsafe: refused outright.
const REFUSED: &[(&str, &str)] = &[(
    "skip-token-verification",
    "keygate never skips token verification; remove this option",
)];

/// Where a key's effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

/// A configuration that cannot be loaded; the message names the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// The loaded configuration, with where each key came from and the warnings to show.
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Warnings (unsupported gatekeeper options, dangerous switches).
    pub warnings: Vec<String>,
}

/// The environment variable for a key: `KEYGATE_` + upper case, `-` → `_`.
pub fn env_name(key: &str) -> String {
    format!(
        "KEYGATE_{}",
        key.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// Loads the file (if any) and overlays `overrides` (already in precedence
/// order: env first, then flags, so flags win).
pub fn load(
    file: Option<&Path>,
    overrides: &[(&'static Key, String, Source)],
) -> Result<Loaded, LoadError> {
    load_with(file, overrides, &|name| std::env::var(name).ok())
}

/// [`load`], with `env` for the file's `${VAR}` references.
fn load_with(
    file: Option<&Path>,
    overrides: &[(&'static Key, String, Source)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, LoadError> {
    let mut warnings = Vec::new();
    // The file's errors, all of them, so one `check-config` shows every one.
    let mut errors = Vec::new();
    // Keys whose value was refused and left out, so a later check that
    // misses them does not say so a second time.
    let mut bad_keys: Vec<String> = Vec::new();
    let mut sources: Vec<(String, Source)> = Vec::new();
    let mut doc = Mapping::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError(format!("cannot read config file {}: {e}", path.display())))?;
        let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
            LoadError(format!(
                "config file {}: not valid YAML: {e}",
                path.display()
            ))
        })?;
        let mapping = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                return Err(LoadError(format!(
                    "config file {}: must be a YAML mapping of keys",
                    path.display()
                )));
            }
        };
        for (k, v) in mapping {
            let Some(name) = k.as_str().map(str::to_owned) else {
                return Err(LoadError(format!(
                    "config file {}: keys must be strings",
                    path.display()
                )));
            };
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
                if v.as_bool() == Some(false) {
                    continue;
                }
                errors.push(format!("config file {}: `{name}`: {why}", path.display()));
                continue;
            }
            if let Some((_, why)) = GATEKEEPER_UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                warnings.push(format!(
                    "config file {}: `{name}` is not supported by keygate: {why}",
                    path.display()
                ));
                continue;
            }
            let Some(key) = KEYS.iter().find(|key| key.name == name) else {
                errors.push(format!(
                    "config file {}: unknown key `{name}`{}",
                    path.display(),
                    did_you_mean(&name)
                ));
                continue;
            };
            let v = match interpolate_value(key, v, env) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(format!("config file {}: `{name}`: {e}", path.display()));
                    bad_keys.push(name);
                    continue;
                }
            };
            sources.push((name.clone(), Source::File(path.to_owned())));
            doc.insert(Value::String(name), v);
        }
    }
    for (key, raw, source) in overrides {
        let value = match parse_override(key, raw) {
            Ok(value) => value,
            Err(e) => {
                errors.push(format!("{source}: {e}"));
                bad_keys.push(key.name.to_owned());
                continue;
            }
        };
        sources.retain(|(n, _)| n != key.name);
        sources.push((key.name.to_owned(), source.clone()));
        doc.insert(Value::String(key.name.to_owned()), value);
    }
    let source_of = |name: &str| {
        sources
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default)
    };
    // A value of the wrong type is reported and its key left out, then the
    // rest is read again, so that every such error shows at once.
    let config = loop {
        match serde_path_to_error::deserialize::<_, Config>(Value::Mapping(doc.clone())) {
            Ok(config) => break Some(config),
            Err(e) => {
                let path = e.path().to_string();
                let top = path.split(['.', '[']).next().unwrap_or("").to_owned();
                if top.is_empty() && !bad_keys.is_empty() {
                    // Most likely a required key that an earlier error left out.
                    break None;
                }
                errors.push(format!(
                    "`{path}` (from {}): {}",
                    source_of(&top),
                    e.into_inner()
                ));
                if doc.remove(top.as_str()).is_none() {
                    break None;
                }
                bad_keys.push(top);
            }
        }
    };
    let Some(mut config) = config else {
        return Err(LoadError(errors.join("\n")));
    };
    if let Err(problems) = config.validate() {
        for e in problems {
            let key = match &e {
                keygate_core::config::ConfigError::Invalid { key, .. }
                | keygate_core::config::ConfigError::Missing { key, .. } => *key,
                _ => "",
            };
            // A key whose value was refused above is missing here: said once.
            if bad_keys.iter().any(|k| k == key) {
                continue;
            }
            errors.push(match source_of(key) {
                Source::Default => e.to_string(),
                s => format!("{e} (from {s})"),
            });
        }
    }
    if !errors.is_empty() {
        return Err(LoadError(errors.join("\n")));
    }
    if config.skip_openid_provider_tls_verify {
        warnings.push(
            "skip-openid-provider-tls-verify is ON: any certificate is accepted from the provider, so a network \
             attacker can forge its keys and every token. Use it only in development."
                .into(),
        );
    }
    Ok(Loaded { config, warnings })
}

fn parse_override(key: &Key, raw: &str) -> Result<Value, String> {
    let trimmed = raw.trim();
    Ok(match key.kind {
        Kind::Str | Kind::Duration => {
            if key.kind == Kind::Duration
                && trimmed.bytes().all(|b| b.is_ascii_digit())
                && !trimmed.is_empty()
            {
                Value::Number(
                    trimmed
                        .parse::<u64>()
                        .map_err(|e| format!("`{}`: {e}", key.name))?
                        .into(),
                )
            } else {
                Value::String(raw.to_owned())
            }
        }
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "off" => Value::Bool(false),
            _ => return Err(format!("`{}` expects true or false, got `{raw}`", key.name)),
        },
        Kind::Num => Value::Number(
            trimmed
                .parse::<u64>()
                .map_err(|_| format!("`{}` expects a number, got `{raw}`", key.name))?
                .into(),
        ),
        Kind::List => Value::Sequence(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        Kind::Map => {
            let mut m = Mapping::new();
            for pair in trimmed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    format!("`{}` expects name=value pairs, got `{pair}`", key.name)
                })?;
                m.insert(
                    Value::String(k.trim().to_owned()),
                    Value::String(v.trim().to_owned()),
                );
            }
            Value::Mapping(m)
        }
        Kind::Yaml => serde_yaml_ng::from_str(raw)
            .map_err(|e| format!("`{}` expects YAML or JSON: {e}", key.name))?,
    })
}

/// A file value with its `${VAR}` references expanded
/// ([`crate::interpolate`]). A whole top-level value that was a string is
/// then read as the key's kind, as an environment variable would be
/// (`listen-port: ${PORT}` is a number); nested strings stay strings.
fn interpolate_value(
    key: &Key,
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    match value {
        Value::String(s) => match crate::interpolate::expand(&s, env).map_err(|e| e.to_string())? {
            std::borrow::Cow::Borrowed(_) => Ok(Value::String(s)),
            std::borrow::Cow::Owned(expanded) => match key.kind {
                Kind::Str | Kind::Yaml => Ok(Value::String(expanded)),
                _ => parse_override(key, &expanded),
            },
        },
        other => expand_nested(other, env).map_err(|e| e.to_string()),
    }
}

/// Expands the strings inside a sequence or mapping (not the mapping's keys).
fn expand_nested(
    value: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, crate::interpolate::InterpolateError> {
    Ok(match value {
        Value::String(s) => Value::String(crate::interpolate::expand(&s, env)?.into_owned()),
        Value::Sequence(items) => Value::Sequence(
            items
                .into_iter()
                .map(|v| expand_nested(v, env))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                out.insert(k, expand_nested(v, env)?);
            }
            Value::Mapping(out)
        }
        Value::Tagged(t) => {
            let t = *t;
            Value::Tagged(Box::new(serde_yaml_ng::value::TaggedValue {
                tag: t.tag,
                value: expand_nested(t.value, env)?,
            }))
        }
        other => other,
    })
}

fn did_you_mean(name: &str) -> String {
    let best = KEYS
        .iter()
        .map(|k| (strsim(name, k.name), k.name))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, k)) => format!(" (did you mean `{k}`?)"),
        None => " (see `keygate serve --help` or docs/config.md for the keys)".into(),
    }
}

/// Levenshtein distance, for "did you mean".
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The effective config as YAML, with every secret redacted.
pub fn redacted_yaml(config: &Config) -> String {
    // `Secret` serializes as `[redacted]`; nothing else in Config is secret.
    serde_yaml_ng::to_string(config).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    const MINIMAL: &str = "discovery-url: http://idp/realms/acme\nclient-id: keygate\nupstream-url: http://127.0.0.1:8080\n";

    #[test]
    fn keys_match_the_config_struct() {
        let f = file(MINIMAL);
        let loaded = load(Some(f.path()), &[]).unwrap();
        let value = serde_yaml_ng::to_value(&loaded.config).unwrap();
        let fields: Vec<String> = value
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        let table: Vec<String> = KEYS.iter().map(|k| k.name.to_owned()).collect();
        assert_eq!(
            fields, table,
            "settings::KEYS must list Config's fields in order"
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file(&format!("{MINIMAL}upstrem-url: x\n"));
        let err = load(Some(f.path()), &[]).err().unwrap().0;
        assert!(err.contains("unknown key `upstrem-url`"), "{err}");
        assert!(err.contains("did you mean `upstream-url`"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn yaml_syntax_error_names_file_line_and_column() {
        let f = file(&format!(
            "{MINIMAL}resources:\n  - uri: /a\n   roles: [admin\n"
        ));
        let err = load(Some(f.path()), &[]).err().unwrap().0;
        assert!(err.contains("not valid YAML"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("line 6 column 4"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_source_and_expectation() {
        let f = file(&format!("{MINIMAL}enable-default-deny: maybe\n"));
        let err = load(Some(f.path()), &[]).err().unwrap().0;
        assert!(err.contains("enable-default-deny"), "{err}");
        assert!(err.contains("config file"), "{err}");
        assert!(err.contains("boolean"), "{err}");
        let f = file(&format!(
            "{MINIMAL}resources:\n  - uri: /a\n    roles: admin\n"
        ));
        let err = load(Some(f.path()), &[]).err().unwrap().0;
        assert!(err.contains("resources[0].roles"), "{err}");
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let f = file(&format!("{MINIMAL}listen: 127.0.0.1:1000\n"));
        let listen = KEYS.iter().find(|k| k.name == "listen").unwrap();
        let env = (
            listen,
            "127.0.0.1:2000".to_owned(),
            Source::Env("KEYGATE_LISTEN".into()),
        );
        let flag = (
            listen,
            "127.0.0.1:3001".to_owned(),
            Source::Flag("listen".into()),
        );
        assert_eq!(
            load(Some(f.path()), &[]).unwrap().config.listen.0.port(),
            1000
        );
        assert_eq!(
            load(Some(f.path()), std::slice::from_ref(&env))
                .unwrap()
                .config
                .listen
                .0
                .port(),
            2000
        );
        assert_eq!(
            load(Some(f.path()), &[env, flag])
                .unwrap()
                .config
                .listen
                .0
                .port(),
            3001
        );
    }

    #[test]
    fn typed_overrides_parse_lists_maps_and_yaml() {
        let k = |n: &str| KEYS.iter().find(|k| k.name == n).unwrap();
        let over = [
            (
                k("access-token-audience"),
                "a, b".to_owned(),
                Source::Flag("x".into()),
            ),
            (
                k("headers"),
                "X-Team=blue".to_owned(),
                Source::Flag("x".into()),
            ),
            (
                k("resources"),
                r#"[{"uri": "/admin/*", "roles": ["admin"]}]"#.to_owned(),
                Source::Flag("x".into()),
            ),
            (k("clock-skew"), "5".to_owned(), Source::Flag("x".into())),
        ];
        let f = file(MINIMAL);
        let c = load(Some(f.path()), &over).unwrap().config;
        assert_eq!(c.access_token_audience, ["a", "b"]);
        assert_eq!(c.headers.get("X-Team").map(String::as_str), Some("blue"));
        assert_eq!(c.resources[0].roles, ["admin"]);
        assert_eq!(c.clock_skew.as_secs(), 5);
    }

    #[test]
    fn seed_000_gatekeeper_config_loads_with_warnings() {
        let f = file(
            "discovery-url: https://login.example.com/auth/realms/REALM_NAME\n\
             skip-openid-provider-tls-verify: true\n\
             client-id:  gatekeeper   # the secret\n\
             client-secret: s3cr3t\n\
             listen: :3000\n\
             enable-refresh-tokens: true\n\
             secure-cookie: false\n\
             enable-logging: true\n\
             enable-default-deny: true\n\
             enable-session-cookies: true\n\
             no-redirects: true\n\
             ingress.enabled: true\n\
             debug: false\n\
             encryption-key: abcdefghijklmnopqrstuvwxyz012345\n\
             upstream-url: http://127.0.0.1:8080/\n",
        );
        let loaded = load(Some(f.path()), &[]).unwrap();
        assert_eq!(loaded.config.listen.0.port(), 3000);
        assert_eq!(loaded.config.access_token_audience, ["gatekeeper"]);
        for opt in ["enable-logging", "ingress.enabled", "debug"] {
            assert!(
                loaded
                    .warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{opt}`"))),
                "{opt}"
            );
        }
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("skip-openid-provider-tls-verify"))
        );
        let printed = redacted_yaml(&loaded.config);
        assert!(!printed.contains("s3cr3t"));
        assert!(!printed.contains("abcdefghijklmnop"));
        assert!(loaded.config.no_redirects);
    }

    #[test]
    fn refuses_skip_token_verification() {
        let f = file(&format!("{MINIMAL}skip-token-verification: true\n"));
        assert!(
            load(Some(f.path()), &[])
                .err()
                .unwrap()
                .0
                .contains("never skips")
        );
    }

    #[test]
    fn missing_required_key_is_named() {
        let f = file("client-id: keygate\nupstream-url: http://x\n");
        assert!(
            load(Some(f.path()), &[])
                .err()
                .unwrap()
                .0
                .contains("`discovery-url` is required")
        );
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "KG_SECRET" => Some("c$ient-secret".into()),
            "KG_REFRESH" => Some("true".into()),
            "KG_SKEW" => Some("10s".into()),
            "KG_AUDIENCES" => Some("api, web".into()),
            "KG_SERVER_SECRET" => Some("server-secret-from-env-0123456789abcdef".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_in_values_typed_as_the_key_and_nested() {
        let f = file(&format!(
            "{MINIMAL}client-secret: ${{KG_SECRET}}\n\
             enable-refresh-tokens: ${{KG_REFRESH}}\n\
             clock-skew: ${{KG_SKEW}}\n\
             access-token-audience: ${{KG_AUDIENCES}}\n\
             scopes: [\"${{KG_SCOPE:-email}}\", \"pa$$id\"]\n\
             api-keys:\n  server-secret: ${{KG_SERVER_SECRET}}\n"
        ));
        let config = load_with(Some(f.path()), &[], &env).unwrap().config;
        assert_eq!(config.client_secret.expose(), "c$ient-secret");
        assert!(config.enable_refresh_tokens);
        assert_eq!(config.clock_skew, std::time::Duration::from_secs(10));
        assert_eq!(config.access_token_audience, ["api", "web"]);
        assert_eq!(config.scopes, ["email", "pa$id"]);
        assert_eq!(
            config.api_keys.server_secret.expose(),
            "server-secret-from-env-0123456789abcdef"
        );
    }

    #[test]
    fn every_missing_variable_and_unknown_key_is_reported_at_once() {
        let f = file(&format!(
            "{MINIMAL}client-secret: ${{KG_NOPE}}\nencryption-key: ${{KG_ALSO_NOPE}}\nupstrem-url: x\n"
        ));
        let err = load_with(Some(f.path()), &[], &env).err().unwrap().0;
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].contains("`client-secret`") && lines[0].contains("`KG_NOPE`"),
            "{err}"
        );
        assert!(
            lines[1].contains("`encryption-key`") && lines[1].contains("`KG_ALSO_NOPE`"),
            "{err}"
        );
        assert!(lines[2].contains("unknown key `upstrem-url`"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }
}
