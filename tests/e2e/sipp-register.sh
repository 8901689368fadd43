#!/usr/bin/env bash
# End-to-end: SIPp registers N distinct users with the built `registrar serve` binary, on SQLite
# and (when TEST_DATABASE_URL names a PostgreSQL server) on PostgreSQL, then checks that every
# REGISTER got 200 OK and that `location` holds exactly N rows.
#
#   tests/e2e/sipp-register.sh [N]         (default 1000; needs sipp, sqlite3, psql)
#
# Skips (exit 0, saying so) when SIPp is not installed, unless CI is set: then that is a failure;
# .ci/run installs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
users="${1:-1000}"
here="tests/e2e"
me=sipp-register
. "$here/lib.sh"

need sipp sip-tester
cargo build --quiet
bin="target/debug/registrar"
work="$(mktemp -d /tmp/registrar-e2e.XXXXXX)"
server_pid=""
pg_db=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "$pg_db" ] && psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

{ echo SEQUENTIAL; for i in $(seq -w 1 "$users"); do echo "e2e$i;example.com"; done; } > "$work/users.csv"

# run_backend NAME URL COUNT_COMMAND...
run_backend() {
  local name="$1" url="$2"; shift 2
  local port; port="$(free_port)"
  "$bin" --database-url "$url" serve --auth off --listen "udp:127.0.0.1:$port" > "$work/$name.log" 2>&1 &
  server_pid=$!
  wait_listening "$work/$name.log" "$server_pid" \
    || { cat "$work/$name.log"; echo "$name: server did not start"; exit 1; }
  local status=0
  ( cd "$work" && sipp -sf "$OLDPWD/$here/register.xml" -inf users.csv "127.0.0.1:$port" \
      -i 127.0.0.1 -p 0 -m "$users" -r 200 -l 100 -timeout 120s -nostdin -trace_stat -stf "$name.csv" \
      > "$name.sipp.out" 2>&1 ) || status=$?
  local ok; ok="$(tail -n 1 "$work/$name.csv" | awk -F';' '{print $16}')"
  local failed; failed="$(tail -n 1 "$work/$name.csv" | awk -F';' '{print $18}')"
  local rows; rows="$("$@")"
  kill -TERM "$server_pid"; wait "$server_pid" || { echo "$name: serve did not exit 0 on SIGTERM"; exit 1; }
  server_pid=""
  echo "sipp-register [$name]: sipp exit $status, successful calls $ok, failed calls $failed, location rows $rows"
  if [ "$status" -ne 0 ] || [ "$ok" != "$users" ] || [ "$rows" != "$users" ]; then
    cat "$work/$name.sipp.out" | tail -n 20
    echo "sipp-register [$name]: FAILED (expected $users x 200 OK and $users rows)"
    exit 1
  fi
}

run_backend sqlite "sqlite://$work/e2e.db?mode=rwc" sqlite3 "$work/e2e.db" "SELECT count(*) FROM location"

if [ -n "${TEST_DATABASE_URL:-}" ]; then
  pg_db="registrar_e2e_$$"
  psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
  pg_url="$(python3 -c 'import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$TEST_DATABASE_URL" "$pg_db")"
  run_backend postgres "$pg_url" psql "$pg_url" -Atc "SELECT count(*) FROM location"
else
  echo "sipp-register [postgres]: skipped: TEST_DATABASE_URL is not set"
fi
