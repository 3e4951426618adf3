#!/usr/bin/env bash
# Sets up a Keycloak realm for keygate with Keycloak's own admin CLI, kcadm.sh.
# Safe to run again: it creates what is missing and updates only the settings
# it owns; it never deletes or recreates a client (that would end its sessions
# and the offline sessions behind personal keys). docs/keycloak.md explains
# every setting, mode by mode.
#
#   deploy/keycloak/kcadm-setup.sh --server URL --realm REALM --gateway-url URL
#                                  [options] MODE...
#
# Modes (any combination; `all` = every one):
#   sidecar        tokens of --app-client clients get keygate's audience
#   spa            keygate logs browsers in (code flow + PKCE, back-channel logout)
#   forward-auth   as spa, for keygate behind nginx/Traefik (`/oauth/` routed to keygate)
#   service-keys   a service-account client per --partner, for service keys
#   personal-keys  the device grant and offline_access, for personal keys
#   jwt-grant      personal keys backed by the JWT authorization grant instead
#                  of an offline session: keygate as an identity provider (type
#                  jwt-authorization-grant) its client may use, and the device
#                  grant; not part of `all` (a choice, see docs/api-keys.md)
#
# Options:
#   --server URL          Keycloak's base URL (env KEYCLOAK_URL)
#   --realm NAME          the realm; created when missing (env KEYCLOAK_REALM)
#   --gateway-url URL     keygate's public URL, for redirect and logout URIs
#                         (env KEYGATE_URL); repeatable for several hosts
#   --client ID           keygate's client-id (default keygate)
#   --audience ID         the audience the upstream accepts (default: --client);
#                         a bearer-only client of that name is created if missing
#   --app-client ID       (sidecar) a client whose tokens keygate must accept;
#                         repeatable; created as a confidential client if missing
#   --allow-password-grant  created app clients also get direct access grants
#                         (the seed's scripts use them; off by default)
#   --partner ID          (service-keys) a third party's service-account client;
#                         repeatable
#   --keygate-issuer URL  (jwt-grant) keygate's api-keys.jwt-grant.issuer
#                         (default: the first --gateway-url)
#   --jwks-url URL        (jwt-grant) where Keycloak fetches keygate's keys
#                         (default: the first --gateway-url + /oauth/jwks)
#   --idp-alias NAME      (jwt-grant) the identity provider's alias, keygate's
#                         api-keys.jwt-grant.identity-provider (default keygate)
#   --link-users          (jwt-grant) keygate links users itself when they make
#                         a key: its client gets a service account with the
#                         realm-management role manage-users
#   --link USERNAME       (jwt-grant) link this existing user to keygate's
#                         identity provider now (as the admin); repeatable
#   --secrets-file FILE   write the confidential clients' secrets there (mode
#                         0600) as CLIENT_ID=SECRET lines; never printed
#   --admin-realm NAME    the admin's realm (default master)
#   --kcadm PATH          kcadm.sh (env KCADM; default kcadm.sh on PATH)
#
# The admin's credentials come from KEYCLOAK_ADMIN and KEYCLOAK_ADMIN_PASSWORD,
# or, when those are unset, from an existing kcadm.sh login (~/.keycloak/kcadm.config).
# Needs bash, jq and kcadm.sh (in every Keycloak distribution's bin/).
set -euo pipefail

