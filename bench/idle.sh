#!/usr/bin/env bash
# Idle connections vs. a valid request: keygate (release build) in front of an
# nginx `return 200` upstream, with dev/idp as the provider. For each count of
# idle client connections (opened and held by bench/hold.py, which send
# nothing, as slowloris does before its first byte), measure keygate's RSS and
# wrk's throughput and latency for bearer-JWT requests on 8 other connections.
#
#   ./bench/idle.sh                  # IDLE_COUNTS="0 1000 5000 9000"
#   IDLE_COUNTS="0 2000" WRK_DURATION=5s ./bench/idle.sh
#
# Not part of the test suite. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

IDLE_COUNTS=${IDLE_COUNTS:-"0 1000 5000 9000"}
WRK_DURATION=${WRK_DURATION:-10s}
for c in nginx wrk node python3 curl jq; do command -v $c >/dev/null 2>&1 || die "$c not found"; done
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p keygate
KEYGATE=$ROOT/target/release/keygate
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/keygate-idle.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

UP_PORT=$(free_port); IDP_PORT=$(free_port); KG_PORT=$(free_port)
mkdir -p "$WORK/up"
{
  nginx_common "$WORK/up" 1
  echo "http {"
  nginx_http_common "$WORK/up"
  echo "  server { listen 127.0.0.1:$UP_PORT; keepalive_requests 1000000; location / { return 200 'ok'; } }"
  echo "}"
} > "$WORK/up/nginx.conf"
setsid nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" > "$WORK/up.log" 2>&1 &
PIDS+=($!)
setsid node dev/idp/server.js --port "$IDP_PORT" > "$WORK/idp.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "IDP READY" "$WORK/idp.log" && break; sleep 0.1; done
ISSUER=$(sed -n 's/^IDP READY issuer=//p' "$WORK/idp.log")
[ -n "$ISSUER" ] || die "dev/idp did not start"
cat > "$WORK/keygate.yaml" <<EOF
listen: 127.0.0.1:$KG_PORT
discovery-url: $ISSUER
client-id: keygate
client-secret: keygate-secret
upstream-url: http://127.0.0.1:$UP_PORT
server-read-header-timeout: 10m
server-idle-timeout: 10m
max-connections: 20000
EOF
setsid "$KEYGATE" serve --config "$WORK/keygate.yaml" > "$WORK/keygate.log" 2>&1 &
KG_PID=$!
PIDS+=("$KG_PID")
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$KG_PORT/oauth/ready" >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$(curl -fsS -d grant_type=password -d client_id=keygate -d client_secret=keygate-secret \
  -d username=alice -d password=alice -d scope=openid "$ISSUER/protocol/openid-connect/token" | jq -r .access_token)
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$KG_PID/status"; }

echo "| idle connections | keygate RSS (MiB) | req/s (wrk -t1 -c8 -d$WRK_DURATION) | p50 ms | p99 ms | non-2xx |"
echo "|---:|---:|---:|---:|---:|---:|"
for n in $IDLE_COUNTS; do
  HOLD_PID=""
  if [ "$n" -gt 0 ]; then
    : > "$WORK/hold.out"
    python3 bench/hold.py 127.0.0.1 "$KG_PORT" "$n" > "$WORK/hold.out" 2>&1 &
    HOLD_PID=$!
    for _ in $(seq 300); do grep -q "HOLDING" "$WORK/hold.out" && break; sleep 0.1; done
    grep -q "HOLDING $n" "$WORK/hold.out" || die "could not hold $n connections: $(cat "$WORK/hold.out")"
    sleep 1
  fi
  rss=$(rss_mib)
  out=$(wrk -t1 -c8 -d"$WRK_DURATION" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$KG_PORT/api")
  rps=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  echo "| $n | $rss | $rps | $p50 | $p99 | $non2xx |"
  if [ -n "$HOLD_PID" ]; then kill "$HOLD_PID" 2>/dev/null || true; wait "$HOLD_PID" 2>/dev/null || true; sleep 1; fi
done
