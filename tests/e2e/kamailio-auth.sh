#!/usr/bin/env bash
# Kamailio auth_db interop (SPEC A2, last sentence): a Kamailio `auth_db` (calculate_ha1=0,
# password_column="ha1", use_domain=1) on the same PostgreSQL database accepts a user that
# `registrar users add` created. Creates a throwaway database, `registrar migrate`,
# `registrar users add sip:alice@127.0.0.1 --password secret`, starts Kamailio with
# tests/e2e/kamailio-auth.cfg (www_authorize/www_challenge, save("location") with usrloc
# db_mode=3) on a free port, then: sipsak -u alice -a secret gets 200 and a binding in
# `location`; sipsak -a wrong gets 401, no 200, no binding.
#
#   tests/e2e/kamailio-auth.sh
#
# Needs kamailio + kamailio-postgres-modules, sipsak, psql, python3, and TEST_DATABASE_URL (a
# PostgreSQL server to create the database on). REGISTRAR_BIN names the binary (default:
# `cargo build --release --locked`, then target/release/registrar). With CI set, anything
# missing is a failure; without, a visible skip.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
root="$PWD"
here="$root/tests/e2e"
me=kamailio-auth
. "$here/lib.sh"

need kamailio kamailio
need sipsak sipsak
need psql postgresql-client
need python3 python3
modules="$(ls -d /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules /usr/local/lib*/kamailio/modules 2>/dev/null | head -n 1 || true)"
if [ -z "$modules" ] || [ ! -e "$modules/db_postgres.so" ]; then
  if [ -n "${CI:-}" ]; then
    echo "$me: FAILED: Kamailio's db_postgres module is not installed (Debian package kamailio-postgres-modules), and CI is set" >&2
    exit 1
  fi
  echo "$me: skipped: Kamailio's db_postgres module is not installed (Debian package kamailio-postgres-modules)"
  exit 0
fi
if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if [ -n "${CI:-}" ]; then echo "$me: FAILED: TEST_DATABASE_URL is not set, and CI is set" >&2; exit 1; fi
  echo "$me: skipped: TEST_DATABASE_URL is not set"
  exit 0
fi

registrar_binary

work="$(mktemp -d /tmp/registrar-e2e-kamailio.XXXXXX)"
kam_pid=""
pg_db=""
cleanup() {
  if [ -n "$kam_pid" ]; then stop_pid "$kam_pid" 10 || true; fi
  if [ -n "$pg_db" ]; then
    psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  for f in "$work/kamailio.log" "$work/sipsak.out"; do
    [ -s "$f" ] || continue
    echo "--- tail of $(basename "$f")"
    tail -n 30 "$f"
  done
  echo "$me: FAILED: $*" >&2
  exit 1
}

pg_db="registrar_e2e_kamailio_$$"
psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
url="$(pg_db_url "$TEST_DATABASE_URL" "$pg_db")"
# Kamailio's db_url takes no query parameters.
kam_url="${url%%\?*}"

"$bin" --database-url "$url" migrate > "$work/migrate.out" 2>&1 || { cat "$work/migrate.out"; fail "registrar migrate"; }
"$bin" --database-url "$url" users add sip:alice@127.0.0.1 --password secret > /dev/null || fail "registrar users add"
# Our row: hashes only, no plaintext, so Kamailio can only have used `ha1`.
row="$(psql -X -At "$url" -c "SELECT password = '' AND ha1 <> '' FROM subscriber WHERE username = 'alice' AND domain = '127.0.0.1'")"
[ "$row" = t ] || fail "subscriber row of alice: expected an empty password and an ha1 (got '$row')"

port="$(free_udp_port)"
sed -e "s|!LISTEN!udp:127.0.0.1:5060!|!LISTEN!udp:127.0.0.1:$port!|" \
    -e "s|!DBURL!postgres://postgres@127.0.0.1/kamailio!|!DBURL!$kam_url!|" \
    "$here/kamailio-auth.cfg" > "$work/kamailio.cfg"
kamailio -f "$work/kamailio.cfg" -c > "$work/kamailio.log" 2>&1 || fail "kamailio -c: the configuration does not check"
TZ=UTC PGTZ=UTC kamailio -f "$work/kamailio.cfg" -DD -E -m 64 -M 8 -w "$work" -P "$work/kamailio.pid" \
  > "$work/kamailio.log" 2>&1 &
kam_pid=$!

# Ready when it answers OPTIONS (sipsak's default mode; exit 0 on a 200).
ready=""
for _ in $(seq 1 50); do
  kill -0 "$kam_pid" 2>/dev/null || break
  if timeout 5 sipsak -s "sip:ping@127.0.0.1:$port" > /dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || fail "kamailio did not start (or does not answer OPTIONS) on udp:127.0.0.1:$port"

# Right password: 200 OK and alice's binding in `location`.
cport=$((port == 65535 ? port - 1 : port + 1))
rc=0
timeout 30 sipsak -vvv -U -C "sip:alice@127.0.0.1:$cport" -s "sip:alice@127.0.0.1:$port" -x 600 \
  -u alice -a secret > "$work/sipsak.out" 2>&1 || rc=$?
grep -q '^SIP/2.0 401' "$work/sipsak.out" || fail "sipsak -a secret: Kamailio did not challenge (no 401)"
[ "$rc" -eq 0 ] || fail "sipsak -u alice -a secret against Kamailio exited $rc (expected 0: 200 OK)"
grep -q '^SIP/2.0 200' "$work/sipsak.out" || fail "sipsak -a secret: exit 0 but no 200 seen"
bound="$(psql -X -At "$url" -c "SELECT count(*) FROM location WHERE username = 'alice' AND domain = '127.0.0.1' AND contact = 'sip:alice@127.0.0.1:$cport'")"
[ "$bound" = 1 ] || fail "sipsak got 200 from Kamailio but location holds $bound binding(s) for alice's Contact"
echo "$me: sipsak -u alice -a secret against Kamailio auth_db: 401, then 200 OK, binding in location"

# Wrong password: 401, never 200, no binding.
wport=$((cport == 65535 ? cport - 2 : cport + 1))
rc=0
timeout 30 sipsak -vvv -U -C "sip:alice@127.0.0.1:$wport" -s "sip:alice@127.0.0.1:$port" -x 600 \
  -u alice -a wrong > "$work/sipsak.out" 2>&1 || rc=$?
wrong="$(psql -X -At "$url" -c "SELECT count(*) FROM location WHERE contact = 'sip:alice@127.0.0.1:$wport'")"
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || ! grep -q '^SIP/2.0 401' "$work/sipsak.out" \
   || grep -q '^SIP/2.0 200' "$work/sipsak.out" || [ "$wrong" != 0 ]; then
  fail "wrong password: expected sipsak to fail on 401 without a 200 and no binding (exit $rc, bindings $wrong)"
fi
echo "$me: sipsak -u alice -a wrong against Kamailio auth_db: exit $rc, 401, no 200, no binding"

rc=0
stop_pid "$kam_pid" 10 || rc=$?
kam_pid=""
# Kamailio's main process exits 0 on SIGTERM after stopping its children.
[ "$rc" -eq 0 ] || fail "kamailio exited $rc on SIGTERM"
echo "$me: ok"
