#!/usr/bin/env bash
# A real browser softphone registers (SPEC W4): JsSIP 3.13 (npm, bundled with esbuild) in headless
# Chromium (Debian `chromium`, driven by puppeteer-core) registers with a password — digest
# authentication on, as `serve` defaults — over `ws:` and over `wss:` (the throwaway test
# certificate in tests/data/tls, trusted by its public key for this run only). JsSIP reports
# "registered" only when the 200 OK echoes its quoted +sip.instance and reg-id; then `location`
# must hold the browser's binding: its `.invalid` contact with transport=ws as sent, `received`
# naming the connection's source, `socket` the listener. The screenshots of the registered pages
# are kept, and their paths printed.
#
#   tests/e2e/browser-jssip.sh
#
# Needs chromium, node and npm, sqlite3, openssl. REGISTRAR_BIN names the binary to test (default:
# `cargo build --release --locked`). ARTIFACTS names where screenshots go (default
# target/e2e-artifacts). With CI set, a missing tool is a failure; without, a visible skip.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
root="$PWD"
here="$root/tests/e2e"
me=browser-jssip
. "$here/lib.sh"

need chromium chromium
need node nodejs
need npm npm
need sqlite3 sqlite3
need openssl openssl

registrar_binary
artifacts="${ARTIFACTS:-$root/target/e2e-artifacts}"
mkdir -p "$artifacts"
artifacts="$(realpath "$artifacts")"

# JsSIP, esbuild and puppeteer-core at the versions package-lock.json pins; the page bundle.
(cd "$here/browser" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent bundle) \
  || { echo "$me: FAILED: npm ci / bundle in tests/e2e/browser" >&2; exit 1; }

work="$(mktemp -d /tmp/registrar-e2e-browser.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then stop_pid "$server_pid" 5 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  [ -s "$work/serve.log" ] && { echo "--- tail of serve.log"; tail -n 25 "$work/serve.log"; }
  echo "$me: FAILED: $*" >&2
  exit 1
}

url="sqlite://$work/registrar.db?mode=rwc"
"$bin" --database-url "$url" migrate > "$work/migrate.out" 2>&1 || fail "migrate failed"
"$bin" --database-url "$url" users add sip:wanda@example.com --password 'ws-secret' >/dev/null \
  || fail "users add wanda failed"
"$bin" --database-url "$url" users add sip:wesley@example.com --password 'wss-secret' >/dev/null \
  || fail "users add wesley failed"

ws_port="$(free_tcp_port)"
wss_port="$(free_tcp_port)"
cert="$root/tests/data/tls/cert.pem"
key="$root/tests/data/tls/key.pem"
"$bin" --database-url "$url" serve --listen "udp:127.0.0.1:$(free_udp_port)" \
  --listen "ws:127.0.0.1:$ws_port" --listen "wss:127.0.0.1:$wss_port" \
  --tls-cert "$cert" --tls-key "$key" --http-listen off > "$work/serve.log" 2>&1 &
server_pid=$!
wait_listening "$work/serve.log" "$server_pid" || fail "server did not start"

# Chromium trusts the test certificate by the SHA-256 of its public key, nothing wider.
spki="$(openssl x509 -in "$cert" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)"

# register NAME WS_URL USER PASSWORD: the browser registers; its outcome is printed.
register() {
  local name="$1" ws="$2" user="$3" password="$4" shot="$artifacts/jssip-$1.png"
  rm -f "$shot"
  if ! node "$here/browser/register.mjs" --ws "$ws" --uri "sip:$user@example.com" \
       --password "$password" --spki "$spki" --screenshot "$shot" --timeout 30 \
       > "$work/$name.out" 2> "$work/$name.err"; then
    tail -n 30 "$work/$name.err"
    cat "$work/$name.out"
    fail "[$name] JsSIP did not register (screenshot: $shot)"
  fi
  [ -s "$shot" ] || fail "[$name] no screenshot at $shot"
  echo "$me [$name]: JsSIP registered: $(cat "$work/$name.out")"
  echo "$me [$name]: screenshot of the registered page: $shot"
}

# binding USER SOCKET: the browser's binding as `location` holds it, one line.
binding() {
  sqlite3 -separator ' | ' "$work/registrar.db" \
    "SELECT contact, received, socket, instance, reg_id FROM location
     WHERE username = '$1' AND socket = '$2'"
}

# check NAME USER SOCKET: exactly one binding, stored as a browser sends it.
check() {
  local name="$1" user="$2" socket="$3" row
  row="$(binding "$user" "$socket")"
  echo "$me [$name]: location: $row"
  [ "$(printf '%s\n' "$row" | grep -c .)" = 1 ] || fail "[$name] expected one binding for $user on $socket"
  [[ "$row" =~ ^sip:[^@]+@[a-z0-9]+\.invalid\;transport=ws\ \|\ sip:127\.0\.0\.1:[0-9]+\;transport=ws\ \|\ $socket\ \|\ \<urn:uuid:[0-9a-f-]+\>\ \|\ 1$ ]] \
    || fail "[$name] the binding is not what the browser sent: $row"
}

register ws "ws://127.0.0.1:$ws_port" wanda ws-secret
check ws wanda "ws:127.0.0.1:$ws_port"
register wss "wss://127.0.0.1:$wss_port" wesley wss-secret
check wss wesley "wss:127.0.0.1:$wss_port"

# A wrong password: JsSIP must report the failure, and nothing is written for it.
if node "$here/browser/register.mjs" --ws "ws://127.0.0.1:$ws_port" --uri sip:wanda@example.com \
     --password wrong --screenshot "$work/wrong.png" --timeout 30 > "$work/wrong.out" 2> "$work/wrong.err"; then
  fail "[wrong password] JsSIP registered: $(cat "$work/wrong.out")"
fi
echo "$me [wrong password]: refused: $(cat "$work/wrong.out")"
[ "$(sqlite3 "$work/registrar.db" "SELECT count(*) FROM location WHERE username = 'wanda'")" = 1 ] \
  || fail "[wrong password] wanda's bindings changed"

src=0
stop_pid "$server_pid" 10 || src=$?
server_pid=""
[ "$src" -eq 0 ] || fail "serve exited $src on SIGTERM (expected 0)"
echo "$me: PASS"