die() { echo "kcadm-setup.sh: error: $*" >&2; exit 1; }
say() { echo "kcadm-setup.sh: $*"; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

SERVER="${KEYCLOAK_URL:-}"; REALM="${KEYCLOAK_REALM:-}"; ADMIN_REALM=master
CLIENT=keygate; AUDIENCE=""; KCADM="${KCADM:-kcadm.sh}"; SECRETS_FILE=""
PASSWORD_GRANT=false
KEYGATE_ISSUER=""; JWKS_URL=""; IDP_ALIAS=keygate; LINK_USERS=false; LINKS=()
GATEWAY_URLS=(); APP_CLIENTS=(); PARTNERS=(); MODES=()
[ -n "${KEYGATE_URL:-}" ] && GATEWAY_URLS=("$KEYGATE_URL")

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --server) need_value "$@"; SERVER="$2"; shift 2 ;;
    --realm) need_value "$@"; REALM="$2"; shift 2 ;;
    --gateway-url) need_value "$@"; GATEWAY_URLS+=("${2%/}"); shift 2 ;;
    --client) need_value "$@"; CLIENT="$2"; shift 2 ;;
    --audience) need_value "$@"; AUDIENCE="$2"; shift 2 ;;
    --app-client) need_value "$@"; APP_CLIENTS+=("$2"); shift 2 ;;
    --allow-password-grant) PASSWORD_GRANT=true; shift ;;
    --partner) need_value "$@"; PARTNERS+=("$2"); shift 2 ;;
    --keygate-issuer) need_value "$@"; KEYGATE_ISSUER="$2"; shift 2 ;;
    --jwks-url) need_value "$@"; JWKS_URL="$2"; shift 2 ;;
    --idp-alias) need_value "$@"; IDP_ALIAS="$2"; shift 2 ;;
    --link-users) LINK_USERS=true; shift ;;
    --link) need_value "$@"; LINKS+=("$2"); shift 2 ;;
    --secrets-file) need_value "$@"; SECRETS_FILE="$2"; shift 2 ;;
    --admin-realm) need_value "$@"; ADMIN_REALM="$2"; shift 2 ;;
    --kcadm) need_value "$@"; KCADM="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    sidecar|spa|forward-auth|service-keys|personal-keys|jwt-grant) MODES+=("$1"); shift ;;
    all) MODES+=(sidecar spa forward-auth service-keys personal-keys); shift ;;
    *) die "unknown argument \`$1\` (modes: sidecar spa forward-auth service-keys personal-keys jwt-grant all; see --help)" ;;
  esac
done
AUDIENCE="${AUDIENCE:-$CLIENT}"

