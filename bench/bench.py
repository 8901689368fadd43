#!/usr/bin/env python3
"""REGISTER benchmark: this registrar against Kamailio (registrar + usrloc db_mode=3), driven by
the same SIPp scenarios on the same PostgreSQL, plus pgbench's one-row upsert as the database's
own ceiling. Called by bench/run, which prepares PostgreSQL, the binaries and SIPp; see
BENCHMARKS.md for how to read the table it prints.

For each registrar and scenario the rate steps up until a step fails: a step is sustained when
fewer than 0.1 % of its REGISTERs fail (timeouts, non-200) and SIPp achieved at least 97 % of
the target rate; strictly sustained when, also, fewer than 0.1 % were late (SIPp retransmitted
them after 500 ms; over TLS, answered after 500 ms), which is what a phone feels. The latency columns come from runs at half the highest sustained rate (the
median of --latency-runs windows), with SIPp's clock made precise by the fine-clock shim.

The `-tls` rows (registrar-tls, kamailio-tls: Kamailio's tls module) send the same REGISTER over
TLS with bench/tls_load.rs (Debian's SIPp is built without TLS): open loop, spread over
--tls-connections connections, one handshake each before the clock starts.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ports import free_port  # noqa: E402
ROOT = HERE.parent
REGISTER_XML = HERE / "scenarios" / "register.xml"
REGISTER_AUTH_XML = HERE / "scenarios" / "register-auth.xml"
# Every bench user's password (--auth): the injection files carry it as their third field.
PASSWORD = "pw"
# Users given a `subscriber` row per prefix with --auth: `u` new registrations (a fresh user per
# REGISTER across every step), `r` the refresh population, `h` the latency windows.
UNREGISTER_XML = HERE / "scenarios" / "unregister.xml"
OPTIONS_XML = HERE / "scenarios" / "options.xml"
# The test certificate: ours and Kamailio serve it on the -tls rows, the load client trusts its CA.
TLS_DIR = ROOT / "tests" / "data" / "tls"


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw).stdout


def psql(url, *sql):
    cmd = ["psql", "-XAtq", url]
    for s in sql:
        cmd += ["-c", s]
    return sh(*cmd)


def db_url(admin, name):
    return admin.rsplit("/", 1)[0] + "/" + name


class Server:
    """A registrar under test: ours or Kamailio, on its own database."""

    def __init__(self, kind, admin_url, work, args):
        self.kind = kind
        self.work = work
        self.args = args
        self.port = free_port()
        self.proc = None
        # The -tls rows also listen on UDP (same port number), where readiness is probed.
        self.tls = kind.endswith("-tls")
        if kind == "sqlite":
            self.file = work / "bench.db"
            self.url = f"sqlite://{self.file}?mode=rwc"
        else:
            self.db = "bench_" + kind.replace("-", "_")
            self.url = db_url(admin_url, self.db)
            psql(admin_url, f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", f"CREATE DATABASE {self.db}")
        sh(str(args.binary), "--database-url", self.url, "migrate")
        if args.auth:
            self.add_subscribers()

    def add_subscribers(self):
        """SPEC A2 rows for every user the run may register, as `registrar users add` writes
        them (ha1, ha1b, empty password): Kamailio's auth_db reads the same columns."""
        most = max(self.args.rates)
        counts = {"u": int(2 * sum(self.args.rates) * self.args.seconds) + 1,
                  "r": self.args.users, "h": int(most * self.args.seconds) + 1}
        if self.kind == "sqlite":
            import hashlib
            import sqlite3

            md5 = lambda t: hashlib.md5(t.encode()).hexdigest()
            db = sqlite3.connect(self.file)
            db.executemany(
                "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (?, 'example.com', '', ?, ?)",
                ((f"{p}{n}", md5(f"{p}{n}:example.com:{PASSWORD}"), md5(f"{p}{n}@example.com:example.com:{PASSWORD}"))
                 for p, count in counts.items() for n in range(count)))
            db.commit()
            db.close()
            return
        for prefix, count in counts.items():
            psql(self.url,
                 "INSERT INTO subscriber (username, domain, password, ha1, ha1b) "
                 f"SELECT '{prefix}' || n, 'example.com', '', md5('{prefix}' || n || ':example.com:{PASSWORD}'), "
                 f"md5('{prefix}' || n || '@example.com:example.com:{PASSWORD}') FROM generate_series(0, {count - 1}) n")
        psql(self.url, "VACUUM ANALYZE subscriber")

    def start(self, extra=(), wrapper=(), ready_seconds=20):
        """Starts the server (under `wrapper`, e.g. valgrind) and waits up to `ready_seconds`
        for it to answer OPTIONS."""
        log = open(self.work / f"{self.kind}.log", "w")
        env = dict(os.environ, TZ="UTC", PGTZ="UTC", RUST_LOG="warn")
        self.scraper = None
        self.sink = None
        if self.kind == "registrar-subscribed":
            # Issue 13: every refreshed AoR has one reg-event subscription, whose NOTIFYs this
            # sink answers (bench/notify_sink.rs).
            self.sink_port = free_port()
            self.sink_log = self.work / "notify-sink.log"
            self.sink = subprocess.Popen([str(self.args.notify_sink), "--listen", f"127.0.0.1:{self.sink_port}"],
                                         stdout=open(self.sink_log, "w"), stderr=subprocess.STDOUT)
        if self.kind in ("registrar", "sqlite", "registrar-nohttp", "registrar-tls", "registrar-subscribed"):
            auth = () if self.args.auth else ("--auth", "off")
            # Ours with its operations listener on and scraped every second (ten times
            # Prometheus's usual rate), or (registrar-nohttp) with it off: the metrics' cost
            # is the difference between the two rows (SPEC O2).
            if self.kind == "registrar-nohttp":
                http = ("--http-listen", "off")
            else:
                self.http_port = free_port()
                http = ("--http-listen", f"127.0.0.1:{self.http_port}")
            cmd = [str(self.args.binary), "--database-url", self.url, "serve", *auth, *http,
                   "--listen", f"udp:127.0.0.1:{self.port}", "--db-pool-size", str(self.args.concurrency),
                   "--no-migrate", *(extra or ("--cleanup-interval", "3600"))]
            if self.tls:
                cmd += ["--listen", f"tls:127.0.0.1:{self.port}", "--tls-cert", str(TLS_DIR / "cert.pem"),
                        "--tls-key", str(TLS_DIR / "key.pem")]
        else:
            cfg = self.work / "kamailio.cfg"
            text = (HERE / "kamailio.cfg").read_text()
            text = text.replace("!LISTEN!udp:127.0.0.1:5060!", f"!LISTEN!udp:127.0.0.1:{self.port}!")
            text = text.replace("!DBURL!postgres://postgres@127.0.0.1/kamailio!", f"!DBURL!{self.url}!")
            text = text.replace("!CHILDREN!8!", f"!CHILDREN!{self.args.concurrency}!")
            text = text.replace("!TLSADDR!tls:127.0.0.1:5061!", f"!TLSADDR!tls:127.0.0.1:{self.port}!")
            text = text.replace("!TLSCERT!cert.pem!", f"!TLSCERT!{TLS_DIR / 'cert.pem'}!")
            text = text.replace("!TLSKEY!key.pem!", f"!TLSKEY!{TLS_DIR / 'key.pem'}!")
            cfg.write_text(text)
            cmd = ["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "256", "-M", "16", "-P", str(self.work / "kamailio.pid")]
            if self.args.auth:
                cmd += ["-A", "WITH_AUTH"]
            if self.tls:
                cmd += ["-A", "WITH_TLS"]
        self.proc = subprocess.Popen([*wrapper, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        # Ready when it answers OPTIONS.
        import socket

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        probe = (f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-probe;rport\r\n"
                 "Max-Forwards: 70\r\nTo: <sip:p@127.0.0.1>\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\nCall-ID: probe\r\n"
                 "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        for _ in range(int(ready_seconds / 0.2)):
            s.sendto(probe, ("127.0.0.1", self.port))
            try:
                s.recvfrom(4096)
                if self.kind in ("registrar", "sqlite", "registrar-tls", "registrar-subscribed"):
                    self.scraper = Scraper(self.http_port)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
        tail = (self.work / f"{self.kind}.log").read_text().splitlines()[-15:]
        raise SystemExit(f"{self.kind} did not start:\n" + "\n".join(tail))

    def notifies(self):
        """NOTIFYs the sink has answered so far (it prints its count every second)."""
        if not self.sink:
            return 0
        lines = [l for l in self.sink_log.read_text().splitlines() if l.startswith("notifies ")]
        return int(lines[-1].split()[1]) if lines else 0

    def stop(self, wait_seconds=10):
        if self.sink and self.sink.poll() is None:
            self.sink.terminate()
            self.sink.wait(10)
        if self.scraper:
            self.scraper.stop()
            self.scraper = None
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(wait_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def pids(self):
        """The server's processes (Kamailio forks children in its process group)."""
        if not self.proc:
            return set()
        return {self.proc.pid} | {int(p) for p in sh("pgrep", "-g", str(self.proc.pid)).split()}

    def memory_kib(self):
        """Proportional set size of the server's processes (Kamailio forks children that share
        memory; PSS counts each shared page once)."""
        total = 0
        for pid in self.pids():
            try:
                for line in open(f"/proc/{pid}/smaps_rollup"):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def peak_rss_kib(self):
        """VmHWM: the largest resident set the process has had since it started (for Kamailio,
        its largest process's)."""
        peak = 0
        for pid in self.pids():
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
        return peak

    def reset(self, live_users=0, prefix="u", expired=0):
        """Empties `location`, then optionally fills it with live bindings for the scenario's
        users (as the register scenario writes them), and with `expired` expired ones."""
        if self.kind == "sqlite":
            sql = "DELETE FROM location;"
            if live_users:
                sql += ("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                        f"WHERE i < {live_users - 1}) INSERT INTO location (ruid, username, domain, contact, "
                        "expires, q, callid, cseq, last_modified, user_agent, socket) SELECT "
                        f"'{prefix}-' || i, '{prefix}' || i, 'example.com', 'sip:{prefix}' || i || '@192.0.2.10:5060', "
                        "unixepoch() + 86400, -1, 'pre-' || i, 1, unixepoch(), 'bench', 'udp:127.0.0.1:5060' FROM n;")
            sh("sqlite3", str(self.file), sql)
            return
        psql(self.url, "TRUNCATE location")
        if self.kind == "registrar-subscribed":
            psql(self.url, "TRUNCATE reg_subscription")
            if live_users:
                target = f"127.0.0.1:{self.sink_port}"
                psql(self.url,
                     "INSERT INTO reg_subscription (username, domain, call_id, from_tag, to_tag, local_uri, "
                     "remote_uri, remote_target, send_to, local_cseq, remote_cseq, version, expires, notified_until) "
                     f"SELECT '{prefix}' || n, 'example.com', 'sub-' || n || '@bench', 'w' || n, 'r' || n, "
                     f"'sip:{prefix}' || n || '@example.com', 'sip:watcher@bench', 'sip:watcher@{target}', "
                     f"'udp:{target}', 1, 1, 0, now() + interval '1 day', now() "
                     f"FROM generate_series(0, {live_users - 1}) n",
                     "VACUUM ANALYZE reg_subscription")
        if expired:
            psql(self.url,
                 "INSERT INTO location (ruid, username, domain, contact, expires, q, callid, cseq, last_modified, user_agent, socket) "
                 "SELECT gen_random_uuid()::varchar, 'x' || n, 'example.com', 'sip:x' || n || '@192.0.2.20:5060', "
                 "now() - interval '2 hours', -1, 'old-' || n, 1, now() - interval '3 hours', 'bench', 'udp:127.0.0.1:5060' "
                 f"FROM generate_series(0, {expired - 1}) n")
        if live_users:
            psql(self.url,
                 "INSERT INTO location (ruid, username, domain, contact, expires, q, callid, cseq, last_modified, user_agent, socket) "
                 f"SELECT gen_random_uuid()::varchar, '{prefix}' || n, 'example.com', 'sip:{prefix}' || n || '@192.0.2.10:5060', "
                 "now() + interval '1 day', -1, 'pre-' || n, 1, now(), 'bench', 'udp:127.0.0.1:5060' "
                 f"FROM generate_series(0, {live_users - 1}) n",
                 "VACUUM ANALYZE location", "CHECKPOINT")


def random_users_file(work, prefix, population, count):
    """`count` users drawn from `prefix`0 .. `prefix`(population-1), spread over the table."""
    import random

    path = work / f"users-{prefix}-random-{population}-{count}.csv"
    if not path.exists():
        rng = random.Random(population)
        order = rng.sample(range(population), min(count, population))
        with open(path, "w") as f:
            f.write("SEQUENTIAL\n")
            # Fewer users than REGISTERs: each comes back once per pass over the population.
            for i in range(count):
                f.write(f"{prefix}{order[i % len(order)]};example.com;{PASSWORD}\n")
    return path


def users_file(work, prefix, first, count):
    path = work / f"users-{prefix}-{first}-{count}.csv"
    if not path.exists():
        with open(path, "w") as f:
            f.write("SEQUENTIAL\n")
            for n in range(first, first + count):
                f.write(f"{prefix}{n};example.com;{PASSWORD}\n")
    return path


def sipp(args, work, server, scenario, users, rate, calls, rtt=False):
    """Runs SIPp; returns (successful, failed, seconds, response times in ms, retransmissions:
    REGISTERs SIPp sent again after 500 ms without an answer)."""
    tag = f"{server.kind}-{int(time.time() * 1000)}"
    stat = work / f"{tag}.stat.csv"
    cmd = ["sipp", "-sf", str(scenario), "-inf", str(users), f"127.0.0.1:{server.port}", "-i", "127.0.0.1",
           "-r", str(rate), "-m", str(calls), "-l", str(max(1000, rate * 4)), "-nostdin",
           "-trace_stat", "-stf", str(stat), "-fd", "3600", "-recv_timeout", "8000",
           "-timeout", f"{calls // max(rate, 1) + 60}s", "-max_recv_loops", "10000", "-max_sched_loops", "10000",
           # SIPp's own socket buffers are 64 KiB unless told: at thousands of answers a second
           # its socket dropped some, and SIPp counted its own retransmissions as late answers.
           "-buff_size", str(4 << 20)]
    env = dict(os.environ)
    if rtt:
        cmd += ["-trace_rtt", "-rtt_freq", "1"]
        if args.fineclock:
            env["LD_PRELOAD"] = str(args.fineclock)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    # 0: every call succeeded; 1: some failed (counted below). Anything else (97, 99, 255...)
    # is SIPp itself failing: the step measured nothing, so the run stops (issue 18).
    if done.returncode not in (0, 1) or not stat.exists():
        raise SystemExit(f"sipp exited {done.returncode} for {scenario.name} at {rate}/s:\n"
                         + "\n".join(done.stderr.splitlines()[-10:]))
    rows = list(csv.reader(open(stat), delimiter=";"))
    header, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(header)}
    ok = int(last[col["SuccessfulCall(C)"]])
    failed = int(last[col["FailedCall(C)"]])
    retransmitted = int(last[col["Retransmissions(C)"]])
    if args.require_all and (failed or ok != calls):
        raise SystemExit(f"{server.kind} {scenario.name} at {rate}/s: {ok} of {calls} REGISTERs succeeded "
                         f"({failed} failed); --require-all wants every one")
    times = []
    if rtt:
        for f in work.glob("*_rtt.csv"):
            for row in list(csv.reader(open(f), delimiter=";"))[1:]:
                if len(row) >= 2 and row[1]:
                    times.append(float(row[1]))
            f.unlink()
    return ok, failed, max(seconds, 0.001), times, retransmitted


def load(args, work, server, scenario, users, rate, calls, rtt=False):
    """One run of `scenario` at `rate`: SIPp over UDP, or the TLS client for the -tls rows.
    Returns (successful, failed, seconds, p50 ms, p99 ms, late): the percentiles only with `rtt`;
    late = retransmitted by SIPp, or (TLS, where nothing is retransmitted) answered after 500 ms."""
    if not server.tls:
        ok, failed, seconds, times, retransmitted = sipp(args, work, server, scenario, users, rate, calls, rtt)
        return ok, failed, seconds, percentile(times, 50), percentile(times, 99), retransmitted
    cmd = [str(args.tls_load), "--target", f"127.0.0.1:{server.port}", "--ca", str(TLS_DIR / "ca.pem"),
           "--users", str(users), "--count", str(calls), "--rate", str(rate), "--connections", str(args.tls_connections),
           "--timeout-ms", "8000"]
    done = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        log = (work / f"{server.kind}.log").read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"tls-load exited {done.returncode} at {rate}/s:\n" + done.stderr[-2000:]
                         + f"\n{server.kind}'s log:\n" + "\n".join(log))
    r = json.loads(done.stdout)
    if r["sent"] != calls:
        raise SystemExit(f"tls-load sent {r['sent']} REGISTERs, {calls} wanted")
    if args.require_all and (r["failed"] or r["ok"] != calls):
        raise SystemExit(f"{server.kind} at {rate}/s: {r['ok']} of {calls} REGISTERs succeeded "
                         f"({r['failed']} failed); --require-all wants every one")
    return r["ok"], r["failed"], r["seconds"], r["p50_ms"], r["p99_ms"], r["late"]


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def scenario_xml(args, scenario):
    if scenario == "options":
        return OPTIONS_XML
    if scenario == "unregister":
        return UNREGISTER_XML
    return REGISTER_AUTH_XML if args.auth else REGISTER_XML


def scenario_run(args, work, server, scenario):
    """Steps the rate up; returns the result row for this registrar and scenario."""
    xml = scenario_xml(args, scenario)
    next_user = 0
    peak_memory = 0

    def attempt(rate):
        nonlocal next_user, peak_memory
        calls = int(rate * args.seconds)
        users = prepare(args, work, server, scenario, calls, new_prefix="u", first_new=next_user)
        next_user += calls
        sampler = MemorySampler(server)
        ok, failed, seconds, _, _, late = load(args, work, server, xml, users, rate, calls)
        peak = sampler.stop()
        achieved = ok / seconds
        fail_share = failed / max(ok + failed, 1)
        sustained = fail_share < 0.001 and ok + failed == calls and achieved >= 0.97 * rate
        # Strict (issue 16): also fewer than 0.1 % late, what a phone feels as a slow registrar.
        strict = sustained and late / max(calls, 1) < 0.001
        print(f"  {server.kind:9} {scenario:10} {rate:6}/s: {ok} ok, {failed} failed, {late} late, "
              f"{achieved:8.0f}/s achieved{'' if sustained else '  <- not sustained'}"
              f"{'' if strict or not sustained else '  <- not strict'}", flush=True)
        if sustained:
            peak_memory = max(peak_memory, peak)
        if strict:
            strict_rates.append(rate)
        return sustained

    strict_rates = []
    best = highest_sustained(args.rates, attempt)
    hwm = server.peak_rss_kib()
    p50 = p99 = float("nan")
    if best:
        p50, p99 = latency_at(args, work, server, scenario, max(1, best // 2))
    return {"registrar": server.kind, "scenario": scenario, "max_rate": best,
            "strict_rate": max(strict_rates, default=0), "p50_ms": p50, "p99_ms": p99,
            "memory_mib": peak_memory / 1024, "vmhwm_mib": hwm / 1024}


def latency_at(args, work, server, scenario, rate):
    """p50 and p99 response time in ms of `scenario` at `rate`, SIPp's clock made fine: the
    medians over `args.latency_runs` windows, each on a freshly reset table, so that one stall
    of the shared machine (a checkpoint, another process) does not decide the figure alone."""
    p50s, p99s = [], []
    for _ in range(args.latency_runs):
        p50, p99 = latency_window(args, work, server, scenario, rate)
        p50s.append(p50)
        p99s.append(p99)
    return latency_summary(server.kind, scenario, rate, p50s, p99s)


def latency_window(args, work, server, scenario, rate):
    """(p50, p99) ms of one window of `scenario` at `rate` on a freshly reset table."""
    calls = int(rate * args.seconds)
    users = prepare(args, work, server, scenario, calls, new_prefix="h")
    _, _, _, p50, p99, _ = load(args, work, server, scenario_xml(args, scenario), users, rate, calls, rtt=True)
    return p50, p99


def latency_summary(kind, scenario, rate, p50s, p99s):
    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    print(f"  {kind:9} {scenario:10} at {rate}/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
          f"(median of {windows(p50s)} / {windows(p99s)})", flush=True)
    return p50, p99


def windows(values):
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def prepare(args, work, server, scenario, calls, new_prefix, first_new=0):
    """Resets the table for one run of `scenario` and returns its users file: `new` starts
    empty with users never seen before; `refresh` has `args.users` live bindings; `unregister`
    one live binding per REGISTER; `options` leaves the table alone (nothing reads it)."""
    if scenario == "options":
        return users_file(work, "o", 0, calls)
    if scenario == "new":
        server.reset(prefix=new_prefix)
        return users_file(work, new_prefix, first_new, calls)
    if scenario == "refresh":
        server.reset(live_users=args.users, prefix="r")
        return users_file(work, "r", 0, min(calls, args.users))
    server.reset(live_users=calls, prefix="d")
    return users_file(work, "d", 0, calls)


class Scraper:
    """GETs /metrics once a second while ours runs, as a (busy) Prometheus would."""

    def __init__(self, port):
        self.port = port
        self.running = True
        self.scrapes = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        import urllib.request

        while self.running:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                pass
            time.sleep(1)

    def stop(self):
        self.running = False
        self.thread.join()


class MemorySampler:
    def __init__(self, server):
        self.server = server
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while self.running:
            self.peak = max(self.peak, self.server.memory_kib())
            time.sleep(0.5)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def max_refresh(args, work, server, population):
    """Highest sustained refresh rate with `population` live bindings in the table."""
    def attempt(rate):
        calls = int(rate * args.seconds)
        users = random_users_file(work, "r", population, calls)
        ok, failed, seconds, _, _ = sipp(args, work, server, REGISTER_XML, users, rate, calls)
        achieved = ok / seconds
        sustained = failed / max(ok + failed, 1) < 0.001 and achieved >= 0.97 * rate
        print(f"  scale {population:>8} bindings, refresh {rate:6}/s: {ok} ok, {failed} failed, {achieved:8.0f}/s"
              f"{'' if sustained else '  <- not sustained'}", flush=True)
        return sustained

    return highest_sustained(args.rates, attempt)


def highest_sustained(rates, attempt):
    """Steps up through `rates` until `attempt(rate)` fails, then tries once halfway between the
    last sustained rate and the failed one (to 500/s), so the top figure is not a whole step off."""
    best = 0
    for rate in rates:
        if not attempt(rate):
            middle = (best + rate) // 2 // 500 * 500
            if best < middle < rate and attempt(middle):
                best = middle
            break
        best = rate
    return best


def p99_at(args, work, server, population, rate):
    users = random_users_file(work, "r", population, int(rate * args.seconds))
    ok, failed, _, times, _ = sipp(args, work, server, REGISTER_XML, users, rate, int(rate * args.seconds), rtt=True)
    return percentile(times, 99), failed


def scale_run(args, work, admin):
    """SPEC targets on scale: refresh throughput with 1,000,000 live bindings against 10,000,
    and p99 at half that rate while 100,000 expired rows are being cleaned up."""
    server = Server("registrar", admin, work, args)
    rates, costs = {}, {}
    for population in (10_000, 1_000_000):
        print(f"  filling location with {population} live bindings ...", flush=True)
        server.reset(live_users=population, prefix="r")
        server.start()
        try:
            if args.cpu_rate:
                costs[population] = scale_cost(args, work, server, population)
            rates[population] = max_refresh(args, work, server, population)
        finally:
            server.stop()
    half = max(1, rates[1_000_000] // 2)
    # Quiet and cleanup windows alternate, so that a slow spell of the machine hits both alike.
    quiet, busy, removed, failures = [], [], [], 0
    for _ in range(args.latency_runs):
        server.reset(live_users=1_000_000, prefix="r")
        server.start()
        try:
            quiet.append(p99_at(args, work, server, 1_000_000, half)[0])
        finally:
            server.stop()
        server.reset(live_users=1_000_000, prefix="r", expired=100_000)
        server.start(extra=("--cleanup-interval", "1", "--cleanup-grace", "0"))
        try:
            p99, failed = p99_at(args, work, server, 1_000_000, half)
            left = int(psql(server.url, "SELECT count(*) FROM location WHERE username LIKE 'x%'").strip())
        finally:
            server.stop()
        busy.append(p99)
        removed.append(100_000 - left)
        failures += failed
    quiet_p99, busy_p99 = statistics.median(quiet), statistics.median(busy)
    print(f"  p99 at {half}/s: {quiet_p99:.2f} ms quiet (median of {windows(quiet)}), {busy_p99:.2f} ms "
          f"during cleanup (median of {windows(busy)}; expired rows removed meanwhile: {removed}, "
          f"{failures} failed)", flush=True)
    return {"refresh_10k": rates[10_000], "refresh_1m": rates[1_000_000], "half_rate": half,
            "p99_quiet_ms": quiet_p99, "p99_cleanup_ms": busy_p99, "expired_removed": min(removed),
            "cost": costs}


def scale_cost(args, work, server, population):
    """What one refresh costs with `population` bindings, at --cpu-rate: CPU of the server and of
    PostgreSQL, and the WAL it writes (records, full-page images, bytes), all per REGISTER. The
    window starts at a checkpoint, so both populations pay their first-touch page images alike:
    the WAL shows what the larger table makes PostgreSQL do that a rate alone cannot."""
    rate = args.cpu_rate
    calls = int(rate * args.seconds)
    users = random_users_file(work, "r", population, calls)
    wal = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
    psql(args.admin_url, "CHECKPOINT")
    wal_before = [int(v) for v in psql(args.admin_url, wal).split("|")]

    def run():
        done = sipp(args, work, server, REGISTER_XML, users, rate, calls)
        # Backends hand their WAL counters to the statistics at most once a second.
        time.sleep(1.5)
        return done

    (ok, failed, _, _, _), server_us, postgres_us = cpu_window(args, server, run)
    wal_after = [int(v) for v in psql(args.admin_url, wal).split("|")]
    n = max(ok, 1)
    records, fpi, wal_bytes = ((a - b) / n for a, b in zip(wal_after, wal_before))
    row = {"rate": rate, "ok": ok, "failed": failed, "server_us": server_us / n, "postgres_us": postgres_us / n,
           "wal_records": records, "wal_fpi": fpi, "wal_bytes": wal_bytes}
    print(f"  scale {population:>8} bindings, refresh at {rate}/s: server {row['server_us']:.0f} µs, "
          f"PostgreSQL {row['postgres_us']:.0f} µs, WAL {row['wal_records']:.1f} records, "
          f"{row['wal_fpi']:.2f} full-page images, {row['wal_bytes']:.0f} bytes per REGISTER "
          f"({ok} ok, {failed} failed)", flush=True)
    return row


def pgbench(args, admin, work):
    """The database's own ceiling: a one-row upsert into `location` per transaction, at the
    registrars' concurrency."""
    db = "bench_pgbench"
    url = db_url(admin, db)
    psql(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db}")
    sh(str(args.binary), "--database-url", url, "migrate")
    script = work / "upsert.sql"
    script.write_text(
        "\\set u random(1, 1000000)\n"
        "INSERT INTO location (ruid, username, domain, contact, expires, q, callid, cseq, last_modified, user_agent, socket) "
        "VALUES (gen_random_uuid()::varchar, 'p' || (:u)::text, 'example.com', 'sip:' || 'p' || (:u)::text || '@192.0.2.10:5060', "
        "now() + interval '3600 s', -1, 'c' || (:u)::text, 1, now(), 'bench', 'udp:127.0.0.1:5060') "
        "ON CONFLICT (username, domain, contact) DO UPDATE SET expires = EXCLUDED.expires, "
        "callid = EXCLUDED.callid, cseq = EXCLUDED.cseq, last_modified = EXCLUDED.last_modified;\n")
    out = sh(args.pgbench, "-n", "-M", "prepared", "-c", str(args.concurrency), "-j", "2",
             "-T", str(max(2, int(args.seconds))), "-f", str(script), url)
    tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps"))
    print(f"  pgbench one-row upsert, {args.concurrency} clients: {tps:.0f} TPS", flush=True)
    return tps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--admin-url", required=True, help="PostgreSQL URL with rights to create databases")
    p.add_argument("--binary", required=True, type=Path, help="release registrar binary")
    p.add_argument("--fineclock", type=Path, help="sipp-fineclock.so for precise response times")
    p.add_argument("--pgbench", default="pgbench")
    p.add_argument("--registrars", default="registrar,registrar-subscribed,kamailio,registrar-tls,kamailio-tls",
                   help="registrar (ours on PostgreSQL, metrics scraped every second), registrar-subscribed "
                        "(ours, every refreshed AoR with a reg-event subscription, refresh only), "
                        "registrar-nohttp (ours with --http-listen off), kamailio, sqlite (ours on SQLite), "
                        "registrar-tls and kamailio-tls (both over TLS, new and refresh only)")
    p.add_argument("--scenarios", default="new,refresh,unregister")
    p.add_argument("--rates", default="1000,2000,3000,4000,6000,8000,10000,12000,14000,16000")
    p.add_argument("--seconds", type=float, default=10, help="length of each rate step")
    p.add_argument("--users", type=int, default=10000, help="live bindings for the refresh scenario")
    p.add_argument("--latency-runs", type=int, default=3,
                   help="windows per latency figure; the table shows their median")
    p.add_argument("--concurrency", type=int, default=8, help="Kamailio children, our pool, pgbench clients")
    p.add_argument("--tls-load", type=Path, help="bench/tls_load.rs built (the -tls rows' client)")
    p.add_argument("--notify-sink", type=Path, help="bench/notify_sink.rs built (the registrar-subscribed row's subscriber)")
    p.add_argument("--tls-connections", type=int, default=32, help="TLS connections the -tls rows spread over")
    p.add_argument("--cpu-rate", type=int, default=2000,
                   help="rate of the CPU-per-REGISTER measurement (refresh; 0: none)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--scale", action="store_true", help="run the scale test (1,000,000 bindings, cleanup) instead")
    p.add_argument("--auth", action="store_true",
                   help="digest authentication on both registrars (SPEC A8): 401, then the authenticated REGISTER")
    p.add_argument("--instructions", action="store_true",
                   help="also count instructions per REGISTER, ours and Kamailio's, under valgrind's callgrind")
    p.add_argument("--require-all", action="store_true",
                   help="fail the run when any REGISTER fails (bench/run --smoke)")
    args = p.parse_args()
    if args.auth and "unregister" in args.scenarios.split(","):
        args.scenarios = ",".join(s for s in args.scenarios.split(",") if s != "unregister")
        print("  --auth: measuring new and refresh (an authenticated de-registration is the same "
              "exchange as a refresh)", flush=True)
    args.rates = [int(r) for r in args.rates.split(",")]
    if any(k.endswith("-tls") for k in args.registrars.split(",")):
        if not args.tls_load:
            p.error("the -tls rows need --tls-load")
        args.tls_load = args.tls_load.resolve()
        if args.auth:
            p.error("--auth is not measured on the -tls rows")
    if "registrar-subscribed" in args.registrars.split(","):
        if not args.notify_sink:
            p.error("the registrar-subscribed row needs --notify-sink")
        args.notify_sink = args.notify_sink.resolve()
    work = Path(tempfile.mkdtemp(prefix="registrar-bench-"))
    results = []
    if args.scale:
        try:
            scale = scale_run(args, work, args.admin_url)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print()
        print(f"refresh with 10,000 bindings: {scale['refresh_10k']}/s; with 1,000,000: {scale['refresh_1m']}/s "
              f"({scale['refresh_1m'] / max(scale['refresh_10k'], 1):.2f} of it)")
        print(f"p99 at {scale['half_rate']}/s: {scale['p99_quiet_ms']:.2f} ms; during the cleanup of "
              f"{scale['expired_removed']} expired rows: {scale['p99_cleanup_ms']:.2f} ms "
              f"({scale['p99_cleanup_ms'] / scale['p99_quiet_ms']:.2f}x)")
        for population, c in scale["cost"].items():
            print(f"per refresh with {population:,} bindings at {c['rate']}/s: server {c['server_us']:.0f} µs, "
                  f"PostgreSQL {c['postgres_us']:.0f} µs, WAL {c['wal_records']:.1f} records / "
                  f"{c['wal_fpi']:.2f} full-page images / {c['wal_bytes']:.0f} bytes")
        if args.json:
            args.json.write_text(json.dumps(scale, indent=2))
        return
    cpu = []
    counted = []
    try:
        pg_tps = pgbench(args, args.admin_url, work)
        for kind in filter(None, args.registrars.split(",")):
            server = Server(kind, args.admin_url, work, args)
            server.start()
            try:
                for scenario in args.scenarios.split(","):
                    if server.tls and scenario not in ("new", "refresh"):
                        continue  # the TLS client sends REGISTER with a contact only
                    if server.sink and scenario != "refresh":
                        continue  # subscriptions are made for the refresh scenario's AoRs
                    results.append(scenario_run(args, work, server, scenario))
                    if server.sink:
                        print(f"  registrar-subscribed: {server.notifies()} NOTIFYs answered by the sink so far",
                              flush=True)
                if args.cpu_rate:
                    # On SQLite the PostgreSQL column is the idle cluster's own noise.
                    cpu.append(cpu_cost(args, work, server))
            finally:
                server.stop()
        same_rate = same_rate_run(args, work, results)
        if args.instructions:
            import instructions

            counted = [instructions.measure(sys.modules[__name__], args, work, kind)
                       for kind in ("registrar-nohttp", "kamailio")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results, pg_tps, args))
    if same_rate:
        print()
        print(same_rate_table(same_rate))
    if cpu:
        print()
        print(cpu_table(cpu))
    if counted:
        print()
        print(instructions.table(counted))
    if args.json:
        args.json.write_text(json.dumps({"pgbench_tps": pg_tps, "results": results, "same_rate": same_rate,
                                         "cpu": cpu, "instructions": counted}, indent=2))


def cpu_ticks(pids):
    """utime + stime of `pids`, in clock ticks (processes gone meanwhile count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def postgres_pids(admin_url):
    """The cluster's postmaster and every process it started (backends, checkpointer, WAL writer)."""
    data = psql(admin_url, "SHOW data_directory").strip()
    postmaster = int(open(f"{data}/postmaster.pid").readline())
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                if int(stat[1]) == postmaster:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def cpu_window(args, server, run):
    """Runs `run()`; returns its result and the CPU µs the server's processes and PostgreSQL's
    (all of them, backends started meanwhile included) used during it, from /proc."""
    server_pids = server.pids()
    before = cpu_ticks(server_pids), cpu_ticks(postgres_pids(args.admin_url))
    result = run()
    after = cpu_ticks(server_pids), cpu_ticks(postgres_pids(args.admin_url))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return result, (after[0] - before[0]) * tick_us, (after[1] - before[1]) * tick_us


def cpu_cost(args, work, server, scenario="refresh"):
    """Server CPU and PostgreSQL CPU (all its processes) per REGISTER of `scenario` at
    --cpu-rate, in µs, from /proc: a figure that does not depend on the machine's speed as much
    as a rate does (issue 16)."""
    rate = args.cpu_rate
    calls = int(rate * args.seconds)
    xml = scenario_xml(args, scenario)
    users = prepare(args, work, server, scenario, calls, new_prefix="c")
    (ok, failed, _, _, _, _), server_us, postgres_us = cpu_window(
        args, server, lambda: load(args, work, server, xml, users, rate, calls))
    row = {"registrar": server.kind, "scenario": scenario, "rate": rate, "ok": ok, "failed": failed,
           "server_us": server_us / max(ok, 1), "postgres_us": postgres_us / max(ok, 1)}
    print(f"  {server.kind:9} {scenario:10} at {rate}/s: server {row['server_us']:.0f} µs, "
          f"PostgreSQL {row['postgres_us']:.0f} µs per REGISTER ({ok} ok, {failed} failed)", flush=True)
    return row


def cpu_table(rows):
    lines = ["| registrar | scenario | rate | server CPU µs / REGISTER | PostgreSQL CPU µs / REGISTER | both |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['registrar']} | {r['scenario']} | {r['rate']} | {r['server_us']:.0f} | "
                     f"{r['postgres_us']:.0f} | {r['server_us'] + r['postgres_us']:.0f} |")
    return "\n".join(lines)


def same_rate_run(args, work, results):
    """Ours and Kamailio's at the rate where Kamailio's half-load latency was taken: "half
    load" is a different rate for each registrar, so this is the like-for-like comparison. The
    two run side by side and take turns window by window, each window after a CHECKPOINT: the
    database's state after the ladders (a spread checkpoint still writing, say) is then the
    same for both, where measuring one registrar after the other let it fall on one alone. At
    each such rate both also answer OPTIONS, which neither takes to the database: that response
    time is the harness's floor (SIPp, loopback, a SIP parse), what no registrar can go below."""
    by = {(r["scenario"], r["registrar"]): r for r in results}
    wanted = [(r["scenario"], r["max_rate"] // 2) for r in results
              if r["registrar"] == "kamailio" and r["max_rate"] and (r["scenario"], "registrar") in by]
    if not wanted:
        return []
    rows = [{"scenario": scenario, "rate": rate,
             "kamailio_ladder_p99_ms": by[(scenario, "kamailio")]["p99_ms"]} for scenario, rate in wanted]
    servers = [Server(kind, args.admin_url, work, args) for kind in ("registrar", "kamailio")]
    try:
        for server in servers:
            server.start()
        for row in rows:
            for scenario, key in ((row["scenario"], ""), ("options", "floor_")):
                samples = {server.kind: ([], []) for server in servers}
                for _ in range(args.latency_runs):
                    for server in servers:
                        psql(server.url, "CHECKPOINT")
                        p50, p99 = latency_window(args, work, server, scenario, row["rate"])
                        samples[server.kind][0].append(p50)
                        samples[server.kind][1].append(p99)
                for kind, (p50s, p99s) in samples.items():
                    p50, p99 = latency_summary(kind, scenario, row["rate"], p50s, p99s)
                    row[f"{kind}_{key}p50_ms"], row[f"{kind}_{key}p99_ms"] = p50, p99
    finally:
        for server in servers:
            server.stop()
    return rows


def same_rate_table(rows):
    lines = ["| scenario | rate (Kamailio's half load) | ours p50 / p99 ms | Kamailio p50 / p99 ms | ours p99 / Kamailio's "
             "| floor: OPTIONS p99 ms, ours / Kamailio's | p99 above the floor, ours / Kamailio's "
             "| Kamailio's p99 in its ladder |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours_p99, their_p99 = r["registrar_p99_ms"], r["kamailio_p99_ms"]
        ours_floor, their_floor = r["registrar_floor_p99_ms"], r["kamailio_floor_p99_ms"]
        lines.append(f"| {r['scenario']} | {r['rate']} | {r['registrar_p50_ms']:.2f} / {ours_p99:.2f} | "
                     f"{r['kamailio_p50_ms']:.2f} / {their_p99:.2f} | "
                     f"{ours_p99 / their_p99:.2f}× | {ours_floor:.2f} / {their_floor:.2f} | "
                     f"{ours_p99 - ours_floor:.2f} / {their_p99 - their_floor:.2f} ms | "
                     f"{r['kamailio_ladder_p99_ms']:.2f} |")
    return "\n".join(lines)


def table(results, pg_tps, args):
    lines = ["| scenario | registrar | max REGISTER/s (<0.1 % failed) | strict REGISTER/s (also <0.1 % late) "
             "| p50 ms at half | p99 ms at half | memory MiB (PSS) | peak RSS MiB (VmHWM) | ours / Kamailio |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["scenario"], r["registrar"]): r for r in results}
    for r in results:
        reference = "kamailio-tls" if r["registrar"].endswith("-tls") else "kamailio"
        other = by.get((r["scenario"], reference))
        ratio = ""
        if not r["registrar"].startswith("kamailio") and r["registrar"] != "registrar-nohttp" \
                and other and other["max_rate"]:
            ratio = f"rate {r['max_rate'] / other['max_rate']:.2f}×"
            if other["strict_rate"]:
                ratio += f", strict {r['strict_rate'] / other['strict_rate']:.2f}×"
            if r["p99_ms"] == r["p99_ms"] and other["p99_ms"] > 0:
                ratio += f", p99 {r['p99_ms'] / other['p99_ms']:.2f}× Kamailio's"
        lines.append(f"| {r['scenario']} | {r['registrar']} | {r['max_rate']} | {r['strict_rate']} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['memory_mib']:.1f} | {r['vmhwm_mib']:.1f} | {ratio} |")
    lines.append("")
    lines.append(f"pgbench one-row upsert at {args.concurrency} clients: {pg_tps:.0f} TPS "
                 f"(ours new/refresh over it: " + ", ".join(
                     f"{r['scenario']} {r['max_rate'] / pg_tps:.2f}" for r in results
                     if r["registrar"] == "registrar" and r["scenario"] in ("new", "refresh")) + ")")
    # With the rows alternated (--registrars registrar,registrar-subscribed,registrar,...), the
    # n-th plain row of a scenario is compared with the n-th subscribed one.
    def rows_of(kind, scenario):
        return [r for r in results if r["registrar"] == kind and r["scenario"] == scenario]

    for scenario in dict.fromkeys(r["scenario"] for r in results):
        for r, s in zip(rows_of("registrar", scenario), rows_of("registrar-subscribed", scenario)):
            if r["max_rate"]:
                lines.append(f"reg-event cost, {scenario}: with one subscription per AoR {s['max_rate']}/s "
                             f"(strict {s['strict_rate']}/s), without {r['max_rate']}/s (strict {r['strict_rate']}/s): "
                             f"{s['max_rate'] / r['max_rate']:.2f} of it (issue 13's target: at least 0.70)")
    off = {r["scenario"]: r for r in results if r["registrar"] == "registrar-nohttp"}
    for r in results:
        if r["registrar"] == "registrar" and r["scenario"] in off and off[r["scenario"]]["max_rate"]:
            lines.append(f"metrics cost, {r['scenario']}: with the HTTP listener scraped every second "
                         f"{r['max_rate']}/s, with it off {off[r['scenario']]['max_rate']}/s "
                         f"({r['max_rate'] / off[r['scenario']]['max_rate']:.2f} of it)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
