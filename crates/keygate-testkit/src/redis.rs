//! [`RedisServer`]: a private Redis server on loopback per test, plain or TLS.

use crate::free_port;
use crate::freeze::{comm, process_tree, signal_all};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const NO_REDIS: &str = "redis-server not found (looked for $KEYGATE_REDIS_SERVER, \
    /usr/bin/redis-server and PATH): run ./dev/test.sh, which installs Debian's \
    `redis-server` package";

fn redis_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KEYGATE_REDIS_SERVER") {
        return PathBuf::from(bin);
    }
    let default = PathBuf::from("/usr/bin/redis-server");
    if default.exists() {
        return default;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("redis-server"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| panic!("{NO_REDIS}"))
}

/// A Redis server of its own on 127.0.0.1, with an append-only file in a
/// temporary directory (so [`RedisServer::stop_server`] and
/// [`RedisServer::start_again`] keep the data, as a production Redis with
/// persistence would). Stopped and removed on drop; if the test process dies,
/// the server sees its stdin close and shuts down.
pub struct RedisServer {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    stopped: Vec<(Child, Option<ChildStdin>)>,
    frozen: bool,
    dir: tempfile::TempDir,
    /// With TLS only: the server's certificate, key and the CA that signed it.
    tls: Option<[PathBuf; 3]>,
}

impl RedisServer {
    /// Starts a server (panics with instructions when Redis is missing).
    pub async fn start() -> RedisServer {
        RedisServer::start_with(None).await
    }

    /// Starts a server that speaks TLS only (`rediss://`), with a
    /// certificate for 127.0.0.1 issued by a CA of its own: its PEM file is
    /// [`RedisServer::ca`].
    pub async fn start_tls() -> RedisServer {
        let certs = tempfile::Builder::new()
            .prefix("keygate-redis-tls-")
            .tempdir()
            .unwrap();
        let files = make_test_certificates(certs.path());
        // The certificates stay in the server's own directory.
        let mut server = RedisServer::start_with(Some(files.clone())).await;
        let dir = server.dir.path().to_owned();
        let moved = files.map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(&f, &to).unwrap();
            to
        });
        server.tls = Some(moved);
        server
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|[_, _, ca]| ca.as_path())
    }

    async fn start_with(tls: Option<[PathBuf; 3]>) -> RedisServer {
        let mut last_log = String::new();
        // A port picked free may be taken before redis binds it: retry.
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("keygate-redis-")
                .tempdir()
                .unwrap();
            let port = free_port();
            let child = spawn_redis(dir.path(), port, tls.as_ref());
            let mut server = RedisServer {
                port,
                child,
                stdin: None,
                stopped: Vec::new(),
                frozen: false,
                dir,
                tls: tls.clone(),
            };
            server.stdin = server.child.stdin.take();
            if server.wait_ready().await {
                return server;
            }
            last_log =
                std::fs::read_to_string(server.dir.path().join("redis.log")).unwrap_or_default();
        }
        panic!("redis-server did not start:\n{last_log}");
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if let Some([_, _, ca]) = &self.tls {
                let pong = Command::new("redis-cli")
                    .args(["--tls", "--cacert"])
                    .arg(ca)
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
                    .output()
                    .is_ok_and(|o| o.stdout.starts_with(b"PONG"));
                if pong {
                    return true;
                }
            } else if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Write as _;
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf)
                        && buf[..n].starts_with(b"+PONG")
                    {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Stops the server as an outage would (it writes its append-only file
    /// and exits); [`RedisServer::start_again`] brings it back with its data.
    pub fn stop_server(&mut self) {
        self.stop();
        let placeholder = Command::new("true").spawn().unwrap();
        let old = std::mem::replace(&mut self.child, placeholder);
        self.stopped.push((old, None));
    }

    /// Starts the server again on the same port with the same data.
    pub async fn start_again(&mut self) {
        let _ = self.child.wait();
        self.child = spawn_redis(self.dir.path(), self.port, self.tls.as_ref());
        self.stdin = self.child.stdin.take();
        assert!(self.wait_ready().await, "redis-server did not start again");
    }

    /// Hangs the server (SIGSTOP) as a stuck Redis hangs: connections stay
    /// open and new ones are accepted by the kernel, but nothing answers
    /// until [`RedisServer::thaw`].
    pub fn freeze(&mut self) {
        signal_all("STOP", &self.server_pids());
        self.frozen = true;
    }

    /// Lets a frozen server answer again (SIGCONT).
    pub fn thaw(&mut self) {
        signal_all("CONT", &self.server_pids());
        self.frozen = false;
    }

    fn server_pids(&self) -> Vec<u32> {
        process_tree(self.child.id())
            .into_iter()
            .filter(|pid| comm(*pid).starts_with("redis-server"))
            .collect()
    }

    /// Graceful stop: the watchdog sends SIGTERM when its stdin closes.
    fn stop(&mut self) {
        if self.frozen {
            self.thaw();
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        for (mut child, stdin) in self.stopped.drain(..).rev() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// redis-server on 127.0.0.1:`port` with its files in `dir`, under a
/// watchdog that stops it (SIGTERM) when the watchdog's stdin closes.
fn spawn_redis(dir: &Path, port: u16, tls: Option<&[PathBuf; 3]>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(REDIS_WATCHDOG)
        .arg("sh")
        .arg(redis_server_bin());
    match tls {
        None => cmd.args(["--port", &port.to_string()]),
        Some([cert, key, ca]) => cmd
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .args(["--tls-auth-clients", "no"]),
    };
    cmd.args(["--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--protected-mode", "no", "--daemonize", "no"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with
/// openssl in `dir`: `[server cert, server key, CA cert]`.
fn make_test_certificates(dir: &Path) -> [PathBuf; 3] {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed to make test certificates (./dev/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-days", "1", "-subj", "/CN=keygate test CA"],
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    ["server.pem", "server.key", "ca.pem"].map(|f| dir.join(f))
}

/// Runs `"$@"` (redis-server) in the background and stops it with SIGTERM
/// when this shell's stdin reaches EOF (on drop, or when the test process
/// dies). The shell exits when the server does.
const REDIS_WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null &
pid=$!
(
  read _ <&3
  kill -TERM "$pid" 2>/dev/null
) &
wait "$pid"
"#;
