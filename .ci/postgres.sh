#!/usr/bin/env bash
# PostgreSQL for the handlers/vault tests: the Debian packages, and a
# throwaway cluster on 127.0.0.1 for manual runs. The Go tests do not need
# the cluster: they start their own (handlers/vault/vaulttest) with the
# initdb and pg_ctl of /usr/lib/postgresql/*/bin, so CI only installs.
#
# Usage:
#   bash .ci/postgres.sh --install   install postgresql with apt-get unless initdb is there
#   bash .ci/postgres.sh start       install if needed, start a cluster in a new temporary
#                                    directory on a free port with password (scram) auth,
#                                    and print its connection settings as shell lines
#   bash .ci/postgres.sh stop DIR    stop the cluster started in DIR and remove DIR
set -euo pipefail

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

install() {
  if [ -n "$(find_bin)" ] && [ -x "$(find_bin)/initdb" ]; then
    echo "postgres: $("$(find_bin)/postgres" --version) already installed" >&2
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "postgres: not installed; run as root: apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "== postgres: apt-get install postgresql" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  echo "postgres: $("$(find_bin)/postgres" --version) installed" >&2
}

# as_pg runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  install
  local bin dir password port opts
  bin="$(find_bin)"
  dir="$(mktemp -d /tmp/rekey-pg-XXXXXX)"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  password="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  (umask 077; printf '%s\n' "$password" >"$dir/pwfile")
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/pwfile"; fi
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/pwfile" \
    --encoding=UTF8 --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  rm -f "$dir/pwfile"
  for _ in 1 2 3 4 5; do
    port=$(( 20000 + RANDOM % 40000 ))
    opts="-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off -c max_connections=400"
    if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -o "$opts" -w -t 60 start >/dev/null; then
      cat <<EOF
PGHOST=127.0.0.1
PGPORT=$port
PGUSER=postgres
PGPASSWORD=$password
PGDATABASE=postgres
REKEY_PG_DIR=$dir
# stop with: bash .ci/postgres.sh stop $dir
EOF
      return
    fi
  done
  echo "postgres: could not start a cluster (see $dir/log)" >&2
  exit 1
}

stop() {
  local dir="${1:?usage: postgres.sh stop DIR}"
  case "$dir" in /tmp/rekey-pg-*) ;; *) echo "postgres: refusing to remove $dir" >&2; exit 1 ;; esac
  as_pg "$(find_bin)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
  rm -rf "$dir"
}

case "${1:---install}" in
  --install) install ;;
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 [--install | start | stop DIR]" >&2; exit 2 ;;
esac
