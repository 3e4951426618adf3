#!/usr/bin/env bash
# A real Keycloak for the test suite (no Docker): the server distribution
# org.keycloak:keycloak-quarkus-dist from Maven, cached outside the repository,
# started in development mode on loopback with the committed realm imported.
#
#   dev/keycloak/keycloak.sh [start] [--port N] [--management-port N]
#                            [--realm FILE] [--log FILE] [--exit-with PID]
#       Fetches and unpacks Keycloak on the first run, starts it with a fresh
#       in-memory database (so every start imports the realm anew), waits
#       until /realms/acme answers, prints one line `READY <base-url>` on
#       stdout and stays in the foreground; SIGTERM/SIGINT stop Keycloak.
#       With --exit-with PID it also stops when process PID ends (the test
#       harness passes its own pid, so no Keycloak outlives a test run).
#   dev/keycloak/keycloak.sh stop [PIDFILE|PORT]
#       Stops a running one. Each start writes a pid file
#       $KEYGATE_CACHE/keycloak/run/<port>.pid (and a copy in its run dir);
#       with no argument every one listed there is stopped.
#   dev/keycloak/keycloak.sh kcadm ARGS...
#       Runs the cached distribution's admin CLI, bin/kcadm.sh (fetched first
#       if needed); deploy/keycloak/kcadm-setup.sh takes it as KCADM.
#
# Environment:
#   KEYGATE_CACHE              cache root (default ~/.cache/keygate)
#   KEYGATE_KEYCLOAK_VERSION   overrides the pinned version below
#   KEYGATE_KEYCLOAK_TIMEOUT   seconds to wait for READY (default 300)
#   KEYGATE_KEYCLOAK_KEEP=1    keep the run dir (log, data) after a clean stop
#   JAVA_HOME / JAVA           the JVM (Java 17, 21 or 25); else `java` on PATH
#   JAVA_OPTS_KC_HEAP          heap options (default -Xms128m -Xmx768m)
#   JAVA_OPTS_APPEND           more JVM options (default -XX:TieredStopAtLevel=1)
set -euo pipefail

# The newest version served by the package registry here that starts here.
KEYCLOAK_VERSION_PIN=26.7.3
VERSION="${KEYGATE_KEYCLOAK_VERSION:-$KEYCLOAK_VERSION_PIN}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KEYGATE_CACHE:-$HOME/.cache/keygate}/keycloak"
CACHE="$CACHE_ROOT/$VERSION"
DIST="$CACHE/keycloak-$VERSION"
RUNS="$CACHE_ROOT/run"
REALM_NAME=acme
TIMEOUT="${KEYGATE_KEYCLOAK_TIMEOUT:-300}"

log() { echo "keycloak.sh: $*" >&2; }
die() { echo "keycloak.sh: error: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
}

# ---------------------------------------------------------------- helpers
java_bin() {
  if [ -n "${JAVA:-}" ]; then echo "$JAVA"
  elif [ -n "${JAVA_HOME:-}" ]; then echo "$JAVA_HOME/bin/java"
  else command -v java || true
  fi
}

