#!/usr/bin/env bash
# Soak with faults (issue 15, item 4): three keygate replicas with PostgreSQL,
# Redis, the provider (dev/idp) and an upstream (nginx), behind an nginx
# round-robin load balancer, under mixed traffic at a fixed rate for
# SOAK_DURATION, while the dependencies fail one at a time:
#
#   replica kill    one keygate replica SIGKILLed, started again
#   redis hang      SIGSTOP … SIGCONT          redis kill      SIGKILL, restart
#   postgres hang   (the whole process group)  postgres kill   SIGKILL, restart
#   provider hang                              provider kill   SIGKILL, restart
#   upstream hang                              upstream kill   SIGKILL, restart
#
# A tenth of the run is a quiet baseline, then each fault has an equal slot: a
# third of it (at most 30 s) the fault, the rest quiet, so a short run
# (SOAK_DURATION=3m) still goes through every fault. Restarted servers keep
# their port and data: Redis its append-only file (appendfsync always),
# PostgreSQL its data directory (crash recovery), the provider its signing
# keys, sessions and refresh tokens (dev/idp --state-file), a replica its
# config.
#
# The traffic (bench/soak.py, asyncio, its own HTTP/1.1 client): bearer JWTs of
# three users, service keys and personal keys (device flow) created through the
# admin API and the key endpoints during the run, server-side sessions from
# real logins (bench/login.mjs), logouts, and revocations through the admin
# API; and credentials that must be refused: JWTs past their exp, JWTs with a
# changed signature, revoked keys (1 s after the revocation answered), unknown
# keys, expired and logged-out sessions. Sessions end 150 s after their login
# (dev/idp --refresh-token-ttl 150) and access tokens live 60 s, so sessions
# refresh, expire and keys are exchanged again all through the run.
#
# It reports, for each fault, the error rate and p99 latency during it and
# after, and the time to recover; each replica's RSS over time; and it FAILS
# (exit 1) when a request that must be refused got a 2xx, when a replica's
# memory grows steadily, or when a fault is not recovered from before the
# next one.
#
#   ./bench/soak.sh                                   # 30 minutes, 250 req/s
#   SOAK_DURATION=3m ./bench/soak.sh                  # every fault, quickly
#   SOAK_DURATION=30m BENCH_OUT=/tmp/soak.md SOAK_PLOT=docs/img/soak.png ./bench/soak.sh
#
# Environment (all optional):
#   SOAK_DURATION (30m)    length of the traffic: 90s, 3m, 30m, 1h
#   SOAK_RATE (250)        requests per second through the load balancer
#   SOAK_FAULT_MAX (30)    longest fault, in seconds
#   SOAK_RSS_LIMIT (10)    MiB per hour of RSS growth that counts as steady growth
#   SOAK_PLOT (/tmp/keygate-soak.png)  the plot; `none` = no plot (no matplotlib)
#   BENCH_OUT (unset)      also write the markdown report to this file
#   KEEP_WORKDIR (0)       1 = keep the temp dir (configs, logs, requests.csv …),
#                          made under ${TMPDIR:-/tmp}
#   KEYGATE_BIN (target/release/keygate; set: no build)
#   SKIP_INSTALL (0) SKIP_BUILD (0)
#
# Not part of the test suite. Starts everything itself on 127.0.0.1 on free
# ports, with its own temp prefixes and data directories, and stops all of it
# on exit (also on failure or Ctrl-C); never touches system services. The plot
# needs matplotlib: when python3 has none, it is installed with pip into
# ${XDG_CACHE_HOME:-~/.cache}/keygate-bench/venv once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

SOAK_DURATION=${SOAK_DURATION:-30m}
SOAK_RATE=${SOAK_RATE:-250}
SOAK_FAULT_MAX=${SOAK_FAULT_MAX:-30}
SOAK_RSS_LIMIT=${SOAK_RSS_LIMIT:-10}
SOAK_PLOT=${SOAK_PLOT:-/tmp/keygate-soak.png}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
REPLICAS=3
ACCESS_TTL=60      # provider access tokens (JWTs, sessions' and keys' tokens)
SESSION_TTL=150    # a browser session's refresh token: the session's end
CLOCK_SKEW=30      # keygate's default leeway for exp
MY_CPUS=$(taskset -cp $$ | sed 's/^.*: //')

