//! [`PgServer`]: a private PostgreSQL server on loopback per test.

use crate::free_port;
use crate::freeze::{process_tree, signal_all};
use sqlx::Connection;
use std::fs::File;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

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
    frozen: bool,
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
                frozen: false,
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

    /// Hangs the server (SIGSTOP to the postmaster and every backend) as a
    /// stuck database hangs: connections stay open and new ones are
    /// accepted by the kernel, but nothing answers until [`PgServer::thaw`].
    pub fn freeze(&mut self) {
        signal_all("STOP", &self.server_pids());
        self.frozen = true;
    }

    /// Lets a frozen server answer again (SIGCONT).
    pub fn thaw(&mut self) {
        signal_all("CONT", &self.server_pids());
        self.frozen = false;
    }

    /// The postmaster and its children.
    fn server_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|pidfile| pidfile.lines().next()?.trim().parse().ok())
            .map(process_tree)
            .unwrap_or_default()
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
        if self.frozen {
            self.thaw();
        }
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