check_java() {
  local j major
  j="$(java_bin)"
  [ -n "$j" ] && [ -x "$j" ] || die "Java not found: Keycloak $VERSION needs a JDK 17, 21 or 25 (install openjdk-17-jdk-headless, or set JAVA_HOME)"
  major="$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  major="${major#1.}"
  [ -n "$major" ] || die "could not tell the version of $j"
  [ "$major" -ge 17 ] || die "$j is Java $major; Keycloak $VERSION needs Java 17, 21 or 25 (set JAVA_HOME)"
}

# A TCP port nobody listens on at 127.0.0.1.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Download (through mvn) and unpack once per version, under a lock.
ensure_dist() {
  [ -x "$DIST/bin/kc.sh" ] && [ -e "$DIST/.augmented" ] && return 0
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if [ ! -x "$DIST/bin/kc.sh" ]; then
    command -v mvn >/dev/null 2>&1 || die "mvn (Apache Maven) not found: it fetches Keycloak $VERSION on the first run (apt-get install maven)"
    local zip="$CACHE/keycloak-quarkus-dist-$VERSION.zip"
    if [ ! -s "$zip" ]; then
      log "fetching org.keycloak:keycloak-quarkus-dist:$VERSION:zip with mvn into $CACHE"
      if ! mvn -B -q -Dstyle.color=never dependency:copy \
          -Dartifact="org.keycloak:keycloak-quarkus-dist:$VERSION:zip" \
          -DoutputDirectory="$CACHE" -Dmdep.overWriteReleases=true >"$CACHE/mvn.log" 2>&1; then
        cat "$CACHE/mvn.log" >&2
        die "mvn could not fetch org.keycloak:keycloak-quarkus-dist:$VERSION:zip (log above, also in $CACHE/mvn.log)"
      fi
      [ -s "$zip" ] || die "mvn did not leave $zip"
    fi
    command -v unzip >/dev/null 2>&1 || die "unzip not found (apt-get install unzip)"
    log "unpacking $zip"
    local tmp="$CACHE/.unpack.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    unzip -q "$zip" -d "$tmp" || die "could not unpack $zip"
    [ -x "$tmp/keycloak-$VERSION/bin/kc.sh" ] || die "$zip has no keycloak-$VERSION/bin/kc.sh"
    mv "$tmp/keycloak-$VERSION" "$DIST"
    rm -rf "$tmp" "$zip"   # mvn keeps its own copy in ~/.m2
  fi
  # The first start-dev re-augments the distribution (rewrites lib/quarkus,
  # about 40 s): the lock is held until that start is READY, so that a second
  # start waits for it instead of augmenting at the same time.
  [ -e "$DIST/.augmented" ] && exec 9>&-
  return 0
}

# ---------------------------------------------------------------- start
KC_PID=""; RUN=""; PIDFILE_GLOBAL=""; STOPPING=""

# Stops Keycloak (its whole process group: kc.sh and the JVM), at most
# 30 s gracefully, then by force.
stop_kc() {
  local pid="$1" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "Keycloak did not stop within 30 s; killing it"
  kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  [ -n "$STOPPING" ] && return; STOPPING=1
  trap - TERM INT EXIT
  if [ -n "$KC_PID" ]; then stop_kc "$KC_PID"; wait "$KC_PID" 2>/dev/null || true; fi
  [ -n "$PIDFILE_GLOBAL" ] && rm -f "$PIDFILE_GLOBAL"
  if [ -n "$RUN" ]; then
    if [ "$rc" -eq 0 ] && [ "${KEYGATE_KEYCLOAK_KEEP:-}" != 1 ]; then rm -rf "$RUN"
    else log "run dir kept: $RUN"; fi
  fi
  exit "$rc"
}

start() {
  local port="" mport="" realm="$HERE/realm-acme.json" logfile="" exit_with=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="${2:?--port needs a number}"; shift 2 ;;
      --port=*) port="${1#*=}"; shift ;;
      --management-port) mport="${2:?--management-port needs a number}"; shift 2 ;;
      --management-port=*) mport="${1#*=}"; shift ;;
      --realm) realm="${2:?--realm needs a file}"; shift 2 ;;
      --realm=*) realm="${1#*=}"; shift ;;
      --log) logfile="${2:?--log needs a file}"; shift 2 ;;
      --log=*) logfile="${1#*=}"; shift ;;
      --exit-with) exit_with="${2:?--exit-with needs a pid}"; shift 2 ;;
      --exit-with=*) exit_with="${1#*=}"; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
  done
  [ -f "$realm" ] || die "realm file $realm not found"
  # Readiness is asked of the realm in the file (its first "realm" key).
  REALM_NAME="$(sed -n 's/^[[:space:]]*"realm"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$realm" | head -n1)"
  REALM_NAME="${REALM_NAME:-acme}"
  command -v curl >/dev/null 2>&1 || die "curl not found"
  check_java
  ensure_dist

  [ -n "$port" ] || port="$(free_port)"
  [ -n "$mport" ] || { mport="$(free_port)"; [ "$mport" != "$port" ] || mport="$(free_port)"; }
  port_in_use "$port" && die "port $port is already in use on 127.0.0.1"
  port_in_use "$mport" && die "management port $mport is already in use on 127.0.0.1"

  # A Keycloak home per run: kc.sh copied (it finds its home from its own
  # path), the cached lib/conf/themes/providers linked, a fresh data/ with
  # the realm in data/import.
  RUN="$(mktemp -d "${TMPDIR:-/tmp}/keygate-keycloak.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 0' TERM INT
  mkdir -p "$RUN/home/bin" "$RUN/home/data/import"
  cp "$DIST/bin/kc.sh" "$RUN/home/bin/kc.sh"
  local d
  for d in lib conf themes providers; do ln -s "$DIST/$d" "$RUN/home/$d"; done
  cp "$realm" "$RUN/home/data/import/realm.json"
  [ -n "$logfile" ] || logfile="$RUN/keycloak.log"
  : >"$logfile"
  log "Keycloak $VERSION log: $logfile"

  export KC_BOOTSTRAP_ADMIN_USERNAME="${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}"
  export KC_BOOTSTRAP_ADMIN_PASSWORD="${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin}"
  export JAVA_OPTS_KC_HEAP="${JAVA_OPTS_KC_HEAP:--Xms128m -Xmx768m}"
  # C1 only: starts in about 25 s instead of about 38 s on 2 busy cores; the
  # tests need no peak throughput. Set JAVA_OPTS_APPEND (even empty) to change.
  export JAVA_OPTS_APPEND="${JAVA_OPTS_APPEND--XX:TieredStopAtLevel=1}"
  local j; j="$(java_bin)"; export JAVA="$j"

  # setsid: Keycloak gets its own process group, so that stopping it reaches
  # the JVM too (kc.sh relaunches the JVM after an auto-build).
  setsid "$RUN/home/bin/kc.sh" start-dev \
    --http-host=127.0.0.1 --http-port="$port" \
    --http-management-port="$mport" --health-enabled=true \
    --db=dev-mem --import-realm \
    --hostname-strict=false \
    </dev/null >>"$logfile" 2>&1 9>&- &
  KC_PID=$!

  local base="http://127.0.0.1:$port"
  PIDFILE_GLOBAL="$RUNS/$port.pid"
  mkdir -p "$RUNS"
  printf '%s %s %s %s\n' "$$" "$KC_PID" "$port" "$RUN" | tee "$RUN/keycloak.pid" >"$PIDFILE_GLOBAL"

  local deadline=$(( SECONDS + TIMEOUT )) code
  while :; do
    if ! kill -0 "$KC_PID" 2>/dev/null; then
      log "Keycloak exited before it was ready; the end of $logfile:"
      tail -n 40 "$logfile" >&2
      KC_PID=""; exit 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base/realms/$REALM_NAME/.well-known/openid-configuration" || true)"
    [ "$code" = 200 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "Keycloak not ready after ${TIMEOUT}s; the end of $logfile:"
      tail -n 40 "$logfile" >&2
      exit 1
    fi
    sleep 0.5
  done
  grep -q "Realm '$REALM_NAME' imported\|Imported realm $REALM_NAME\|realm.*$REALM_NAME.*import" "$logfile" 2>/dev/null \
    || log "warning: no import message for realm $REALM_NAME in $logfile"
  if [ ! -e "$DIST/.augmented" ]; then touch "$DIST/.augmented"; exec 9>&-; fi
  echo "READY $base"
  log "admin console: $base/admin/ (admin/admin); health: http://127.0.0.1:$mport/health/ready; pid file: $PIDFILE_GLOBAL"

  # In the foreground until Keycloak ends or we are stopped (or, with
  # --exit-with, the process we serve ends).
  if [ -n "$exit_with" ]; then
    while kill -0 "$exit_with" 2>/dev/null && kill -0 "$KC_PID" 2>/dev/null; do sleep 1; done
    if kill -0 "$KC_PID" 2>/dev/null; then
      log "process $exit_with ended; stopping Keycloak"
      exit 0
    fi
  fi
  local rc=0
  wait "$KC_PID" || rc=$?
  if [ -z "$STOPPING" ]; then
    KC_PID=""
    log "Keycloak exited by itself (status $rc); the end of $logfile:"
    tail -n 20 "$logfile" >&2
    exit 1
  fi
}

