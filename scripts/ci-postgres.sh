#!/usr/bin/env bash
# Start a local PostgreSQL for the PostgreSQL variants of the tests; print the URL to export:
#
#   export CIPHERLOOP_TEST_POSTGRES_URL="$(scripts/ci-postgres.sh)"
#
# Debian 12: installs `postgresql` with apt-get when missing (needs root), starts the
# cluster listening on 127.0.0.1, and creates a role and a database owned by it (a fresh
# random password on every run). Idempotent. Only the URL goes to stdout; logs to stderr.
# Overrides: CIPHERLOOP_PG_USER, CIPHERLOOP_PG_DB, CIPHERLOOP_PG_PORT, CIPHERLOOP_PG_PASSWORD.
set -euo pipefail

ROLE=${CIPHERLOOP_PG_USER:-cipherloop}
DB=${CIPHERLOOP_PG_DB:-cipherloop_test}
WANT_PORT=${CIPHERLOOP_PG_PORT:-5432}
PASSWORD=${CIPHERLOOP_PG_PASSWORD:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}

log() { echo "ci-postgres: $*" >&2; }
die() { log "$*"; exit 1; }

case "$ROLE$DB" in *[!a-z0-9_]*) die "role and database names must match [a-z0-9_]+";; esac
case "$PASSWORD" in *[!A-Za-z0-9_-]*) die "password must match [A-Za-z0-9_-]+";; esac

as_postgres() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres "$@"); fi
}

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  log "installing postgresql with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n1)
cluster() { pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $'"$1"'}'; }

if [ -z "$(cluster 1)" ]; then
  log "creating cluster $VERSION/main on port $WANT_PORT"
  pg_createcluster "$VERSION" main -p "$WANT_PORT" >&2
fi
if [ "$(cluster 4)" != "online" ]; then
  log "starting cluster $VERSION/main"
  pg_ctlcluster "$VERSION" main start >&2
fi
PORT=$(cluster 3)

for _ in $(seq 1 100); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.2
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "PostgreSQL did not come up on 127.0.0.1:$PORT"

as_postgres psql -q -v ON_ERROR_STOP=1 -p "$PORT" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN CREATE ROLE $ROLE LOGIN; END IF;
END \$\$;
ALTER ROLE $ROLE WITH LOGIN PASSWORD '$PASSWORD';
SQL
if [ "$(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  as_postgres createdb -p "$PORT" -O "$ROLE" "$DB" >&2
fi

URL="postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
PGPASSWORD=$PASSWORD psql -q -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" -tAc "SELECT 1" >/dev/null \
  || die "cannot log in as $ROLE over TCP"
log "ready: $ROLE@127.0.0.1:$PORT/$DB"
echo "$URL"