seconds() {  # 90s, 3m, 1h, 1h30m or a bare number -> seconds
  local v=$1 total=0 n
  [[ $v =~ ^[0-9]+$ ]] && { echo "$v"; return; }
  [[ $v =~ ^([0-9]+h)?([0-9]+m)?([0-9]+s)?$ ]] || die "bad duration '$v' (use 90s, 3m, 30m, 1h)"
  for n in "${BASH_REMATCH[@]:1}"; do
    case $n in *h) total=$(( total + ${n%h} * 3600 )) ;; *m) total=$(( total + ${n%m} * 60 )) ;; *s) total=$(( total + ${n%s} )) ;; esac
  done
  echo "$total"
}
DURATION=$(seconds "$SOAK_DURATION")
[ "$DURATION" -ge 60 ] || die "SOAK_DURATION must be at least 1m"

# ---------------------------------------------------------------- cleanup
WORK=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  stop_spawned
  finish_workdir "$rc"
  exit "$rc"
}
trap cleanup EXIT
set -E
trap 'echo "error: ${BASH_SOURCE[0]}:$LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- install
[ "${SKIP_INSTALL:-0}" = 1 ] || install_missing nginx:nginx-light redis-server:redis-server \
  postgres:postgresql jq:jq curl:curl
command -v node >/dev/null 2>&1 || die "Node.js >= 20 is required (dev/idp, bench/login.mjs)"
for c in nginx redis-server redis-cli jq curl openssl taskset setsid python3; do
  command -v $c >/dev/null 2>&1 || die "$c not found"
done
pg_setup

if [ ! -d dev/idp/node_modules/oidc-provider ]; then
  log "npm ci (dev/idp)"
  npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error
fi

PY=python3
if [ "$SOAK_PLOT" != none ] && ! python3 -c 'import matplotlib' 2>/dev/null; then
  VENV=${XDG_CACHE_HOME:-$HOME/.cache}/keygate-bench/venv
  if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "pip install matplotlib into $VENV (for the plot)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-cache-dir matplotlib
  fi
  PY=$VENV/bin/python
fi

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${KEYGATE_BIN:-}" ]; then
  log "cargo build --release -p keygate"
  cargo build --release -p keygate
fi
# A long run restarts replicas from this file: point KEYGATE_BIN at a copy when
# target/ may be rebuilt meanwhile.
KEYGATE=${KEYGATE_BIN:-$ROOT/target/release/keygate}
[ -x "$KEYGATE" ] || die "$KEYGATE not built"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keygate-soak.XXXXXX")
chmod 755 "$WORK"   # nginx workers and postgres run unprivileged when we are root
EVENTS=$WORK/events.tsv; : >"$EVENTS"
event() { printf '%s\t%s\t%s\n' "$(date +%s.%N)" "$1" "$2" >>"$EVENTS"; }   # event FAULT PHASE

# ---------------------------------------------------------------- ports
IDP_PORT=$(free_port); UP_PORT=$(free_port); REDIS_PORT=$(free_port); PG_PORT=$(free_port)
LB_PORT=$(free_port)
KG_NAMES=(); declare -A KG_PORT KG_ADMIN KG_PID
for i in $(seq "$REPLICAS"); do
  KG_NAMES+=("kg$i"); KG_PORT[kg$i]=$(free_port); KG_ADMIN[kg$i]=$(free_port)
done
LB_URL="http://127.0.0.1:$LB_PORT"
ISSUER="http://127.0.0.1:$IDP_PORT/realms/acme"

# ---------------------------------------------------------------- servers
# Each start_* below is also how a killed server is started again: same port,
# same data, same config.
IDP_DIR=$WORK/idp; mkdir -p "$IDP_DIR"
start_idp() {
  spawn_pinned "$MY_CPUS" "$IDP_DIR/stdout" "$IDP_DIR/stderr" node dev/idp/server.js \
    --port "$IDP_PORT" --access-token-ttl "$ACCESS_TTL" --refresh-token-ttl "$SESSION_TTL" \
    --offline-token-ttl 86400 --state-file "$IDP_DIR/state.jsonl" --redirect-uri "$LB_URL/oauth/callback"
  IDP_PID=$LAST_PID
  wait_until "dev/idp" "$IDP_PID" http_ok "$ISSUER/.well-known/openid-configuration"
}
log "starting dev/idp on :$IDP_PORT (access tokens ${ACCESS_TTL}s, sessions ${SESSION_TTL}s, offline tokens 1 day)"
start_idp

