#!/usr/bin/env bash
# Checks that a running Keycloak (dev/keycloak/keycloak.sh) serves the realm
# `acme` of dev/keycloak/realm-acme.json as the tests expect. Read-only: it
# only logs users in and asks for tokens. Needs curl, jq and openssl.
#
#   dev/keycloak/check.sh http://127.0.0.1:18080
#
# Prints one line per check and exits non-zero if any failed.
set -euo pipefail

BASE="${1:?usage: $0 BASE_URL (the URL printed after READY)}"
BASE="${BASE%/}"
REALM="$BASE/realms/acme"
OIDC="$REALM/protocol/openid-connect"
for t in curl jq openssl; do
  command -v "$t" >/dev/null 2>&1 || { echo "check.sh: $t is required" >&2; exit 2; }
done

pass=0; fail=0
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
ok()  { pass=$((pass+1)); echo "ok   $*"; }
bad() { fail=$((fail+1)); echo "FAIL $*"; }
# check NAME JQ-FILTER JSON: the filter must print true.
check() {
  local name="$1" filter="$2" json="$3"
  if [ "$(jq -r "$filter" <<<"$json" 2>/dev/null)" = true ]; then ok "$name"
  else bad "$name"; echo "     got: $(jq -c . <<<"$json" 2>/dev/null || echo "$json")" | cut -c1-600; fi
}
# The payload of a JWT, as JSON.
claims() {
  jq -R 'split(".")[1] | gsub("-";"+") | gsub("_";"/")
         | . + ("=" * ((4 - (length % 4)) % 4)) | @base64d | fromjson' <<<"$1" 2>/dev/null || echo '{}'
}
token() { curl -s "$@" "$OIDC/token"; }
at()    { jq -r '.access_token // empty' <<<"$1"; }
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
# Logs USER in on the login form whose page is in $WORK/page.html (cookies in
# $WORK/jar) and prints the redirect that follows.
login_form() {
  local user="$1" action
  action="$(tr '\n' ' ' <"$WORK/page.html" | sed -n 's/.*<form[^>]*id="kc-form-login"[^>]*action="\([^"]*\)".*/\1/p; s/.*<form[^>]*action="\([^"]*\)"[^>]*id="kc-form-login".*/\1/p' | head -n1 | sed 's/&amp;/\&/g')"
  [ -n "$action" ] || { echo "no-login-form"; return; }
  curl -s -b "$WORK/jar" -c "$WORK/jar" -o "$WORK/after.html" -w '%{redirect_url}' \
    --data-urlencode "username=$user" --data-urlencode "password=$user" "$action"
}

# -- discovery
disc="$(curl -s "$REALM/.well-known/openid-configuration")"
check "discovery: issuer is $REALM and it lists the device endpoint and S256" \
  "(.issuer == \"$REALM\") and (.device_authorization_endpoint == \"$OIDC/auth/device\") and (.code_challenge_methods_supported | index(\"S256\") != null)" "$disc"

# -- seed 000: my_client_app's password-grant token carries aud gatekeeper
r="$(token -d grant_type=password -d client_id=my_client_app -d client_secret=my_client_app-secret \
       -d username=alice -d password=alice -d 'scope=openid api')"
c="$(claims "$(at "$r")")"
check "my_client_app (alice, password grant): aud has gatekeeper, scope has api" \
  '(.aud | if type=="array" then index("gatekeeper") != null else . == "gatekeeper" end) and (.scope | split(" ") | index("api") != null)' "$c"
check "my_client_app (alice): realm roles user+admin+offline_access, APP-backend:editor" \
  '(.realm_access.roles | (index("user") != null and index("admin") != null and index("offline_access") != null)) and (.resource_access["APP-backend"].roles == ["editor"])' "$c"
check "my_client_app (alice): groups are full paths /ops and /ops/oncall" \
  '(.groups | sort) == ["/ops", "/ops/oncall"]' "$c"
check "my_client_app (alice): Keycloak claims (typ Bearer, azp, preferred_username, email)" \
  '.typ == "Bearer" and .azp == "my_client_app" and .preferred_username == "alice" and .email == "alice@example.com" and .email_verified == true' "$c"
r="$(token -d grant_type=password -d client_id=my_client_app -d client_secret=my_client_app-secret \
       -d username=bob -d password=bob)"
c="$(claims "$(at "$r")")"
check "my_client_app (bob, no scope asked): aud has gatekeeper, role user not admin, APP-backend:viewer, /dev" \
  '(.aud | index("gatekeeper") != null) and (.realm_access.roles | index("user") != null and index("admin") == null) and (.resource_access["APP-backend"].roles == ["viewer"]) and (.groups == ["/dev"])' "$c"
r="$(token -d grant_type=password -d client_id=my_client_app -d client_secret=my_client_app-secret \
       -d username=alice -d password=wrong)"
