#!/usr/bin/env bash
# What `skyassets sky` needs beyond Python: Aladin Lite (from the npm registry) and, for its tests, Chromium.
#
#   scripts/viewer.sh install [DIR]   # Aladin Lite into DIR (default $SKYASSETS_HOME/viewer or ./.skyassets/viewer)
#   scripts/viewer.sh chromium        # prints the path of a headless-capable Chromium, installing it if missing
#
# Aladin Lite is GPL-3.0 and skyassets is BSD-3-Clause, so skyassets does not ship it: this script fetches
# it with npm on the user's machine, and `skyassets sky` serves it from there. Chromium comes from Debian's
# `chromium` package (installing it needs root).
set -euo pipefail

ALADIN_VERSION="${ALADIN_VERSION:-3.8.2}"

install_aladin() {
  local dir=${1:-${SKYASSETS_HOME:-.skyassets}/viewer}
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      echo "viewer.sh: installing npm with apt-get" >&2
      apt-get install -y -q npm >&2 || { apt-get update -q >&2 && apt-get install -y -q npm >&2; }
    else
      echo "viewer.sh: npm not found, and installing it needs root" >&2
      return 1
    fi
  fi
  mkdir -p "$dir"
  if [ ! -f "$dir/node_modules/aladin-lite/package.json" ] \
    || ! grep -q "\"version\": \"$ALADIN_VERSION\"" "$dir/node_modules/aladin-lite/package.json"; then
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "aladin-lite@$ALADIN_VERSION" >&2
  fi
  readlink -f "$dir"
}

find_chromium() {
  local name
  for name in chromium chromium-browser; do
    if [ -x "$(type -P "$name")" ]; then
      type -P "$name"
      return 0
    fi
  done
  return 1
}

install_chromium() {
  find_chromium && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "viewer.sh: chromium not found, and installing it needs root" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "viewer.sh: installing chromium with apt-get" >&2
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
  find_chromium
}

case "${1:-}" in
  install) shift; install_aladin "$@" ;;
  chromium) install_chromium ;;
  *) echo "usage: $0 install [DIR] | chromium" >&2; exit 2 ;;
esac
