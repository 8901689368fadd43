#!/usr/bin/env bash
# SPEC O1: a live scrape of /metrics from the built binary passes `promtool check metrics`, after
# traffic that creates labelled series (a REGISTER answered 200 and one answered 401, a cached
# retransmission), with auth on. Also checks /healthz and /readyz answer 200.
#
#   tests/e2e/promtool-metrics.sh
#
# Needs promtool (Debian package prometheus), sipsak, curl. REGISTRAR_BIN names the binary
# (default: target/release/registrar). With CI set, a missing tool is a failure.
set -euo pipefail
[ -n "${REGISTRAR_BIN:-}" ] && REGISTRAR_BIN="$(realpath "$REGISTRAR_BIN")"
cd "$(dirname "$0")/../.."
me=promtool-metrics
. tests/e2e/lib.sh
need promtool prometheus
need sipsak sipsak
need curl curl
bin="${REGISTRAR_BIN:-$PWD/target/release/registrar}"
[ -x "$bin" ] || { echo "$me: FAILED: no binary at $bin" >&2; exit 1; }

work="$(mktemp -d /tmp/registrar-e2e-metrics.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then stop_pid "$server_pid" 5 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

url="sqlite://$work/m.db?mode=rwc"
sip_port="$(free_udp_port)"
http_port="$(free_tcp_port)"
"$bin" --database-url "$url" migrate >/dev/null
"$bin" --database-url "$url" users add sip:alice@127.0.0.1 --password secret >/dev/null
"$bin" --database-url "$url" serve --listen "udp:127.0.0.1:$sip_port" \
  --http-listen "127.0.0.1:$http_port" >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$http_port/healthz" >/dev/null \
  || { echo "$me: FAILED: /healthz" >&2; cat "$work/serve.log" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null \
  || { echo "$me: FAILED: /readyz not 200" >&2; cat "$work/serve.log" >&2; exit 1; }

timeout 10 sipsak -U -C "sip:alice@127.0.0.1:5070" -s "sip:alice@127.0.0.1:$sip_port" -x 600 \
  -u alice -a secret >/dev/null 2>&1 \
  || { echo "$me: FAILED: sipsak did not register" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$http_port/metrics" >"$work/metrics.txt"
if ! promtool check metrics <"$work/metrics.txt"; then
  echo "$me: FAILED: promtool check metrics" >&2
  exit 1
fi
for series in 'registrar_requests_total{method="REGISTER",code="401"}' \
              'registrar_requests_total{method="REGISTER",code="200"}' \
              'registrar_auth_total{result="ok"}' 'registrar_bindings 1'; do
  grep -qF "$series" "$work/metrics.txt" \
    || { echo "$me: FAILED: no $series in the scrape" >&2; cat "$work/metrics.txt" >&2; exit 1; }
done
# The shipped monitoring configuration (docker-compose's monitoring profile) is valid too.
promtool check config monitoring/prometheus.yml >/dev/null \
  || { echo "$me: FAILED: promtool check config monitoring/prometheus.yml" >&2; exit 1; }
promtool check rules monitoring/alerts.yml >/dev/null \
  || { echo "$me: FAILED: promtool check rules monitoring/alerts.yml" >&2; exit 1; }
echo "$me: ok ($(grep -vc '^#' "$work/metrics.txt") series; promtool check metrics passed)"
