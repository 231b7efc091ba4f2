#!/usr/bin/env bash
# Runs a command next to a throwaway PostgreSQL cluster, then removes the cluster.
#
#   scripts/pg-throwaway.sh COMMAND [ARGS...]
#
# The cluster lives in a temp dir (initdb as the `postgres` user when run as root, because initdb
# refuses root), listens on a free 127.0.0.1 port with fsync off, and is stopped and deleted when
# the command exits, whatever its outcome. The command sees
#   ATREST_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres   (a superuser, trust auth)
# which the store's test support (`atrest_store::testing`) uses instead of starting its own
# cluster; anything else can create its databases there (e.g. two `atrest serve` replicas sharing
# one). The script's exit status is the command's.
#
# Needs the Debian package `postgresql` (scripts/test.sh installs it).
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi

PGBIN=""
if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
  PGBIN=$(pg_config --bindir)
else
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  echo "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (scripts/test.sh does)" >&2
  exit 1
fi

AS=()
DIR=$(mktemp -d "${TMPDIR:-/tmp}/atrest-pg-XXXXXX")
if [ "$(id -u)" = 0 ]; then
  AS=(runuser -u postgres --)
  chown postgres:postgres "$DIR"
fi

cleanup() {
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${AS[@]}" "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust --no-sync -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log" >&2; exit 1; }

started=""
for _ in 1 2 3; do
  # A free port: bind to 0 and read what the kernel chose (small race, hence the retries).
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if "${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
      -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
      start >/dev/null; then
    started=yes
    break
  fi
done
if [ -z "$started" ]; then
  cat "$DIR/postgres.log" >&2
  exit 1
fi

export ATREST_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
echo "pg-throwaway: PostgreSQL at $ATREST_TEST_POSTGRES_URL" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
