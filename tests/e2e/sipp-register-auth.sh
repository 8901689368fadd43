#!/usr/bin/env bash
# End-to-end digest authentication (SPEC A1-A4, A7) with the built release binary, on SQLite and
# (when TEST_DATABASE_URL names a PostgreSQL server) on PostgreSQL:
#   - N users are created: most with `registrar users add` (--password and --password-stdin), the
#     rest as rows a Kamailio operator writes (PostgreSQL: ha1/ha1b computed by SQL md5(); both:
#     plaintext `password` only, kamctl's default) — SPEC A2;
#   - `serve` runs with its default, auth on; sipsak registers alice (-u alice -a secret);
#   - SIPp registers each of the N users (register-auth.xml: REGISTER, 401, REGISTER with
#     [authentication], 200 OK); SIPp must exit 0 with N successful calls, `location` must hold
#     exactly one binding per user;
#   - sipsak with a wrong password must see 401 and no 200, and write no binding.
#
#   tests/e2e/sipp-register-auth.sh [N]      (default 1000)
#
# Needs sipp (sip-tester), sipsak, sqlite3, python3, psql. REGISTRAR_BIN names the binary to test
# (default: `cargo build --release --locked`, then target/release/registrar). With CI set, a
# missing tool or an unset TEST_DATABASE_URL is a failure; without, a visible skip.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
root="$PWD"
here="$root/tests/e2e"
me=sipp-register-auth
. "$here/lib.sh"
users="${1:-1000}"

need sipp sip-tester
need sipsak sipsak
need sqlite3 sqlite3
need python3 python3
[ -n "${TEST_DATABASE_URL:-}" ] && need psql postgresql-client

registrar_binary

