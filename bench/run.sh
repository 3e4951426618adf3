#!/usr/bin/env bash
# Side-by-side proxy benchmark (DESIGN.md "Performance targets"): bearer-JWT
# requests through keygate vs. plain nginx proxying (no auth) vs. Apache +
# mod_auth_openidc validating the same token, all on loopback, same upstream;
# and, on the keygate that logs at warn, API-key and cookie-session requests.
#
#   ./bench/run.sh                       # wrk -t1 -c32 -d10s, 3 runs per target
#   WRK_CONNS=64 WRK_DURATION=20s RUNS=5 ./bench/run.sh
#
# Environment (all optional):
#   WRK_THREADS (1) WRK_CONNS (32) WRK_DURATION (10s) RUNS (3) WARMUP (2s)
#   NGINX_WORKERS (auto)   worker_processes of the plain nginx proxy
#   UPSTREAM_WORKERS (1)   worker_processes of the upstream nginx
#   APACHE_PROCS (2) APACHE_THREADS (32)   mpm_event ServerLimit/ThreadsPerChild
#   BENCH_OUT (unset)      also write the markdown report to this file
#   PEER_GATEKEEPER (unset)    path of a gogatekeeper binary, PEER_OAUTH2_PROXY
#                              (unset) of an oauth2-proxy binary: measured beside
#                              the others when given (built by you from their
#                              sources; this repository builds neither). Both
#                              validate the bearer token and log each request,
#                              to /dev/null like keygate-info.
#   KEEP_WORKDIR (0)       1 = keep the temp dir (configs, logs, raw wrk output)
#   SKIP_INSTALL (0) SKIP_BUILD (0)
#
# Not part of the test suite. Starts everything itself on 127.0.0.1 with its own
# temp prefixes; never touches the system nginx/apache services' configs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-32}
WRK_DURATION=${WRK_DURATION:-10s}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-2s}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
APACHE_PROCS=${APACHE_PROCS:-2}
APACHE_THREADS=${APACHE_THREADS:-32}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}


# ---------------------------------------------------------------- cleanup
WORK=""
PIDS=()      # processes we started (each a process-group leader or a daemon master)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  # Each process we started leads its own session (setsid) and process group:
  # signal the group (nginx/apache workers too) and wait until the session is empty.
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  alive() { ps -o stat= -s "$1" 2>/dev/null | grep -qv '^Z'; }   # zombies are reaped below
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP_WORKDIR" = 1 ] || [ $rc -ne 0 ]; then
      log "work dir kept: $WORK"
    else
      rm -rf "$WORK" 2>/dev/null || { sleep 1; rm -rf "$WORK"; }
    fi
  fi
  exit $rc
}
trap cleanup EXIT
set -E
trap 'echo "error: ${BASH_SOURCE[0]}:$LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- install
port_listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

install_missing() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v apache2 >/dev/null 2>&1 || missing+=(apache2)
  [ -f /usr/lib/apache2/modules/mod_auth_openidc.so ] || missing+=(libapache2-mod-auth-openidc)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (Debian packages)"
  local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  local had80=0; port_listening 80 && had80=1
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages may start system services on port 80; we start our own.
  if [ $had80 -eq 0 ]; then
    local svc
    for svc in nginx apache2; do
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
}
[ "${SKIP_INSTALL:-0}" = 1 ] || install_missing
command -v node >/dev/null 2>&1 || die "Node.js is required (for dev/idp)"
for c in nginx wrk apache2 jq curl openssl; do command -v $c >/dev/null 2>&1 || die "$c not found"; done
APACHE_MODS=/usr/lib/apache2/modules
[ -f $APACHE_MODS/mod_auth_openidc.so ] || die "mod_auth_openidc not found in $APACHE_MODS"

if [ ! -d dev/idp/node_modules/oidc-provider ]; then
  log "npm ci (dev/idp)"
  npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release -p keygate"
  cargo build --release -p keygate
fi
KEYGATE=$ROOT/target/release/keygate
[ -x "$KEYGATE" ] || die "$KEYGATE not built"

WORK=$(mktemp -d /tmp/keygate-bench.XXXXXX)
chmod 755 "$WORK"   # nginx/apache workers run unprivileged when we are root

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
# Start a command in the background in its own process group; record its pid.
spawn() {  # spawn OUTFILE ERRFILE cmd...
  local out=$1 err=$2; shift 2
  setsid "$@" >"$out" 2>"$err" </dev/null &
  PIDS+=($!)
  LAST_PID=$!
}

