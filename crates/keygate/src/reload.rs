//! Reloading the configuration without a restart: on SIGHUP, and with
//! `watch-config` when the config file or the API keys' server-secret file
//! changes. The new configuration is loaded and checked exactly as
//! `check-config` does; a bad one keeps the running one and logs every
//! error. A good one becomes a new gateway, swapped in whole: requests in
//! flight finish under the old one, new requests get the new one. The
//! provider and its keys are taken over when its settings are unchanged;
//! otherwise the new gateway is swapped in only once its provider's keys
//! have loaded. `keygate_config_reloads_total{result}` counts reloads
//! (`ok`) and refusals (`error`).
//!
//! The listeners' own settings change only with a restart: their address,
//! TLS, connection bounds and logging. A reload that changes one of them
//! says so and keeps the running value.

use crate::settings::{self, Key, Source};
use keygate_core::config::Config;
use keygate_proxy::{Gateway, LiveGateway};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// How often `watch-config` looks at the files.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What a reload needs: where the configuration came from, the gateway
/// being served, and its background work.
pub struct Reloader {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// The environment's and the command line's values, which win over the
    /// file's (read once, at start: a process's environment does not change).
    pub overrides: Vec<(&'static Key, String, Source)>,
    /// The gateway the listeners serve.
    pub live: LiveGateway,
    /// The running gateway's background work (key refresh, store watch).
    pub background: JoinHandle<()>,
}

impl Reloader {
    /// Reloads on SIGHUP (and on file changes with `watch-config`) until
    /// the process ends.
    pub async fn run(mut self) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload on signal is off");
                None
            }
        };
        let watch = self.live.load().config.watch_config;
        let mut seen = self.fingerprint();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signal = async {
                match &mut hup {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<()>();
            tokio::select! {
                () = signal => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.reload().await;
                    seen = self.fingerprint();
                }
                _ = tick.tick(), if watch => {
                    let now = self.fingerprint();
                    if now != seen {
                        seen = now;
                        tracing::info!("a configuration file changed: reloading the configuration");
                        self.reload().await;
                    }
                }
            }
        }
    }

    /// One reload; true when the new configuration is being served.
    pub async fn reload(&mut self) -> bool {
        match self.try_reload().await {
            Ok(()) => {
                metrics::counter!("keygate_config_reloads_total", "result" => "ok").increment(1);
                tracing::info!("configuration reloaded");
                true
            }
            Err(errors) => {
                metrics::counter!("keygate_config_reloads_total", "result" => "error").increment(1);
                for line in errors.lines() {
                    tracing::error!("reload refused, the running configuration stays: {line}");
                }
                false
            }
        }
    }

    async fn try_reload(&mut self) -> Result<(), String> {
        let loaded =
            settings::load(self.file.as_deref(), &self.overrides).map_err(|e| e.to_string())?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let old = self.live.load_full();
        let mut config = loaded.config;
        keep_restart_only(&old.config, &mut config);
        let new = Gateway::build_after(config, Some(&old))
            .await
            .map_err(|e| e.to_string())?;
        let background = new.start_background();
        if !new.same_provider(&old) {
            let wait = (new.config.openid_provider_timeout * 2).max(Duration::from_secs(5));
            if !keys_loaded(&new, wait).await {
                background.abort();
                return Err(format!(
                    "`discovery-url`: the new provider's keys did not load within {}s",
                    wait.as_secs()
                ));
            }
        }
        self.live.store(Arc::clone(&new));
        std::mem::replace(&mut self.background, background).abort();
        if let Some(keys) = &old.api_keys {
            keys.flush_last_used().await;
        }
        Ok(())
    }

    /// The modification time and size of each watched file (the config
    /// file and the server-secret file, through symlinks, as Kubernetes
    /// mounts them).
    fn fingerprint(&self) -> Vec<Option<(SystemTime, u64)>> {
        let live = self.live.load();
        let mut files: Vec<&Path> = Vec::new();
        if let Some(f) = &self.file {
            files.push(f);
        }
        if let Some(f) = &live.config.api_keys.server_secret_file {
            files.push(f);
        }
        files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// Waits until `gateway`'s provider has keys, at most `wait`.
async fn keys_loaded(gateway: &Gateway, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while gateway.verifier.provider().keys().is_none() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Puts the running values back into the keys that change only with a
/// restart, warning about each one that the new file changes.
fn keep_restart_only(old: &Config, new: &mut Config) {
    macro_rules! keep {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if old.$field != new.$field {
                tracing::warn!(key = $key, "`{}` changes only with a restart; the running value stays", $key);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(
        listen => "listen",
        listen_admin => "listen-admin",
        tls_cert => "tls-cert",
        tls_private_key => "tls-private-key",
        server_read_header_timeout => "server-read-header-timeout",
        server_idle_timeout => "server-idle-timeout",
        max_connections => "max-connections",
        worker_threads => "worker-threads",
        max_concurrent_requests => "max-concurrent-requests",
        max_header_size => "max-header-size",
        shutdown_grace_period => "shutdown-grace-period",
        log_format => "log-format",
        log_level => "log-level",
        otel_endpoint => "otel-endpoint",
        otel_service_name => "otel-service-name",
        watch_config => "watch-config",
    );
}
