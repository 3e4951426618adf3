//! `keygate keys …`: create, list, show, revoke, rotate, renew API keys and
//! set their limits.
//!
//! Service keys and all management commands work on the key store named by
//! the config (`store-url`); personal keys are created through a running
//! gateway (`--gateway URL`), which runs the provider's device authorization
//! as the confidential client and hands the new key over once.

use crate::settings;
use clap::{Arg, ArgAction, ArgMatches, Command};
use keygate_auth::{Provider, ProviderSettings};
use keygate_core::Secret;
use keygate_core::config::Config;
use keygate_core::keys::KeyKind;
use keygate_keys::{ApiKeys, CreatedKey, KeyView, NewServiceKey};
use keygate_store::KeyFilter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn config_arg() -> Arg {
    Arg::new("config")
        .long("config")
        .short('c')
        .env("KEYGATE_CONFIG")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help("keygate's config file (store-url, api-keys, provider); KEYGATE_* env overrides it")
}

fn json_arg() -> Arg {
    Arg::new("json")
        .long("json")
        .action(ArgAction::SetTrue)
        .help("print JSON")
}

fn id_arg() -> Arg {
    Arg::new("id")
        .required(true)
        .value_name("ID")
        .help("the key's id")
}

/// The `keys` subcommand.
pub fn command() -> Command {
    let opt = |name: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name("VALUE").help(help)
    };
    Command::new("keys")
        .about("Manage API keys (service keys and personal access tokens)")
        .subcommand_required(true)
        .subcommand(
            Command::new("create")
                .about("Create a key; prints the key (shown once) on the first line of stdout")
                .arg(config_arg())
                .arg(
                    Arg::new("kind")
                        .long("kind")
                        .required(true)
                        .value_parser(["service", "personal"])
                        .help("service: bound to a service-account client; personal: your own roles, via --gateway"),
                )
                .arg(opt("client-id", "service keys: the service-account client id"))
                .arg(
                    Arg::new("client-secret-file")
                        .long("client-secret-file")
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("service keys: file holding the client's secret"),
                )
                .arg(opt("owner", "service keys: who the key is for [default: the client id]"))
                .arg(opt("description", "free text shown in listings"))
                .arg(opt("expires-in", "lifetime such as 14d or 90d [default: per kind, from api-keys]"))
                .arg(opt("scopes", "service keys: scopes for the client-credentials grant (a,b)"))
                .arg(opt("allowed-methods", "restrict to these methods (GET,POST)"))
                .arg(opt("allowed-prefixes", "restrict to these route prefixes (/reports,/exports)"))
                .arg(opt("allowed-cidrs", "restrict to these client networks (10.0.0.0/8)"))
                .arg(opt("rate-limit", "service keys: own rate limit, e.g. '100/s burst 200' or unlimited [default: api-keys.rate-limit-service]"))
                .arg(opt("quota", "service keys: own usage quota, e.g. 10000/day or unlimited [default: api-keys.quota-service]"))
                .arg(
                    Arg::new("no-verify")
                        .long("no-verify")
                        .action(ArgAction::SetTrue)
                        .help("service keys: do not try the client credentials at the provider first"),
                )
                .arg(opt("gateway", "personal keys: the keygate URL that runs the device flow"))
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("list")
                .about("List keys")
                .arg(config_arg())
                .arg(opt("owner", "only this owner's keys"))
                .arg(Arg::new("kind").long("kind").value_parser(["service", "personal"]))
                .arg(Arg::new("all").long("all").action(ArgAction::SetTrue).help("include revoked keys"))
                .arg(json_arg()),
        )
        .subcommand(Command::new("show").about("Show one key and its audit trail").arg(config_arg()).arg(id_arg()).arg(json_arg()))
        .subcommand(Command::new("revoke").about("Revoke a key now").arg(config_arg()).arg(id_arg()))
        .subcommand(
            Command::new("rotate")
                .about("Issue a new secret for a service key; prints the new key on the first line")
                .arg(config_arg())
                .arg(id_arg())
                .arg(
                    Arg::new("key-file")
                        .long("key-file")
                        .required(true)
                        .value_name("PATH")
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("file holding the current key (its client secret is re-encrypted)"),
                )
                .arg(opt("grace", "how long the old key keeps working, e.g. 10m [default: it stops now]"))
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("limits")
                .about("Set a key's own rate limit and usage quota (`default`: its kind's default)")
                .arg(config_arg())
                .arg(id_arg())
                .arg(opt("rate-limit", "e.g. '100/s burst 200', 20/min, unlimited or default"))
                .arg(opt("quota", "e.g. 10000/day, 250000/month, unlimited or default"))
                .arg(json_arg()),
        )
        .subcommand(
            Command::new("renew")
                .about("Extend a key's expiry, within the maximum for its kind")
                .arg(config_arg())
                .arg(id_arg())
                .arg(opt("expires-in", "new lifetime from now, e.g. 30d [default: per kind]"))
                .arg(json_arg()),
        )
}

