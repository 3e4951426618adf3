#!/usr/bin/env bash
# Scale-out benchmark (issue "scale-out: replicas sharing PostgreSQL and Redis"):
# what it costs to run keygate as several replicas with shared state instead of
# one process with local state, on the same machine, measured side by side in
# one run, on loopback, with wrk:
#
#   A  ONE keygate replica with local state: store-url sqlite://…, cookie
#      sessions (session-store: cookie, the default), no redis-url;
#   B  THREE keygate replicas with shared state: store-url postgres://… (one
#      PostgreSQL server), redis-url (one Redis server), session-store: redis.
#
# In both cases the same nginx (one process, one server block per side) is in
# front as a round-robin HTTP/1.1 load balancer with upstream keepalive, so A
# and B differ only in the number of replicas and where state lives. Behind
# keygate is a plain nginx answering 200 "ok". Three credentials are measured,
# each its own wrk run against the load balancer:
#
#   jwt      Authorization: Bearer <RS256 access token of alice> (password grant)
#   apikey   X-API-Key: <a service key of svc-reporting>, created once per side
#            with `keygate keys create` (in B once, against PostgreSQL)
#   session  Cookie: kg_session=… from a real login through dev/idp
#            (bench/login.mjs drives it), on the load balancer's address
#
# Before measuring it checks every credential answers 200 through the load
# balancer and on each replica directly (in B, the session made through the
# load balancer must work on every replica: it lives in Redis), and 401
# without one. A run with any non-2xx response fails the script.
#
#   ./bench/scale.sh                     # wrk -t1 -c32 -d10s, 3 runs per target
#   WRK_DURATION=3s RUNS=1 WARMUP=1s ./bench/scale.sh       # quick check
#   RATE_LIMITS=1 BENCH_OUT=/tmp/scale.md ./bench/scale.sh
#
# Environment (all optional):
#   WRK_THREADS (1) WRK_CONNS (32) WRK_DURATION (10s) RUNS (3) WARMUP (2s)
#   REPLICAS (3)           replicas of side B
#   RATE_LIMITS (0)        1 = `rate-limit-service: 1000000/s` in every replica's
#                          api-keys section: never reached, but each API-key
#                          request then counts against it (A: in memory; B: one
#                          Redis round trip for the shared counter)
#   LB_WORKERS (auto)      worker_processes of the load-balancer nginx
#   UPSTREAM_WORKERS (1)   worker_processes of the upstream nginx
#   WRK_CPUS NGINX_CPUS KEYGATE_CPUS STATE_CPUS
#                          CPU lists (taskset -c) for wrk, the two nginx, every
#                          keygate replica, and PostgreSQL + Redis; default: all
#                          CPUs this script may use. The same sets for A and B.
#   KEYGATE_WORKERS (unset) tokio worker threads per replica (TOKIO_WORKER_THREADS);
#                          unset = tokio's default, one per CPU in KEYGATE_CPUS
#   BENCH_OUT (unset)      also write the markdown report to this file
#   KEEP_WORKDIR (0)       1 = keep the temp dir (configs, logs, raw wrk output)
#   SKIP_INSTALL (0) SKIP_BUILD (0)
#
# Not part of the test suite. Starts everything itself on 127.0.0.1 on free
# ports, with its own temp prefixes and data directories, and stops all of it
# on exit (also on failure or Ctrl-C); never touches system services or their
# configs (a PostgreSQL or Redis the packages may have started is left alone).
# Needs root or sudo only to install missing Debian packages; as root,
# PostgreSQL runs as the `postgres` user.
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
REPLICAS=${REPLICAS:-3}
RATE_LIMITS=${RATE_LIMITS:-0}
LB_WORKERS=${LB_WORKERS:-auto}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
KEYGATE_WORKERS=${KEYGATE_WORKERS:-}
KEEP_WORKDIR=${KEEP_WORKDIR:-0}
MY_CPUS=$(taskset -cp $$ | sed 's/^.*: //')     # the CPUs this script may run on
WRK_CPUS=${WRK_CPUS:-$MY_CPUS}
NGINX_CPUS=${NGINX_CPUS:-$MY_CPUS}
KEYGATE_CPUS=${KEYGATE_CPUS:-$MY_CPUS}
STATE_CPUS=${STATE_CPUS:-$MY_CPUS}


