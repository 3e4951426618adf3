#!/usr/bin/env bash
# keygate demo: the test OpenID provider (dev/idp, realm `acme`), an echo
# upstream (dev/echo-upstream.mjs) and keygate (dev/demo.yaml) in front of it,
# all on 127.0.0.1. Prints curl commands to try, then runs until Ctrl-C.
#
#   ./dev/demo.sh              the light provider (dev/idp, oidc-provider)
#   ./dev/demo.sh --keycloak   the same demo with a real Keycloak 26
#                              (dev/keycloak: Java 17+ and Maven; the first
#                              run fetches Keycloak, about a minute)
#
# Needs Rust (cargo), Node.js >= 20 and npm. Installs the provider's npm
# packages on first use and builds keygate (debug). Ports can be changed:
#   KEYGATE_DEMO_PORT=3000 KEYGATE_DEMO_IDP_PORT=8180 KEYGATE_DEMO_UPSTREAM_PORT=8181 ./dev/demo.sh
# Logs: dev/run/demo/{idp,upstream,keygate}.log
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${KEYGATE_DEMO_PORT:-3000}"
IDP_PORT="${KEYGATE_DEMO_IDP_PORT:-8180}"
UPSTREAM_PORT="${KEYGATE_DEMO_UPSTREAM_PORT:-8181}"
HOST=127.0.0.1
ISSUER="http://$HOST:$IDP_PORT/realms/acme"
KEYGATE="http://$HOST:$PORT"
LOGS=dev/run/demo

die() { echo "error: $*" >&2; exit 1; }

PROVIDER=idp
for arg in "$@"; do
  case "$arg" in
    --keycloak) PROVIDER=keycloak ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $arg (try --keycloak or --help)" ;;
  esac
done

command -v cargo >/dev/null 2>&1 || die "cargo is required (https://rustup.rs)"
command -v node >/dev/null 2>&1 || die "Node.js >= 20 is required (for the test provider and the echo upstream)"
command -v curl >/dev/null 2>&1 || die "curl is required"
if [ "$PROVIDER" = keycloak ]; then
  command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || die "--keycloak needs Java 17 or newer"
  command -v mvn >/dev/null 2>&1 || [ -d "${KEYGATE_CACHE:-$HOME/.cache/keygate}/keycloak" ] || die "--keycloak needs Maven (mvn) to fetch Keycloak the first time"
fi

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "$PORT" "$IDP_PORT" "$UPSTREAM_PORT"; do
  if port_busy "$p"; then
    die "port $p on $HOST is in use; pick others with KEYGATE_DEMO_PORT, KEYGATE_DEMO_IDP_PORT, KEYGATE_DEMO_UPSTREAM_PORT"
  fi
done

if [ "$PROVIDER" = idp ] && [ ! -d dev/idp/node_modules/oidc-provider ]; then
  echo "==> npm ci --prefix dev/idp"
  npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error
fi

echo "==> cargo build -p keygate"
cargo build -p keygate
BIN=target/debug/keygate

mkdir -p "$LOGS"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'echo; echo "==> stopping"; exit 0' INT TERM

# wait_for NAME PID SECONDS COMMAND...: until COMMAND succeeds, or fail when
# the process died or time ran out.
wait_for() {
  local name=$1 pid=$2 secs=$3
  shift 3
  local i
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || die "$name exited; see $LOGS/$name.log:
$(tail -n 20 "$LOGS/$name.log")"
    sleep 0.1
  done
  die "$name did not become ready in ${secs}s; see $LOGS/$name.log"
}

if [ "$PROVIDER" = keycloak ]; then
  echo "==> starting Keycloak (dev/keycloak, realm acme) on $HOST:$IDP_PORT"
  dev/keycloak/keycloak.sh start --port "$IDP_PORT" --exit-with $$ >"$LOGS/keycloak.ready" 2>"$LOGS/idp.log" &
  PIDS+=($!)
  wait_for idp "$!" 600 grep -q "^READY " "$LOGS/keycloak.ready"
  PROVIDER_NAME="Keycloak $(sed -n 's/^KEYCLOAK_VERSION_PIN=//p' dev/keycloak/keycloak.sh) (admin console $HOST:$IDP_PORT/admin, admin/admin)"
else
  echo "==> starting the OpenID provider (dev/idp) on $HOST:$IDP_PORT"
  node dev/idp/server.js --host "$HOST" --port "$IDP_PORT" --redirect-uri "$KEYGATE/oauth/callback" >"$LOGS/idp.log" 2>&1 &
  PIDS+=($!)
  wait_for idp "$!" 30 grep -q "^IDP READY" "$LOGS/idp.log"
  PROVIDER_NAME="dev/idp"
fi

echo "==> starting the echo upstream on $HOST:$UPSTREAM_PORT"
node dev/echo-upstream.mjs --host "$HOST" --port "$UPSTREAM_PORT" >"$LOGS/upstream.log" 2>&1 &
PIDS+=($!)
wait_for upstream "$!" 15 curl -fsS "http://$HOST:$UPSTREAM_PORT/"

# API keys for the demo: a store under the demo's logs and a throw-away server
# secret (set through the environment, as a Kubernetes Secret would).
export KEYGATE_STORE_URL="sqlite://$LOGS/keys.db"
export KEYGATE_API_KEYS='{"server-secret": "demo-only-server-secret-0123456789abcdef-0123456789"}'
export KEYGATE_DISCOVERY_URL="$ISSUER"
# Browser login and the key page: a throw-away cookie key; plain HTTP on loopback.
export KEYGATE_ENCRYPTION_KEY="demo-only-cookie-key-0123456789a"
export KEYGATE_SECURE_COOKIE=false

