//! Every YAML block in the README and `docs/` that is a keygate config loads
//! as written with the real `keygate check-config`. A block may be a part of
//! a config (the `api-keys:` section alone): the keys every config needs
//! (`discovery-url`, `client-id`, `upstream-url`) are then given through the
//! environment, which a file's own value always beats. What a block says to
//! take from elsewhere is given too: each `${VAR}` it names without a default
//! gets a test value, and the server-secret file it names is made in a
//! temporary directory. Kubernetes manifests and Traefik's dynamic config are
//! not keygate configs; a ConfigMap's `keygate.yaml` is one and is checked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Markdown files whose YAML blocks are checked.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut dirs = vec![repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `(line, text)` of each fenced block marked `yaml` or `yml`.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut open {
            None if fence == "```yaml" || fence == "```yml" => open = Some((i + 1, String::new())),
            None => {}
            Some(_) if fence.starts_with("```") => blocks.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "a yaml block is never closed");
    blocks
}

/// The keygate configs a block holds: itself, or the `keygate.yaml` of a
/// ConfigMap among its documents.
fn keygate_configs(block: &str, origin: &str) -> Vec<String> {
    let mut configs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(block) {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let Value::Mapping(map) = &value else {
            panic!("{origin}: a YAML block that is not a mapping");
        };
        if map.contains_key("apiVersion") {
            if let Some(Value::String(config)) =
                value.get("data").and_then(|d| d.get("keygate.yaml"))
            {
                configs.push(config.clone());
            }
        } else if map.contains_key("http") {
            // Traefik's dynamic configuration (docs/forward-auth.md).
        } else {
            configs.push(block.to_owned());
        }
    }
    configs
}

/// The variables a config names as `${VAR}` without a default.
fn required_variables(config: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = config;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let end = after.find('}').unwrap_or(after.len());
        let inside = &after[..end];
        if !inside.contains(":-") && !rest[..at].ends_with('$') {
            names.push(inside.to_owned());
        }
        rest = &after[end..];
    }
    names
}

/// A test value for a variable a doc tells the reader to set.
fn value_for(variable: &str, origin: &str) -> String {
    match variable {
        // 32 bytes, base64: an encryption key.
        "SESSION_KEY" => "q83vEjRWeJC4Wtj2xv90Ld7OzXiEpvD2NahSMsUZv8k=".into(),
        "FRONTEND_SECRET" | "KEYGATE_CLIENT_SECRET" | "CLIENT_SECRET" => {
            "a-client-secret-from-the-environment".into()
        }
        other => panic!("{origin}: no test value for `${{{other}}}`: add one to tests/docs.rs"),
    }
}

const SERVER_SECRET: &str = "Zr8q0vB3xY7mN2pK5tW9cL4hD6fJ1sA0Qe7Ut3Wy9Io2Pa5S";

fn check(config: &str, origin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut value: Value = serde_yaml_ng::from_str(config).unwrap();
    if let Some(file) = value
        .get_mut("api-keys")
        .and_then(|a| a.get_mut("server-secret-file"))
    {
        let path = dir.path().join("server-secret");
        std::fs::write(&path, format!("{SERVER_SECRET}\n")).unwrap();
        *file = path.to_str().unwrap().into();
    }
    let path = dir.path().join("keygate.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&value).unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["check-config", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env(
            "KEYGATE_DISCOVERY_URL",
            "https://sso.example.com/realms/acme",
        )
        .env("KEYGATE_CLIENT_ID", "keygate")
        .env("KEYGATE_UPSTREAM_URL", "http://127.0.0.1:8080");
    for variable in required_variables(config) {
        cmd.env(&variable, value_for(&variable, origin));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{origin}: this config does not load as written:\n{config}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_config_in_the_docs_loads_as_written() {
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, block) in yaml_blocks(&text) {
            let origin = format!("{name}:{line}");
            for config in keygate_configs(&block, &origin) {
                check(&config, &origin);
                checked += 1;
            }
        }
    }
    // The README's, config.md's and keycloak.md's at least.
    assert!(checked >= 15, "only {checked} configs found");
}

#[test]
fn a_config_that_does_not_load_fails_the_check() {
    // The check itself can fail: a typo in a block is caught.
    let result = std::panic::catch_unwind(|| check("upstrem-url: http://x\n", "example"));
    assert!(result.is_err());
    assert_eq!(
        required_variables("a: ${ONE}\nb: ${TWO:-x}\nc: $${THREE}\n"),
        ["ONE"]
    );
}
