# shellcheck shell=bash
# Shell functions shared by the scripts under bench/ (sourced).

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Free ports below the kernel's ephemeral range (so an outgoing connection
# cannot take one between the pick and the bind), never one in use by any socket.
port_in_use() { [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]; }   # any socket, any state
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT_MIN=10000; PORT_MAX=$(( EPHEMERAL_LOW - 1 ))
[ "$PORT_MAX" -gt $(( PORT_MIN + 1000 )) ] || { PORT_MIN=20000; PORT_MAX=29999; }
USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$(( PORT_MIN + (RANDOM * 32768 + RANDOM) % (PORT_MAX - PORT_MIN + 1) ))
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    port_in_use "$p" && continue
    USED_PORTS+="$p "
    echo "$p"; return
  done
}

# nginx config pieces: the main context and the http-level settings.
nginx_common() {  # nginx_common DIR WORKERS
  cat <<EOF
daemon off;
master_process on;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; multi_accept on; }
EOF
}
nginx_http_common() {  # nginx_http_common DIR
  cat <<EOF
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
EOF
}

to_ms() {  # wrk latency like 512.00us / 1.23ms / 1.01s -> ms
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/,"",v); printf "%.3f", v*60000 }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
    else printf "nan" }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f×", a/b; else print "–" }'; }

# ---------------------------------------------------------------- servers
# Shared by bench/scale.sh and bench/soak.sh. They expect WORK (the temp dir)
# and, for PostgreSQL, PG_BIN and AS_PG (pg_setup).

# Installs the Debian packages of the commands that are missing, as
# "command:package" pairs; the command `postgres` stands for PostgreSQL's
# server binaries (pg_bin_dir).
install_missing() {  # install_missing nginx:nginx-light redis-server:redis-server postgres:postgresql …
  local missing=() pair
  for pair in "$@"; do
    if [ "${pair%%:*}" = postgres ]; then
      pg_bin_dir >/dev/null || missing+=("${pair#*:}")
    else
      command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (Debian packages)"
  local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_bin_dir() {  # the newest /usr/lib/postgresql/<version>/bin with a postgres in it
  local d
  # shellcheck disable=SC2012  # version directories: plain names
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [ -n "$d" ] && [ -x "$d/postgres" ] && echo "$d"
}

# Sets PG_BIN, and AS_PG: PostgreSQL refuses to run as root, so as root it
# runs as the `postgres` user.
pg_setup() {
  PG_BIN=$(pg_bin_dir) || die "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin"
  AS_PG=()
  if [ "$(id -u)" -eq 0 ]; then
    id -u postgres >/dev/null 2>&1 || die "running as root but there is no postgres user"
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
}

# Processes started by spawn_pinned, each the leader of its own session
# (setsid), so that a signal to its process group also reaches its children
# (nginx workers, PostgreSQL backends).
PIDS=()
PG_PID=""   # PostgreSQL's postmaster: stopped with SIGINT, its fast shutdown

# Start a command in the background in its own session and process group,
# pinned to CPUS, its output appended to OUTFILE and ERRFILE (a restarted
# server keeps the logs of the one before); record its pid in LAST_PID (setsid
# and taskset exec, so it is the pid of the command itself).
spawn_pinned() {  # spawn_pinned CPUS OUTFILE ERRFILE cmd...
  local cpus=$1 out=$2 err=$3; shift 3
  setsid taskset -c "$cpus" "$@" >>"$out" 2>>"$err" </dev/null &
  PIDS+=($!)
  LAST_PID=$!
}

wait_until() {  # wait_until NAME PID cmd...: until cmd succeeds (30 s), or fail when PID died
  local name=$1 pid=$2; shift 2
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (logs in $WORK)"
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "$name not ready after 30 s (logs in $WORK)"
}
http_ok() { curl -fsS -o /dev/null "$1"; }

# Stops everything spawn_pinned started: resumes what was stopped (SIGSTOP),
# signals each session's process group, and waits until each session is empty
# (SIGKILL after 10 s).
stop_spawned() {
  local pid
  for pid in "${PIDS[@]}"; do kill -CONT -- "-$pid" 2>/dev/null || true; done
  [ -z "$PG_PID" ] || kill -INT "$PG_PID" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  # shellcheck disable=SC2009  # by session id; zombies do not count (reaped below)
  alive() { ps -o stat= -s "$1" 2>/dev/null | grep -qv '^Z'; }   # zombies are reaped below
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
}

# Removes WORK, or keeps it (and says where) after a failure or with KEEP_WORKDIR=1.
finish_workdir() {  # finish_workdir EXIT_STATUS
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    if [ "${KEEP_WORKDIR:-0}" = 1 ] || [ "$1" -ne 0 ]; then
      log "work dir kept: $WORK"
    else
      rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
    fi
  fi
}

# redis-server on 127.0.0.1:PORT with DIR as its directory; extra arguments
# (persistence) are passed on. Sets REDIS_PID. Started again on the same DIR,
# it reloads what it persisted there.
start_redis() {  # start_redis DIR PORT CPUS [redis-server args…]
  local dir=$1 port=$2 cpus=$3; shift 3
  mkdir -p "$dir"
  spawn_pinned "$cpus" "$dir/stdout" "$dir/stderr" redis-server \
    --port "$port" --bind 127.0.0.1 --protected-mode no --daemonize no \
    --dir "$dir" --logfile "$dir/redis.log" "$@"
  REDIS_PID=$LAST_PID
  wait_until "redis-server" "$REDIS_PID" redis_ping "$port"
}
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping)" = PONG ]; }   # redis_ping PORT