wait_http() {  # wait_http URL NAME PID [expected codes regex]
  local url=$1 name=$2 pid=$3 want=${4:-'^2'} code
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (logs in $WORK)"
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
    [[ "$code" =~ $want ]] && return 0
    sleep 0.1
  done
  die "$name not ready at $url (last status $code; logs in $WORK)"
}

# ---------------------------------------------------------------- provider
# The warn instance's port is chosen now: the provider must know its callback
# for the cookie-session login.
KGW_PORT=$(free_port)
log "starting dev/idp (access-token TTL 3600 s)"
IDP_OUT=$WORK/idp.out
spawn "$IDP_OUT" "$WORK/idp.err" node dev/idp/server.js --port 0 --access-token-ttl 3600 \
  --refresh-token-ttl 7200 --redirect-uri "http://127.0.0.1:$KGW_PORT/oauth/callback"
IDP_PID=$LAST_PID
ISSUER=""
for _ in $(seq 300); do
  kill -0 $IDP_PID 2>/dev/null || die "dev/idp exited: $(cat "$WORK/idp.err")"
  ISSUER=$(sed -n 's/^IDP READY issuer=//p' "$IDP_OUT")
  [ -n "$ISSUER" ] && break
  sleep 0.1
done
[ -n "$ISSUER" ] || die "dev/idp did not print READY"
IDP_BASE=${ISSUER%/realms/*}
log "issuer $ISSUER"

TOKEN=$(curl -fsS -d grant_type=password -d username=alice -d password=alice \
  -d client_id=keygate -d client_secret=keygate-secret \
  "$ISSUER/protocol/openid-connect/token" | jq -r .access_token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || die "could not get an access token"
b64url_decode() { local s=${1//-/+}; s=${s//_//}; while [ $(( ${#s} % 4 )) -ne 0 ]; do s+="="; done; printf '%s' "$s" | base64 -d; }
KID=$(b64url_decode "${TOKEN%%.*}" | jq -r .kid)
TOKEN_EXP=$(b64url_decode "$(cut -d. -f2 <<<"$TOKEN")" | jq -r .exp)
log "token for alice: kid=$KID, expires in $(( TOKEN_EXP - $(date +%s) )) s, ${#TOKEN} bytes"

# The provider's current signing key as PEM (mod_auth_openidc needs an https JWKS
# URI, so it gets the key as a file instead).
PUBKEY_B64=$(curl -fsS "$IDP_BASE/realms/acme" | jq -r .public_key)
{ echo "-----BEGIN PUBLIC KEY-----"; fold -w 64 <<<"$PUBKEY_B64"; echo "-----END PUBLIC KEY-----"; } >"$WORK/idp-key.pem"
openssl pkey -pubin -in "$WORK/idp-key.pem" -noout 2>/dev/null || die "bad public key from realm info"
# Make sure the realm's public_key is the key the token was signed with.
JWKS_N=$(curl -fsS "$ISSUER/protocol/openid-connect/certs" | jq -r --arg k "$KID" '.keys[] | select(.kid==$k) | .n')
PEM_N=$(openssl rsa -pubin -in "$WORK/idp-key.pem" -noout -modulus 2>/dev/null | sed 's/^Modulus=//')
JWK_N_HEX=$(b64url_decode "$JWKS_N" | od -An -v -tx1 | tr -d ' \n' | tr a-f A-F | sed 's/^00*//')
[ "${PEM_N#00}" = "$JWK_N_HEX" ] || die "realm public_key is not the key with kid $KID"

# ---------------------------------------------------------------- upstream nginx
UP_PORT=$(free_port)
UP_DIR=$WORK/upstream; mkdir -p "$UP_DIR"
{
  nginx_common "$UP_DIR" "$UPSTREAM_WORKERS"
  echo "http {"
  nginx_http_common "$UP_DIR"
  cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "ok"; }
    }
}
EOF
} >"$UP_DIR/nginx.conf"
log "starting upstream nginx on :$UP_PORT"
spawn "$UP_DIR/stdout" "$UP_DIR/stderr" nginx -p "$UP_DIR" -e "$UP_DIR/error.log" -c "$UP_DIR/nginx.conf"
UP_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/" "upstream nginx" $UP_PID