# ---------------------------------------------------------------- cleanup
WORK=""     # PIDS, PG_PID: see bench/lib.sh
cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  stop_spawned
  finish_workdir $rc
  exit $rc
}
trap cleanup EXIT
set -E
trap 'echo "error: ${BASH_SOURCE[0]}:$LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- install
[ "${SKIP_INSTALL:-0}" = 1 ] || install_missing nginx:nginx-light wrk:wrk redis-server:redis-server \
  postgres:postgresql jq:jq curl:curl
command -v node >/dev/null 2>&1 || die "Node.js >= 20 is required (dev/idp, bench/login.mjs)"
for c in nginx wrk redis-server redis-cli jq curl openssl taskset setsid; do
  command -v $c >/dev/null 2>&1 || die "$c not found"
done
pg_setup

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

WORK=$(mktemp -d /tmp/keygate-scale.XXXXXX)
chmod 755 "$WORK"   # nginx workers and postgres run unprivileged when we are root

# ---------------------------------------------------------------- helpers
# Ports are picked below the kernel's ephemeral range: several are picked
# before the servers bind them (the provider must know the load balancers'
# callback URLs), and meanwhile any outgoing connection, ours or the test
# suite's, could take a port from the ephemeral range.

# GET URL with one credential header, expecting the upstream's "ok" and 200.
expect_ok() {  # expect_ok WHAT URL HEADER
  local got; got=$(curl -sS -H "$3" -w ' %{http_code}' "$2")
  [ "$got" = "ok 200" ] || die "$1: got '$got', want 'ok 200'"
}

# ---------------------------------------------------------------- ports
LB_PORT_A=$(free_port); LB_PORT_B=$(free_port)
KG_PORTS_A=("$(free_port)")
KG_PORTS_B=(); for _ in $(seq "$REPLICAS"); do KG_PORTS_B+=("$(free_port)"); done
declare -A LB_URL=([A]="http://127.0.0.1:$LB_PORT_A" [B]="http://127.0.0.1:$LB_PORT_B")

# ---------------------------------------------------------------- provider
# Long token lifetimes: the bearer token, the sessions' tokens and the API
# keys' exchanged tokens must outlive the whole run. Browser logins come back
# to the load balancers' addresses.
log "starting dev/idp"
IDP_OUT=$WORK/idp.out
spawn_pinned "$MY_CPUS" "$IDP_OUT" "$WORK/idp.err" node dev/idp/server.js --port 0 \
  --access-token-ttl 43200 --refresh-token-ttl 43200 \
  --redirect-uri "${LB_URL[A]}/oauth/callback" --redirect-uri "${LB_URL[B]}/oauth/callback"
IDP_PID=$LAST_PID
wait_until "dev/idp" $IDP_PID grep -q '^IDP READY issuer=' "$IDP_OUT"
ISSUER=$(sed -n 's/^IDP READY issuer=//p' "$IDP_OUT")
log "issuer $ISSUER"

TOKEN=$(curl -fsS -d grant_type=password -d username=alice -d password=alice \
  -d client_id=keygate -d client_secret=keygate-secret \
  "$ISSUER/protocol/openid-connect/token" | jq -r .access_token)
[ -n "$TOKEN" ] && [ "$TOKEN" != null ] || die "could not get an access token"
log "access token for alice: ${#TOKEN} bytes"

# ---------------------------------------------------------------- nginx
UP_PORT=$(free_port)
UP_DIR=$WORK/upstream
log "starting upstream nginx on :$UP_PORT"
start_upstream_nginx "$UP_DIR" "$UP_PORT" "$NGINX_CPUS" "$UPSTREAM_WORKERS"

