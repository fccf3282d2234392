#!/usr/bin/env bash
# A private PostgreSQL server on loopback, for the tests and for trying the PostgreSQL instance locally.
#
#   eval "$(scripts/postgres.sh start [PORT])"   # prints SKYASSETS_POSTGRES_DIR and SKYASSETS_POSTGRES_URL
#   scripts/postgres.sh stop "$SKYASSETS_POSTGRES_DIR"
#
# Installs the Debian `postgresql` package when no server binaries are found (root only), then makes a
# throw-away cluster in a new temporary folder: initdb, trust authentication on 127.0.0.1 only, the
# socket inside the folder. Run as root, the server runs as the `postgres` user (PostgreSQL refuses root).
set -euo pipefail

find_bindir() {
  local dir
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && echo "$dir"
}

install_server() {
  if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: no PostgreSQL server binaries found, and installing them needs root" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "postgres.sh: installing postgresql with apt-get" >&2
  apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
}

as_server_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bindir port dir
  bindir=$(find_bindir) || { install_server && bindir=$(find_bindir); } || {
    echo "postgres.sh: PostgreSQL server binaries not found after installing postgresql" >&2
    return 1
  }
  port=${1:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  dir=$(mktemp -d "${TMPDIR:-/tmp}/skyassets-postgres.XXXXXX")
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  as_server_user "$bindir/initdb" -D "$dir/data" -U skyassets --auth=trust --encoding=UTF8 --no-sync >/dev/null
  as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" >/dev/null || {
    cat "$dir/server.log" >&2
    return 1
  }
  as_server_user "$bindir/createdb" -h 127.0.0.1 -p "$port" -U skyassets skyassets
  echo "export SKYASSETS_POSTGRES_DIR=$dir"
  echo "export SKYASSETS_POSTGRES_URL=postgresql+psycopg2://skyassets@127.0.0.1:$port/skyassets"
}

stop() {
  local dir=${1:?usage: postgres.sh stop DIR}
  local bindir
  [ -f "$dir/data/PG_VERSION" ] || { echo "postgres.sh: $dir is not a cluster made by postgres.sh start" >&2; return 1; }
  bindir=$(find_bindir)
  as_server_user "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [PORT] | stop DIR" >&2; exit 2 ;;
esac
