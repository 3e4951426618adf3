//! The deployment files under `deploy/`: every YAML file parses; the
//! Kubernetes manifests have the probes, hardening, replicas, Services and
//! Ingress annotations keygate needs; each `keygate.yaml` in a ConfigMap
//! passes the real `keygate check-config` with the secrets the manifests give
//! it; and `kubectl kustomize` renders each folder to the same objects. No
//! server and no network: `check-config` contacts nothing, and neither does
//! `kubectl kustomize` on local folders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The kustomize folders under `deploy/kubernetes/`.
const FOLDERS: [&str; 3] = ["sidecar", "gateway", "forward-auth"];

/// Every header keygate can answer forward-auth with (docs/architecture.md,
/// "Upstream headers"); the Ingress must copy or clear each of them.
const IDENTITY_HEADERS: [&str; 11] = [
    "Authorization",
    "X-Auth-Subject",
    "X-Auth-Userid",
    "X-Auth-Username",
    "X-Auth-Email",
    "X-Auth-Roles",
    "X-Auth-Groups",
    "X-Auth-ExpiresIn",
    "X-Auth-Method",
    "X-Auth-Key-Id",
    "X-Auth-Token",
];

/// Config keys that hold secrets: they belong in a Secret, not a ConfigMap.
const SECRET_KEYS: [&str; 4] = ["client-secret", "encryption-key", "store-url", "redis-url"];

/// 48 random-looking characters: a valid `api-keys` server secret.
const TEST_SERVER_SECRET: &str = "Zr8q0vB3xY7mN2pK5tW9cL4hD6fJ1sA0Qe7Ut3Wy9Io2Pa5S";
const TEST_CLIENT_SECRET: &str = "test-client-secret-9f3a71c2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn keygate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    // Tests must not inherit a developer's KEYGATE_* settings.
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

// ---------------------------------------------------------------- YAML ----

/// Every `*.yaml`/`*.yml` file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a multi-document YAML text; empty documents are skipped.
fn parse_docs(text: &str, origin: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{origin}: document {}: invalid YAML: {e}", i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn kind_of(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name_of(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn of_kind<'a>(objs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objs.iter().filter(move |o| kind_of(o) == kind)
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objs.iter()
        .find(|o| kind_of(o) == kind && name_of(o) == name)
}

/// The port of a keygate address: `:3000`, `0.0.0.0:3000`, `[::]:3000`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` has no port"))
}

// ------------------------------------------------------------- folders ----

/// A folder's objects as kustomize would emit them without transformations
/// other than the namespace: the files its `kustomization.yaml` lists.
fn load_folder(folder: &str) -> Vec<Value> {
    let dir = kubernetes_dir().join(folder);
    let kpath = dir.join("kustomization.yaml");
    let kust = parse_docs(
        &std::fs::read_to_string(&kpath).unwrap_or_else(|e| panic!("{}: {e}", kpath.display())),
        &kpath.display().to_string(),
    );
    assert_eq!(kust.len(), 1, "{}: one document", kpath.display());
    let kust = &kust[0];
    assert_eq!(kind_of(kust), "Kustomization", "{}", kpath.display());
    let namespace = str_at(kust, &["namespace"]);
    let listed: BTreeSet<String> = seq_at(kust, &["resources"])
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert!(!listed.is_empty(), "{}: no resources", kpath.display());
    // Every manifest in the folder is listed, so none is silently left out.
    let present: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed,
        present,
        "{}: `resources` must list exactly the folder's manifests",
        kpath.display()
    );
    let mut objs = Vec::new();
    for file in &listed {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        for mut obj in parse_docs(&text, &path.display().to_string()) {
            if let (Some(ns), false) = (namespace, kind_of(&obj) == "Namespace") {
                let meta = obj.get_mut("metadata").unwrap().as_mapping_mut().unwrap();
                meta.entry("namespace".into()).or_insert(ns.into());
            }
            objs.push(obj);
        }
    }
    objs
}

