//! [`KeygateProcess`]: the keygate binary running `serve` in a child
//! process, its JSON log lines collected, for what only the binary does
//! (signals, reload, the telemetry it installs).

use crate::client;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `keygate serve --config FILE` in a child process (killed on drop).
pub struct KeygateProcess {
    child: Child,
    /// `http://` + the address it listens on.
    pub base: String,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl KeygateProcess {
    /// Starts `bin` (`env!("CARGO_BIN_EXE_keygate")`) with the config file
    /// (which must say `log-format: json`) and waits until it is ready.
    pub async fn start(bin: &str, config: &Path) -> KeygateProcess {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("KEYGATE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let mut process = KeygateProcess {
            child,
            base: String::new(),
            lines,
        };
        let serving = process
            .wait_for_log(|v| v["message"] == "keygate is serving")
            .await;
        process.base = format!("http://{}", serving["listen"].as_str().unwrap());
        let http = client();
        for _ in 0..200 {
            let ready = http.get(process.url("/oauth/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keygate never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The first log line `want` accepts, waiting up to 20 s for it.
    pub async fn wait_for_log(
        &self,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        for _ in 0..400 {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| want(v)) {
                return v.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no such log line in: {:#?}", self.lines.lock().unwrap());
    }

    /// How many log lines' messages contain `needle`.
    pub fn logged(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .count()
    }

    /// Sends a signal (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// SIGTERM, then waits for the exit (at most 30 s); true on status 0.
    pub fn stop(&mut self) -> bool {
        self.signal("TERM");
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("keygate did not exit after SIGTERM");
    }

    /// The public `/oauth/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.url("/oauth/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for KeygateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