# ---------------------------------------------------------------- stop
stop_one() {
  local f="$1" spid kpid port run i
  read -r spid kpid port run <"$f" || { rm -f "$f"; return 0; }
  log "stopping Keycloak on port $port (script pid $spid, Keycloak pid $kpid)"
  # The start script stops Keycloak and cleans up on SIGTERM.
  if kill -0 "$spid" 2>/dev/null; then
    kill -TERM "$spid" 2>/dev/null || true
    for i in $(seq 1 350); do
      kill -0 "$spid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  # Whatever is left (start script killed with -9, say).
  stop_kc "$kpid"
  rm -f "$f" "$RUNS/$port.pid"
  if [ -n "$run" ] && [ -d "$run" ] && [ "${KEYGATE_KEYCLOAK_KEEP:-}" != 1 ]; then
    case "$run" in */keygate-keycloak.*) rm -rf "$run" ;; esac
  fi
}

stop() {
  local arg="${1:-}" f found=0
  if [ -z "$arg" ]; then
    for f in "$RUNS"/*.pid; do
      [ -e "$f" ] || continue
      stop_one "$f"; found=1
    done
    [ "$found" = 1 ] || log "nothing to stop (no pid file in $RUNS)"
  elif [ -f "$arg" ]; then
    stop_one "$arg"
  elif [[ "$arg" =~ ^[0-9]+$ ]]; then
    [ -f "$RUNS/$arg.pid" ] || die "no Keycloak started by this script on port $arg (no $RUNS/$arg.pid)"
    stop_one "$RUNS/$arg.pid"
  else
    die "stop: $arg is neither a pid file nor a port"
  fi
}

cmd="${1:-start}"
case "$cmd" in
  start) [ $# -gt 0 ] && shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kcadm) shift; [ -x "$DIST/bin/kcadm.sh" ] || { ensure_dist; exec 9>&-; }; exec "$DIST/bin/kcadm.sh" "$@" ;;
  -h|--help|help) usage ;;
  --*) start "$@" ;;
  *) usage; die "unknown command $cmd" ;;
esac
