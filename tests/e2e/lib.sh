# Shared by the end-to-end scripts (sourced, not run). Expects `me` (the script's name for
# messages) to be set.

# Debian installs kamailio in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

# need TOOL PACKAGE: with CI set, a missing tool is a failure; without, a visible skip (exit 0).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ -n "${CI:-}" ]; then
    echo "$me: FAILED: $1 is not installed (Debian package $2), and CI is set" >&2
    exit 1
  fi
  echo "$me: skipped: $1 is not installed (Debian package $2)"
  exit 0
}

e2e_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# A port on 127.0.0.1 free now for UDP and TCP, from below the ephemeral range so that no
# client socket takes it before the server binds it (bench/ports.py says why).
free_port() {
  python3 "$e2e_lib_dir/../../bench/ports.py"
}
free_udp_port() { free_port; }

# stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (10) for the process to end, then SIGKILL.
# Returns the process's exit status (PID must be a child of this shell).
stop_pid() {
  local pid="$1" limit="${2:-10}" i state rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 10; i++)); do
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [ -z "$state" ] || [ "$state" = Z ] && break
    sleep 0.1
  done
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
  if [ -n "$state" ] && [ "$state" != Z ]; then
    echo "$me: pid $pid did not end within ${limit}s of SIGTERM: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

# pg_db_url ADMIN_URL NAME: ADMIN_URL with its database replaced by NAME (query kept).
pg_db_url() {
  python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path="/" + sys.argv[2]).geturl())' "$1" "$2"
}

free_tcp_port() { free_port; }

# registrar_binary: sets `bin` to the binary under test: REGISTRAR_BIN (made absolute before the
# script's cd), else a release build of this checkout. Expects `root` to be set.
registrar_binary() {
  if [ -n "${REGISTRAR_BIN:-}" ]; then
    bin="$REGISTRAR_BIN"
  else
    cargo build --release --locked --quiet
    bin="$root/target/release/registrar"
  fi
  [ -x "$bin" ] || { echo "$me: FAILED: no binary at $bin" >&2; exit 1; }
}

# wait_listening LOG PID: waits (10 s at most) until `serve` has logged that it is listening;
# fails at once if PID ends first.
wait_listening() {
  local log="$1" pid="$2" _
  for _ in $(seq 1 100); do
    grep -qs listening "$log" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  grep -qs listening "$log"
}