work="$(mktemp -d /tmp/registrar-e2e-auth.XXXXXX)"
server_pid=""
pg_db=""
cleanup() {
  if [ -n "$server_pid" ]; then stop_pid "$server_pid" 5 || true; fi
  if [ -n "$pg_db" ]; then
    psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fail BACKEND MESSAGE: the evidence, then exit 1.
fail() {
  local name="$1"; shift
  for f in "$work/$name.log" "$work/$name.sipp.out" "$work"/*_errors.log "$work/$name.sipsak.out"; do
    [ -s "$f" ] || continue
    echo "--- tail of $(basename "$f")"
    tail -n 25 "$f"
  done
  echo "$me [$name]: FAILED: $*" >&2
  exit 1
}

# Users e2e0001..e2eN in example.com, each with its own password.
width="${#users}"
user_name() { printf 'e2e%0*d' "$width" "$1"; }
{
  echo SEQUENTIAL
  for i in $(seq 1 "$users"); do u="$(user_name "$i")"; echo "$u;example.com;pw-$u"; done
} > "$work/users.csv"

# add_users NAME URL CLI_COUNT HASH_COUNT: users 1..CLI_COUNT through the CLI (odd ones
# with --password, even ones with --password-stdin); on PostgreSQL the next HASH_COUNT as
# ha1/ha1b rows computed by SQL md5() (kamctl with calculate_ha1=0 style); the rest as rows with
# only the plaintext `password` (kamctl's default). Plus alice. The SQL goes to "${sql_in[@]}".
add_users() {
  local name="$1" url="$2" cli="$3" hashed="$4"
  local i u t0=$SECONDS
  for ((i = 1; i <= cli; i++)); do
    u="$(user_name "$i")"
    if ((i % 2)); then
      "$bin" --database-url "$url" users add "sip:$u@example.com" --password "pw-$u" >/dev/null \
        || fail "$name" "users add sip:$u@example.com --password failed"
    else
      printf 'pw-%s\n' "$u" | "$bin" --database-url "$url" users add "sip:$u@example.com" --password-stdin >/dev/null \
        || fail "$name" "users add sip:$u@example.com --password-stdin failed"
    fi
  done
  "$bin" --database-url "$url" users add sip:alice@127.0.0.1 --password secret >/dev/null \
    || fail "$name" "users add alice failed"
  local first_plain=$((cli + hashed + 1))
  {
    echo "BEGIN;"
    if ((hashed > 0)); then
      # username and password as user_name and the CSV spell them.
      echo "INSERT INTO subscriber (username, domain, password, ha1, ha1b)
            SELECT u, 'example.com', '', md5(u || ':example.com:pw-' || u),
                   md5(u || '@example.com:example.com:pw-' || u)
            FROM (SELECT 'e2e' || lpad(n::text, $width, '0') AS u
                  FROM generate_series($((cli + 1)), $((cli + hashed))) n) s;"
    fi
    for ((i = first_plain; i <= users; i++)); do
      u="$(user_name "$i")"
      echo "INSERT INTO subscriber (username, domain, password) VALUES ('$u', 'example.com', 'pw-$u');"
    done
    echo "COMMIT;"
  } | "${sql_in[@]}" >/dev/null || fail "$name" "inserting subscriber rows by SQL failed"
  local listed; listed="$("$bin" --database-url "$url" users list)"
  [ "$(tail -n 1 <<<"$listed")" = "$((users + 1)) user(s)" ] \
    || fail "$name" "users list: expected $((users + 1)) user(s), got: $(tail -n 1 <<<"$listed")"
  ! grep -q 'pw-\|secret' <<<"$listed" || fail "$name" "users list printed a password"
  echo "$me [$name]: $cli users via the CLI, $hashed as SQL md5() rows, $((users - cli - hashed)) as plaintext rows, + alice ($((SECONDS - t0)) s)"
}

# run_backend NAME URL CLI_COUNT HASH_COUNT, with the arrays sql_in (runs the SQL on its stdin)
# and query (runs the SQL given as its last argument, prints the result) set for the database.
run_backend() {
  local name="$1" url="$2" cli="$3" hashed="$4"
  "$bin" --database-url "$url" migrate > "$work/$name.migrate.out" 2>&1 || fail "$name" "migrate failed"
  add_users "$name" "$url" "$cli" "$hashed"

  local port; port="$(free_udp_port)"
  # No --auth flag: authentication is on by default (A1); the first 401 of each call shows it.
  "$bin" --database-url "$url" serve --listen "udp:127.0.0.1:$port" > "$work/$name.log" 2>&1 &
  server_pid=$!
  wait_listening "$work/$name.log" "$server_pid" || fail "$name" "server did not start"

  # sipsak, right password: registers (exit 0: a 200 was received).
  local cport=$((port == 65535 ? port - 1 : port + 1))
  local rc=0
  timeout 30 sipsak -U -C "sip:alice@127.0.0.1:$cport" -s "sip:alice@127.0.0.1:$port" -x 600 \
    -u alice -a secret > "$work/$name.sipsak.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || fail "$name" "sipsak -u alice -a secret exited $rc (expected 0: 200 OK)"
  local alice; alice="$("${query[@]}" "SELECT count(*) FROM location WHERE username = 'alice' AND contact = 'sip:alice@127.0.0.1:$cport'")"
  [ "$alice" = 1 ] || fail "$name" "sipsak got 200 but alice has $alice binding(s) for its Contact"

  # SIPp: every user, challenge then credentials.
  local status=0
  ( cd "$work" && sipp -sf "$here/register-auth.xml" -inf users.csv "127.0.0.1:$port" \
      -i 127.0.0.1 -p 0 -m "$users" -r 200 -l 100 -timeout 180s -nostdin \
      -trace_stat -stf "$name.csv" -trace_err > "$name.sipp.out" 2>&1 ) || status=$?
  local ok failed
  ok="$(tail -n 1 "$work/$name.csv" | awk -F';' '{print $16}')"
  failed="$(tail -n 1 "$work/$name.csv" | awk -F';' '{print $18}')"
  local rows distinct
  rows="$("${query[@]}" "SELECT count(*) FROM location WHERE username LIKE 'e2e%'")"
  distinct="$("${query[@]}" "SELECT count(DISTINCT username) FROM location WHERE username LIKE 'e2e%'")"
  echo "$me [$name]: sipp exit $status, successful calls $ok, failed calls $failed, location rows $rows ($distinct users)"
  if [ "$status" -ne 0 ] || [ "$ok" != "$users" ] || [ "$rows" != "$users" ] || [ "$distinct" != "$users" ]; then
    fail "$name" "expected sipp exit 0, $users successful calls (401 then 200 OK) and $users bindings of $users users"
  fi

  # sipsak, wrong password: 401, never 200, no binding. (One failure: far from A6's ban.)
  local wport=$((cport == 65535 ? cport - 2 : cport + 1))
  rc=0
  timeout 30 sipsak -vvv -U -C "sip:alice@127.0.0.1:$wport" -s "sip:alice@127.0.0.1:$port" -x 600 \
    -u alice -a wrong > "$work/$name.sipsak.out" 2>&1 || rc=$?
  local wrong; wrong="$("${query[@]}" "SELECT count(*) FROM location WHERE contact = 'sip:alice@127.0.0.1:$wport'")"
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || ! grep -q '^SIP/2.0 401' "$work/$name.sipsak.out" \
     || grep -q '^SIP/2.0 200' "$work/$name.sipsak.out" || [ "$wrong" != 0 ]; then
    fail "$name" "wrong password: expected sipsak to fail on 401 without a 200 and no binding (exit $rc, bindings $wrong)"
  fi
  echo "$me [$name]: sipsak -a secret: 200 OK; sipsak -a wrong: exit $rc, 401, no 200, no binding"

  local src=0
  stop_pid "$server_pid" 10 || src=$?
  server_pid=""
  [ "$src" -eq 0 ] || fail "$name" "serve exited $src on SIGTERM (expected 0)"
  echo "$me [$name]: ok"
}

db="$work/e2e.db"
# SQLite has no md5(): no hash rows there; 4/5 of the users through the CLI (fast on SQLite).
sql_in=(sqlite3 -bail "$db")
query=(sqlite3 "$db")
run_backend sqlite "sqlite://$db?mode=rwc" $((users * 4 / 5)) 0

if [ -n "${TEST_DATABASE_URL:-}" ]; then
  pg_db="registrar_e2e_auth_$$"
  psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
  pg_url="$(pg_db_url "$TEST_DATABASE_URL" "$pg_db")"
  # A process per `users add` costs more on PostgreSQL (connection, TLS): 1/5 through the CLI,
  # 2/5 as md5() rows, 2/5 plaintext.
  sql_in=(psql -X -q -v ON_ERROR_STOP=1 "$pg_url")
  query=(psql -X -At "$pg_url" -c)
  run_backend postgres "$pg_url" $((users / 5)) $((users * 2 / 5))
elif [ -n "${CI:-}" ]; then
  echo "$me [postgres]: FAILED: TEST_DATABASE_URL is not set, and CI is set" >&2
  exit 1
else
  echo "$me [postgres]: skipped: TEST_DATABASE_URL is not set"
fi