/// The `kubectl kustomize` rendering of a folder.
fn render_folder(folder: &str) -> Vec<Value> {
    let dir = kubernetes_dir().join(folder);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `kubectl kustomize` ({e}): this test renders deploy/kubernetes/* \
                 with kubectl; install kubectl (it needs no cluster for this)"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(
        &String::from_utf8(out.stdout).unwrap(),
        &format!("kubectl kustomize {folder}"),
    )
}

/// keygate's container in a Deployment (a plain or a native sidecar).
fn keygate_container(deployment: &Value) -> &Value {
    let pod = at(deployment, &["spec", "template", "spec"]).unwrap();
    seq_at(pod, &["containers"])
        .iter()
        .chain(seq_at(pod, &["initContainers"]))
        .find(|c| str_at(c, &["name"]) == Some("keygate"))
        .unwrap_or_else(|| {
            panic!(
                "Deployment {} has no container `keygate`",
                name_of(deployment)
            )
        })
}

/// The `keygate.yaml` a Deployment's keygate reads (from the ConfigMap
/// mounted at `/etc/keygate`), parsed.
fn keygate_config(objs: &[Value], deployment: &Value) -> Value {
    let pod = at(deployment, &["spec", "template", "spec"]).unwrap();
    let kg = keygate_container(deployment);
    let mount = seq_at(kg, &["volumeMounts"])
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == Some("/etc/keygate"))
        .expect("keygate's config is mounted at /etc/keygate");
    let volume = seq_at(pod, &["volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == str_at(mount, &["name"]))
        .expect("the /etc/keygate volume exists");
    let cm_name = str_at(volume, &["configMap", "name"]).expect("/etc/keygate is a ConfigMap");
    let cm = find(objs, "ConfigMap", cm_name)
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} is in the same folder"));
    let text = str_at(cm, &["data", "keygate.yaml"])
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has the key keygate.yaml"));
    serde_yaml_ng::from_str(text)
        .unwrap_or_else(|e| panic!("ConfigMap {cm_name}: keygate.yaml: {e}"))
}

/// A Secret's value, from `stringData` or base64 `data`.
fn secret_value(objs: &[Value], secret: &str, key: &str) -> String {
    let s = find(objs, "Secret", secret).unwrap_or_else(|| panic!("Secret {secret} exists"));
    if let Some(v) = str_at(s, &["stringData", key]) {
        return v.to_owned();
    }
    use base64::Engine as _;
    let b64 = str_at(s, &["data", key]).unwrap_or_else(|| panic!("Secret {secret} has {key}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// `(env name, Secret name, Secret key)` of the container's secret env vars.
fn secret_env(container: &Value) -> Vec<(String, String, String)> {
    seq_at(container, &["env"])
        .iter()
        .filter_map(|e| {
            let r = at(e, &["valueFrom", "secretKeyRef"])?;
            Some((
                str_at(e, &["name"])?.to_owned(),
                str_at(r, &["name"])?.to_owned(),
                str_at(r, &["key"])?.to_owned(),
            ))
        })
        .collect()
}

/// The container port a Service `targetPort` or probe `port` names, in the
/// given containers.
fn resolve_port(port: &Value, containers: &[&Value]) -> Option<u64> {
    let ports = containers.iter().flat_map(|c| seq_at(c, &["ports"]));
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => ports
            .into_iter()
            .find(|p| str_at(p, &["name"]) == Some(name))
            .and_then(|p| at(p, &["containerPort"])?.as_u64()),
        _ => None,
    }
}

fn pod_labels(deployment: &Value) -> &Value {
    at(deployment, &["spec", "template", "metadata", "labels"]).unwrap()
}

/// True when every `matchLabels` entry is among the labels.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_mapping() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// -------------------------------------------------------------- checks ----

/// The properties every folder's objects must have, raw or rendered.
fn check_folder(folder: &str, objs: &[Value]) {
    for d in of_kind(objs, "Deployment") {
        check_deployment(folder, objs, d);
    }
    for svc in of_kind(objs, "Service") {
        check_service(folder, objs, svc);
    }
    match folder {
        "gateway" => check_gateway(objs),
        "forward-auth" => {
            assert_eq!(
                of_kind(objs, "Ingress").count(),
                1,
                "forward-auth: one Ingress"
            );
        }
        _ => {}
    }
}

fn check_deployment(folder: &str, objs: &[Value], d: &Value) {
    let ctx = format!("{folder}: Deployment {}", name_of(d));
    let pod = at(d, &["spec", "template", "spec"]).unwrap();
    let kg = keygate_container(d);
    let config = keygate_config(objs, d);

    assert!(
        selects(
            at(d, &["spec", "selector", "matchLabels"]).unwrap(),
            pod_labels(d)
        ),
        "{ctx}: selector matches the pod's labels"
    );
    let args: Vec<&str> = seq_at(kg, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", "/etc/keygate/keygate.yaml"],
        "{ctx}: args"
    );
    assert!(
        str_at(kg, &["image"]).is_some_and(|i| !i.is_empty()),
        "{ctx}: keygate has an image"
    );

    // Probes: liveness /oauth/health, readiness /oauth/ready, on the named
    // port that is keygate's `listen` port.
    let listen = port_of(str_at(&config, &["listen"]).expect("keygate.yaml sets listen"));
    for (probe, path) in [
        ("livenessProbe", "/oauth/health"),
        ("readinessProbe", "/oauth/ready"),
    ] {
        let get = at(kg, &[probe, "httpGet"]).unwrap_or_else(|| panic!("{ctx}: {probe}.httpGet"));
        assert_eq!(str_at(get, &["path"]), Some(path), "{ctx}: {probe} path");
        let port = get.get("port").unwrap();
        assert!(port.is_string(), "{ctx}: {probe} uses the named port");
        assert_eq!(
            resolve_port(port, &[kg]),
            Some(u64::from(listen)),
            "{ctx}: {probe} port is keygate's listen port {listen}"
        );
        assert!(
            str_at(get, &["scheme"]).is_none_or(|s| s == "HTTP"),
            "{ctx}: {probe} is plain HTTP (no tls-cert in keygate.yaml)"
        );
    }

    // Hardening.
    let pod_sc = pod.get("securityContext");
    let sc = kg
        .get("securityContext")
        .unwrap_or_else(|| panic!("{ctx}: keygate has a securityContext"));
    let either = |key: &str| {
        sc.get(key)
            .or_else(|| pod_sc.and_then(|p| p.get(key)))
            .cloned()
    };
    assert_eq!(
        either("runAsNonRoot"),
        Some(Value::Bool(true)),
        "{ctx}: runAsNonRoot"
    );
    if let Some(uid) = either("runAsUser") {
        assert_ne!(uid.as_u64(), Some(0), "{ctx}: runAsUser is not root");
    }
    assert_eq!(
        sc.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{ctx}: allowPrivilegeEscalation: false"
    );
    assert_eq!(
        sc.get("readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{ctx}: readOnlyRootFilesystem"
    );
    assert!(
        seq_at(sc, &["capabilities", "drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL")),
        "{ctx}: capabilities drop ALL"
    );
    assert_eq!(
        either("seccompProfile")
            .as_ref()
            .and_then(|s| str_at(s, &["type"])),
        Some("RuntimeDefault"),
        "{ctx}: seccomp RuntimeDefault"
    );
    assert!(
        seq_at(kg, &["securityContext", "capabilities", "add"]).is_empty()
            && sc.get("privileged") != Some(&Value::Bool(true)),
        "{ctx}: no added capabilities, not privileged"
    );

    // The kubelet's grace period covers keygate's own (checked again with
    // the effective value in `every_keygate_yaml_passes_check_config`).
    let grace = str_at(&config, &["shutdown-grace-period"]).map_or(Duration::from_secs(30), |g| {
        humantime::parse_duration(g).unwrap()
    });
    check_grace(&ctx, d, grace);

    // Every secret the container reads exists, with that key.
    for (env, secret, key) in secret_env(kg) {
        assert!(
            env.starts_with("KEYGATE_"),
            "{ctx}: {env} is a keygate setting"
        );
        secret_value(objs, &secret, &key);
    }

    // Secrets are not written into the ConfigMap.
    for key in SECRET_KEYS {
        assert!(
            config.get(key).is_none(),
            "{ctx}: `{key}` belongs in a Secret (KEYGATE_{}), not in keygate.yaml",
            key.to_uppercase().replace('-', "_")
        );
    }
    assert!(
        at(&config, &["api-keys", "server-secret"]).is_none(),
        "{ctx}: api-keys.server-secret belongs in a Secret file (server-secret-file)"
    );

    // The server secret file is a mounted Secret key.
    if let Some((secret, key)) = server_secret_source(objs, d) {
        secret_value(objs, &secret, &key);
    }
}

/// The Secret name and key mounted as `api-keys.server-secret-file`, if the
/// config names one.
fn server_secret_source(objs: &[Value], d: &Value) -> Option<(String, String)> {
    let ctx = format!("Deployment {}", name_of(d));
    let pod = at(d, &["spec", "template", "spec"]).unwrap();
    let kg = keygate_container(d);
    let config = keygate_config(objs, d);
    let file = Path::new(str_at(&config, &["api-keys", "server-secret-file"])?);
    let dir = file.parent().unwrap().to_str().unwrap();
    let base = file.file_name().unwrap().to_str().unwrap();
    let mount = seq_at(kg, &["volumeMounts"])
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == Some(dir))
        .unwrap_or_else(|| panic!("{ctx}: {dir} (server-secret-file) is mounted"));
    let volume = seq_at(pod, &["volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == str_at(mount, &["name"]))
        .unwrap_or_else(|| panic!("{ctx}: the volume mounted at {dir} exists"));
    let secret = str_at(volume, &["secret", "secretName"])
        .unwrap_or_else(|| panic!("{ctx}: {dir} is a Secret volume"));
    let items = seq_at(volume, &["secret", "items"]);
    let key = if items.is_empty() {
        base
    } else {
        items
            .iter()
            .find(|i| str_at(i, &["path"]) == Some(base))
            .and_then(|i| str_at(i, &["key"]))
            .unwrap_or_else(|| panic!("{ctx}: the Secret volume provides {base}"))
    };
    Some((secret.to_owned(), key.to_owned()))
}

fn check_service(folder: &str, objs: &[Value], svc: &Value) {
    let ctx = format!("{folder}: Service {}", name_of(svc));
    let selector = at(svc, &["spec", "selector"]).unwrap();
    let d = of_kind(objs, "Deployment")
        .find(|d| selects(selector, pod_labels(d)))
        .unwrap_or_else(|| panic!("{ctx}: selects a Deployment's pods"));
    let kg = keygate_container(d);
    let config = keygate_config(objs, d);
    let listen = u64::from(port_of(str_at(&config, &["listen"]).unwrap()));
    let admin = str_at(&config, &["listen-admin"]).map(|a| u64::from(port_of(a)));
    assert!(
        str_at(svc, &["spec", "type"]).is_none_or(|t| t == "ClusterIP"),
        "{ctx}: ClusterIP"
    );
    let targets: Vec<u64> = seq_at(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let t = p.get("targetPort").or_else(|| p.get("port")).unwrap();
            // Only keygate's ports: nothing reaches the application around it.
            resolve_port(t, &[kg])
                .unwrap_or_else(|| panic!("{ctx}: targetPort {t:?} is a port of keygate"))
        })
        .collect();
    if name_of(svc).ends_with("-admin") {
        assert_eq!(targets, [admin.unwrap()], "{ctx}: exactly the admin port");
    } else {
        assert!(
            targets.contains(&listen),
            "{ctx}: targets keygate's listen port"
        );
        assert!(
            admin.is_none_or(|a| !targets.contains(&a)),
            "{ctx}: the public Service must not expose the admin API"
        );
    }
}

fn check_gateway(objs: &[Value]) {
    let d = find(objs, "Deployment", "keygate").expect("gateway: Deployment keygate");
    let pod = at(d, &["spec", "template", "spec"]).unwrap();
    let kg = keygate_container(d);
    let config = keygate_config(objs, d);

    let replicas = at(d, &["spec", "replicas"])
        .and_then(Value::as_u64)
        .unwrap_or(1);
    assert!(
        replicas >= 2,
        "gateway: at least 2 replicas, has {replicas}"
    );
    assert!(
        !seq_at(pod, &["topologySpreadConstraints"]).is_empty()
            || at(pod, &["affinity", "podAntiAffinity"]).is_some(),
        "gateway: replicas are spread (topologySpreadConstraints or podAntiAffinity)"
    );
    for tsc in seq_at(pod, &["topologySpreadConstraints"]) {
        assert!(
            selects(
                at(tsc, &["labelSelector", "matchLabels"]).unwrap(),
                pod_labels(d)
            ),
            "gateway: topology spread selects keygate's pods"
        );
    }
    for key in ["cpu", "memory"] {
        assert!(
            at(kg, &["resources", "requests", key]).is_some(),
            "gateway: requests.{key}"
        );
    }
    assert!(
        at(kg, &["resources", "limits", "memory"]).is_some(),
        "gateway: limits.memory"
    );

    // A PodDisruptionBudget that lets drains proceed one pod at a time.
    let pdb = of_kind(objs, "PodDisruptionBudget")
        .find(|p| {
            selects(
                at(p, &["spec", "selector", "matchLabels"]).unwrap(),
                pod_labels(d),
            )
        })
        .expect("gateway: a PodDisruptionBudget selects keygate's pods");
    let max_unavailable = at(pdb, &["spec", "maxUnavailable"]).and_then(Value::as_u64);
    let min_available = at(pdb, &["spec", "minAvailable"]).and_then(Value::as_u64);
    assert!(
        max_unavailable.is_some_and(|m| m >= 1 && m < replicas)
            || min_available.is_some_and(|m| m >= 1 && m < replicas),
        "gateway: the PDB keeps a replica up and still allows evictions"
    );

    // Shared state: PostgreSQL and Redis, from the Secret.
    let env = secret_env(kg);
    let from = |name: &str| {
        let (_, secret, key) = env
            .iter()
            .find(|(e, _, _)| e == name)
            .unwrap_or_else(|| panic!("gateway: keygate gets {name} from a Secret"));
        secret_value(objs, secret, key)
    };
    let store = from("KEYGATE_STORE_URL");
    assert!(
        store.starts_with("postgres://") || store.starts_with("postgresql://"),
        "gateway: replicas share a PostgreSQL store, not `{store}`"
    );
    let redis = from("KEYGATE_REDIS_URL");
    assert!(
        redis.starts_with("redis://") || redis.starts_with("rediss://"),
        "gateway: redis-url `{redis}`"
    );
    from("KEYGATE_ENCRYPTION_KEY");
    from("KEYGATE_CLIENT_SECRET");
    assert_eq!(
        str_at(&config, &["session-store"]),
        Some("redis"),
        "gateway: session-store"
    );
    assert!(
        str_at(&config, &["api-keys", "server-secret-file"]).is_some(),
        "gateway: API keys on, with the server secret from a file"
    );

    // The admin API has its own Service.
    let admin = find(objs, "Service", "keygate-admin").expect("gateway: Service keygate-admin");
    let admin_port = port_of(str_at(&config, &["listen-admin"]).expect("gateway: listen-admin"));
    assert!(
        seq_at(admin, &["spec", "ports"]).iter().any(|p| {
            let t = p.get("targetPort").or_else(|| p.get("port")).unwrap();
            resolve_port(t, &[kg]) == Some(u64::from(admin_port))
        }),
        "gateway: keygate-admin targets port {admin_port}"
    );
    find(objs, "Service", "keygate").expect("gateway: Service keygate");
}

/// The grace period, after SIGTERM, that the kubelet gives before SIGKILL
/// must exceed keygate's own (plus any preStop pause before SIGTERM).
fn check_grace(ctx: &str, deployment: &Value, shutdown_grace: Duration) {
    let kg = keygate_container(deployment);
    let pre_stop = at(kg, &["lifecycle", "preStop", "sleep", "seconds"])
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let tgps = at(
        deployment,
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    )
    .and_then(Value::as_u64)
    .unwrap_or(30);
    assert!(
        Duration::from_secs(tgps) > shutdown_grace + Duration::from_secs(pre_stop),
        "{ctx}: terminationGracePeriodSeconds {tgps} must exceed shutdown-grace-period \
         {shutdown_grace:?} + preStop {pre_stop}s"
    );
}

// --------------------------------------------------------------- tests ----

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&repo().join("deploy"));
    assert!(files.len() >= 12, "found only {files:?}");
    let mut kinds = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs = parse_docs(&text, &file.display().to_string());
        assert!(!docs.is_empty(), "{}: no documents", file.display());
        if !file.starts_with(kubernetes_dir()) {
            continue;
        }
        for doc in &docs {
            assert!(
                str_at(doc, &["apiVersion"]).is_some() && !kind_of(doc).is_empty(),
                "{}: every document has apiVersion and kind",
                file.display()
            );
            assert!(
                kind_of(doc) == "Kustomization" || !name_of(doc).is_empty(),
                "{}: every object has a name",
                file.display()
            );
            kinds.insert(kind_of(doc).to_owned());
            // keygate.yaml inside a ConfigMap is YAML too.
            if let Some(cfg) = str_at(doc, &["data", "keygate.yaml"]) {
                parse_docs(cfg, &format!("{}: keygate.yaml", file.display()));
            }
        }
    }
    for kind in [
        "Kustomization",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "Ingress",
    ] {
        assert!(kinds.contains(kind), "no {kind} under deploy/");
    }
}

#[test]
fn manifests_have_probes_hardening_and_services() {
    for folder in FOLDERS {
        check_folder(folder, &load_folder(folder));
    }
    // The sidecar: the application is reached through keygate only.
    let objs = load_folder("sidecar");
    let d = of_kind(&objs, "Deployment")
        .next()
        .expect("sidecar: a Deployment");
    let config = keygate_config(&objs, d);
    let upstream = str_at(&config, &["upstream-url"]).unwrap();
    assert!(
        upstream.starts_with("http://127.0.0.1:"),
        "sidecar: upstream on loopback, not `{upstream}`"
    );
    for c in seq_at(d, &["spec", "template", "spec", "containers"]) {
        if str_at(c, &["name"]) != Some("keygate") {
            assert!(
                seq_at(c, &["ports"]).is_empty(),
                "sidecar: the application exposes no port"
            );
        }
    }
}

#[test]
fn ingress_asks_the_gateway_with_the_original_request() {
    let gateway = load_folder("gateway");
    let d = find(&gateway, "Deployment", "keygate").unwrap();
    let config = keygate_config(&gateway, d);
    let objs = load_folder("forward-auth");
    let ing = of_kind(&objs, "Ingress")
        .next()
        .expect("forward-auth: an Ingress");
    let ann = |key: &str| {
        str_at(
            ing,
            &[
                "metadata",
                "annotations",
                &format!("nginx.ingress.kubernetes.io/{key}"),
            ],
        )
        .unwrap_or_else(|| panic!("Ingress annotation {key}"))
    };

    // auth-url: the gateway's Service, port and /oauth/auth.
    let url = ann("auth-url");
    assert!(
        url.ends_with("/oauth/auth"),
        "auth-url `{url}` ends in /oauth/auth"
    );
    let authority = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("auth-url `{url}` is http://host:port/…"));
    let (host, port) = authority.rsplit_once(':').expect("auth-url names the port");
    let mut parts = host.split('.');
    let (svc_name, svc_ns) = (parts.next().unwrap(), parts.next().unwrap());
    assert_eq!(
        parts.collect::<Vec<_>>(),
        ["svc", "cluster", "local"],
        "auth-url host"
    );
    let svc = find(&gateway, "Service", svc_name)
        .unwrap_or_else(|| panic!("auth-url names Service {svc_name} of ../gateway"));
    assert_eq!(
        str_at(svc, &["metadata", "namespace"]),
        Some(svc_ns),
        "auth-url namespace"
    );
    let svc_port = seq_at(svc, &["spec", "ports"])
        .iter()
        .find(|p| at(p, &["port"]).and_then(Value::as_u64) == port.parse().ok())
        .unwrap_or_else(|| panic!("Service {svc_name} has port {port}"));
    let target = svc_port.get("targetPort").unwrap();
    assert_eq!(
        resolve_port(target, &[keygate_container(d)]),
        Some(u64::from(port_of(str_at(&config, &["listen"]).unwrap()))),
        "auth-url reaches keygate's listen port, where /oauth/auth is served"
    );

    // Every header keygate answers with, and the API-key header, is copied
    // or cleared, so no client-sent value reaches the application.
    let listed: BTreeSet<String> = ann("auth-response-headers")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let key_header = str_at(&config, &["api-keys", "header"]).unwrap_or("X-API-Key");
    for h in IDENTITY_HEADERS.iter().copied().chain([key_header]) {
        assert!(
            listed.contains(&h.to_ascii_lowercase()),
            "auth-response-headers lacks {h}"
        );
    }

    // keygate sees the original method and URI: ingress-nginx sets
    // X-Original-Method itself; the snippet sets the URI and overwrites the
    // X-Forwarded pair keygate reads first.
    let snippet: Vec<String> = ann("auth-snippet")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in [
        "proxy_set_header X-Original-URI $request_uri;",
        "proxy_set_header X-Forwarded-Method $request_method;",
        "proxy_set_header X-Forwarded-Uri $request_uri;",
    ] {
        assert!(
            snippet.iter().any(|l| l == line),
            "auth-snippet lacks `{line}`"
        );
    }
    assert!(
        !seq_at(&config, &["trusted-proxies"]).is_empty(),
        "the gateway lists the ingress controller in trusted-proxies"
    );
}

/// Runs `keygate check-config` on a Deployment's keygate.yaml with the
/// given values for its secret env vars and server-secret file.
fn check_config(
    objs: &[Value],
    d: &Value,
    dir: &Path,
    secret: impl Fn(&str, &str) -> String,
    server_secret: &str,
) -> std::process::Output {
    let kg = keygate_container(d);
    let mut config = keygate_config(objs, d);
    if let Some(api_keys) = config.get_mut("api-keys")
        && api_keys.get("server-secret-file").is_some()
    {
        let file = dir.join("server-secret");
        std::fs::write(&file, format!("{server_secret}\n")).unwrap();
        api_keys["server-secret-file"] = file.to_str().unwrap().into();
    }
    let path = dir.join("keygate.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let mut cmd = keygate();
    cmd.args(["check-config", "--config"]).arg(&path);
    for e in seq_at(kg, &["env"]) {
        if let (Some(name), Some(value)) = (str_at(e, &["name"]), str_at(e, &["value"])) {
            cmd.env(name, value);
        }
    }
    for (env, secret_name, key) in secret_env(kg) {
        cmd.env(env, secret(&secret_name, &key));
    }
    cmd.output().unwrap()
}

#[test]
fn every_keygate_yaml_passes_check_config() {
    use base64::Engine as _;
    let material: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(73).wrapping_add(41))
        .collect();
    let encryption_key = base64::engine::general_purpose::STANDARD.encode(material);
    let mut checked = 0;
    for folder in FOLDERS {
        let objs = load_folder(folder);
        for d in of_kind(&objs, "Deployment") {
            let ctx = format!("{folder}: Deployment {}", name_of(d));
            let dir = tempfile::tempdir().unwrap();
            // The deployable values: the manifests' URLs, real-looking secrets.
            let out = check_config(
                &objs,
                d,
                dir.path(),
                |secret, key| match key {
                    "client-secret" => TEST_CLIENT_SECRET.to_owned(),
                    "encryption-key" => encryption_key.clone(),
                    "store-url" | "redis-url" => secret_value(&objs, secret, key),
                    other => panic!("{ctx}: no test value for Secret key `{other}`"),
                },
                TEST_SERVER_SECRET,
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{ctx}: keygate check-config failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for secret in [
                TEST_CLIENT_SECRET,
                &encryption_key,
                TEST_SERVER_SECRET,
                "REPLACE-ME",
            ] {
                assert!(
                    !stdout.contains(secret),
                    "{ctx}: check-config printed a secret"
                );
            }
            let effective: Value = serde_yaml_ng::from_str(&stdout).unwrap();
            let grace =
                humantime::parse_duration(str_at(&effective, &["shutdown-grace-period"]).unwrap())
                    .unwrap();
            check_grace(&ctx, d, grace);
            if folder == "gateway" {
                assert!(
                    str_at(&effective, &["store-url"])
                        .is_some_and(|u| u.starts_with("postgres://keygate:[redacted]@")),
                    "{ctx}: effective store-url:\n{stdout}"
                );
                assert!(
                    str_at(&effective, &["redis-url"]).is_some(),
                    "{ctx}: redis-url"
                );
                assert_eq!(str_at(&effective, &["session-store"]), Some("redis"));
                assert!(str_at(&effective, &["listen-admin"]).is_some());
            }

            // As shipped, each placeholder keygate checks is refused on its
            // own, so the example Secret cannot go live unchanged.
            let good = |secret: &str, key: &str| match key {
                "encryption-key" => encryption_key.clone(),
                _ => secret_value(&objs, secret, key),
            };
            if let Some((secret, key)) = server_secret_source(&objs, d) {
                let placeholder = secret_value(&objs, &secret, &key);
                let out = check_config(&objs, d, dir.path(), good, &placeholder);
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.code() == Some(1) && err.contains("server-secret"),
                    "{ctx}: the example server-secret `{placeholder}` must be refused: {err}"
                );
            }
            if secret_env(keygate_container(d))
                .iter()
                .any(|(_, _, key)| key == "encryption-key")
            {
                let out = check_config(
                    &objs,
                    d,
                    dir.path(),
                    |secret, key| secret_value(&objs, secret, key),
                    TEST_SERVER_SECRET,
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.code() == Some(1) && err.contains("encryption-key"),
                    "{ctx}: the example encryption-key must be refused: {err}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked {checked} Deployments");
}

#[test]
fn kubectl_kustomize_renders_each_folder() {
    for folder in FOLDERS {
        let raw = load_folder(folder);
        let rendered = render_folder(folder);
        let ids = |objs: &[Value]| -> BTreeSet<(String, String, Option<String>)> {
            objs.iter()
                .map(|o| {
                    (
                        kind_of(o).to_owned(),
                        name_of(o).to_owned(),
                        str_at(o, &["metadata", "namespace"]).map(str::to_owned),
                    )
                })
                .collect()
        };
        assert_eq!(ids(&rendered), ids(&raw), "{folder}: rendered objects");
        check_folder(folder, &rendered);
        // The images: keygate's is the one kustomization.yaml names.
        for d in of_kind(&rendered, "Deployment") {
            let image = str_at(keygate_container(d), &["image"]).unwrap();
            assert!(
                image.contains(':') && image != "keygate",
                "{folder}: keygate's image `{image}` carries a tag"
            );
        }
    }
}