# ---------------------------------------------------------------- Redis, PostgreSQL (side B)
REDIS_PORT=$(free_port)
REDIS_DIR=$WORK/redis
log "starting redis-server on :$REDIS_PORT (no persistence)"
start_redis "$REDIS_DIR" "$REDIS_PORT" "$STATE_CPUS" --save "" --appendonly no
redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
# Commands Redis executed so far, as "name calls" lines. Redis counts the
# commands a Lua script calls too, so these are not all round trips.
redis_cmdstats() { redis info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p'; }
# Commands per request between two snapshots, our own INFO calls left out:
# "TOTAL name per-request, name per-request, …".
redis_per_request() {  # redis_per_request BEFORE AFTER REQUESTS
  awk -v n="$3" 'NR == FNR { before[$1] = $2; next }
    $1 != "info" && $2 > before[$1] { d = ($2 - before[$1]) / n; total += d; mix = mix sep sprintf((d < 0.005 ? "%s <0.01" : "%s %.2f"), $1, d); sep = ", " }
    END { printf "%.2f %s", total, (mix == "" ? "none" : mix) }' <(echo "$1") <(echo "$2")
}

PG_PORT=$(free_port)
PG_DIR=$WORK/postgres
log "initdb + postgres on :$PG_PORT ($PG_BIN; fsync off, as the tests run it)"
start_postgres "$PG_DIR" "$PG_PORT" "$STATE_CPUS" -c synchronous_commit=off -c full_page_writes=off

# ---------------------------------------------------------------- keygate replicas
# One encryption key for every replica of both sides (any replica can open any
# cookie); one server secret (each side has its own key store all the same).
ENCRYPTION_KEY=$(openssl rand -base64 32)
SERVER_SECRET=$(openssl rand -base64 48)

keygate_config() {  # keygate_config SIDE PORT: the replica's YAML on stdout
  local side=$1 port=$2
  cat <<EOF
listen: 127.0.0.1:$port
discovery-url: $ISSUER
client-id: keygate
client-secret: keygate-secret
upstream-url: http://127.0.0.1:$UP_PORT
log-level: warn
encryption-key: $ENCRYPTION_KEY
secure-cookie: false
redirection-url: ${LB_URL[$side]}/oauth/callback
EOF
  if [ "$side" = A ]; then
    cat <<EOF
store-url: sqlite://$WORK/A/keys.db
session-store: cookie
EOF
  else
    cat <<EOF
store-url: $PG_URL
redis-url: redis://127.0.0.1:$REDIS_PORT
session-store: redis
EOF
  fi
  echo "api-keys:"
  echo "  server-secret: $SERVER_SECRET"
  [ "$RATE_LIMITS" != 1 ] || echo "  rate-limit-service: 1000000/s"
}

declare -A KG_PID KG_CONF     # replica name (A1, B1, B2, …) -> pid, config file
declare -A SIDE_REPLICAS=([A]="" [B]="")
KG_ENV=(); [ -z "$KEYGATE_WORKERS" ] || KG_ENV=(env "TOKIO_WORKER_THREADS=$KEYGATE_WORKERS")
start_replica() {  # start_replica SIDE INDEX PORT
  local side=$1 name=$1$2 port=$3 dir=$WORK/$1
  mkdir -p "$dir"
  KG_CONF[$name]=$dir/$name.yaml
  keygate_config "$side" "$port" >"${KG_CONF[$name]}"
  "$KEYGATE" check-config --config "${KG_CONF[$name]}" >/dev/null 2>"$dir/$name.check" \
    || die "keygate check-config refused ${KG_CONF[$name]}: $(cat "$dir/$name.check")"
  log "starting keygate $name on :$port"
  spawn_pinned "$KEYGATE_CPUS" "$dir/$name.stdout" "$dir/$name.stderr" "${KG_ENV[@]}" \
    "$KEYGATE" serve --config "${KG_CONF[$name]}"
  KG_PID[$name]=$LAST_PID
  SIDE_REPLICAS[$side]+="$name "
  wait_until "keygate $name" "$LAST_PID" http_ok "http://127.0.0.1:$port/oauth/ready"
}
start_replica A 1 "${KG_PORTS_A[0]}"
for i in "${!KG_PORTS_B[@]}"; do start_replica B $(( i + 1 )) "${KG_PORTS_B[$i]}"; done
declare -A KG_URL
KG_URL[A1]="http://127.0.0.1:${KG_PORTS_A[0]}"
for i in "${!KG_PORTS_B[@]}"; do KG_URL[B$(( i + 1 ))]="http://127.0.0.1:${KG_PORTS_B[$i]}"; done

# ---------------------------------------------------------------- load balancer
# One nginx, one server block per side: round robin (nginx's default) over the
# side's replicas, HTTP/1.1 with pooled upstream connections. The client's Host
# is passed on (keygate builds absolute URLs from it); buffers are large enough
# for cookie sessions (their Set-Cookie headers can exceed the default 4 KB).
LB_DIR=$WORK/lb; mkdir -p "$LB_DIR"
lb_side() {  # lb_side SIDE PORT
  local side=$1 port=$2 name addrs=()
  for name in ${SIDE_REPLICAS[$side]}; do addrs+=("${KG_URL[$name]#http://}"); done
  lb_block "keygate_$side" "$port" "${addrs[@]}"
}
{
  nginx_common "$LB_DIR" "$LB_WORKERS"
  echo "http {"
  nginx_http_common "$LB_DIR"
  cat <<EOF
    large_client_header_buffers 4 32k;
    proxy_buffer_size 32k;
    proxy_buffers 8 32k;
    proxy_busy_buffers_size 64k;
EOF
  lb_side A "$LB_PORT_A"
  lb_side B "$LB_PORT_B"
  echo "}"
} >"$LB_DIR/nginx.conf"
log "starting the load balancer (nginx, worker_processes $LB_WORKERS): A on :$LB_PORT_A, B on :$LB_PORT_B"
spawn_pinned "$NGINX_CPUS" "$LB_DIR/stdout" "$LB_DIR/stderr" nginx -p "$LB_DIR" -e "$LB_DIR/error.log" -c "$LB_DIR/nginx.conf"
LB_PID=$LAST_PID
for side in A B; do wait_until "load balancer ($side)" $LB_PID http_ok "${LB_URL[$side]}/oauth/ready"; done

# ---------------------------------------------------------------- credentials
printf 'svc-reporting-secret' >"$WORK/svc-secret"
declare -A API_KEY SESSION
for side in A B; do
  first=${SIDE_REPLICAS[$side]%% *}
  API_KEY[$side]=$("$KEYGATE" keys create --config "${KG_CONF[$first]}" --kind service \
    --client-id svc-reporting --client-secret-file "$WORK/svc-secret" --no-verify \
    2>"$WORK/keys-create-$side.err" | head -n1)
  case "${API_KEY[$side]}" in kgs_*) ;; *) die "could not create a service key for $side: $(cat "$WORK/keys-create-$side.err")";; esac
  SESSION[$side]=$(node bench/login.mjs "${LB_URL[$side]}") || die "login through the load balancer of $side failed"
  log "$side: service key ${API_KEY[$side]:0:8}…, session cookie of ${#SESSION[$side]} bytes"
