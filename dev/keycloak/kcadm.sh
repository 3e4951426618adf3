#!/usr/bin/env bash
# Keycloak's admin CLI from the cached distribution (fetched on first use):
#   KCADM=dev/keycloak/kcadm.sh deploy/keycloak/kcadm-setup.sh ...
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/keycloak.sh" kcadm "$@"
