#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Node packages of the
# test provider; Debian's nginx, PostgreSQL, Redis, Chromium and openssl;
# Hypercorn and Schemathesis from PyPI), then runs every test. Every test runs:
# one that needs a server which cannot be found fails, it never skips.
#
#   ./dev/test.sh            # everything
#   ./dev/test.sh jwt        # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
# openssl makes the TLS test's certificate.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# PostgreSQL: the key-store tests start their own server from these binaries.
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
# Redis: the shared-state tests start their own servers from redis-server.
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
# kubectl: the deployment test renders deploy/kubernetes with `kubectl kustomize`.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
# Java, Maven and unzip: dev/keycloak fetches and runs the real Keycloak.
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
# jq: deploy/keycloak/kcadm-setup.sh (the Keycloak guide's script, run by a test).
command -v jq >/dev/null 2>&1 || missing+=(jq)
# Chromium: the browser test drives it with Playwright (dev/browser).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package starts a system nginx on port 80; the tests start their own.
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || $SUDO service nginx stop >/dev/null 2>&1 || true
  # Likewise the package's own PostgreSQL cluster and Redis, if it started them.
  $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || $SUDO service postgresql stop >/dev/null 2>&1 || true
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
command -v node >/dev/null 2>&1 || { echo "error: Node.js is required (for dev/idp)"; exit 1; }
# Hypercorn: the h2c-capable upstream of the h2c-smuggling test (PyPI).
if ! python3 -c 'import hypercorn, h2' >/dev/null 2>&1; then
  echo "==> pip install (dev/h2c-upstream)"
  python3 -m pip install --quiet --disable-pip-version-check -r dev/h2c-upstream/requirements.txt
fi
# pytest, requests and httpx: the Python client's tests (clients/python).
if ! python3 -c 'import pytest, requests, httpx' >/dev/null 2>&1; then
  echo "==> pip install (clients/python/requirements-test.txt)"
  python3 -m pip install --quiet --disable-pip-version-check -r clients/python/requirements-test.txt
fi
# Schemathesis: the admin API against its OpenAPI document (PyPI).
if ! python3 -c 'import schemathesis' >/dev/null 2>&1; then
  echo "==> pip install (dev/schemathesis)"
  python3 -m pip install --quiet --disable-pip-version-check -r dev/schemathesis/requirements.txt
fi

if [ ! -d dev/idp/node_modules/oidc-provider ] || [ dev/idp/package-lock.json -nt dev/idp/node_modules/.package-lock.json ]; then
  echo "==> npm ci (dev/idp)"
  npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error
fi
if [ ! -d dev/browser/node_modules/playwright-core ] || [ dev/browser/package-lock.json -nt dev/browser/node_modules/.package-lock.json ]; then
  echo "==> npm ci (dev/browser)"
  npm ci --prefix dev/browser --no-audit --no-fund --loglevel=error
fi

# The real Keycloak of the conformance tests: one for the whole run (it
# starts slowly), fetched through Maven on the first run, stopped when this
# script ends. A single test run by hand (extra arguments) starts its own.
KC_PID=""
if [ $# -eq 0 ]; then
  echo "==> Keycloak (dev/keycloak, in the background)"
  KC_OUT=$(mktemp)
  ./dev/keycloak/keycloak.sh start --exit-with $$ >"$KC_OUT" &
  KC_PID=$!
  trap 'kill -TERM "$KC_PID" 2>/dev/null || true; wait "$KC_PID" 2>/dev/null || true; rm -f "$KC_OUT"' EXIT
fi

echo "==> dev/idp smoke tests"
node --test dev/idp/test/ 2>&1 | tail -n 12

if [ -n "$KC_PID" ]; then
  for _ in $(seq 1 1200); do
    grep -q '^READY ' "$KC_OUT" && break
    kill -0 "$KC_PID" 2>/dev/null || break
    sleep 0.5
  done
  KEYGATE_KEYCLOAK_URL=$(sed -n 's/^READY //p' "$KC_OUT" | head -n1)
  [ -n "$KEYGATE_KEYCLOAK_URL" ] || { echo "error: Keycloak did not start (dev/keycloak/keycloak.sh); its output is above"; exit 1; }
  export KEYGATE_KEYCLOAK_URL
  echo "==> Keycloak ready at $KEYGATE_KEYCLOAK_URL"
fi

if cargo nextest --version >/dev/null 2>&1; then
  echo "==> doc tests"
  cargo test --workspace --doc "$@"
  echo "==> cargo nextest (each test in its own process, hung tests terminated)"
  cargo nextest run --workspace --all-targets "$@"
else
  echo "==> cargo test"
  cargo test --workspace --all-targets "$@"
fi

# The fuzz targets' committed corpora, each input once (docs/fuzzing.md):
# a crash found once can never come back unnoticed.
# Skipped when only some tests were asked for (extra arguments).
if [ $# -eq 0 ]; then
  echo "==> fuzz corpus replay (fuzz/replay.sh)"
  ./fuzz/replay.sh
fi