done

CREDS=(jwt apikey session)
declare -A CRED_LABEL=(
  [jwt]="bearer JWT"
  [apikey]="API key (service key)"
  [session]="session cookie"
)
cred_header() {  # cred_header CRED SIDE
  case $1 in
    jwt) echo "Authorization: Bearer $TOKEN" ;;
    apikey) echo "X-API-Key: ${API_KEY[$2]}" ;;
    session) echo "Cookie: ${SESSION[$2]}" ;;
  esac
}

log "checking: every credential gives 200 through the load balancer and on every replica, none gives 401"
for side in A B; do
  for cred in "${CREDS[@]}"; do
    expect_ok "$side, ${CRED_LABEL[$cred]}, load balancer" "${LB_URL[$side]}/" "$(cred_header "$cred" "$side")"
    for name in ${SIDE_REPLICAS[$side]}; do
      expect_ok "$side, ${CRED_LABEL[$cred]}, replica $name directly" "${KG_URL[$name]}/" "$(cred_header "$cred" "$side")"
    done
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' "${LB_URL[$side]}/")
  [ "$code" = 401 ] || die "$side without a credential: got $code, want 401"
done
# B's cookie only names the session: the session itself must be in Redis.
[ "$(redis --scan --pattern 'keygate:s:*' | wc -l)" -ge 1 ] || die "no session in Redis after B's login"

# ---------------------------------------------------------------- measuring

# Where the CPU goes during a run: one pass over /proc summing the user+system
# time (own and of reaped children) of the processes of each role's sessions,
# and of every process that is not ours ("other": someone compiling, say;
# kernel threads and this script's process group, i.e. wrk, excepted).
ROLES=(A B lb upstream postgres redis)
declare -A ROLE_SIDS=([lb]="$LB_PID" [upstream]="$UP_PID" [postgres]="$PG_PID" [redis]="$REDIS_PID")
for side in A B; do
  for name in ${SIDE_REPLICAS[$side]}; do ROLE_SIDS[$side]+="${KG_PID[$name]} "; done
