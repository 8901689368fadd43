#!/usr/bin/env bash
# A Kamailio proxy routes to a UA registered through our registrar (issue 10; SPEC R9). Our
# `registrar serve` and a Kamailio 5.6 proxy (tests/e2e/kamailio-proxy.cfg: usrloc db_mode=3,
# use_domain=1, lookup("location") then t_relay()) share one throwaway PostgreSQL database. For
# UDP and then TCP: a SIPp UAS (tests/e2e/uas-message.xml) listens on port L; sipsak registers
# its Contact (port L) with our registrar from a different port, with a Via naming the port it
# really sends from (no NAT), so the `location` row must have `received` NULL; then a SIPp UAC
# (tests/e2e/message.xml) sends a MESSAGE for that user to the proxy, and must get the UAS's 200
# OK back through it, and the UAS must have seen the MESSAGE.
#
#   tests/e2e/kamailio-proxy.sh
#
# Needs kamailio + kamailio-postgres-modules, sipp, sipsak, psql, python3, and TEST_DATABASE_URL
# (a PostgreSQL server to create the database on). REGISTRAR_BIN names the binary (default:
# `cargo build --release --locked`, then target/release/registrar). With CI set, anything missing
# is a failure; without, a visible skip.
#
# That this test catches issue 10: before the fix our registrar stored `received` (the
# REGISTER's source) whenever the source port differed from the Contact's, and Kamailio's
# lookup() then makes `received` the destination, so the MESSAGE goes to the port the UA
# registered from rather than the one it listens on. E2E_SIMULATE_ISSUE_10=udp (or =tcp)
# reproduces that in that transport's case, after its `received IS NULL` check, by `UPDATE location
# SET received = 'sip:127.0.0.1:<REGISTER source port>;transport=<udp|tcp>'`; the script then
# fails, as measured (Kamailio's log: "dst-uri sip:127.0.0.1:<source port>;transport=..."):
#   UDP: the MESSAGE goes to sipsak's closed port and is never answered; Kamailio's fr_timer
#        (5 s here) ends it with "SIP/2.0 408 Request Timeout", the UAS sees nothing;
#   TCP: the connection to sipsak's closed port is refused ("connect 127.0.0.1:<source port>
#        failed (RST) Connection refused"); Kamailio answers at once with "SIP/2.0 477
#        Unfortunately error on sending to next hop occurred (477/TM)", the UAS sees nothing.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
root="$PWD"
here="$root/tests/e2e"
me=kamailio-proxy
. "$here/lib.sh"

need kamailio kamailio
need sipp sip-tester
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

