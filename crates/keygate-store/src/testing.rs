//! Test support (feature `testing`): a private PostgreSQL server on
//! loopback for each test, so the store suite and keygate's end-to-end tests
//! run against a real server. Never used by the keygate binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use sqlx::Connection;
use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// PostgreSQL harness: a private server on loopback per test
// ---------------------------------------------------------------------------

/// A PostgreSQL server of its own, in a temporary directory, listening on
/// 127.0.0.1 with trust authentication (loopback, test only). Stopped and
/// removed on drop; if the test process dies instead, the server notices its
/// stdin closing and shuts down too.
pub struct PgServer {
    port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    data: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// Watchdogs of servers stopped by [`PgServer::stop_server`]: the first
    /// one removes the directory when its stdin closes, so they are closed
    /// last.
    stopped: Vec<(Child, Option<ChildStdin>)>,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

/// Starts postgres on `port` under [`WATCHDOG`]; with `owns_dir` the
/// watchdog also removes `dir` when the test process goes away.
fn spawn_postgres(
    bin: &Path,
    user: Option<(u32, u32)>,
    dir: &Path,
    data: &Path,
    port: u16,
    owns_dir: bool,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .unwrap();
    as_pg_user(&mut Command::new("/bin/sh"), user, dir)
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
        .arg("-k")
        .arg(dir)
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .env(
            "KEYGATE_PG_TMP",
            if owns_dir {
                dir.as_os_str()
            } else {
                "".as_ref()
            },
        )
        .stdin(Stdio::piped())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A child that exits at once, standing in for a stopped server.
fn spawn_placeholder(dir: &Path) -> Child {
    Command::new("true").current_dir(dir).spawn().unwrap()
}

/// Runs `"$@"` (postgres) in the background; when this shell's stdin reaches
/// EOF (on drop, or when the test process dies for any reason) it stops
/// postgres (fast shutdown, SIGINT) and removes `$KEYGATE_PG_TMP`. The shell
/// itself exits when postgres does.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null &
pid=$!
(
  read _ <&3
  kill -INT "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  [ -n "$KEYGATE_PG_TMP" ] && rm -rf "$KEYGATE_PG_TMP"
) &
wait "$pid"
"#;

const NO_POSTGRES: &str = "PostgreSQL server binaries not found (looked for \
    /usr/lib/postgresql/*/bin/postgres, or $KEYGATE_PG_BIN/postgres): run ./dev/test.sh, \
    which installs Debian's `postgresql` package";

/// The newest `/usr/lib/postgresql/<version>/bin`, or `$KEYGATE_PG_BIN`.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYGATE_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(dir.join("postgres").exists(), "{NO_POSTGRES}");
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("{NO_POSTGRES}"),
    }
}

/// PostgreSQL refuses to run as root: when we are root, run it as the
/// `postgres` user (uid, gid from /etc/passwd).
fn pg_user() -> Option<(u32, u32)> {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| {
            panic!("running as root but there is no `postgres` user; {NO_POSTGRES}")
        });
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_pg_user<'a>(cmd: &'a mut Command, user: Option<(u32, u32)>, dir: &Path) -> &'a mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.current_dir(dir)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// Starts a server (panics with instructions when PostgreSQL is missing).
    pub async fn start() -> PgServer {
        let bin = pg_bin_dir();
        let user = pg_user();
        // A port picked free may be taken before postgres binds it: retry,
        // each attempt in a fresh directory.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("keygate-pg-")
                .tempdir()
                .unwrap();
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            }
            let data = dir.path().join("data");
            let out = as_pg_user(&mut Command::new(bin.join("initdb")), user, dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );

            let port = free_port();
            let log_path = dir.path().join("postgres.log");
            let child = spawn_postgres(&bin, user, dir.path(), &data, port, true);
            let mut server = PgServer {
                port,
                child,
                stdin: None,
                data,
                dir: Some(dir),
                stopped: Vec::new(),
                bin: bin.clone(),
                user,
            };
            server.stdin = server.child.stdin.take();
            if server.wait_ready().await {
                return server;
            }
            last_log.clear();
            File::open(&log_path)
                .and_then(|mut f| f.read_to_string(&mut last_log))
                .ok();
            drop(server);
        }
        panic!("PostgreSQL did not start:\n{last_log}");
    }

    /// Stops the server (fast shutdown) as an outage would, keeping its data:
    /// [`PgServer::start_again`] brings it back on the same port.
    pub fn stop_server(&mut self) {
        if let Ok(pidfile) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            && let Some(pid) = pidfile.lines().next()
        {
            let _ = Command::new("kill").args(["-INT", pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = self.dir.as_ref().unwrap().path().to_owned();
        let placeholder = spawn_placeholder(&dir);
        let old = std::mem::replace(&mut self.child, placeholder);
        self.stopped.push((old, self.stdin.take()));
    }

    /// Starts the server again after [`PgServer::stop_server`].
    pub async fn start_again(&mut self) {
        let dir = self.dir.as_ref().unwrap().path().to_owned();
        let _ = self.child.wait();
        self.child = spawn_postgres(&self.bin, self.user, &dir, &self.data, self.port, false);
        self.stdin = self.child.stdin.take();
        assert!(self.wait_ready().await, "PostgreSQL did not start again");
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until the server accepts connections (or has exited).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && let Ok(conn) = sqlx::PgConnection::connect(&url).await
            {
                conn.close().await.ok();
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Fast shutdown; SIGKILL to the postmaster if that takes too long.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(pidfile) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            && let Some(pid) = pidfile.lines().next()
        {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        for (mut child, stdin) in self.stopped.drain(..).rev() {
            drop(stdin);
            let _ = child.wait();
        }
        // The TempDir (if still here) removes the data directory.
        drop(self.dir.take());
    }
}

// ---------------------------------------------------------------------------
// Redis harness: a private server on loopback per test
// ---------------------------------------------------------------------------

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

    /// Graceful stop: the watchdog sends SIGTERM when its stdin closes.
    fn stop(&mut self) {
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