# ---------------------------------------------------------------- plain nginx proxy
NGX_PORT=$(free_port)
NGX_DIR=$WORK/nginx-proxy; mkdir -p "$NGX_DIR"
{
  nginx_common "$NGX_DIR" "$NGINX_WORKERS"
  echo "http {"
  nginx_http_common "$NGX_DIR"
  cat <<EOF
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$NGX_DIR/nginx.conf"
log "starting plain nginx proxy on :$NGX_PORT (worker_processes $NGINX_WORKERS)"
spawn "$NGX_DIR/stdout" "$NGX_DIR/stderr" nginx -p "$NGX_DIR" -e "$NGX_DIR/error.log" -c "$NGX_DIR/nginx.conf"
NGX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGX_PORT/" "nginx proxy" $NGX_PID

# ---------------------------------------------------------------- apache + mod_auth_openidc
AP_PORT=$(free_port)
AP_DIR=$WORK/apache; mkdir -p "$AP_DIR/run"
AP_USER=www-data; id -u $AP_USER >/dev/null 2>&1 || AP_USER=nobody
AP_GROUP=$(id -gn $AP_USER)
cat >"$AP_DIR/httpd.conf" <<EOF
ServerRoot "$AP_DIR"
ServerName 127.0.0.1
Listen 127.0.0.1:$AP_PORT
PidFile "$AP_DIR/run/httpd.pid"
DefaultRuntimeDir "$AP_DIR/run"
Mutex file:$AP_DIR/run default
ErrorLog "$AP_DIR/error.log"
LogLevel warn
User $AP_USER
Group $AP_GROUP

LoadModule mpm_event_module $APACHE_MODS/mod_mpm_event.so
LoadModule authn_core_module $APACHE_MODS/mod_authn_core.so
LoadModule authz_core_module $APACHE_MODS/mod_authz_core.so
LoadModule authz_user_module $APACHE_MODS/mod_authz_user.so
LoadModule proxy_module $APACHE_MODS/mod_proxy.so
LoadModule proxy_http_module $APACHE_MODS/mod_proxy_http.so
LoadModule auth_openidc_module $APACHE_MODS/mod_auth_openidc.so

StartServers $APACHE_PROCS
ServerLimit $APACHE_PROCS
ThreadsPerChild $APACHE_THREADS
ThreadLimit $APACHE_THREADS
MaxRequestWorkers $(( APACHE_PROCS * APACHE_THREADS ))
MinSpareThreads $APACHE_THREADS
MaxSpareThreads $(( APACHE_PROCS * APACHE_THREADS ))
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 120

OIDCCryptoPassphrase bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
OIDCOAuthVerifyCertFiles $KID#$WORK/idp-key.pem
OIDCOAuthAcceptTokenAs header

<Location "/">
    AuthType oauth20
    Require valid-user
</Location>

ProxyPass "/" "http://127.0.0.1:$UP_PORT/"
EOF
log "starting Apache (mpm_event, mod_auth_openidc) on :$AP_PORT"
spawn "$AP_DIR/stdout" "$AP_DIR/stderr" apache2 -d "$AP_DIR" -f "$AP_DIR/httpd.conf" -DFOREGROUND
AP_PID=$LAST_PID
wait_http "http://127.0.0.1:$AP_PORT/" "apache" $AP_PID '^401$'

# ---------------------------------------------------------------- keygate
start_keygate() {  # start_keygate NAME LOG_LEVEL STDOUT [PORT] -> sets KG_PORT
  local name=$1 level=$2 out=$3 dir=$WORK/$1
  mkdir -p "$dir"
  KG_PORT=${4:-$(free_port)}
  cat >"$dir/keygate.yaml" <<EOF
listen: 127.0.0.1:$KG_PORT
discovery-url: $ISSUER
client-id: keygate
client-secret: keygate-secret
upstream-url: http://127.0.0.1:$UP_PORT
log-level: $level
store-url: sqlite://$dir/keys.db
api-keys:
  server-secret: bench-server-secret-0123456789abcdef-0123456789
encryption-key: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
secure-cookie: false
EOF
  log "starting keygate ($name, log-level $level, stdout to $out) on :$KG_PORT"
  spawn "$out" "$dir/stderr" "$KEYGATE" serve --config "$dir/keygate.yaml"
  wait_http "http://127.0.0.1:$KG_PORT/oauth/ready" "keygate ($name)" $LAST_PID
}
# info: one access-log line per request on stdout, thrown away; warn: stdout kept
# (only warnings and errors) so that problems under load can be reported.
start_keygate keygate-info info /dev/null;                  KGI_PORT=$KG_PORT
start_keygate keygate-warn warn "$WORK/keygate-warn/stdout" "$KGW_PORT"
# A service key on the warn instance: API-key requests are measured on the
# same process, in the same run, as bearer-JWT requests.
printf 'svc-reporting-secret' >"$WORK/svc-secret"
API_KEY=$("$KEYGATE" keys create --config "$WORK/keygate-warn/keygate.yaml" --kind service \
  --client-id svc-reporting --client-secret-file "$WORK/svc-secret" 2>/dev/null | head -n1)
case "$API_KEY" in kgs_*) ;; *) die "could not create a service key for the benchmark";; esac
# And a cookie session (a login through dev/idp, as a browser makes it) on the
# same instance: the session's cookie is sent as it is, the access token inside
# it valid for the whole run.
SESSION=$(node bench/login.mjs "http://127.0.0.1:$KGW_PORT") || die "login to keygate failed"