work="$(mktemp -d /tmp/registrar-e2e-kamailio-proxy.XXXXXX)"
reg_pid=""
kam_pid=""
uas_pid=""
pg_db=""
cleanup() {
  if [ -n "$uas_pid" ]; then stop_pid "$uas_pid" 5 || true; fi
  if [ -n "$kam_pid" ]; then stop_pid "$kam_pid" 10 || true; fi
  if [ -n "$reg_pid" ]; then stop_pid "$reg_pid" 10 || true; fi
  if [ -n "$pg_db" ]; then
    psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Files whose tails explain a failure; the running case adds its own.
logs=("$work/registrar.log" "$work/kamailio.log")
fail() {
  for f in "${logs[@]}"; do
    [ -s "$f" ] || continue
    echo "--- tail of $(basename "$f")"
    tail -n 40 "$f"
  done
  echo "$me: FAILED: $*" >&2
  exit 1
}

# bound PROTO PORT: something holds PROTO (udp|tcp) PORT on 127.0.0.1 (we cannot bind it).
bound() {
  python3 -c '
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind(("127.0.0.1", int(sys.argv[2])))
except OSError:
    sys.exit(0)
sys.exit(1)' "$1" "$2"
}

# sql QUERY: one value from the test database.
sql() { psql -X -At "$url" -c "$1"; }

# --- Database and our registrar -------------------------------------------------------------
pg_db="registrar_e2e_kamailio_proxy_$$"
psql "$TEST_DATABASE_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
url="$(pg_db_url "$TEST_DATABASE_URL" "$pg_db")"
# Kamailio's db_url takes no query parameters.
kam_url="${url%%\?*}"

"$bin" --database-url "$url" migrate > "$work/migrate.out" 2>&1 || { cat "$work/migrate.out"; fail "registrar migrate"; }

reg_port="$(free_port)"
"$bin" --database-url "$url" serve --auth off \
  --listen "udp:127.0.0.1:$reg_port" --listen "tcp:127.0.0.1:$reg_port" > "$work/registrar.log" 2>&1 &
reg_pid=$!
wait_listening "$work/registrar.log" "$reg_pid" \
  || fail "registrar serve did not start on udp/tcp 127.0.0.1:$reg_port"

# --- Kamailio proxy on the same database ----------------------------------------------------
kam_port="$(free_port)"
sed -e "s|!LISTENUDP!udp:127.0.0.1:5060!|!LISTENUDP!udp:127.0.0.1:$kam_port!|" \
    -e "s|!LISTENTCP!tcp:127.0.0.1:5060!|!LISTENTCP!tcp:127.0.0.1:$kam_port!|" \
    -e "s|!DBURL!postgres://postgres@127.0.0.1/kamailio!|!DBURL!$kam_url!|" \
    "$here/kamailio-proxy.cfg" > "$work/kamailio.cfg"
kamailio -f "$work/kamailio.cfg" -c > "$work/kamailio.log" 2>&1 || fail "kamailio -c: the configuration does not check"
# UTC with a UTC database session: see README, "Sharing `location` with Kamailio".
TZ=UTC PGTZ=UTC kamailio -f "$work/kamailio.cfg" -DD -E -m 64 -M 8 -w "$work" -P "$work/kamailio.pid" \
  > "$work/kamailio.log" 2>&1 &
kam_pid=$!
ready=""
for _ in $(seq 1 50); do
  kill -0 "$kam_pid" 2>/dev/null || break
  if timeout 5 sipsak -s "sip:127.0.0.1:$kam_port" > /dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || fail "kamailio did not start (or does not answer OPTIONS) on udp:127.0.0.1:$kam_port"

# --- One transport ----------------------------------------------------------------------------
# run_case TRANSPORT USER: UAS on a fresh port L, registration with our registrar, MESSAGE via
# the proxy. TRANSPORT is udp or tcp.
run_case() {
  local tr="$1" user="$2" sipp_t sipsak_opts contact uparam
  local d="$work/$tr"
  mkdir -p "$d"
  logs=("$work/registrar.log" "$work/kamailio.log" "$d/sipsak.out" "$d/uas.out" "$d/uas.msg" "$d/uac.out" "$d/uac.msg")
  if [ "$tr" = udp ]; then
    sipp_t=u1
    # -S: send from the port sipsak receives on and names in its Via. Without it sipsak sends
    # from a second socket, its Via does not match the source, and a registrar that detects
    # NAT as Kamailio's default configuration does (ours, R9) stores `received`, rightly.
    sipsak_opts=(-S)
    uparam=""
  else
    sipp_t=t1
    # Over TCP sipsak's Via names the connection's local port.
    sipsak_opts=(-E tcp)
    uparam=";transport=tcp"
  fi

  # The UAS: answers one MESSAGE with 200 OK on $tr port L.
  local uas_port
  uas_port="$(free_port)"
  contact="sip:$user@127.0.0.1:$uas_port$uparam"
  ( cd "$d" && exec sipp -sf "$here/uas-message.xml" -t "$sipp_t" -i 127.0.0.1 -p "$uas_port" \
      -m 1 -timeout 30s -nostdin -trace_msg -message_file uas.msg -trace_err -error_file uas.err \
      > uas.out 2>&1 ) &
  uas_pid=$!
  for _ in $(seq 1 50); do
    bound "$tr" "$uas_port" && break
    kill -0 "$uas_pid" 2>/dev/null || break
    sleep 0.1
  done
  bound "$tr" "$uas_port" || fail "[$tr] the SIPp UAS did not start on $tr:127.0.0.1:$uas_port"

  # Register the UAS's Contact with OUR registrar, from sipsak's own port (not L).
  local rc=0
  timeout 30 sipsak -vvv "${sipsak_opts[@]}" -U -C "<$contact>" -s "sip:$user@127.0.0.1:$reg_port" -x 600 \
    > "$d/sipsak.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] && grep -q '^SIP/2.0 200' "$d/sipsak.out" \
    || fail "[$tr] sipsak REGISTER of <$contact> with our registrar exited $rc (expected 0: 200 OK)"
  # The source port our registrar saw (the 200's Via rport) and the one sipsak's Via named.
  local src_port via_port
  src_port="$(sed -n '/^SIP\/2.0 200/,/^$/s/^Via:.*;rport=\([0-9]*\).*/\1/p' "$d/sipsak.out" | head -n 1)"
  via_port="$(sed -n "s|^Via: SIP/2.0/${tr^^} 127.0.0.1:\([0-9]*\);.*|\1|p" "$d/sipsak.out" | head -n 1)"
  [ -n "$src_port" ] && [ "$src_port" != "$uas_port" ] \
    || fail "[$tr] expected the REGISTER to come from a port other than L=$uas_port (source '$src_port')"
  [ "$src_port" = "$via_port" ] \
    || fail "[$tr] sipsak's Via names port '$via_port' but it sent from '$src_port': not the no-NAT case"

  # R9: Via matches the source and 127.0.0.1 is no RFC 1918 address: no NAT, no `received`.
  local row
  row="$(sql "SELECT count(*) || ' ' || count(*) FILTER (WHERE received IS NULL) || ' ' || coalesce(max(socket), '-')
              FROM location WHERE username = '$user' AND domain = '127.0.0.1' AND contact = '$contact'")"
  [ "$row" = "1 1 $tr:127.0.0.1:$reg_port" ] \
    || fail "[$tr] location row for <$contact>: expected 1 row, received NULL, socket $tr:127.0.0.1:$reg_port (got count, NULL count, socket: '$row')"
  echo "$me [$tr]: REGISTER <$contact> from 127.0.0.1:$src_port (Via port $via_port) -> 200 OK; location row has received NULL"

  if [ "${E2E_SIMULATE_ISSUE_10:-}" = "$tr" ]; then
    sql "UPDATE location SET received = 'sip:127.0.0.1:$src_port;transport=$tr'
         WHERE username = '$user' AND domain = '127.0.0.1'" > /dev/null
    echo "$me [$tr]: E2E_SIMULATE_ISSUE_10: set received = 'sip:127.0.0.1:$src_port;transport=$tr' (the behaviour before issue 10's fix); expect a failure"
  fi

  # MESSAGE sip:USER@127.0.0.1 to the proxy; expect the UAS's 200 back through it.
  # (On an answer other than 200 SIPp aborts the call with a BYE, which the proxy refuses: 405.)
  local uac_port
  uac_port="$(free_port)"
  rc=0
  ( cd "$d" && exec timeout 60 sipp -sf "$here/message.xml" -t "$sipp_t" -i 127.0.0.1 -p "$uac_port" \
      -s "$user" -key domain 127.0.0.1 "127.0.0.1:$kam_port" -m 1 -timeout 30s -nostdin \
      -trace_msg -message_file uac.msg -trace_err -error_file uac.err > uac.out 2>&1 ) || rc=$?
  # Every response the UAC received, in order (the trace repeats an unexpected one: once).
  local finals
  finals="$(tr -d '\r' < "$d/uac.msg" 2>/dev/null \
    | awk '/ message received \[/ { want = 1; next } want && NF { print; want = 0 }' \
    | grep -E '^SIP/2.0 [1-6][0-9][0-9]' | grep -v '^SIP/2.0 1' | paste -sd '|' || true)"
  local relayed
  relayed="$(grep -m 1 '^MESSAGE ' "$d/uas.msg" 2>/dev/null | tr -d '\r' || true)"
  local dst
  dst="$(grep -m 1 "lookup for $user@" "$work/kamailio.log" | sed 's/.*: lookup for/lookup for/' || true)"
  [ -z "$dst" ] || echo "$me [$tr]: kamailio: $dst"

  # The UAS ends by itself after its one call (-m 1), right after sending 200; give it a
  # little time, then stop it (it got nothing, then).
  local uas_rc=0 uas_status state
  for _ in $(seq 1 50); do
    state="$(awk '{print $3}' "/proc/$uas_pid/stat" 2>/dev/null || true)"
    [ -z "$state" ] || [ "$state" = Z ] && break
    sleep 0.1
  done
  if [ -z "$state" ] || [ "$state" = Z ]; then
    wait "$uas_pid" || uas_rc=$?
    uas_status="sipp exit $uas_rc"
  else
    stop_pid "$uas_pid" 5 || true
    uas_rc=-1
    uas_status="sipp still running 5 s after the UAC ended: stopped"
  fi
  uas_pid=""

  echo "$me [$tr]: MESSAGE sip:$user@127.0.0.1 via the proxy: final answer '${finals:-none}' (sipp exit $rc); UAS got '${relayed:-nothing}' ($uas_status)"
  [ "$rc" -eq 0 ] && [ "$finals" = "SIP/2.0 200 OK" ] \
    || fail "[$tr] MESSAGE via Kamailio: expected exactly one final answer, 200 OK (got '${finals:-none}', sipp exit $rc)"
  # The 200 is the UAS's (its To tag), relayed by the proxy, not one the proxy made up.
  grep -q '^To: .*;tag=[0-9]*SIPpTag01' "$d/uac.msg" \
    || fail "[$tr] the 200 OK does not carry the UAS's To tag"
  [ "$uas_rc" -eq 0 ] && [ "$relayed" = "MESSAGE $contact SIP/2.0" ] \
    || fail "[$tr] the UAS on $tr port $uas_port: expected 'MESSAGE $contact SIP/2.0' and a successful call (got '${relayed:-nothing}', $uas_status)"
  grep -qx 'hello' <(tr -d '\r' < "$d/uas.msg") || fail "[$tr] the UAS did not get the MESSAGE body"
}

run_case udp bob
run_case tcp carol

logs=("$work/registrar.log" "$work/kamailio.log")
rc=0
stop_pid "$kam_pid" 10 || rc=$?
kam_pid=""
[ "$rc" -eq 0 ] || fail "kamailio exited $rc on SIGTERM"
rc=0
stop_pid "$reg_pid" 10 || rc=$?
reg_pid=""
[ "$rc" -eq 0 ] || fail "registrar serve exited $rc on SIGTERM"
echo "$me: ok"
