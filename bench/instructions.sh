#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: keygate
# (default log level: one access-log line per request) with each credential
# it takes, caches warm: a bearer JWT, a service API key and a cookie
# session; and plain nginx proxying the same request to the same upstream. Instruction counts do not depend on what else the machine is
# doing, so this is the repeatable measurement beside bench/run.sh's timings.
#
#   ./bench/instructions.sh                 # 2000 requests per target
#   REQUESTS=5000 ./bench/instructions.sh
#
# Environment: REQUESTS (2000), WARMUP_REQUESTS (200), LOG_LEVEL (info),
#   KEYGATE_BIN (target/release/keygate), SKIP_BUILD (0), KEEP_WORKDIR (0),
#   BENCH_OUT (also write the report there).
#
# Each target runs under `valgrind --tool=callgrind --instr-atstart=no`; after
# the warm-up requests instrumentation is switched on (callgrind_control -i on),
# REQUESTS requests are sent over one keep-alive connection by curl, and the
# counters are dumped. The client and the upstream run natively and are not
# counted. nginx runs with `master_process off` (one process, its worker
# loop in it), keygate as it ships (its tokio runtime, every thread counted).
# Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

REQUESTS=${REQUESTS:-2000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-200}
LOG_LEVEL=${LOG_LEVEL:-info}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
KEYGATE=${KEYGATE_BIN:-$ROOT/target/release/keygate}

for c in valgrind callgrind_control nginx curl jq node; do
  command -v $c >/dev/null 2>&1 || die "$c not found (apt-get install valgrind nginx-light curl jq; Node.js for dev/idp)"
done
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${KEYGATE_BIN:-}" ]; then
  log "cargo build --release -p keygate"
  cargo build --release -p keygate
fi
[ -x "$KEYGATE" ] || die "$KEYGATE not built"
[ -d dev/idp/node_modules/oidc-provider ] || npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error