# ---------------------------------------------------------------- peers (optional)
PEERS=()
if [ -n "${PEER_GATEKEEPER:-}" ]; then
  GK_PORT=$(free_port); mkdir -p "$WORK/gatekeeper"
  log "starting gogatekeeper ($PEER_GATEKEEPER) on :$GK_PORT"
  spawn /dev/null "$WORK/gatekeeper/stderr" "$PEER_GATEKEEPER" --listen "127.0.0.1:$GK_PORT" \
    --discovery-url "$ISSUER" --client-id keygate --client-secret keygate-secret \
    --upstream-url "http://127.0.0.1:$UP_PORT" --no-redirects=true --enable-default-deny=true \
    --enable-logging=true --secure-cookie=false --enable-pkce=false --enable-encrypted-token=false
  wait_http "http://127.0.0.1:$GK_PORT/oauth/health" "gogatekeeper" $LAST_PID
  PEERS+=(gatekeeper)
fi
if [ -n "${PEER_OAUTH2_PROXY:-}" ]; then
  O2P_PORT=$(free_port); mkdir -p "$WORK/oauth2-proxy"
  log "starting oauth2-proxy ($PEER_OAUTH2_PROXY) on :$O2P_PORT"
  spawn /dev/null "$WORK/oauth2-proxy/stderr" "$PEER_OAUTH2_PROXY" --provider=oidc \
    --oidc-issuer-url="$ISSUER" --client-id=keygate --client-secret=keygate-secret \
    --cookie-secret=0123456789abcdef0123456789abcdef --cookie-secure=false --email-domain='*' \
    --upstream="http://127.0.0.1:$UP_PORT/" --http-address="127.0.0.1:$O2P_PORT" \
    --skip-jwt-bearer-tokens=true --api-route=/ --request-logging=true
  wait_http "http://127.0.0.1:$O2P_PORT/ping" "oauth2-proxy" $LAST_PID
  PEERS+=(oauth2-proxy)
fi

# ---------------------------------------------------------------- targets
NAMES=(nginx apache keygate-info keygate-warn keygate-apikey keygate-session "${PEERS[@]}")
declare -A LABEL=(
  [keygate-apikey]="keygate API key, cache warm (log-level warn)"
  [keygate-session]="keygate cookie session (log-level warn)"
  [gatekeeper]="gogatekeeper (access log on, stdout→/dev/null)"
  [oauth2-proxy]="oauth2-proxy (request log on, stdout→/dev/null)"
  [nginx]="nginx proxy, no auth"
  [apache]="Apache + mod_auth_openidc"
  [keygate-info]="keygate (log-level info, stdout→/dev/null)"
  [keygate-warn]="keygate (log-level warn)"
)
declare -A URL=(
  [keygate-apikey]="http://127.0.0.1:$KGW_PORT/"
  [keygate-session]="http://127.0.0.1:$KGW_PORT/"
  [gatekeeper]="http://127.0.0.1:${GK_PORT:-0}/"
  [oauth2-proxy]="http://127.0.0.1:${O2P_PORT:-0}/"
  [nginx]="http://127.0.0.1:$NGX_PORT/"
  [apache]="http://127.0.0.1:$AP_PORT/"
  [keygate-info]="http://127.0.0.1:$KGI_PORT/"
  [keygate-warn]="http://127.0.0.1:$KGW_PORT/"
)