UP_DIR=$WORK/upstream
start_upstream() { start_upstream_nginx "$UP_DIR" "$UP_PORT" "$MY_CPUS" 1; }
log "starting upstream nginx on :$UP_PORT"
start_upstream

REDIS_DIR=$WORK/redis
# Persistence as docs/scaling.md asks for when sessions should survive a
# restart; `always`, so that nothing answered (a logout's DEL) is lost by a kill.
start_redis_aof() { start_redis "$REDIS_DIR" "$REDIS_PORT" "$MY_CPUS" --save "" --appendonly yes --appendfsync always; }
log "starting redis-server on :$REDIS_PORT (append-only file, appendfsync always)"
start_redis_aof

PG_DIR=$WORK/postgres
# synchronous_commit stays on: a revocation answered must survive a kill.
start_pg() { start_postgres "$PG_DIR" "$PG_PORT" "$MY_CPUS"; }
log "starting postgres on :$PG_PORT ($PG_BIN)"
start_pg

ENCRYPTION_KEY=$(openssl rand -base64 32)
SERVER_SECRET=$(openssl rand -base64 48)
KG_DIR=$WORK/keygate; mkdir -p "$KG_DIR"
for name in "${KG_NAMES[@]}"; do
  cat >"$KG_DIR/$name.yaml" <<EOF
listen: 127.0.0.1:${KG_PORT[$name]}
listen-admin: 127.0.0.1:${KG_ADMIN[$name]}
discovery-url: $ISSUER
client-id: keygate
client-secret: keygate-secret
upstream-url: http://127.0.0.1:$UP_PORT
log-level: warn
encryption-key: $ENCRYPTION_KEY
secure-cookie: false
redirection-url: $LB_URL/oauth/callback
enable-refresh-tokens: true
store-url: $PG_URL
redis-url: redis://127.0.0.1:$REDIS_PORT
session-store: redis
upstream-timeout: 1s
upstream-response-header-timeout: 3s
upstream-idle-timeout: 3s
api-keys:
  server-secret: $SERVER_SECRET
  admin-role: admin
EOF
  "$KEYGATE" check-config --config "$KG_DIR/$name.yaml" >/dev/null 2>"$KG_DIR/$name.check" \
    || die "keygate check-config refused $KG_DIR/$name.yaml: $(cat "$KG_DIR/$name.check")"
done
start_replica() {  # start_replica NAME
  local name=$1
  spawn_pinned "$MY_CPUS" "$KG_DIR/$name.stdout" "$KG_DIR/$name.stderr" \
    "$KEYGATE" serve --config "$KG_DIR/$name.yaml"
  KG_PID[$name]=$LAST_PID
  echo "$LAST_PID" >"$KG_DIR/$name.pid"
  wait_until "keygate $name" "$LAST_PID" http_ok "http://127.0.0.1:${KG_PORT[$name]}/oauth/ready"
}
for name in "${KG_NAMES[@]}"; do
  log "starting keygate $name on :${KG_PORT[$name]} (admin :${KG_ADMIN[$name]})"
  start_replica "$name"
done

LB_DIR=$WORK/lb; mkdir -p "$LB_DIR"
{
  nginx_common "$LB_DIR" auto
  echo "http {"
  nginx_http_common "$LB_DIR"
  echo "    large_client_header_buffers 4 32k;"
  addrs=(); for name in "${KG_NAMES[@]}"; do addrs+=("127.0.0.1:${KG_PORT[$name]}"); done
  lb_block keygate "$LB_PORT" "${addrs[@]}"
  echo "}"
} >"$LB_DIR/nginx.conf"
log "starting the load balancer (nginx) on :$LB_PORT"
spawn_pinned "$MY_CPUS" "$LB_DIR/stdout" "$LB_DIR/stderr" nginx -p "$LB_DIR" -e "$LB_DIR/error.log" -c "$LB_DIR/nginx.conf"
LB_PID=$LAST_PID
wait_until "load balancer" "$LB_PID" http_ok "$LB_URL/oauth/ready"

