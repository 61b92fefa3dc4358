#!/usr/bin/env bash
# Sets up a local PostgreSQL (Debian's packaged cluster) with a `collector` role and database,
# builds the collector and runs `collector collect` against the real Polymarket APIs.
#
#   scripts/run-local.sh                  # set up what is missing, then run
#   COLLECTOR_DATABASE_URL=... scripts/run-local.sh   # use your own database, skip the setup
#
# State (config, password, status socket, stream spool) lives in .local/ beside the repository. Stop with
# Ctrl-C; meanwhile `target/release/collector status --socket .local/status.sock` shows health.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .local
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

if [ -z "${COLLECTOR_DATABASE_URL:-}" ]; then
  if ! command -v pg_lsclusters >/dev/null; then
    echo "==> installing PostgreSQL"
    sudo_ apt-get update -q
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
  fi
  if [ -z "$(pg_lsclusters -h)" ]; then
    ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
    echo "==> creating PostgreSQL cluster $ver/main"
    sudo_ pg_createcluster "$ver" main
  fi
  read -r ver name port status _ < <(pg_lsclusters -h | head -1)
  if [ "$status" != online ]; then
    echo "==> starting PostgreSQL $ver/$name on port $port"
    sudo_ pg_ctlcluster "$ver" "$name" start
  fi
  if [ ! -s .local/db-password ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > .local/db-password)
  fi
  pw=$(cat .local/db-password)
  echo "==> ensuring role and database 'collector'"
  # The password goes in on stdin, never in a command line (visible in the process list).
  { printf "\\set pw '%s'\n" "$pw"; cat <<'SQL'; } | as_postgres psql -q -p "$port" -v ON_ERROR_STOP=1
SELECT format('CREATE ROLE collector LOGIN PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'collector') \gexec
ALTER ROLE collector PASSWORD :'pw';
SELECT 'CREATE DATABASE collector OWNER collector'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'collector') \gexec
SQL
  db_url="postgresql://collector@127.0.0.1:$port/collector"
  password_line="password_file = \"$PWD/.local/db-password\""
else
  db_url="$COLLECTOR_DATABASE_URL"
  password_line=""
fi

if [ ! -f .local/collector.toml ]; then
  # Owner-only: a COLLECTOR_DATABASE_URL may carry a password.
  umask 077
  sed -e "s|^url = \"postgresql://.*|url = \"$db_url\"|" \
      -e "s|^# password_file = .*|$password_line|" \
      -e "s|^# status_socket = .*|status_socket = \"$PWD/.local/status.sock\"|" \
      -e "s|^# spool_dir = .*|spool_dir = \"$PWD/.local/spool\"|" \
      -e "s|^# dir = .*|dir = \"$PWD/.local/archive\"|" \
      packaging/collector.toml > .local/collector.toml
fi
# A configuration written by an earlier version has no [archive]: the hourly Parquet files go
# under .local/archive too.
grep -q '^\[archive\]' .local/collector.toml || printf '\n[archive]\ndir = "%s/.local/archive"\n' "$PWD" >> .local/collector.toml
echo "==> building"
cargo build --release --locked
exec target/release/collector collect --config .local/collector.toml