# Same token with one signature character changed (not the last one: its low bits are padding).
SIG=${TOKEN##*.}; c=${SIG:10:1}; [ "$c" = A ] && c=B || c=A
BAD_TOKEN="${TOKEN%.*}.${SIG:0:10}$c${SIG:11}"
log "checking every target answers 200 with the token (401 without for apache/keygate)"
declare -A CRED
for n in "${NAMES[@]}"; do CRED[$n]="Authorization: Bearer $TOKEN"; done
CRED[keygate-apikey]="X-API-Key: $API_KEY"
CRED[keygate-session]="Cookie: $SESSION"
for n in "${NAMES[@]}"; do
  body=$(curl -sS -H "${CRED[$n]}" -w ' %{http_code}' "${URL[$n]}")
  [ "$body" = "ok 200" ] || die "$n with token: got '$body', want 'ok 200'"
  if [ "$n" != nginx ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[$n]}")
    [ "$code" = 401 ] || die "$n without token: got $code, want 401"
    case $n in keygate-apikey|keygate-session) continue ;; esac
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BAD_TOKEN" "${URL[$n]}")
    # (gogatekeeper answers a bad signature with 403)
    [[ $code =~ ^40[13]$ ]] || die "$n with a bad signature: got $code, want 401"
  fi
done

# ---------------------------------------------------------------- wrk

# CPU used by processes that are not ours (someone compiling, say), so that a
# noisy run can be recognised: the user+system time, own and of reaped children,
# of every process outside the sessions we started and outside this script's
# process group (wrk, curl), kernel threads excepted (ksoftirqd works for us).
# Processes that exit in between are counted through their parent's
# cutime/cstime, so a compiler driven by a long-lived cargo is seen.
CLK_TCK=$(getconf CLK_TCK)
MY_PGRP=$(ps -o pgid= $$ | tr -d ' ')
busy_other() {
  local sids=" ${PIDS[*]} "
  # (processes may vanish between the glob and the read: ignore cat's complaint)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v sids="$sids" -v pg="$MY_PGRP" '
    { pid = $1; sub(/^.*\) /, "")   # now $2 ppid, $3 pgrp, $4 session, $12.. times
      if (pid == 2 || $2 == 2 || $3 == pg || index(sids, " " $4 " ")) next
      t += $12 + $13 + $14 + $15 }
    END { print t + 0 }'
}

declare -A RPS P50 P99 ERRS OTHER
run_wrk() {  # run_wrk NAME RUN
  local n=$1 r=$2 out=$WORK/wrk-$1-$2.txt
  local o0 o1 w0 w1 other
  o0=$(busy_other); w0=$(date +%s.%N)
  wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency \
      -H "${CRED[$n]}" "${URL[$n]}" >"$out" 2>&1 || die "wrk failed for $n: $(cat "$out")"
  o1=$(busy_other); w1=$(date +%s.%N)
  # cores' worth of CPU used by other processes during the run
  other=$(awk -v o="$((o1 - o0))" -v w0="$w0" -v w1="$w1" -v hz="$CLK_TCK" \
              'BEGIN { v = o / hz / (w1 - w0); if (v < 0) v = 0; printf "%.2f", v }')
  OTHER[$n]+="$other "
  local rps p50 p99 non2xx sockerr
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$out"); non2xx=${non2xx:-0}
  sockerr=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10}' "$out"); sockerr=${sockerr:-0}
  RPS[$n]+="$rps "; P50[$n]+="$p50 "; P99[$n]+="$p99 "
  ERRS[$n]=$(( ${ERRS[$n]:-0} + non2xx + sockerr ))
  printf '    %-14s run %d: %10.1f req/s  p50 %7.3f ms  p99 %7.3f ms  non-2xx %s  socket errors %s  other CPU %s cores\n' \
    "$n" "$r" "$rps" "$p50" "$p99" "$non2xx" "$sockerr" "$other" >&2
}

declare -A LOG_MARK
for f in keygate-info/stderr keygate-warn/stderr keygate-warn/stdout \
         upstream/error.log nginx-proxy/error.log apache/error.log apache/stderr; do
  LOG_MARK[$f]=$(wc -l <"$WORK/$f" 2>/dev/null || echo 0)
done

log "warm-up ($WARMUP per target)"
for n in "${NAMES[@]}"; do
  wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WARMUP" -H "${CRED[$n]}" "${URL[$n]}" >/dev/null 2>&1 || true
done