# PostgreSQL on 127.0.0.1:PORT with its cluster in DIR/data (initdb and a
# database `keygate` the first time; fsync off, as the tests run it: a killed
# server loses nothing the kernel has, only a crash of the machine would).
# Extra arguments (`-c name=value`) are passed on. Sets PG_PID and PG_URL.
# Started again on the same DIR after a SIGKILL, it recovers from its
# write-ahead log.
start_postgres() {  # start_postgres DIR PORT CPUS [postgres args…]
  local dir=$1 port=$2 cpus=$3 fresh=0; shift 3
  mkdir -p "$dir"
  [ ${#AS_PG[@]} -eq 0 ] || chown postgres:postgres "$dir"
  if [ ! -d "$dir/data" ]; then
    fresh=1
    (cd "$dir" && "${AS_PG[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 \
      --locale=C --no-sync >"$dir/initdb.log" 2>&1) || die "initdb failed: $(tail -n 20 "$dir/initdb.log")"
  fi
  spawn_pinned "$cpus" "$dir/stdout" "$dir/postgres.log" env -C "$dir" "${AS_PG[@]}" \
    "$PG_BIN/postgres" -D "$dir/data" -k "$dir" -p "$port" -c listen_addresses=127.0.0.1 \
    -c fsync=off "$@"
  PG_PID=$LAST_PID
  wait_until "postgres" "$PG_PID" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"
  [ $fresh = 0 ] || "$PG_BIN/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -c 'CREATE DATABASE keygate' >/dev/null
  # shellcheck disable=SC2034  # for the caller
  PG_URL="postgres://postgres@127.0.0.1:$port/keygate"
}

# The upstream: nginx answering 200 "ok" on 127.0.0.1:PORT. Sets UP_PID.
start_upstream_nginx() {  # start_upstream_nginx DIR PORT CPUS WORKERS
  local dir=$1 port=$2 cpus=$3 workers=$4
  mkdir -p "$dir"
  {
    nginx_common "$dir" "$workers"
    echo "http {"
    nginx_http_common "$dir"
    cat <<CONF
    server {
        listen 127.0.0.1:$port;
        location / { return 200 "ok"; }
    }
}
CONF
  } >"$dir/nginx.conf"
  spawn_pinned "$cpus" "$dir/stdout" "$dir/stderr" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  UP_PID=$LAST_PID
  wait_until "upstream nginx" "$UP_PID" http_ok "http://127.0.0.1:$port/"
}

# One round-robin load balancer block for nginx: upstream NAME over the
# ADDRESSES (host:port), HTTP/1.1 with pooled upstream connections, and a
# server on 127.0.0.1:PORT passing the client's Host on (keygate builds
# absolute URLs from it).
lb_block() {  # lb_block NAME PORT ADDRESS…
  local name=$1 port=$2 addr; shift 2
  echo "    upstream $name {"
  for addr in "$@"; do echo "        server $addr;"; done
  cat <<CONF
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://$name;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
        }
    }
CONF
}