check "wrong password: 401 invalid_grant" '.error == "invalid_grant"' "$r"

# -- negative: no_audience_app's tokens lack aud gatekeeper
r="$(token -d grant_type=password -d client_id=no_audience_app -d client_secret=no_audience_app-secret \
       -d username=alice -d password=alice)"
c="$(claims "$(at "$r")")"
check "no_audience_app (alice): a token, but aud lacks gatekeeper" \
  '(.azp == "no_audience_app") and ([.aud] | flatten | index("gatekeeper") == null)' "$c"

# -- seeds 002/003: service accounts of third parties
for p in partner-acme partner-globex; do
  r="$(token -u "$p:$p-secret" -d grant_type=client_credentials)"
  c="$(claims "$(at "$r")")"
  check "$p (client credentials): aud has gatekeeper, service-account-$p, no refresh token" \
    "(.aud | index(\"gatekeeper\") != null) and .preferred_username == \"service-account-$p\" and .azp == \"$p\" and .client_id == \"$p\"" "$c"
  check "$p: no refresh token" '(.refresh_token == null) and (.token_type == "Bearer")' "$r"
done
r="$(token -u partner-acme:partner-acme-secret -d grant_type=password -d username=alice -d password=alice)"
check "partner-acme: password grant refused (unauthorized_client)" '.error == "unauthorized_client"' "$r"
r="$(token -u partner-acme:wrong -d grant_type=client_credentials)"
check "partner-acme with a wrong secret: invalid_client" '.error == "invalid_client" or .error == "unauthorized_client"' "$r"

# -- seed 001: APP-frontend, authorization code + PKCE S256, aud APP-backend
redirect="http://127.0.0.1:45678/oauth/callback"
verifier="$(openssl rand -hex 32)"
challenge="$(printf '%s' "$verifier" | openssl dgst -sha256 -binary | b64url)"
q() { jq -rn --arg v "$1" '$v|@uri'; }
auth="$OIDC/auth?client_id=APP-frontend&response_type=code&scope=openid&state=st4te&nonce=n0nce&redirect_uri=$(q "$redirect")"
loc="$(curl -s -o /dev/null -w '%{redirect_url}' "$auth")"
if [[ "$loc" == "$redirect"*error=invalid_request* ]]; then ok "APP-frontend: an authorization request without PKCE is refused"
else bad "APP-frontend: an authorization request without PKCE is refused (got redirect '$loc')"; fi
: >"$WORK/jar"
code_status="$(curl -s -c "$WORK/jar" -o "$WORK/page.html" -w '%{http_code}' "$auth&code_challenge=$challenge&code_challenge_method=S256")"
loc=""; [ "$code_status" = 200 ] && loc="$(login_form alice)"
code="$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$loc")"
if [[ "$loc" == "$redirect"* ]] && [ -n "$code" ]; then ok "APP-frontend: alice logs in, redirect to any loopback port with a code"
else bad "APP-frontend: alice logs in, redirect with a code (auth page $code_status, redirect '$loc')"; fi
r="$(token -d grant_type=authorization_code -d client_id=APP-frontend -d client_secret=frontend-secret \
       -d "code=$code" -d "redirect_uri=$redirect" -d "code_verifier=$verifier")"
c="$(claims "$(at "$r")")"
check "APP-frontend (code flow): access token aud has APP-backend, azp APP-frontend, APP-backend:editor" \
  '(.aud | index("APP-backend") != null) and .azp == "APP-frontend" and (.resource_access["APP-backend"].roles == ["editor"])' "$c"
idt="$(jq -r '.id_token // empty' <<<"$r")"
check "APP-frontend (code flow): ID token typ ID, aud APP-frontend, nonce" \
  '.typ == "ID" and .aud == "APP-frontend" and .nonce == "n0nce"' "$(claims "$idt")"
# the resource server introspects with its own credentials
ri="$(curl -s -u APP-backend:backend-secret --data-urlencode "token=$(at "$r")" "$OIDC/token/introspect")"
check "APP-backend (bearer-only) introspects APP-frontend's access token: active" '.active == true and .azp == "APP-frontend"' "$ri"
# RP-initiated logout back to a loopback URI
post_logout="http://127.0.0.1:45678/"
loc="$(curl -s -b "$WORK/jar" -o /dev/null -w '%{redirect_url}' \
  "$OIDC/logout?client_id=APP-frontend&id_token_hint=$idt&post_logout_redirect_uri=$(q "$post_logout")")"
if [[ "$loc" == "$post_logout"* ]]; then ok "APP-frontend: logout redirects to the loopback post-logout URI"
else bad "APP-frontend: logout redirects to $post_logout (got '$loc')"; fi
ri="$(curl -s -u APP-backend:backend-secret --data-urlencode "token=$(at "$r")" "$OIDC/token/introspect")"
check "after logout the access token is no longer active" '.active == false' "$ri"