/// Runs `keygate keys …`.
pub fn run(m: &ArgMatches) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(dispatch(m)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn dispatch(m: &ArgMatches) -> Result<(), String> {
    let (name, sub) = m.subcommand().ok_or("a keys subcommand is required")?;
    if name == "create" && sub.get_one::<String>("kind").map(String::as_str) == Some("personal") {
        if let Some(flag) = [
            "client-id",
            "client-secret-file",
            "owner",
            "scopes",
            "allowed-methods",
            "allowed-prefixes",
            "allowed-cidrs",
            "rate-limit",
            "quota",
        ]
        .into_iter()
        .find(|f| {
            sub.contains_id(f)
                && sub.value_source(f) == Some(clap::parser::ValueSource::CommandLine)
        }) {
            return Err(format!(
                "--{flag} does not apply to personal keys (an operator sets a personal key's limits with `keygate keys limits`)"
            ));
        }
        return create_personal(sub).await;
    }
    let config = load_config(sub)?;
    let keys = open(&config).await?;
    let json = sub
        .try_get_one::<bool>("json")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false);
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    match name {
        "create" => {
            let client_id = sub
                .get_one::<String>("client-id")
                .ok_or("--client-id is required for a service key")?;
            let secret_file = sub
                .get_one::<PathBuf>("client-secret-file")
                .ok_or("--client-secret-file is required for a service key")?;
            let secret = std::fs::read_to_string(secret_file)
                .map_err(|e| format!("cannot read {}: {e}", secret_file.display()))?;
            let list = |name: &str| -> Vec<String> {
                sub.get_one::<String>(name)
                    .map(|v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let new = NewServiceKey {
                client_id: client_id.clone(),
                client_secret: Secret::new(secret.trim()),
                owner: sub.get_one::<String>("owner").cloned().unwrap_or_default(),
                description: sub
                    .get_one::<String>("description")
                    .cloned()
                    .unwrap_or_default(),
                expires_in: sub.get_one::<String>("expires-in").cloned(),
                scopes: list("scopes"),
                allowed_methods: list("allowed-methods"),
                allowed_prefixes: list("allowed-prefixes"),
                allowed_cidrs: list("allowed-cidrs"),
                verify: !sub.get_flag("no-verify"),
                rate_limit: sub.get_one::<String>("rate-limit").cloned(),
                quota: sub.get_one::<String>("quota").cloned(),
            };
            let created = keys
                .create_service(new, &actor)
                .await
                .map_err(|e| e.to_string())?;
            print_created(&created, json);
        }
        "list" => {
            let filter = KeyFilter {
                owner: sub.get_one::<String>("owner").cloned(),
                kind: sub
                    .get_one::<String>("kind")
                    .and_then(|k| KeyKind::parse(k)),
                include_revoked: sub.get_flag("all"),
                limit: None,
            };
            let list = keys.list(&filter).await.map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<36}  {:<8}  {:<8}  {:<8}  {:<20}  {:<20}  DESCRIPTION",
                    "ID", "PREFIX", "KIND", "STATUS", "OWNER", "EXPIRES"
                );
                for k in &list {
                    println!(
                        "{:<36}  {:<8}  {:<8}  {:<8}  {:<20}  {:<20}  {}",
                        k.id,
                        k.prefix,
                        k.kind,
                        k.status,
                        truncate(&k.owner, 20),
                        time(k.expires_at),
                        k.description
                    );
                }
            }
        }
        "show" => {
            let id = sub.get_one::<String>("id").ok_or("ID is required")?;
            let view = keys.show(id, None).await.map_err(|e| e.to_string())?;
            let audit = keys.store().audit(id).await.map_err(|e| e.to_string())?;
            if json {
                let audit: Vec<_> = audit
                    .iter()
                    .map(|a| serde_json::json!({"action": a.action, "actor": a.actor, "at": a.at, "detail": a.detail}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"key": view, "audit": audit}))
                        .unwrap_or_default()
                );
            } else {
                print_view(&view);
                for a in &audit {
                    println!(
                        "audit:       {} {} by {}",
                        time(Some(a.at)),
                        a.action,
                        a.actor
                    );
                }
            }
        }
        "revoke" => {
            let id = sub.get_one::<String>("id").ok_or("ID is required")?;
            keys.revoke(id, None, &actor)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("revoked {id}");
        }
        "rotate" => {
            let id = sub.get_one::<String>("id").ok_or("ID is required")?;
            let key_file = sub
                .get_one::<PathBuf>("key-file")
                .ok_or("--key-file is required")?;
            let old = std::fs::read_to_string(key_file)
                .map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
            let grace = match sub.get_one::<String>("grace") {
                Some(g) => Some(
                    humantime::parse_duration(g)
                        .map_err(|_| format!("`{g}` is not a duration like 10m"))?,
                ),
                None => None,
            };
            let created = keys
                .rotate(id, grace, Some(old.trim()), &actor)
                .await
                .map_err(|e| e.to_string())?;
            print_created(&created, json);
        }
        "limits" => {
            let id = sub.get_one::<String>("id").ok_or("ID is required")?;
            let rate = sub.get_one::<String>("rate-limit").map(String::as_str);
            let quota = sub.get_one::<String>("quota").map(String::as_str);
            if rate.is_none() && quota.is_none() {
                return Err("give --rate-limit, --quota or both".into());
            }
            let view = keys
                .set_limits(id, rate.map(Some), quota.map(Some), &actor)
                .await
                .map_err(|e| e.to_string())?;
            print_view_as(&view, json);
        }
        "renew" => {
            let id = sub.get_one::<String>("id").ok_or("ID is required")?;
            let view = keys
                .renew(
                    id,
                    None,
                    sub.get_one::<String>("expires-in").map(String::as_str),
                    &actor,
                )
                .await
                .map_err(|e| e.to_string())?;
            print_view_as(&view, json);
        }
        other => return Err(format!("unknown keys subcommand `{other}`")),
    }
    keys.flush_last_used().await;
    Ok(())
}