[ ${#MODES[@]} -gt 0 ] || die "name at least one mode: sidecar spa forward-auth service-keys personal-keys jwt-grant all"
[ -n "$SERVER" ] || die "--server (or KEYCLOAK_URL) is required: Keycloak's base URL, e.g. https://sso.example.com"
[ -n "$REALM" ] || die "--realm (or KEYCLOAK_REALM) is required"

has_mode() { local m; for m in "${MODES[@]}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
LOGIN=false
if has_mode spa || has_mode forward-auth || has_mode personal-keys || has_mode jwt-grant; then LOGIN=true; fi
if [ "$LOGIN" = true ] && [ ${#GATEWAY_URLS[@]} -eq 0 ]; then
  die "--gateway-url (or KEYGATE_URL) is required for ${MODES[*]}: keygate's public URL, e.g. https://api.example.com"
fi
if has_mode sidecar && [ ${#APP_CLIENTS[@]} -eq 0 ]; then
  die "sidecar needs at least one --app-client: the client(s) whose tokens call the API"
fi
if has_mode service-keys && [ ${#PARTNERS[@]} -eq 0 ]; then
  die "service-keys needs at least one --partner: a third party's client id"
fi
if ! has_mode jwt-grant && { [ "$LINK_USERS" = true ] || [ ${#LINKS[@]} -gt 0 ]; }; then
  die "--link-users and --link belong to the jwt-grant mode"
fi
if has_mode jwt-grant; then
  KEYGATE_ISSUER="${KEYGATE_ISSUER:-${GATEWAY_URLS[0]}}"
  JWKS_URL="${JWKS_URL:-${GATEWAY_URLS[0]}/oauth/jwks}"
  case "$IDP_ALIAS" in
    ''|*[!A-Za-z0-9._-]*) die "--idp-alias \`$IDP_ALIAS\`: letters, digits, . _ and - only" ;;
  esac
fi

# ---------------------------------------------------------------- kcadm
command -v jq >/dev/null || die "jq not found (apt-get install jq)"
command -v "$KCADM" >/dev/null || die "$KCADM not found: it is in Keycloak's bin/ directory (--kcadm PATH or KCADM=PATH)"
CONFIG="$(mktemp)"
trap 'rm -f "$CONFIG" "$CONFIG.id"' EXIT
# kcadm.sh starts a JVM per call: C1 and the serial collector start it faster.
export KC_OPTS="${KC_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
if [ -f "$HOME/.keycloak/kcadm.config" ] && [ -z "${KEYCLOAK_ADMIN:-}" ]; then
  cp "$HOME/.keycloak/kcadm.config" "$CONFIG"
fi
# kcadm.sh reports "Created new …" on stderr; errors too, and those are kept.
kc() { "$KCADM" "$@" --config "$CONFIG" 2> >(grep -v '^Created new \|^$' >&2); }
kcr() { kc "$@" -r "$REALM"; }

if [ -n "${KEYCLOAK_ADMIN:-}" ]; then
  [ -n "${KEYCLOAK_ADMIN_PASSWORD:-}" ] || die "KEYCLOAK_ADMIN is set but KEYCLOAK_ADMIN_PASSWORD is not"
  # The password goes through kcadm.sh's environment, not its arguments.
  KC_CLI_PASSWORD="$KEYCLOAK_ADMIN_PASSWORD" kc config credentials --server "$SERVER" \
    --realm "$ADMIN_REALM" --user "$KEYCLOAK_ADMIN" </dev/null >/dev/null 2>&1 \
    || die "could not log in to $SERVER as $KEYCLOAK_ADMIN (realm $ADMIN_REALM): check the URL and the credentials"
elif [ ! -s "$CONFIG" ]; then
  die "no admin credentials: set KEYCLOAK_ADMIN and KEYCLOAK_ADMIN_PASSWORD, or log in first with \`kcadm.sh config credentials\`"
fi

# ---------------------------------------------------------------- realm
if ! kc get "realms/$REALM" --fields realm >/dev/null 2>&1; then
  kc create realms -s realm="$REALM" -s enabled=true
  say "realm $REALM: created"
fi

# Client scopes: one per audience (an Audience mapper) and `groups` (the
# Group Membership mapper with full paths, which keygate's group rules read).
SCOPES="$(kcr get client-scopes --fields id,name)"
scope_id() { jq -r --arg n "$1" '.[] | select(.name == $n) | .id' <<<"$SCOPES"; }
ensure_scope() { # name, protocol mapper JSON
  local name="$1" mapper="$2"
  if [ -z "$(scope_id "$name")" ]; then
    jq -n --arg n "$name" --argjson m "$mapper" '{
        name: $n, protocol: "openid-connect",
        attributes: {"include.in.token.scope": "true", "display.on.consent.screen": "false"},
        protocolMappers: [$m]}' | kcr create client-scopes -f - -i >"$CONFIG.id"
    SCOPES="$(jq --arg n "$name" --arg id "$(cat "$CONFIG.id")" '. + [{id: $id, name: $n}]' <<<"$SCOPES")"
    say "client scope $name: created"
  fi
}
audience_mapper() {
  jq -n --arg a "$1" '{name: ("audience " + $a), protocol: "openid-connect",
      protocolMapper: "oidc-audience-mapper",
      config: {"included.client.audience": $a, "id.token.claim": "false",
               "access.token.claim": "true", "introspection.token.claim": "true"}}'
}
GROUPS_MAPPER='{"name": "groups", "protocol": "openid-connect",
  "protocolMapper": "oidc-group-membership-mapper",
  "config": {"claim.name": "groups", "full.path": "true", "id.token.claim": "true",
             "access.token.claim": "true", "userinfo.token.claim": "true",
             "introspection.token.claim": "true"}}'

CLIENTS="$(kcr get clients --fields id,clientId)"
client_id() { jq -r --arg c "$1" '.[] | select(.clientId == $c) | .id' <<<"$CLIENTS"; }

# The audience client must exist before a mapper can name it.
if [ "$AUDIENCE" != "$CLIENT" ] && [ -z "$(client_id "$AUDIENCE")" ]; then
  jq -n --arg c "$AUDIENCE" '{clientId: $c, enabled: true, bearerOnly: true,
      publicClient: false, standardFlowEnabled: false, directAccessGrantsEnabled: false}' \
    | kcr create clients -f - -i >"$CONFIG.id"
  CLIENTS="$(jq --arg c "$AUDIENCE" --arg id "$(cat "$CONFIG.id")" '. + [{id: $id, clientId: $c}]' <<<"$CLIENTS")"
  say "client $AUDIENCE: created (bearer-only: the upstream's audience)"
fi
AUDIENCE_SCOPE="$AUDIENCE-audience"
ensure_scope "$AUDIENCE_SCOPE" "$(audience_mapper "$AUDIENCE")"
ensure_scope groups "$GROUPS_MAPPER"

# The realm's default scopes, which a new client gets besides ours.
REALM_DEFAULTS="$(kc get "realms/$REALM/default-default-client-scopes" --fields name | jq '[.[].name]')"
REALM_OPTIONAL="$(kc get "realms/$REALM/default-optional-client-scopes" --fields name | jq '[.[].name]')"

# Creates a client from $2 (JSON) when missing, with the realm's default
# scopes plus those named in $3 and a generated secret; else updates the
# fields in $2 (Keycloak leaves absent fields alone and merges attributes) and
# attaches the scopes in $3 that it lacks.
ensure_client() {
  local cid="$1" rep="$2" scopes="$3" id s attached secret="" confidential=false
  if [ "$(jq -r '(.publicClient // false) or (.bearerOnly // false)' <<<"$rep")" = false ]; then
    confidential=true
  fi
  id="$(client_id "$cid")"
  if [ -z "$id" ]; then
    [ "$confidential" = true ] && secret="$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 40)"
    id="$(jq --arg c "$cid" --arg secret "$secret" --arg scopes "$scopes" \
          --argjson defaults "$REALM_DEFAULTS" --argjson optional "$REALM_OPTIONAL" '
        . + {clientId: $c, enabled: true,
             defaultClientScopes: ($defaults + ($scopes | split(" ")) | unique),
             optionalClientScopes: ($optional + ["offline_access"] | unique)}
          + (if $secret == "" then {} else {secret: $secret} end)' <<<"$rep" \
        | kcr create clients -f - -i)"
    CLIENTS="$(jq --arg c "$cid" --arg id "$id" '. + [{id: $id, clientId: $c}]' <<<"$CLIENTS")"
    CREATED=true
    say "client $cid: created"
  else
    CREATED=false
    if [ "$rep" != '{}' ]; then
      jq 'del(.publicClient)' <<<"$rep" | kcr update "clients/$id" -f -
      say "client $cid: updated"
    fi
    attached="$(kcr get "clients/$id/default-client-scopes" --fields name)"
    for s in $scopes; do
      if ! jq -e --arg n "$s" 'any(.[]; .name == $n)' <<<"$attached" >/dev/null; then
        kcr update "clients/$id/default-client-scopes/$(scope_id "$s")"
        say "client $cid: default client scope $s added"
      fi
    done
    if [ "$confidential" = true ] && [ -n "$SECRETS_FILE" ]; then
      secret="$(kcr get "clients/$id/client-secret" | jq -r .value)"
    fi
  fi
  if [ "$confidential" = true ] && [ -n "$SECRETS_FILE" ]; then
    printf '%s=%s\n' "$cid" "$secret" >>"$SECRETS_FILE.tmp"
  fi
}

if [ -n "$SECRETS_FILE" ]; then
  (umask 077; : >"$SECRETS_FILE.tmp")
fi

# ---------------------------------------------------------------- keygate's client
# Confidential: keygate introspects lightweight tokens and exchanges keys with
# its own credentials. Logins use the code flow with PKCE S256; the device
# grant serves the personal-key page.
redirects="[]"; logout_url=""; post_logout=""
for u in "${GATEWAY_URLS[@]}"; do
  redirects="$(jq --arg u "$u/oauth/callback" '. + [$u]' <<<"$redirects")"
  post_logout="${post_logout:+$post_logout##}$u/*"
  logout_url="${logout_url:-$u/oauth/backchannel-logout}"
done
device=false; { has_mode personal-keys || has_mode jwt-grant; } && device=true
jwt_grant=false; has_mode jwt-grant && jwt_grant=true

# ---------------------------------------------------------------- keygate as an identity provider
# Personal keys backed by the JWT authorization grant (RFC 7523): Keycloak
# trusts assertions signed with keygate's key (fetched from keygate's
# /oauth/jwks) whose `iss` is keygate's issuer, and finds the user named by
# `sub` through the user's link to this identity provider. Made before the
# client, whose attributes name it.
if [ "$jwt_grant" = true ]; then
  idp_rep="$(jq -n --arg a "$IDP_ALIAS" --arg iss "$KEYGATE_ISSUER" --arg jwks "$JWKS_URL" '{
    alias: $a, providerId: "jwt-authorization-grant", enabled: true, hideOnLogin: true,
    config: {issuer: $iss, useJwksUrl: "true", jwksUrl: $jwks,
             jwtAuthorizationGrantEnabled: "true",
             jwtAuthorizationGrantAllowedClockSkew: "10",
             jwtAuthorizationGrantMaxAllowedAssertionExpiration: "300"}}')"
  existing="$(kcr get "identity-provider/instances/$IDP_ALIAS" 2>/dev/null || true)"
  if [ -z "$existing" ]; then
    kcr create identity-provider/instances -f - <<<"$idp_rep" >/dev/null
    say "identity provider $IDP_ALIAS: created (jwt-authorization-grant, issuer $KEYGATE_ISSUER)"
  else
    kind="$(jq -r .providerId <<<"$existing")"
    [ "$kind" = jwt-authorization-grant ] \
      || die "identity provider $IDP_ALIAS exists with type $kind: choose another --idp-alias"
    jq --argjson want "$idp_rep" '. + ($want | del(.config)) | .config += $want.config' <<<"$existing" \
      | kcr update "identity-provider/instances/$IDP_ALIAS" -f -
    say "identity provider $IDP_ALIAS: updated"
  fi
fi
sa=false; [ "$LINK_USERS" = true ] && sa=true
gateway_rep="$(jq -n --argjson login "$LOGIN" --argjson device "$device" \
    --argjson jwt "$jwt_grant" --arg idp "$IDP_ALIAS" --argjson sa "$sa" \
    --argjson redirects "$redirects" --arg logout "$logout_url" --arg post "$post_logout" '{
  protocol: "openid-connect", publicClient: false, bearerOnly: false,
  clientAuthenticatorType: "client-secret",
  standardFlowEnabled: $login, implicitFlowEnabled: false,
  directAccessGrantsEnabled: false, serviceAccountsEnabled: $sa,
  frontchannelLogout: false
} + (if $login then {
  redirectUris: $redirects,
  attributes: ({
    "pkce.code.challenge.method": "S256",
    "post.logout.redirect.uris": $post,
    "backchannel.logout.url": $logout,
    "backchannel.logout.session.required": "true",
    "backchannel.logout.revoke.offline.tokens": "false",
    "oauth2.device.authorization.grant.enabled": ($device | tostring)
  } + (if $jwt then {
    "oauth2.jwt.authorization.grant.enabled": "true",
    "oauth2.jwt.authorization.grant.idp": $idp
  } else {} end))} else {} end)')"
gateway_scopes="groups"
# In spa, forward-auth and personal-keys mode keygate's own tokens go upstream:
# they need the upstream's audience.
[ "$LOGIN" = true ] && gateway_scopes="groups $AUDIENCE_SCOPE"
ensure_client "$CLIENT" "$gateway_rep" "$gateway_scopes"
GATEWAY_CREATED="$CREATED"

# ---------------------------------------------------------------- sidecar
if has_mode sidecar; then
  for app in "${APP_CLIENTS[@]}"; do
    app_rep='{}'
    if [ -z "$(client_id "$app")" ]; then
      app_rep="$(jq -n --argjson pw "$PASSWORD_GRANT" '{protocol: "openid-connect",
          publicClient: false, standardFlowEnabled: true, implicitFlowEnabled: false,
          directAccessGrantsEnabled: $pw, serviceAccountsEnabled: false,
          attributes: {"pkce.code.challenge.method": "S256"}}')"
    fi
    ensure_client "$app" "$app_rep" "groups $AUDIENCE_SCOPE"
  done
fi

# ---------------------------------------------------------------- service keys
if has_mode service-keys; then
  for p in "${PARTNERS[@]}"; do
    ensure_client "$p" '{"protocol": "openid-connect", "publicClient": false,
        "clientAuthenticatorType": "client-secret",
        "standardFlowEnabled": false, "implicitFlowEnabled": false,
        "directAccessGrantsEnabled": false, "serviceAccountsEnabled": true}' \
      "groups $AUDIENCE_SCOPE"
  done
fi

# ---------------------------------------------------------------- personal keys
if has_mode personal-keys; then
  # Personal keys hold offline tokens: the scope must be optional for keygate's
  # client (it is, in a realm's defaults) and users need the realm role
  # offline_access (default-roles-<realm> grants it, unless removed).
  id="$(client_id "$CLIENT")"
  if [ "$GATEWAY_CREATED" = false ] && ! kcr get "clients/$id/optional-client-scopes" --fields name \
      | jq -e 'any(.[]; .name == "offline_access")' >/dev/null; then
    kcr update "clients/$id/optional-client-scopes/$(scope_id offline_access)"
    say "client $CLIENT: optional client scope offline_access added"
  fi
  if ! kcr get "roles/default-roles-$REALM/composites/realm" --fields name 2>/dev/null \
      | jq -e 'any(.[]; .name == "offline_access")' >/dev/null; then
    say "note: default-roles-$REALM does not grant offline_access: give it to the users who create personal keys"
  fi
fi

# ---------------------------------------------------------------- JWT-grant links
if [ "$jwt_grant" = true ]; then
  if [ "$LINK_USERS" = true ]; then
    # Keycloak requires manage-users to add a link (view-users gets 403).
    kcr add-roles --uusername "service-account-$CLIENT" --cclientid realm-management \
      --rolename manage-users
    say "client $CLIENT: its service account may link users (realm-management manage-users)"
  fi
  for u in "${LINKS[@]}"; do
    uid="$(kcr get users -q username="$u" -q exact=true --fields id | jq -r '.[0].id // empty')"
    [ -n "$uid" ] || die "--link $u: no such user in realm $REALM"
    linked="$(kcr get "users/$uid/federated-identity" \
      | jq -r --arg a "$IDP_ALIAS" '.[] | select(.identityProvider == $a) | .userId')"
    if [ -z "$linked" ]; then
      kcr create "users/$uid/federated-identity/$IDP_ALIAS" -s identityProvider="$IDP_ALIAS" \
        -s userId="$uid" -s userName="$u" >/dev/null
      say "user $u: linked to $IDP_ALIAS"
    elif [ "$linked" != "$uid" ]; then
      say "warning: user $u is linked to $IDP_ALIAS with another id ($linked): keygate asserts $uid, so remove that link"
    fi
  done
fi

if [ -n "$SECRETS_FILE" ]; then
  mv "$SECRETS_FILE.tmp" "$SECRETS_FILE"
  say "client secrets written to $SECRETS_FILE"
fi
say "done: realm $REALM at $SERVER is set up for ${MODES[*]} (keygate client-id: $CLIENT, upstream audience: $AUDIENCE)"
