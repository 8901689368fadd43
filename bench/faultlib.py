"""What bench/faults.py and bench/failover.py share: free ports, the registrar process, the
regload client as a subprocess, process trees to signal, the `location` check, the targets.

Every process started here is written to WORK/pids (pid and its start time), so the bash wrapper's
trap can end it even when Python itself is killed; Python ends them in `finally` blocks first.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import regload  # noqa: E402
from ports import free_port  # noqa: E402,F401  (re-exported for failover.py)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def remember(work, pid):
    """Records a pid for the wrapper's trap (pid and its /proc start time, so a reused pid is
    never signalled)."""
    try:
        start = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return
    with open(Path(work) / "pids", "a") as f:
        f.write(f"{pid} {start}\n")


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def postmaster_pid(datadir):
    return int(Path(datadir, "postmaster.pid").read_text().split("\n", 1)[0])


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def psql(url, *sql, stdin=None, timeout=60):
    cmd = ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", url]
    for s in sql:
        cmd += ["-c", s]
    return subprocess.run(cmd, check=True, text=True, capture_output=True, input=stdin, timeout=timeout).stdout


def probe(port, timeout=0.3):
    """True when something answers an OPTIONS on 127.0.0.1:port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-probe{time.time_ns()};rport\r\n"
           "Max-Forwards: 70\r\nTo: <sip:p@127.0.0.1>\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\n"
           f"Call-ID: probe-{time.time_ns()}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    try:
        s.sendto(msg, ("127.0.0.1", port))
        s.recvfrom(4096)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Registrar:
    """`registrar serve --auth off` on udp:127.0.0.1:PORT, its log in WORK/NAME.log."""

    def __init__(self, binary, work, name, url, port=None, extra=()):
        self.binary, self.work, self.name, self.url = str(binary), Path(work), name, url
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc = None
        self.starts = 0

    def start(self, wait=30.0):
        self.starts += 1
        logf = open(self.work / f"{self.name}.log", "a")
        logf.write(f"---- start {self.starts} at {time.time():.3f}\n")
        logf.flush()
        cmd = [self.binary, "--database-url", self.url, "serve", "--auth", "off", "--http-listen", "off",
               "--listen", f"udp:127.0.0.1:{self.port}", *self.extra]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "registrar=info"))
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        remember(self.work, self.proc.pid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < wait:
            if probe(self.port):
                return time.time()
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = (self.work / f"{self.name}.log").read_text().splitlines()[-15:]
        raise SystemExit(f"{self.name} did not start:\n" + "\n".join(tail))

    def kill(self):
        """SIGKILL, as a crash; returns the time it was sent."""
        t = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return t

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_lines(self, *needles):
        text = (self.work / f"{self.name}.log").read_text(errors="replace").splitlines()
        return [line for line in text if any(n in line for n in needles)]


class Load:
    """bench/regload.py in its own process (the machine's other core), records to a JSON file."""

    def __init__(self, work, name, port, rate, duration, prefix, timeout=8.0, deadline=5.0):
        self.out = Path(work) / f"{name}.json"
        self.summary = Path(work) / f"{name}.summary.json"
        self.deadline = deadline
        cmd = [sys.executable, str(HERE / "regload.py"), "--target", f"127.0.0.1:{port}", "--rate", str(rate),
               "--duration", str(duration), "--prefix", prefix, "--timeout", str(timeout), "--deadline", str(deadline),
               "--out", str(self.out), "--summary-json", str(self.summary), "--quiet"]
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        remember(work, self.proc.pid)

    def wait(self):
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            raise SystemExit(f"regload failed ({self.proc.returncode}): {out}")
        self.line = out.strip()
        self.records = regload.load_records(str(self.out))
        return self.records

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def acknowledged(records):
    """(username, contact) of every REGISTER answered 200."""
    return [(r["aor"].split("@", 1)[0], r["contact"]) for r in records if r["code"] == 200]


def all_sent(records):
    return [(r["aor"].split("@", 1)[0], r["contact"]) for r in records]


def check_pg(url, records, domain="example.com"):
    """(acknowledged, found, lost list, bindings present for REGISTERs not answered 200)."""
    acked = acknowledged(records)
    acked_set = set(acked)
    rows = "".join(f"{u}\t{c}\n" for u, c in all_sent(records))
    out = psql(url, "CREATE TEMP TABLE sent (username varchar, contact varchar)",
               "\\copy sent FROM pstdin",
               "SELECT s.username, s.contact FROM sent s JOIN location l ON l.username = s.username "
               f"AND l.domain = '{domain}' AND l.contact = s.contact AND l.expires > now()", stdin=rows)
    present = {tuple(line.split("|", 1)) for line in out.splitlines() if line}
    return summarize_check(acked, acked_set, present)


def check_sqlite(path, records, work, domain="example.com"):
    acked = acknowledged(records)
    acked_set = set(acked)
    csvf = Path(work) / "sent.csv"
    with open(csvf, "w") as f:
        for u, c in all_sent(records):
            f.write(f"{u},{c}\n")
    script = (".bail on\nCREATE TEMP TABLE sent (username TEXT, contact TEXT);\n"
              f".import --csv {csvf} sent\n"
              ".mode list\n.separator |\n"
              "SELECT s.username, s.contact FROM sent s JOIN location l ON l.username = s.username "
              f"AND l.domain = '{domain}' AND l.contact = s.contact AND l.expires > CAST(strftime('%s','now') AS INTEGER);\n")
    out = subprocess.run(["sqlite3", str(path)], input=script, check=True, text=True, capture_output=True).stdout
    present = {tuple(line.split("|", 1)) for line in out.splitlines() if line}
    return summarize_check(acked, acked_set, present)


def summarize_check(acked, acked_set, present):
    found = sum(1 for a in acked if a in present)
    lost = [a for a in acked if a not in present]
    return len(acked), found, lost, present - acked_set


def describe_unacked(records, present, deadline=5.0):
    """Bindings present for REGISTERs not answered 200, by what the UA heard: "N (500 at the
    deadline: n, unanswered: m, ...)"."""
    by = {}
    for r in records:
        if (r["aor"].split("@", 1)[0], r["contact"]) in present:
            if r["code"] is None:
                what = "unanswered"
            elif r["latency"] >= deadline - 0.05:
                what = f"{r['code']} at the deadline"
            else:
                what = f"{r['code']} within 1 s" if r["latency"] < 1 else f"{r['code']} after 1 s, before the deadline"
            by[what] = by.get(what, 0) + 1
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:6])
    return f"{len(present)}" + (f" ({parts})" if parts else "")


class Targets:
    def __init__(self):
        self.rows = []

    def check(self, name, ok, figure):
        self.rows.append((name, bool(ok), figure))
        return ok

    def report(self, title):
        print(f"\n{title} targets:")
        for name, ok, figure in self.rows:
            print(f"  {'PASS' if ok else 'FAIL'}  {name}: {figure}")
        failed = [n for n, ok, _ in self.rows if not ok]
        print(f"{title}: {'all targets met' if not failed else str(len(failed)) + ' target(s) missed'}")
        return 1 if failed else 0


def after(records, t, code=200):
    """The first answer with `code` received at or after Unix time t (None if none)."""
    times = [r["answered"] for r in records if r["code"] == code and r["answered"] is not None and r["answered"] >= t]
    return min(times) if times else None


def fmt_t(t, origin):
    return "-" if t is None else f"{regload.stamp(t)} (t+{t - origin:.3f} s)"