done
CLK_TCK=$(getconf CLK_TCK)
MY_PGRP=$(ps -o pgid= $$ | tr -d ' ')
cpu_snapshot() {  # prints ticks per role, in the order of ROLES, then "other"
  local map="" role sid
  for role in "${ROLES[@]}"; do for sid in ${ROLE_SIDS[$role]}; do map+="$sid=$role "; done; done
  # (processes may vanish between the glob and the read: ignore cat's complaint)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v map="$map" -v roles="${ROLES[*]}" \
      -v ours=" ${PIDS[*]} " -v pg="$MY_PGRP" '
    BEGIN { n = split(map, m, " "); for (i = 1; i <= n; i++) { split(m[i], kv, "="); role[kv[1]] = kv[2] } }
    { pid = $1; sub(/^.*\) /, "")   # now $2 ppid, $3 pgrp, $4 session, $12.. times
      t = $12 + $13 + $14 + $15
      if ($4 in role) ticks[role[$4]] += t
      else if (!(pid == 2 || $2 == 2 || $3 == pg || index(ours, " " $4 " "))) ticks["other"] += t }
    END { k = split(roles, r, " "); for (i = 1; i <= k; i++) printf "%d ", ticks[r[i]]; print ticks["other"] + 0 }'
}

declare -A RPS P50 P99 SOCKERR REDIS_PER_REQ REDIS_MIX CPU   # key "SIDE/CRED" (CPU: "SIDE/CRED/role")
run_wrk() {  # run_wrk SIDE CRED RUN
  local side=$1 cred=$2 r=$3 k=$1/$2 out=$WORK/wrk-$1-$2-$3.txt
  local c0 c1 t0 t1 rc0 rc1 i
  rc0=$(redis_cmdstats); read -ra c0 <<<"$(cpu_snapshot)"; t0=$(date +%s.%N)
  taskset -c "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency \
      -H "$(cred_header "$cred" "$side")" "${LB_URL[$side]}/" >"$out" 2>&1 \
    || die "wrk failed for $side/$cred: $(cat "$out")"
  read -ra c1 <<<"$(cpu_snapshot)"; t1=$(date +%s.%N); rc1=$(redis_cmdstats)
  local cores=""
  for i in "${!c0[@]}"; do
    cores+=$(awk -v d="$(( c1[i] - c0[i] ))" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
      'BEGIN { v = d / hz / (t1 - t0); if (v < 0) v = 0; printf "%.2f ", v }')
  done
  read -ra cores <<<"$cores"
  local rps p50 p99 requests non2xx sockerr
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$out")")
  p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$out")")
  requests=$(awk '/ requests in /{print $1}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$out")
  sockerr=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10}' "$out"); sockerr=${sockerr:-0}
  [ -z "$non2xx" ] || die "$side/$cred run $r: $non2xx non-2xx responses (wrk output: $out)"
  awk -v x="$rps" 'BEGIN { exit !(x > 0) }' || die "$side/$cred run $r: no requests (wrk output: $out)"
  RPS[$k]+="$rps "; P50[$k]+="$p50 "; P99[$k]+="$p99 "
  SOCKERR[$k]=$(( ${SOCKERR[$k]:-0} + sockerr ))
  local per_req; per_req=$(redis_per_request "$rc0" "$rc1" "$requests")
  REDIS_PER_REQ[$k]+="${per_req%% *} "; REDIS_MIX[$k]=${per_req#* }
  for i in "${!ROLES[@]}"; do CPU[$k/${ROLES[$i]}]+="${cores[$i]} "; done
  CPU[$k/other]+="${cores[${#ROLES[@]}]} "
  printf '    %s %-8s run %d: %9.1f req/s  p50 %7.3f ms  p99 %7.3f ms  socket errors %s  CPU: keygate %s, lb %s, upstream %s, postgres %s, redis %s, other %s\n' \
    "$side" "$cred" "$r" "$rps" "$p50" "$p99" "$sockerr" "${cores[0]}/${cores[1]}" \
    "${cores[2]}" "${cores[3]}" "${cores[4]}" "${cores[5]}" "${cores[6]}" >&2
}