log "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION --latency, $RUNS runs per target (interleaved)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$RUNS"); do
  for n in "${NAMES[@]}"; do run_wrk "$n" "$r"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
declare -A MRPS MP50 MP99
for n in "${NAMES[@]}"; do
  # shellcheck disable=SC2086
  MRPS[$n]=$(median ${RPS[$n]}); MP50[$n]=$(median ${P50[$n]}); MP99[$n]=$(median ${P99[$n]})
done
report() {
  echo "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION --latency, median of $RUNS runs;" \
       "one RS256 bearer token for alice; upstream nginx \`return 200 \"ok\"\`."
  echo "keygate $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified)'), built $(date -u -r "$KEYGATE" '+%F %T') UTC; run finished $(date -u '+%F %T') UTC."
  echo "Load average before/after the runs: $LOAD_BEFORE / $LOAD_AFTER."
  echo
  echo "| target | req/s | p50 (ms) | p99 (ms) | vs nginx (req/s) | p99 − nginx (ms) | vs apache (req/s) | non-2xx + socket errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  local n
  for n in "${NAMES[@]}"; do
    printf '| %s | %.0f | %.3f | %.3f | %s | %+.3f | %s | %s |\n' "${LABEL[$n]}" \
      "${MRPS[$n]}" "${MP50[$n]}" "${MP99[$n]}" \
      "$(ratio "${MRPS[$n]}" "${MRPS[nginx]}")" \
      "$(awk -v a="${MP99[$n]}" -v b="${MP99[nginx]}" 'BEGIN{print a-b}')" \
      "$(ratio "${MRPS[$n]}" "${MRPS[apache]}")" "${ERRS[$n]}"
  done
  echo
  echo "Per run (req/s; CPU used meanwhile by processes not started by this script, in cores of $(nproc)):"
  echo
  for n in "${NAMES[@]}"; do echo "- ${LABEL[$n]}: ${RPS[$n]}; other CPU: ${OTHER[$n]}"; done
  echo
  local noisy
  noisy=$(for n in "${NAMES[@]}"; do printf '%s\n' ${OTHER[$n]}; done | awk '$1 > 0.10 { c++ } END { print c + 0 }')
  if [ "$noisy" -gt 0 ]; then
    echo "**Warning:** in $noisy of $(( ${#NAMES[@]} * RUNS )) runs other processes used more than 0.1 core" \
         "of the $(nproc) (the machine was shared); those numbers understate what the targets can do and the ratios are skewed."
    echo
  fi
  local k
  for k in keygate-info keygate-warn; do
    local vs_nginx vs_apache dp99
    vs_nginx=$(awk -v a="${MRPS[$k]}" -v b="${MRPS[nginx]}" 'BEGIN{print (a>=b)?"met":"NOT met"}')
    dp99=$(awk -v a="${MP99[$k]}" -v b="${MP99[nginx]}" 'BEGIN{print (a<=b)?"met":"NOT met"}')
    vs_apache=$(awk -v a="${MRPS[$k]}" -v b="${MRPS[apache]}" 'BEGIN{print (a>=3*b)?"met":"NOT met"}')
    echo "Targets for ${LABEL[$k]}: ≥ 1.0× nginx req/s: $vs_nginx; p99 ≤ nginx's: $dp99; ≥ 3× Apache req/s: $vs_apache."
  done
  for k in keygate-apikey keygate-session; do
    echo "${LABEL[$k]} vs bearer JWT on the same keygate process:" \
         "$(ratio "${MRPS[$k]}" "${MRPS[keygate-warn]}") (target ≥ 0.9×:" \
         "$(awk -v a="${MRPS[$k]}" -v b="${MRPS[keygate-warn]}" 'BEGIN{print (a>=0.9*b)?"met":"NOT met"}'))."
  done
}
REPORT=$(report)
echo
echo "$REPORT"
[ -z "${BENCH_OUT:-}" ] || echo "$REPORT" >"$BENCH_OUT"

# Anything keygate, nginx or Apache logged while under load (the lines written
# before the warm-up, e.g. Apache's errors for the deliberately bad token, are skipped).
for f in "${!LOG_MARK[@]}"; do
  [ -f "$WORK/$f" ] || continue
  new=$(tail -n +"$(( LOG_MARK[$f] + 1 ))" "$WORK/$f")
  if [ -n "$new" ]; then
    echo; echo "$f: $(wc -l <<<"$new") line(s) logged under load (first 20):"
    head -n 20 <<<"$new"
  fi
done
