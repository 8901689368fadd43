#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for benchmarks, from the machine's own binaries, with default
# durability (fsync and synchronous_commit on), so results mean what they would in production.
#   bench/pg.sh start DIR PORT     prints the admin URL
#   bench/pg.sh stop DIR
set -euo pipefail
bin="$(pg_config --bindir 2>/dev/null || true)"
[ -x "$bin/initdb" ] || bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-}" in
start)
  dir="$2"; port="$3"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  if [ ! -s "$dir/data/PG_VERSION" ]; then
    run "$bin/initdb" -A trust -U postgres -E UTF8 -D "$dir/data" >/dev/null
  fi
  run "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" start >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  dir="$2"
  run "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