# -- seed 004: keygate, offline_access and the device grant
r="$(token -d grant_type=password -d client_id=keygate -d client_secret=keygate-secret \
       -d username=alice -d password=alice -d 'scope=openid offline_access')"
rt="$(jq -r '.refresh_token // empty' <<<"$r")"
check "keygate (alice, password grant, offline_access): an Offline refresh token" \
  '.typ == "Offline" and (.scope | split(" ") | index("offline_access") != null)' "$(claims "$rt")"
check "keygate: access token aud has keygate" '(.aud | index("keygate") != null) and .azp == "keygate"' "$(claims "$(at "$r")")"
r2="$(token -d grant_type=refresh_token -d client_id=keygate -d client_secret=keygate-secret -d "refresh_token=$rt")"
check "keygate: the offline token gets a new access token" '(.access_token | length) > 0' "$r2"
r="$(token -d grant_type=password -d client_id=keygate -d client_secret=keygate-secret \
       -d username=carol -d password=carol -d 'scope=openid offline_access')"
check "keygate (carol, no offline_access role): offline token refused" '.refresh_token == null and .error != null' "$r"
d="$(curl -s -d client_id=keygate -d client_secret=keygate-secret -d 'scope=openid offline_access' "$OIDC/auth/device")"
check "keygate: device authorization answers (device_code, user_code, verification_uri)" \
  "(.device_code | length) > 0 and (.user_code | length) > 0 and (.verification_uri == \"$REALM/device\")" "$d"
dc="$(jq -r .device_code <<<"$d")"
r="$(token -d grant_type=urn:ietf:params:oauth:grant-type:device_code -d client_id=keygate -d client_secret=keygate-secret -d "device_code=$dc")"
check "keygate: polling before the user approves: authorization_pending" '.error == "authorization_pending"' "$r"
# bob approves the device on the verification page, then the poll gets tokens
: >"$WORK/jar"
curl -s -L -b "$WORK/jar" -c "$WORK/jar" -o "$WORK/page.html" "$(jq -r .verification_uri_complete <<<"$d")"
loc="$(login_form bob)"
# Keycloak always asks for consent in the device grant: accept it.
if [[ "$loc" == *OAUTH_GRANT* ]]; then
  curl -s -b "$WORK/jar" -c "$WORK/jar" -o "$WORK/consent.html" "$loc"
  action="$(tr '\n' ' ' <"$WORK/consent.html" | sed -n 's/.*<form[^>]*action="\([^"]*consent[^"]*\)".*/\1/p' | sed 's/&amp;/\&/g')"
  [[ "$action" == /* ]] && action="$BASE$action"
  ccode="$(sed -n 's/.*name="code" value="\([^"]*\)".*/\1/p' "$WORK/consent.html" | head -n1)"
  loc="$(curl -s -b "$WORK/jar" -c "$WORK/jar" -o /dev/null -w '%{redirect_url}' \
    --data-urlencode "code=$ccode" -d accept=Yes "$action")"
fi
if [[ "$loc" == "$REALM/device/status"* ]]; then ok "keygate: bob approves the device (login, then consent)"
else bad "keygate: bob approves the device (login, then consent): got redirect '$loc'"; fi
sleep "$(( $(jq -r '.interval // 5' <<<"$d") + 1 ))"   # polling faster gets slow_down
r="$(token -d grant_type=urn:ietf:params:oauth:grant-type:device_code -d client_id=keygate -d client_secret=keygate-secret -d "device_code=$dc")"
check "keygate: after bob approves, the device grant gives bob an access token and an Offline token" \
  "(.at.preferred_username == \"bob\") and (.rt.typ == \"Offline\")" \
  "$(jq -n --argjson at "$(claims "$(at "$r")")" --argjson rt "$(claims "$(jq -r '.refresh_token // empty' <<<"$r")")" '{at: $at, rt: $rt}')"
r="$(token -d grant_type=urn:ietf:params:oauth:grant-type:device_code -d client_id=APP-frontend -d client_secret=frontend-secret -d "device_code=$dc")"
check "APP-frontend: device grant not enabled (error)" '.error != null and .access_token == null' "$r"

# -- admin API (admin/admin) reaches the realm; back-channel logout URL empty
adm="$(curl -s -d grant_type=password -d client_id=admin-cli -d username=admin -d password=admin \
        "$BASE/realms/master/protocol/openid-connect/token" | jq -r '.access_token // empty')"
fe="$(curl -s -H "Authorization: Bearer $adm" "$BASE/admin/realms/acme/clients?clientId=APP-frontend")"
check "admin API (admin/admin): APP-frontend has backchannel logout session required, no URL yet" \
  '.[0].attributes["backchannel.logout.session.required"] == "true" and ((.[0].attributes["backchannel.logout.url"] // "") == "") and .[0].frontchannelLogout == false' "$fe"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