rss_kib() { awk -v f="$2:" '$1==f{print $2}' "/proc/$1/status"; }   # rss_kib PID VmRSS|VmHWM
declare -A RSS_START
for name in "${!KG_PID[@]}"; do RSS_START[$name]=$(rss_kib "${KG_PID[$name]}" VmRSS); done

declare -A LOG_MARK
LOG_FILES=(lb/error.log upstream/error.log redis/redis.log postgres/postgres.log)
for name in "${!KG_PID[@]}"; do LOG_FILES+=("${name:0:1}/$name.stderr" "${name:0:1}/$name.stdout"); done
for f in "${LOG_FILES[@]}"; do LOG_MARK[$f]=$(wc -l <"$WORK/$f" 2>/dev/null || echo 0); done

log "warm-up ($WARMUP per side and credential)"
for cred in "${CREDS[@]}"; do
  for side in A B; do
    taskset -c "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WARMUP" \
      -H "$(cred_header "$cred" "$side")" "${LB_URL[$side]}/" >/dev/null 2>&1 || true
  done
done

log "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION --latency, $RUNS runs per side and credential (interleaved)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$RUNS"); do
  # A first in odd rounds, B first in even ones, so that drift hits both alike.
  sides="A B"; [ $(( r % 2 )) -eq 1 ] || sides="B A"
  for cred in "${CREDS[@]}"; do
    for side in $sides; do run_wrk "$side" "$cred" "$r"; done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Requests each replica served (its /oauth/metrics), to show the round robin.
declare -A SERVED
for name in "${!KG_PID[@]}"; do
  SERVED[$name]=$(curl -fsS "${KG_URL[$name]}/oauth/metrics" \
    | awk '/^keygate_requests_total\{/ { n += $NF } END { printf "%d", n }')
done