echo "==> starting keygate on $KEYGATE (config dev/demo.yaml)"
"$BIN" serve --config dev/demo.yaml \
  --listen "$HOST:$PORT" \
  --discovery-url "$ISSUER" \
  --upstream-url "http://$HOST:$UPSTREAM_PORT" \
  >"$LOGS/keygate.log" 2>&1 &
KEYGATE_PID=$!
PIDS+=("$KEYGATE_PID")
wait_for keygate "$KEYGATE_PID" 30 curl -fsS "$KEYGATE/oauth/ready"

echo "==> creating a demo service key for svc-reporting (keygate keys create)"
printf 'svc-reporting-secret' >"$LOGS/svc-reporting.secret"
DEMO_KEY=$("$BIN" keys create --config dev/demo.yaml --kind service --client-id svc-reporting \
  --client-secret-file "$LOGS/svc-reporting.secret" --description "demo key" --expires-in 1d 2>>"$LOGS/keys.log" | head -n1)
case "$DEMO_KEY" in kgs_*) ;; *) die "could not create the demo API key (see $LOGS/keys.log)";; esac

# The token commands print the access token, or the provider's refusal (a
# wrong password: "invalid_grant") on stderr, so that the variable is not
# silently empty.
if command -v jq >/dev/null 2>&1; then
  PICK_TOKEN="jq -r 'if .access_token then .access_token else (\"the provider refused: \" + (.error_description // .error) + \"\\n\" | halt_error) end'"
  PRETTY=" | jq ."
else
  PICK_TOKEN="node -e 'let s=\"\";process.stdin.on(\"data\",d=>s+=d).on(\"end\",()=>{const j=JSON.parse(s);if(j.access_token)console.log(j.access_token);else{console.error(\"the provider refused: \"+(j.error_description||j.error));process.exit(1)}})'"
  PRETTY=""
fi
TOKEN_URL="$ISSUER/protocol/openid-connect/token"
token_cmd() {
  echo "curl -sS -d grant_type=password -d username=$1 -d password=$2 -d client_id=keygate -d client_secret=keygate-secret $TOKEN_URL | $PICK_TOKEN"
}

cat <<EOF

keygate is ready. Provider: $ISSUER ($PROVIDER_NAME)  Upstream: http://$HOST:$UPSTREAM_PORT   keygate: $KEYGATE
Users: alice (admin, APP-backend:editor, group /ops), bob (user, APP-backend:viewer), carol; password = user name.
Rules: dev/demo.yaml. Copy and paste into another terminal:

# 1. Get access tokens from the provider (password grant, client keygate)
ALICE=\$($(token_cmd alice alice))
BOB=\$($(token_cmd bob bob))

# 2. Through keygate: 200; the upstream echoes Authorization and the X-Auth-* headers it received
curl -sS -H "Authorization: Bearer \$ALICE" '$KEYGATE/api/items?page=2'$PRETTY

# 3. No token: 401 with WWW-Authenticate: Bearer
curl -i $KEYGATE/api/items

# 4. bob lacks the realm role admin: 403
curl -i -H "Authorization: Bearer \$BOB" $KEYGATE/admin/users

# 5. bob may read /api (role user) but not write it (needs APP-backend:editor): 200, then 403
curl -sS -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer \$BOB" $KEYGATE/api/items
curl -sS -o /dev/null -w '%{http_code}\n' -X POST -H "Authorization: Bearer \$BOB" $KEYGATE/api/items

# 6. White-listed: no token needed; a client-sent X-Auth-Roles never reaches the upstream
curl -sS -H 'X-Auth-Roles: admin' $KEYGATE/public/hello$PRETTY

# 7. Forward-auth, as nginx would ask it (see docs/forward-auth.md): 200 with the headers to inject
curl -sS -o /dev/null -D - -H 'X-Original-Method: GET' -H 'X-Original-URI: /admin/users' -H "Authorization: Bearer \$ALICE" $KEYGATE/oauth/auth

# 8. API keys: keygate swaps the key for the service account's access token; the
#    upstream sees that token (Authorization) and X-Auth-Method: api-key, never the key
curl -sS -H "X-API-Key: $DEMO_KEY" $KEYGATE/data/export$PRETTY
#    rules apply to keys as to tokens: the service account lacks the roles of /reports (403)
curl -sS -u "any:$DEMO_KEY" -o /dev/null -w '%{http_code}\n' $KEYGATE/reports/q3
KEYGATE_STORE_URL=$KEYGATE_STORE_URL KEYGATE_API_KEYS='$KEYGATE_API_KEYS' $BIN keys list --config dev/demo.yaml
KEYGATE_URL=$KEYGATE KEYGATE_API_KEY=$DEMO_KEY $BIN token
#    a personal key with your own roles (approve as alice/alice in the browser):
$BIN keys create --kind personal --gateway $KEYGATE --description laptop

# 9. In a browser: log in (alice/alice) and manage your own API keys
#    $KEYGATE/oauth/keys

# 10. Operations
curl -sS $KEYGATE/oauth/health$PRETTY
curl -sS $KEYGATE/oauth/metrics | grep '^keygate_'

Logs are in $LOGS/. keygate's log follows; Ctrl-C stops the provider, the upstream and keygate.

EOF

tail -n +1 -f "$LOGS/keygate.log" &
PIDS+=($!)
# Run until Ctrl-C, or until one of the servers exits.
set +e
wait -n "${PIDS[@]:0:3}"
status=$?
set -e
echo "==> a demo process exited (status $status); stopping the others" >&2
exit 1