# ---------------------------------------------------------------- faults
FAULTS=("replica kill" "redis hang" "redis kill" "postgres hang" "postgres kill"
        "provider hang" "provider kill" "upstream hang" "upstream kill")
VICTIM=kg2   # the replica killed
reap() { wait "$1" 2>/dev/null || true; }   # a killed child must not linger as a zombie (PostgreSQL checks its old pid)
# PostgreSQL's backends and helpers are the postmaster's children, each in a
# session of its own (they call setsid): a signal to the postmaster's process
# group does not reach them. Hanging it stops the postmaster first (no new
# child meanwhile), then its children; killing it kills them all at once, as
# a crash of the machine or of its container would.
pg_pids() { echo "$PG_PID"; ps -o pid= --ppid "$PG_PID" || true; }
signal_pg() { local p; for p in $(pg_pids); do kill -"$1" "$p" 2>/dev/null || true; done; }
fault_start() {
  case $1 in
    "replica kill")  kill -KILL "${KG_PID[$VICTIM]}"; reap "${KG_PID[$VICTIM]}" ;;
    "redis hang")    kill -STOP "$REDIS_PID" ;;
    "redis kill")    kill -KILL "$REDIS_PID"; reap "$REDIS_PID" ;;
    "postgres hang") signal_pg STOP ;;
    "postgres kill") signal_pg KILL; reap "$PG_PID" ;;
    "provider hang") kill -STOP "$IDP_PID" ;;
    "provider kill") kill -KILL "$IDP_PID"; reap "$IDP_PID" ;;
    "upstream hang") kill -STOP -- "-$UP_PID" ;;
    "upstream kill") kill -KILL -- "-$UP_PID"; reap "$UP_PID" ;;
  esac
}
fault_end() {  # SIGCONT, or start the killed server again (then "ready" once it answers)
  case $1 in
    "replica kill")  event "$1" end; start_replica "$VICTIM" ;;
    "redis hang")    kill -CONT "$REDIS_PID"; event "$1" end; return ;;
    "redis kill")    event "$1" end; start_redis_aof ;;
    "postgres hang") signal_pg CONT; event "$1" end; return ;;
    "postgres kill") event "$1" end; start_pg ;;
    "provider hang") kill -CONT "$IDP_PID"; event "$1" end; return ;;
    "provider kill") event "$1" end; start_idp ;;
    "upstream hang") kill -CONT -- "-$UP_PID"; event "$1" end; return ;;
    "upstream kill") event "$1" end; start_upstream ;;
  esac
  event "$1" ready
}
sleep_until() {  # sleep_until EPOCH
  local d; d=$(awk -v t="$1" -v n="$(date +%s.%N)" 'BEGIN { d = t - n; printf "%.3f", (d > 0 ? d : 0) }')
  sleep "$d"
}

# ---------------------------------------------------------------- the run
replicas_json=$(for name in "${KG_NAMES[@]}"; do
  jq -n --arg name "$name" --arg url "http://127.0.0.1:${KG_PORT[$name]}" \
    --arg admin "http://127.0.0.1:${KG_ADMIN[$name]}" --arg pidfile "$KG_DIR/$name.pid" \
    '{name: $name, url: $url, admin: $admin, pidfile: $pidfile}'
done | jq -s .)
faults_json=$(printf '%s\n' "${FAULTS[@]}" | jq -R . | jq -s .)
CMD="SOAK_DURATION=$SOAK_DURATION${SOAK_RATE:+ SOAK_RATE=$SOAK_RATE} ./bench/soak.sh"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified)')"
write_config() {  # write_config LOAD_BEFORE LOAD_AFTER
  jq -n --arg work "$WORK" --arg lb "$LB_URL" --arg idp "http://127.0.0.1:$IDP_PORT" \
    --argjson replicas "$replicas_json" --argjson faults "$faults_json" \
    --argjson duration "$DURATION" --argjson rate "$SOAK_RATE" --argjson fault_max "$SOAK_FAULT_MAX" \
    --argjson session_ttl "$SESSION_TTL" --argjson clock_skew "$CLOCK_SKEW" \
    --argjson rss_limit "$SOAK_RSS_LIMIT" --arg plot "$([ "$SOAK_PLOT" = none ] || echo "$SOAK_PLOT")" \
    --arg cmd "$CMD" --arg commit "$COMMIT" --arg before "$1" --arg after "$2" '{
      work: $work, lb: $lb, idp: $idp, replicas: $replicas, faults: $faults,
      token_path: "/realms/acme/protocol/openid-connect/token",
      duration: $duration, rate: $rate, fault_max: $fault_max,
      session_ttl: $session_ttl, clock_skew: $clock_skew, revocation_window: 1.0,
      client_timeout: 15, max_inflight: 3000, rss_slope_limit: $rss_limit, plot: $plot,
      periods: {jwt: 15, login: 4, logout: 12, service_key: 30, personal_key: 30, revoke: 15},
      meta: {command: $cmd, commit: $commit, load_before: $before, load_after: $after}
    }' >"$WORK/soak.json"
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
write_config "$LOAD_BEFORE" ""