# ---------------------------------------------------------------- report
median_cores() {  # median cores of role ROLE over the runs of SIDE/CRED
  # shellcheck disable=SC2086
  median ${CPU[$1/$2]}
}
trim() { local s=$1; s=${s% }; echo "${s// /, }"; }   # "1 2 3 " -> "1, 2, 3"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
report() {
  local side cred name k
  echo "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION --latency against an nginx round-robin load balancer" \
       "(HTTP/1.1, upstream keepalive), median of $RUNS runs; upstream nginx \`return 200 \"ok\"\`."
  echo "keygate $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' (crates/ modified)'), built $(date -u -r "$KEYGATE" '+%F %T') UTC; run finished $(date -u '+%F %T') UTC."
  echo "Load average before/after the runs: $LOAD_BEFORE / $LOAD_AFTER."
  echo
  echo "- **A**: 1 keygate replica, \`store-url: sqlite://…\`, \`session-store: cookie\`, no \`redis-url\`."
  echo "- **B**: $REPLICAS keygate replicas, \`store-url: postgres://…\` (one PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), fsync off)," \
       "\`redis-url\` (one Redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'), no persistence), \`session-store: redis\`."
  echo "- Both: \`log-level: warn\`, the same \`encryption-key\` on every replica;" \
       "API-key rate limits: $([ "$RATE_LIMITS" = 1 ] && echo '`rate-limit-service: 1000000/s` (A: counted in memory; B: in Redis)' || echo 'none')."
  echo "- CPUs: the $(nproc) cores ($MY_CPUS) are shared by everything, wrk included:" \
       "wrk on $WRK_CPUS, nginx (load balancer, upstream) on $NGINX_CPUS, every keygate replica on $KEYGATE_CPUS," \
       "PostgreSQL and Redis on $STATE_CPUS — the same sets for A and B (taskset)." \
       "Each replica runs ${KEYGATE_WORKERS:-one tokio worker thread per CPU of KEYGATE_CPUS ($(taskset -c "$KEYGATE_CPUS" nproc))}${KEYGATE_WORKERS:+ tokio worker threads}," \
       "so B has $REPLICAS× the worker threads of A on the same cores: B measures the cost of replicas and shared state, not added capacity."
  echo
  echo "| credential | A req/s | A p99 (ms) | B req/s | B p99 (ms) | B/A req/s | B/A p99 | B: Redis commands per request¹ | socket errors A / B |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  declare -A M
  for cred in "${CREDS[@]}"; do
    for side in A B; do
      k=$side/$cred
      # shellcheck disable=SC2086
      { M[$k/rps]=$(median ${RPS[$k]}); M[$k/p99]=$(median ${P99[$k]}); M[$k/redis]=$(median ${REDIS_PER_REQ[$k]}); }
    done
    printf '| %s | %.0f | %.3f | %.0f | %.3f | %s | %s | %s | %s / %s |\n' "${CRED_LABEL[$cred]}" \
      "${M[A/$cred/rps]}" "${M[A/$cred/p99]}" "${M[B/$cred/rps]}" "${M[B/$cred/p99]}" \
      "$(ratio "${M[B/$cred/rps]}" "${M[A/$cred/rps]}")" "$(ratio "${M[B/$cred/p99]}" "${M[A/$cred/p99]}")" \
      "${M[B/$cred/redis]}" "${SOCKERR[A/$cred]}" "${SOCKERR[B/$cred]}"
  done
  echo
  echo "¹ Commands Redis executed per request, including those called by Lua scripts (so more than the round trips); by command, last run:"
  for cred in "${CREDS[@]}"; do echo "${CRED_LABEL[$cred]}: ${REDIS_MIX[B/$cred]};"; done | paste -sd' ' | sed 's/;$/./'
  echo
  echo "Session cookie: A ${#SESSION[A]} bytes (the sealed tokens), B ${#SESSION[B]} bytes (a sealed id; the session is in Redis)."
  echo
  echo "CPU used during the runs (cores of $(nproc), median over the runs; \"other\" = processes not started by this script; wrk is the rest):"
  echo
  echo "| side, credential | keygate (all replicas) | nginx load balancer | upstream nginx | PostgreSQL | Redis | other |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for cred in "${CREDS[@]}"; do
    for side in A B; do
      k=$side/$cred
      echo "| $side, ${CRED_LABEL[$cred]} | $(median_cores "$k" "$side") | $(median_cores "$k" lb) | $(median_cores "$k" upstream) | $(median_cores "$k" postgres) | $(median_cores "$k" redis) | $(median_cores "$k" other) |"
    done
  done
  echo
  echo "keygate memory per replica (VmRSS after start-up and after the runs, VmHWM = peak) and requests served (its \`keygate_requests_total\`):"
  echo
  echo "| replica | RSS after start-up (MiB) | RSS after the runs (MiB) | peak RSS (MiB) | requests served |"
  echo "|---|---:|---:|---:|---:|"
  for name in ${SIDE_REPLICAS[A]} ${SIDE_REPLICAS[B]}; do
    echo "| $name | $(mib "${RSS_START[$name]}") | $(mib "$(rss_kib "${KG_PID[$name]}" VmRSS)") | $(mib "$(rss_kib "${KG_PID[$name]}" VmHWM)") | ${SERVED[$name]} |"
  done
  echo
  echo "Per run (req/s; other CPU in cores):"
  echo
  for cred in "${CREDS[@]}"; do
    for side in A B; do
      echo "- $side, ${CRED_LABEL[$cred]}: $(trim "${RPS[$side/$cred]}"); other CPU: $(trim "${CPU[$side/$cred/other]}")"
    done
  done
  local noisy
  # shellcheck disable=SC2046
  noisy=$(printf '%s\n' $(for k in "${!CPU[@]}"; do [[ $k == */other ]] && echo "${CPU[$k]}"; done) | awk '$1 > 0.10 { c++ } END { print c + 0 }')
  if [ "$noisy" -gt 0 ]; then
    echo
    echo "**Warning:** in $noisy of $(( ${#CREDS[@]} * 2 * RUNS )) runs other processes used more than 0.1 core" \
         "of the $(nproc) (the machine was shared); those numbers understate what keygate can do and the ratios are skewed."
  fi
}
REPORT=$(report)
echo
echo "$REPORT"
[ -z "${BENCH_OUT:-}" ] || echo "$REPORT" >"$BENCH_OUT"

# Anything keygate, nginx, Redis or PostgreSQL logged while under load.
for f in "${LOG_FILES[@]}"; do
  [ -f "$WORK/$f" ] || continue
  new=$(tail -n +"$(( LOG_MARK[$f] + 1 ))" "$WORK/$f")
  if [ -n "$new" ]; then
    echo; echo "$f: $(wc -l <<<"$new") line(s) logged under load (first 20):"
    head -n 20 <<<"$new"
  fi
done