WORK=$(mktemp -d /tmp/keygate-instr.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP_WORKDIR" = 1 ] || [ $rc -ne 0 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
spawn() {  # spawn OUT ERR cmd...
  local out=$1 err=$2; shift 2
  setsid "$@" >"$out" 2>"$err" </dev/null &
  PIDS+=($!)
  LAST_PID=$!
}
wait_http() {  # wait_http URL NAME PID [want-regex] [tries]
  local url=$1 name=$2 pid=$3 want=${4:-'^2'} tries=${5:-600} code=""
  for _ in $(seq "$tries"); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (logs in $WORK)"
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
    [[ "$code" =~ $want ]] && return 0
    sleep 0.2
  done
  die "$name not ready at $url (last status $code; logs in $WORK)"
}

# The provider (it must know keygate's callback for the session's login) and a token.
KG_PORT=$(free_port)
spawn "$WORK/idp.out" "$WORK/idp.err" node dev/idp/server.js --port 0 --access-token-ttl 3600 \
  --redirect-uri "http://127.0.0.1:$KG_PORT/oauth/callback"
IDP_PID=$LAST_PID
ISSUER=""
for _ in $(seq 300); do
  kill -0 $IDP_PID 2>/dev/null || die "dev/idp exited: $(cat "$WORK/idp.err")"
  ISSUER=$(sed -n 's/^IDP READY issuer=//p' "$WORK/idp.out"); [ -n "$ISSUER" ] && break; sleep 0.1
done
[ -n "$ISSUER" ] || die "dev/idp did not print READY"
TOKEN=$(curl -fsS -d grant_type=password -d username=alice -d password=alice \
  -d client_id=keygate -d client_secret=keygate-secret \
  "$ISSUER/protocol/openid-connect/token" | jq -r .access_token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || die "could not get an access token"

# The upstream: nginx answering 200 "ok".
UP_PORT=$(free_port); UP_DIR=$WORK/upstream; mkdir -p "$UP_DIR"
{ nginx_common "$UP_DIR" 1; echo "http {"; nginx_http_common "$UP_DIR"
  echo "server { listen 127.0.0.1:$UP_PORT; location / { return 200 \"ok\"; } } }"; } >"$UP_DIR/nginx.conf"
spawn "$UP_DIR/out" "$UP_DIR/err" nginx -p "$UP_DIR" -e "$UP_DIR/error.log" -c "$UP_DIR/nginx.conf"
wait_http "http://127.0.0.1:$UP_PORT/" upstream $LAST_PID

# One keep-alive connection, N requests, through curl's config file.
CURLCFG_WARM=$WORK/warm.curl; CURLCFG_RUN=$WORK/run.curl
requests() {  # requests PORT N FILE HEADER
  : >"$3"
  printf 'header = "%s"\nsilent\noutput = /dev/null\n' "$4" >>"$3"
  for _ in $(seq "$2"); do printf 'url = "http://127.0.0.1:%s/api/items"\noutput = /dev/null\n' "$1"; done >>"$3"
}

declare -A IR
measure() {  # measure NAME PORT PID OUTFILE [HEADER]
  local name=$1 port=$2 pid=$3 out=$4 header=${5:-"Authorization: Bearer $TOKEN"} ok
  requests "$port" "$WARMUP_REQUESTS" "$CURLCFG_WARM" "$header"
  requests "$port" "$REQUESTS" "$CURLCFG_RUN" "$header"
  curl -K "$CURLCFG_WARM" -w '%{http_code}\n' | sort | uniq -c | grep -q " 200$" || die "$name: warm-up not 200"
  callgrind_control -i on "$pid" >/dev/null
  ok=$(curl -K "$CURLCFG_RUN" -w '%{http_code}\n' | grep -c '^200$' || true)
  [ "$ok" = "$REQUESTS" ] || die "$name: only $ok of $REQUESTS requests answered 200"
  callgrind_control -d "$pid" >/dev/null
  callgrind_control -i off "$pid" >/dev/null
  sleep 1
  # The dump made by -d: the newest file with a `totals:` line.
  local total newest
  newest=$(ls -t "$out".* 2>/dev/null | head -n1)
  total=$(grep -h '^totals:' "$newest" | awk '{print $2}')
  [ -n "$total" ] || die "$name: no callgrind totals in $out*"
  IR[$name]=$total
  log "$name: $total instructions for $REQUESTS requests: $(( total / REQUESTS )) per request"
}

# nginx proxying, one process.
NGX_PORT=$(free_port); NGX_DIR=$WORK/nginx-proxy; mkdir -p "$NGX_DIR"
cat >"$NGX_DIR/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/error.log warn;
events { worker_connections 1024; }
http {
$(nginx_http_common "$NGX_DIR")
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 16; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
spawn "$NGX_DIR/out" "$NGX_DIR/err" valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$NGX_DIR/callgrind.out" nginx -p "$NGX_DIR" -e "$NGX_DIR/error.log" -c "$NGX_DIR/nginx.conf"
NGX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGX_PORT/" "nginx under valgrind" $NGX_PID
measure nginx "$NGX_PORT" "$NGX_PID" "$NGX_DIR/callgrind.out"

# keygate.
KG_DIR=$WORK/keygate; mkdir -p "$KG_DIR"
cat >"$KG_DIR/keygate.yaml" <<EOF
listen: 127.0.0.1:$KG_PORT
discovery-url: $ISSUER
client-id: keygate
client-secret: keygate-secret
upstream-url: http://127.0.0.1:$UP_PORT
log-level: $LOG_LEVEL
store-url: sqlite://$KG_DIR/keys.db
api-keys:
  server-secret: bench-server-secret-0123456789abcdef-0123456789
encryption-key: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
secure-cookie: false
EOF
printf 'svc-reporting-secret' >"$KG_DIR/svc-secret"
API_KEY=$("$KEYGATE" keys create --config "$KG_DIR/keygate.yaml" --kind service \
  --client-id svc-reporting --client-secret-file "$KG_DIR/svc-secret" 2>/dev/null | head -n1)
case "$API_KEY" in kgs_*) ;; *) die "could not create a service key";; esac
spawn /dev/null "$KG_DIR/err" valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$KG_DIR/callgrind.out" "$KEYGATE" serve --config "$KG_DIR/keygate.yaml"
KG_PID=$LAST_PID
wait_http "http://127.0.0.1:$KG_PORT/oauth/ready" "keygate under valgrind" $KG_PID
SESSION=$(node bench/login.mjs "http://127.0.0.1:$KG_PORT") || die "login to keygate failed"
measure keygate "$KG_PORT" "$KG_PID" "$KG_DIR/callgrind.out"
measure keygate-apikey "$KG_PORT" "$KG_PID" "$KG_DIR/callgrind.out" "X-API-Key: $API_KEY"
measure keygate-session "$KG_PORT" "$KG_PID" "$KG_DIR/callgrind.out" "Cookie: $SESSION"

per() { echo $(( IR[$1] / REQUESTS )); }
REPORT=$(cat <<EOF
| target | instructions per request | vs nginx | vs keygate's bearer JWT |
|---|---:|---:|---:|
| nginx proxy, no auth (master_process off) | $(per nginx) | 1.00× | |
| keygate, bearer JWT, log-level $LOG_LEVEL | $(per keygate) | $(ratio "$(per keygate)" "$(per nginx)") | 1.00× |
| keygate, service API key | $(per keygate-apikey) | $(ratio "$(per keygate-apikey)" "$(per nginx)") | $(ratio "$(per keygate-apikey)" "$(per keygate)") |
| keygate, cookie session | $(per keygate-session) | $(ratio "$(per keygate-session)" "$(per nginx)") | $(ratio "$(per keygate-session)" "$(per keygate)") |

$REQUESTS requests over one keep-alive connection (curl), after $WARMUP_REQUESTS warm-up requests; \`valgrind --tool=callgrind\`, every thread of the process counted.
EOF
)
echo "$REPORT"
[ -n "${BENCH_OUT:-}" ] && echo "$REPORT" >"$BENCH_OUT"
exit 0
