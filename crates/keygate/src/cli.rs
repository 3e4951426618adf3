//! The command line: `serve`, `check-config`, `version`. Every config key is
//! also a `--flag` and a `KEYGATE_*` environment variable.

use crate::settings::{self, KEYS, Key, Loaded, Source};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use keygate_core::config::LogFormat;
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "keygate: an authenticating gateway and forward-auth service for OpenID Connect providers such as Keycloak.";

fn config_args(cmd: Command) -> Command {
    let cmd = cmd.arg(
        Arg::new("config")
            .long("config")
            .short('c')
            .env("KEYGATE_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help(
                "YAML config file (keycloak-gatekeeper names); flags and KEYGATE_* env override it",
            ),
    );
    KEYS.iter().fold(cmd, |cmd, key| {
        let mut arg = Arg::new(key.name)
            .long(key.name)
            .env(settings::env_name(key.name))
            .value_name(value_name(key.kind))
            .help(key.help)
            .help_heading("Configuration keys (flag > KEYGATE_* env > file > default)")
            .action(ArgAction::Set);
        if key.secret {
            arg = arg.hide_env_values(true);
        }
        cmd.arg(arg)
    })
}

fn value_name(kind: settings::Kind) -> &'static str {
    use settings::Kind::*;
    match kind {
        Str => "TEXT",
        Bool => "BOOL",
        Num => "N",
        Duration => "DURATION",
        List => "A,B",
        Map => "K=V,..",
        Yaml => "YAML",
    }
}

fn command() -> Command {
    Command::new("keygate")
        .about(ABOUT)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(config_args(Command::new("serve").about(
            "Run the gateway (proxy, forward-auth at /oauth/auth, health, metrics)",
        )))
        .subcommand(config_args(Command::new("check-config").about(
            "Print the effective config with secrets redacted; exit 1 on any error",
        )))
        .subcommand(crate::keys::command())
        .subcommand(crate::token::command())
        .subcommand(Command::new("version").about("Print the version"))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // One crypto provider for every TLS client that asks rustls for the
    // process default (Redis over rediss://).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let matches = command().get_matches();
    match matches.subcommand() {
        Some(("keys", m)) => crate::keys::run(m),
        Some(("token", m)) => crate::token::run(m),
        Some(("version", _)) => {
            println!("keygate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(("check-config", m)) => match load(m).and_then(|loaded| {
            // Build everything `serve` builds (rules, headers, TLS files), without
            // binding or contacting anyone, so every config error shows here.
            // (A runtime, as `serve` has: the Redis client is prepared in one.)
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| settings::LoadError(format!("cannot start a runtime: {e}")))?;
            let _entered = runtime.enter();
            keygate_proxy::Gateway::new(loaded.config.clone())
                .map(|_| loaded)
                .map_err(|e| settings::LoadError(e.to_string()))
        }) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", settings::redacted_yaml(&loaded.config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    eprintln!("error: {line}");
                }
                ExitCode::FAILURE
            }
        },
        Some(("serve", m)) => match load(m) {
            Ok(loaded) => {
                let (file, overrides) = sources(m);
                serve(loaded, file, overrides)
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    eprintln!("error: {line}");
                }
                ExitCode::FAILURE
            }
        },
        _ => ExitCode::FAILURE,
    }
}

fn load(m: &ArgMatches) -> Result<Loaded, settings::LoadError> {
    let (file, overrides) = sources(m);
    settings::load(file.as_deref(), &overrides)
}