log "creating credentials (service keys, personal keys by device flow, sessions by login)"
spawn_pinned "$MY_CPUS" "$WORK/soak.out" "$WORK/soak.err" "$PY" bench/soak.py run "$WORK/soak.json"
GEN_PID=$LAST_PID
wait_until_long() { for _ in $(seq 1200); do [ -s "$WORK/t0" ] && return 0; kill -0 "$GEN_PID" 2>/dev/null || return 1; sleep 0.1; done; return 1; }
wait_until_long || die "the traffic generator did not start: $(tail -n 20 "$WORK/soak.err")"
T0=$(cat "$WORK/t0")
log "traffic: $SOAK_RATE req/s for $SOAK_DURATION from $(date -u -d "@$T0" '+%T') UTC; faults:"
mapfile -t SCHEDULE <"$WORK/schedule.tsv"
for line in "${SCHEDULE[@]}"; do
  IFS=$'\t' read -r s e name <<<"$line"
  printf '    %-14s %6.0f s … %6.0f s\n' "$name" "$(awk -v a="$s" -v b="$T0" 'BEGIN{print a-b}')" \
    "$(awk -v a="$e" -v b="$T0" 'BEGIN{print a-b}')" >&2
done
for line in "${SCHEDULE[@]}"; do
  IFS=$'\t' read -r s e name <<<"$line"
  sleep_until "$s"
  kill -0 "$GEN_PID" 2>/dev/null || die "the traffic generator exited early: $(tail -n 20 "$WORK/soak.err")"
  log "$(date -u '+%T') fault: $name"
  event "$name" start
  fault_start "$name"
  sleep_until "$e"
  fault_end "$name"
  log "$(date -u '+%T') end of $name"
done
rc=0; wait "$GEN_PID" || rc=$?
[ $rc -eq 0 ] || die "the traffic generator failed ($rc): $(tail -n 20 "$WORK/soak.err")"

# ---------------------------------------------------------------- report
for name in "${KG_NAMES[@]}"; do
  curl -fsS "http://127.0.0.1:${KG_ADMIN[$name]}/metrics" >"$WORK/metrics-$name.txt" 2>/dev/null || true
done
write_config "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
"$PY" bench/soak.py report "$WORK/soak.json" >"$WORK/report.out" 2>"$WORK/report.err" || rc=$?
[ -s "$WORK/report.md" ] || die "no report: $(cat "$WORK/report.err")"
echo
cat "$WORK/report.md"
[ -z "${BENCH_OUT:-}" ] || cp "$WORK/report.md" "$BENCH_OUT"
[ "$SOAK_PLOT" = none ] || log "plot: $SOAK_PLOT"
if grep -l "panicked" "$KG_DIR"/*.stderr "$KG_DIR"/*.stdout >/dev/null 2>&1; then
  echo "A replica panicked:"; grep -h -m5 "panicked" "$KG_DIR"/*.stderr "$KG_DIR"/*.stdout
  rc=1
fi
for name in "${KG_NAMES[@]}"; do
  n=$(wc -l <"$KG_DIR/$name.stderr"); m=$(wc -l <"$KG_DIR/$name.stdout")
  [ $(( n + m )) -eq 0 ] || log "$name logged $(( n + m )) lines (warn and above) in $KG_DIR/$name.std{err,out}"
done
[ $rc -eq 0 ] || log "the soak FAILED: see the report above (work dir $WORK is kept)"
exit $rc