fn load_config(m: &ArgMatches) -> Result<Config, String> {
    let file = m.get_one::<PathBuf>("config");
    let mut env = Vec::new();
    for key in settings::KEYS {
        let var = settings::env_name(key.name);
        if let Ok(value) = std::env::var(&var) {
            env.push((key, value, settings::Source::Env(var)));
        }
    }
    let loaded = settings::load(file.map(PathBuf::as_path), &env).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.config)
}

async fn open(config: &Config) -> Result<ApiKeys, String> {
    let provider = Provider::new(ProviderSettings {
        discovery_url: config.discovery_url.clone().unwrap_or_default(),
        refresh_interval: config.jwks_refresh_interval,
        min_refresh_interval: config.jwks_min_refresh_interval,
        timeout: config.openid_provider_timeout,
        skip_tls_verify: config.skip_openid_provider_tls_verify,
    })
    .map_err(|e| format!("discovery-url: {e}"))?;
    let task = provider.start();
    // Give the provider a moment: creating service keys and revoking
    // personal keys talk to it; listing does not need it.
    for _ in 0..50 {
        if provider.keys().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(task);
    // With Redis, a renew or revoke here also updates the replicas' shared
    // negative cache; PostgreSQL announces the change itself.
    let redis = keygate_store::Redis::from_config(config).map_err(|e| e.to_string())?;
    ApiKeys::from_config(config, Arc::clone(&provider), redis)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            "API keys are off: set api-keys.server-secret (or server-secret-file) in the config"
                .to_owned()
        })
}

