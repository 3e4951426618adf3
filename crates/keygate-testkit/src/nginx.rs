//! [`Nginx`]: Debian's nginx in the foreground, with its files in a temporary
//! directory, for forward-auth (`auth_request`) tests.

use crate::free_port;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nginx; killed on drop.
pub struct Nginx {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx's binary: Debian's, or a failure that says how to get it.
pub fn nginx_binary() -> String {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!("nginx is not installed: run ./dev/test.sh, which installs Debian's nginx");
}

impl Nginx {
    /// nginx in front of `upstream`, asking keygate's `/oauth/auth` first: the
    /// set-up of docs/examples/nginx-forward-auth.conf.
    pub async fn forward_auth(keygate: SocketAddr, upstream: SocketAddr) -> Nginx {
        Nginx::start(&format!(
            r#"
    location = /_keygate_auth {{
      internal;
      proxy_pass http://{keygate}/oauth/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_keygate_auth;
      auth_request_set $kg_authorization $upstream_http_authorization;
      auth_request_set $kg_subject $upstream_http_x_auth_subject;
      auth_request_set $kg_username $upstream_http_x_auth_username;
      auth_request_set $kg_roles $upstream_http_x_auth_roles;
      proxy_set_header Authorization $kg_authorization;
      proxy_set_header X-Auth-Subject $kg_subject;
      proxy_set_header X-Auth-Username $kg_username;
      proxy_set_header X-Auth-Roles $kg_roles;
      proxy_pass http://{upstream};
    }}
"#
        ))
        .await
    }

    /// nginx with one `server` on a free loopback port whose body is
    /// `locations`; waits until it accepts connections.
    #[allow(clippy::zombie_processes)] // `Nginx::drop` kills and waits.
    pub async fn start(locations: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut nginx = Nginx { child, port, dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!(
                    "nginx exited with {status}; see {}/error.log",
                    nginx.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not start; see {}/error.log",
            nginx.dir.path().display()
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