/// The config file and the environment's and command line's values (in
/// precedence order: env first, then flags, so flags win).
fn sources(m: &ArgMatches) -> (Option<PathBuf>, Vec<(&'static Key, String, Source)>) {
    let file = m.get_one::<PathBuf>("config");
    let mut env = Vec::new();
    let mut flags = Vec::new();
    for key in KEYS {
        let Some(value) = m.get_one::<String>(key.name) else {
            continue;
        };
        match m.value_source(key.name) {
            Some(ValueSource::EnvVariable) => env.push((
                key,
                value.clone(),
                Source::Env(settings::env_name(key.name)),
            )),
            Some(ValueSource::CommandLine) => {
                flags.push((key, value.clone(), Source::Flag(key.name.to_owned())))
            }
            _ => {}
        }
    }
    env.extend(flags);
    (file.cloned(), env)
}

/// Logs go to stdout through a background writer thread, so a slow stdout
/// never stalls requests; it blocks instead of dropping lines when behind.
/// With `otel-endpoint`, the spans of target `keygate::trace` go to the
/// OTLP/HTTP exporter (in batches, from its own thread) and never to the
/// log. Keep the returned guard until the process ends: dropping it flushes
/// both.
fn init_logging(config: &keygate_core::config::Config) -> Result<Telemetry, String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let is_trace_span =
        |m: &tracing::Metadata<'_>| m.is_span() && m.target().starts_with("keygate::trace");
    // The log has exactly one filter: `log-level`, with the trace spans
    // turned off (they go to the OTLP exporter only). The access log asks
    // `tracing::enabled!` whether to write its line (keygate-proxy's log.rs),
    // and a second per-layer filter on this layer (a `filter_fn`, nested or
    // combined with `and`) made that answer true at every level, so
    // `log-level: warn` still wrote a line per request.
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},keygate::trace=off", config.log_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,keygate::trace=off"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let fmt = fmt.with_filter(filter);
    let (otel, provider) = match &config.otel_endpoint {
        None => (None, None),
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig as _;
            let mut url = endpoint.trim_end_matches('/').to_owned();
            if url.matches('/').count() <= 2 {
                url.push_str("/v1/traces");
            }
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .with_endpoint(url)
                .with_timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| format!("`otel-endpoint`: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder_empty()
                        .with_service_name(config.otel_service_name.clone())
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("keygate"))
                .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
                    is_trace_span(m)
                }));
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(Telemetry {
        _log: guard,
        provider,
    })
}

/// Flushes the log and the spans when dropped.
struct Telemetry {
    _log: tracing_appender::non_blocking::WorkerGuard,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn serve(
    loaded: Loaded,
    file: Option<PathBuf>,
    overrides: Vec<(&'static Key, String, Source)>,
) -> ExitCode {
    let Loaded { config, warnings } = loaded;
    let _telemetry = match init_logging(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Requests are served by the listener's own worker threads (one event
    // loop each, `worker-threads`); this runtime runs the rest: accepting,
    // the operations port, key refresh, store and config watching.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keygate-main")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match keygate_proxy::Gateway::build(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let live: keygate_proxy::LiveGateway =
            std::sync::Arc::new(arc_swap::ArcSwap::new(gateway.clone()));
        let server = match keygate_proxy::Server::bind_live(live.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let admin = match keygate_proxy::Server::bind_admin_live(live.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let reloader = crate::reload::Reloader {
            file,
            overrides,
            live: live.clone(),
            background: gateway.start_background(),
        };
        // Not spawned: building a gateway is not provably `Send` (sqlx's
        // executors); it runs beside the listener in this task instead.
        let reloads = reloader.run();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let admin_task = admin.map(|admin| {
            tracing::info!(listen_admin = %admin.local_addr(), "admin API is serving");
            tokio::spawn(admin.run(stopped(stop_rx.clone())))
        });
        if gateway.api_keys.is_some() {
            tracing::info!(header = %gateway.config.api_keys.header, "API keys are on");
        }
        tracing::info!(listen = %server.local_addr(), version = env!("CARGO_PKG_VERSION"), "keygate is serving");
        tokio::select! {
            () = server.run(stopped(stop_rx)) => {}
            () = reloads => {}
        }
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        if let Some(keys) = &live.load().api_keys {
            keys.flush_last_used().await;
        }
        keygate_proxy::log::flush();
        tracing::info!("keygate stopped");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_is_well_formed() {
        super::command().debug_assert();
    }
}