async fn create_personal(m: &ArgMatches) -> Result<(), String> {
    let gateway = m
        .get_one::<String>("gateway")
        .ok_or("--gateway URL is required for a personal key")?;
    let gateway = gateway.trim_end_matches('/');
    let http = reqwest::Client::new();
    let mut body = serde_json::Map::new();
    if let Some(d) = m.get_one::<String>("description") {
        body.insert("description".into(), d.clone().into());
    }
    if let Some(e) = m.get_one::<String>("expires-in") {
        body.insert("expires_in".into(), e.clone().into());
    }
    let resp = http
        .post(format!("{gateway}/oauth/keys/device"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach {gateway}: {e}"))?;
    let status = resp.status();
    let start: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("unexpected answer from {gateway}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{gateway} refused: {}",
            start["error_description"]
                .as_str()
                .unwrap_or("unknown error")
        ));
    }
    let flow_id = start["flow_id"]
        .as_str()
        .ok_or("the gateway sent no flow id")?
        .to_owned();
    let url = start["verification_uri_complete"]
        .as_str()
        .or(start["verification_uri"].as_str())
        .unwrap_or("");
    eprintln!(
        "To create your key, open this address and approve:\n\n    {url}\n\nand check that it shows the code {}",
        start["user_code"].as_str().unwrap_or("")
    );
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = std::time::Instant::now()
        + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(600));
    loop {
        if std::time::Instant::now() > deadline {
            return Err("the approval was not given in time; run the command again".into());
        }
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let resp = http
            .post(format!("{gateway}/oauth/keys/device/token"))
            .json(&serde_json::json!({ "flow_id": flow_id }))
            .send()
            .await
            .map_err(|e| format!("cannot reach {gateway}: {e}"))?;
        let status = resp.status();
        let answer: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("unexpected answer: {e}"))?;
        match status.as_u16() {
            201 => {
                let created = CreatedKey {
                    id: answer["id"].as_str().unwrap_or_default().to_owned(),
                    key: Secret::new(answer["key"].as_str().unwrap_or_default()),
                    prefix: answer["prefix"].as_str().unwrap_or_default().to_owned(),
                    kind: "personal",
                    expires_at: answer["expires_at"].as_i64(),
                };
                print_created(&created, m.get_flag("json"));
                return Ok(());
            }
            202 => {
                if answer["status"] == "slow_down" {
                    interval = answer["interval"].as_u64().unwrap_or(interval + 5);
                }
            }
            _ => {
                return Err(answer["error_description"]
                    .as_str()
                    .unwrap_or("the gateway refused")
                    .to_owned());
            }
        }
    }
}

fn print_created(created: &CreatedKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": created.id, "key": created.key.expose(), "prefix": created.prefix,
                "kind": created.kind, "expires_at": created.expires_at,
            })
        );
    } else {
        println!("{}", created.key.expose());
        eprintln!(
            "created {} key {} ({}), expires {}. The key is shown only this once: store it now.",
            created.kind,
            created.id,
            created.prefix,
            time(created.expires_at)
        );
    }
}

/// A key as JSON or as text.
fn print_view_as(v: &KeyView, json: bool) {
    match json {
        true => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        false => print_view(v),
    }
}

fn print_view(v: &KeyView) {
    println!("id:          {}", v.id);
    println!("prefix:      {}", v.prefix);
    println!("kind:        {}", v.kind);
    println!("backing:     {}", v.backing);
    println!("status:      {}", v.status);
    println!("owner:       {}", v.owner);
    println!("description: {}", v.description);
    if let Some(c) = &v.client_id {
        println!("client:      {c}");
    }
    println!("created:     {}", time(Some(v.created_at)));
    println!("expires:     {}", time(v.expires_at));
    println!("last used:   {}", time(v.last_used_at));
    println!(
        "rate limit:  {}",
        v.rate_limit.as_deref().unwrap_or("default for its kind")
    );
    println!(
        "quota:       {}",
        v.quota.as_deref().unwrap_or("default for its kind")
    );
    if v.revoked_at.is_some() {
        println!("revoked:     {}", time(v.revoked_at));
    }
}

fn time(t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(secs) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
        )
        .to_string(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}
