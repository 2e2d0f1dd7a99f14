#!/usr/bin/env bash
# Start a local PostgreSQL for the PostgreSQL variants of the tests; print the URL to export:
#
#   export CIPHERLOOP_TEST_POSTGRES_URL="$(scripts/ci-postgres.sh)"
#   ...
#   scripts/ci-postgres.sh stop        # stops (and drops) only what the start made
#
# Debian 12: installs `postgresql` with apt-get when missing (needs root; a fresh
# container has neither the server nor its cluster tools), makes the cluster when
# there is none, starts it listening on 127.0.0.1, and creates a role and a database
# owned by it (a fresh random password on every run). Idempotent. Only the URL goes to
# stdout; logs go to stderr. What the start did (started, created) is written to the
# state file so that `stop` undoes exactly that and nothing it found already running.
# Overrides: CIPHERLOOP_PG_USER, CIPHERLOOP_PG_DB, CIPHERLOOP_PG_PORT, CIPHERLOOP_PG_PASSWORD,
# CIPHERLOOP_PG_CLUSTER (default main), CIPHERLOOP_PG_STATE (default /tmp/cipherloop-ci-postgres.state).
set -euo pipefail

ROLE=${CIPHERLOOP_PG_USER:-cipherloop}
DB=${CIPHERLOOP_PG_DB:-cipherloop_test}
WANT_PORT=${CIPHERLOOP_PG_PORT:-5432}
CLUSTER=${CIPHERLOOP_PG_CLUSTER:-main}
STATE=${CIPHERLOOP_PG_STATE:-/tmp/cipherloop-ci-postgres.state}
MODE=${1:-start}

log() { echo "ci-postgres: $*" >&2; }
die() { log "$*"; exit 1; }


as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  elif command -v sudo >/dev/null 2>&1; then
    (cd / && sudo -n -u postgres "$@")
  else
    die "run as root, or give this user passwordless sudo to the postgres user"
  fi
}
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "PostgreSQL is not installed and installing it needs root: run as root, or apt-get install postgresql"
  fi
}
pg_version() { ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1; }
# Column $1 of `pg_lsclusters` (1 version, 2 name, 3 port, 4 status) for our cluster.
cluster() { pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $'"$1"'}'; }

if [ "$MODE" = stop ]; then
  [ -f "$STATE" ] || { log "nothing to stop (no $STATE)"; exit 0; }
  read -r VERSION CLUSTER STARTED CREATED <"$STATE"
  if [ "$CREATED" = 1 ]; then
    log "dropping cluster $VERSION/$CLUSTER (this script created it)"
    pg_dropcluster --stop "$VERSION" "$CLUSTER" >&2 || die "could not drop $VERSION/$CLUSTER"
  elif [ "$STARTED" = 1 ]; then
    log "stopping cluster $VERSION/$CLUSTER (this script started it)"
    pg_ctlcluster "$VERSION" "$CLUSTER" stop >&2 || die "could not stop $VERSION/$CLUSTER"
  else
    log "leaving $VERSION/$CLUSTER running (it was running before)"
  fi
  rm -f "$STATE"
  exit 0
fi
[ "$MODE" = start ] || die "usage: $0 [start|stop]"
case "$ROLE$DB$CLUSTER" in *[!a-z0-9_]*) die "role, database and cluster names must match [a-z0-9_]+";; esac
case "$WANT_PORT" in ''|*[!0-9]*) die "port must be a number";; esac

PASSWORD=${CIPHERLOOP_PG_PASSWORD:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
case "$PASSWORD" in ''|*[!A-Za-z0-9_-]*) die "password must match [A-Za-z0-9_-]+";; esac

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1 \
    || [ -z "$(pg_version)" ]; then
  log "installing postgresql with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is missing and this is not a Debian system: install PostgreSQL and rerun"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql postgresql-client >&2 || die "apt-get install postgresql failed"
fi
VERSION=$(pg_version)
[ -n "$VERSION" ] || die "no PostgreSQL server under /usr/lib/postgresql after installing"

STARTED=0
CREATED=0
if [ -z "$(cluster 1)" ]; then
  log "creating cluster $VERSION/$CLUSTER on port $WANT_PORT"
  as_root pg_createcluster "$VERSION" "$CLUSTER" -p "$WANT_PORT" >&2 \
    || die "pg_createcluster $VERSION $CLUSTER failed"
  CREATED=1
fi
if [ "$(cluster 4)" != "online" ]; then
  log "starting cluster $VERSION/$CLUSTER"
  # In containers without an init system, the package's postinst could not start it.
  as_root pg_ctlcluster "$VERSION" "$CLUSTER" start >&2 || die "pg_ctlcluster $VERSION $CLUSTER start failed (see /var/log/postgresql)"
  STARTED=1
fi
if [ -f "$STATE" ]; then  # a rerun keeps what an earlier start did, for `stop`
  read -r V0 C0 S0 K0 <"$STATE" || true
  if [ "$V0 $C0" = "$VERSION $CLUSTER" ]; then STARTED=$((STARTED | ${S0:-0})); CREATED=$((CREATED | ${K0:-0})); fi
fi
echo "$VERSION $CLUSTER $STARTED $CREATED" >"$STATE"
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
  || die "cannot log in as $ROLE over TCP on 127.0.0.1:$PORT (check pg_hba.conf allows scram-sha-256 or md5 from 127.0.0.1)"
log "ready: $ROLE@127.0.0.1:$PORT/$DB"
echo "$URL"
