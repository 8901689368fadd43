#!/usr/bin/env bash
# baresip registers over TLS (SPEC W1, W4): a real SIP UA (Debian `baresip-core`) with an account
# on `transport=tls`, given the test CA (tests/data/tls/ca.pem; baresip 1.0, Debian 12's, does not
# verify the server's certificate, later ones do), against
# the release binary with a `tls:` listener and digest authentication on (`serve`'s default).
#   - baresip must report "200 OK (registrar/…) [1 binding]";
#   - while it runs, `location` holds its binding as sent (`transport=tls`), with `socket` = the
#     TLS listener and the connection's id;
#   - when it quits it unregisters, and the binding is gone.
#
#   tests/e2e/baresip-tls.sh
#
# Needs baresip (baresip-core), sqlite3. REGISTRAR_BIN names the binary to test (default: `cargo
# build --release --locked`). With CI set, a missing tool is a failure; without, a visible skip.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
root="$PWD"
here="$root/tests/e2e"
me=baresip-tls
. "$here/lib.sh"

need baresip baresip-core
need sqlite3 sqlite3

registrar_binary

work="$(mktemp -d /tmp/registrar-e2e-baresip.XXXXXX)"
server_pid=""
ua_pid=""
cleanup() {
  if [ -n "$ua_pid" ]; then kill "$ua_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then stop_pid "$server_pid" 5 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  for f in "$work/serve.log" "$work/baresip.out"; do
    [ -s "$f" ] && { echo "--- tail of $(basename "$f")"; tail -n 25 "$f"; }
  done
  echo "$me: FAILED: $*" >&2
  exit 1
}

db="$work/registrar.db"
url="sqlite://$db?mode=rwc"
"$bin" --database-url "$url" migrate > "$work/migrate.out" 2>&1 || fail "migrate failed"
"$bin" --database-url "$url" users add sip:carol@example.com --password 'tls-secret' >/dev/null \
  || fail "users add carol failed"

tls_port="$(free_tcp_port)"
"$bin" --database-url "$url" serve --listen "udp:127.0.0.1:$(free_udp_port)" \
  --listen "tls:127.0.0.1:$tls_port" --tls-cert "$root/tests/data/tls/cert.pem" \
  --tls-key "$root/tests/data/tls/key.pem" --http-listen off > "$work/serve.log" 2>&1 &
server_pid=$!
wait_listening "$work/serve.log" "$server_pid" || fail "server did not start"

mkdir -p "$work/baresip"
cat > "$work/baresip/config" <<CONF
poll_method		epoll
sip_listen		127.0.0.1:$(free_tcp_port)
sip_cafile		$root/tests/data/tls/ca.pem
module_path		/usr/lib/baresip/modules
module			g711.so
module_app		account.so
CONF
cat > "$work/baresip/accounts" <<ACCOUNTS
<sip:carol@example.com;transport=tls>;auth_pass=tls-secret;outbound="sip:127.0.0.1:$tls_port;transport=tls";regint=600
ACCOUNTS

# baresip quits by itself after 10 s (and unregisters as it does).
baresip -f "$work/baresip" -t 10 > "$work/baresip.out" 2>&1 &
ua_pid=$!

socket="tls:127.0.0.1:$tls_port"
row=""
for _ in $(seq 1 80); do
  row="$(sqlite3 -separator ' | ' "$db" \
    "SELECT contact, socket, connection_id > 0 FROM location WHERE username = 'carol'" 2>/dev/null || true)"
  [ -n "$row" ] && break
  kill -0 "$ua_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$row" ] || fail "no binding for carol while baresip runs"
echo "$me: location: $row"
[[ "$row" =~ ^sip:carol-[^@]+@127\.0\.0\.1:[0-9]+\;transport=tls\ \|\ $socket\ \|\ 1$ ]] \
  || fail "the binding is not baresip's TLS contact on $socket: $row"

wait "$ua_pid" || true
ua_pid=""
grep -E "carol@example.com: \{0/TLS/v4\} 200 OK \(registrar/[^)]*\) \[1 binding\]" "$work/baresip.out" \
  || fail "baresip did not report 200 OK with one binding over TLS"
left="$(sqlite3 "$db" "SELECT count(*) FROM location WHERE username = 'carol'")"
[ "$left" = 0 ] || fail "baresip unregistered on quitting, yet $left binding(s) remain"
echo "$me: baresip unregistered on quitting: no binding left"

src=0
stop_pid "$server_pid" 10 || src=$?
server_pid=""
[ "$src" -eq 0 ] || fail "serve exited $src on SIGTERM (expected 0)"
echo "$me: PASS"
