#!/usr/bin/env python3
"""SPEC F2, measured: a PostgreSQL failover under load with pg_auto_failover. Called by
bench/failover, which provides the tools, the binary and a work directory; RELIABILITY.md says how
to read what it prints.

A monitor and two data nodes (synchronous replication, the two-node default) on 127.0.0.1, the
monitor's timeouts shortened so that a failover takes seconds rather than ~50 s. The registrar
serves the formation through the multi-host URL (libpq's form, target_session_attrs=read-write);
regload sends REGISTERs for distinct AoRs; after --before seconds the primary's postmaster and its
pg_autoctl processes (the keeper and its supervisor) get SIGKILL, and the load goes on for --after
seconds. A poller finds the promotion: the first moment the other node accepts a write in a new
read-write session. Then: every AoR answered 200 must have its binding on the new primary; every
REGISTER must be answered within the request deadline; 200s must resume within 5 s of promotion.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import faultlib as fl  # noqa: E402
import regload  # noqa: E402

# The monitor's failover timing (pg_autoctl(5), "Configuring pg_auto_failover"). Defaults: a 5 s
# health check period, 5 s connect timeout, 2 retries 2 s apart, a node unhealthy after 20 s
# without a report, 30 s for the old primary to demote itself: ~50 s from loss to promotion.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",       # ms between health checks
    "pgautofailover.health_check_timeout": "1000",      # ms, connect timeout of a check
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",   # ms
    "pgautofailover.node_considered_unhealthy_timeout": "3000",  # ms without a keeper report
    "pgautofailover.primary_demote_timeout": "3000",    # ms the old primary gets to demote itself
}
# Keeper side: a primary that can reach neither the monitor nor its standby for this many seconds
# demotes itself. It must stay below primary_demote_timeout, or a partitioned (not dead) old
# primary could still take writes when the standby is promoted.
NETWORK_PARTITION_TIMEOUT = "2"


class Formation:
    """A pg_auto_failover monitor and two nodes under WORK/af, run as the postgres user when root."""

    def __init__(self, work, pgctl):
        self.work = Path(work)
        self.root = self.work / "af"
        self.sock = self.root / "sock"
        self.pgctl = pgctl
        for d in (self.root, self.sock, self.root / "xdg" / "config", self.root / "xdg" / "data", self.root / "xdg" / "run"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "xdg" / "run", 0o700)
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            for d in self.root.rglob("*"):
                shutil.chown(d, "postgres", "postgres")
        self.ports = {"monitor": fl.free_port(), "node1": fl.free_port(), "node2": fl.free_port()}
        self.procs = {}
        self.monitor_uri = f"postgres://autoctl_node@127.0.0.1:{self.ports['monitor']}/pg_auto_failover?sslmode=disable"

    def cmd(self, *args, pghost=None):
        env = [f"XDG_CONFIG_HOME={self.root}/xdg/config", f"XDG_DATA_HOME={self.root}/xdg/data",
               f"XDG_RUNTIME_DIR={self.root}/xdg/run"]
        if pghost:
            env.append(f"PGHOST={pghost}")
        base = ["env", *env, "pg_autoctl", *args]
        return (["runuser", "-u", "postgres", "--"] + base) if self.as_postgres else base

    def autoctl(self, *args, pghost=None, log=None, timeout=180):
        out = subprocess.run(self.cmd(*args, pghost=pghost), cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if log:
            (self.root / log).write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise SystemExit(f"pg_autoctl {' '.join(args[:2])} failed ({out.returncode}):\n"
                             + "\n".join((out.stdout + out.stderr).splitlines()[-15:]))
        return out.stdout

    def pgdata(self, name):
        return self.root / name

    def tune(self, name):
        """Small shared_buffers (pg_autoctl computes a quarter of RAM per node, three nodes on one
        machine here), sockets in our directory rather than /var/run/postgresql."""
        auto = self.pgdata(name) / "postgresql.auto.conf"
        text = auto.read_text() if auto.exists() else ""
        add = "shared_buffers = '128MB'\n" f"unix_socket_directories = '{self.sock}'\n"
        if "unix_socket_directories" not in text:
            auto.write_text(text + add)
            if self.as_postgres:
                shutil.chown(auto, "postgres", "postgres")
        if name != "monitor":
            self.autoctl("config", "set", "--pgdata", str(self.pgdata(name)), "timeout.network_partition_timeout",
                         NETWORK_PARTITION_TIMEOUT)
        self.autoctl("config", "set", "--pgdata", str(self.pgdata(name)), "postgresql.host", str(self.sock))

    def run(self, name):
        log = open(self.root / f"{name}.log", "a")
        p = subprocess.Popen(self.cmd("run", "--pgdata", str(self.pgdata(name))), cwd=self.root, stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        fl.remember(self.work, p.pid)
        self.procs[name] = p

    def monitor_sql(self, *sql):
        return fl.psql(f"postgres://postgres@127.0.0.1:{self.ports['monitor']}/pg_auto_failover", *sql)

    def states(self):
        out = self.monitor_sql("SELECT nodename, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid")
        return {n: (r, g) for n, r, g in (line.split("|") for line in out.splitlines() if line)}

    def wait_states(self, want, timeout=120):
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            try:
                last = self.states()
                if all(last.get(n) == (s, s) for n, s in want.items()):
                    return
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.25)
        raise SystemExit(f"formation did not reach {want} within {timeout} s; last {last}")

    def create(self):
        mp = self.ports["monitor"]
        fl.log(f"pg_auto_failover: monitor on {mp}, node1 on {self.ports['node1']}, node2 on {self.ports['node2']}")
        common = ["--auth", "trust", "--no-ssl", "--pgctl", self.pgctl, "--hostname", "127.0.0.1"]
        self.autoctl("create", "monitor", "--pgdata", str(self.pgdata("monitor")), "--pgport", str(mp), *common,
                     log="create-monitor.log")
        self.tune("monitor")
        self.run("monitor")
        self.wait_sql(lambda: self.monitor_sql("SELECT 1"))
        self.monitor_sql(*[f"ALTER SYSTEM SET {k} = {v}" for k, v in MONITOR_SETTINGS.items()], "SELECT pg_reload_conf()")
        for name in ("node1", "node2"):
            self.autoctl("create", "postgres", "--pgdata", str(self.pgdata(name)), "--pgport", str(self.ports[name]),
                         "--listen", "127.0.0.1", "--name", name, "--monitor", self.monitor_uri, *common,
                         # node2 is a base backup of node1: it has our socket directory already.
                         pghost=str(self.sock) if name == "node2" else None, log=f"create-{name}.log")
            self.tune(name)
            self.run(name)
            if name == "node1":
                self.wait_states({"node1": "single"})
        self.wait_states({"node1": "primary", "node2": "secondary"})

    def wait_sql(self, fn, timeout=60):
        t0 = time.monotonic()
        while True:
            try:
                return fn()
            except subprocess.CalledProcessError:
                if time.monotonic() - t0 > timeout:
                    raise
                time.sleep(0.2)

    def settings(self):
        names = ",".join(f"'{k}'" for k in MONITOR_SETTINGS) + ",'pgautofailover.startup_grace_period'"
        out = self.monitor_sql(f"SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name IN ({names}) ORDER BY name")
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def show_settings(self):
        return self.autoctl("show", "settings", "--pgdata", str(self.pgdata("monitor")))

    def events(self):
        out = self.monitor_sql("SELECT extract(epoch FROM eventtime), nodename, reportedstate, goalstate, description "
                               "FROM pgautofailover.event ORDER BY eventid")
        return [line.split("|", 4) for line in out.splitlines() if line]

    def node_processes(self, name):
        """(pg_autoctl processes, postmaster pid) of a node."""
        p = self.procs[name]
        autoctl = []
        for pid in [p.pid] + fl.descendants(p.pid):
            try:
                comm = open(f"/proc/{pid}/comm").read().strip()
                cmdline = open(f"/proc/{pid}/cmdline").read()
            except OSError:
                continue
            if comm.startswith("pg_autoctl") or cmdline.startswith("pg_autoctl"):
                autoctl.append(pid)
        return autoctl, fl.postmaster_pid(self.pgdata(name))

    def kill_node(self, name):
        autoctl, pm = self.node_processes(name)
        t = time.time()
        fl.signal_all(autoctl + [pm], signal.SIGKILL)
        return t, autoctl, pm

    def stop(self):
        """Stops what runs: SIGTERM to each supervisor (it stops its Postgres), then what is left
        gets SIGKILL, and a postmaster still alive (killed supervisor) pg_ctl stop -m immediate."""
        # The nodes first (a keeper whose monitor is gone retries instead of stopping), with
        # SIGINT: `pg_autoctl stop --fast`.
        for name in ("node1", "node2", "monitor"):
            p = self.procs.get(name)
            if not p:
                continue
            # `env` execs pg_autoctl: the supervisor is runuser's child (as root), else our child.
            for pid in (fl.children(p.pid) if self.as_postgres else [p.pid]):
                try:
                    os.kill(pid, signal.SIGINT)
                except OSError:
                    pass
            if name == "node2" or name == "monitor":
                t0 = time.monotonic()
                while time.monotonic() - t0 < 10 and any(
                        q.poll() is None for n, q in self.procs.items() if n != "monitor" or name == "monitor"):
                    time.sleep(0.1)
        for name, p in self.procs.items():
            if p.poll() is None:
                fl.signal_all(fl.descendants(p.pid) + [p.pid], signal.SIGKILL)
                p.wait()
        for name in ("monitor", "node1", "node2"):
            pidfile = self.pgdata(name) / "postmaster.pid"
            if pidfile.exists():
                try:
                    pm = fl.postmaster_pid(self.pgdata(name))
                except (OSError, ValueError):
                    continue
                if fl.alive(pm):
                    pgctl = [self.pgctl, "-D", str(self.pgdata(name)), "-m", "immediate", "-w", "stop"]
                    subprocess.run((["runuser", "-u", "postgres", "--"] if self.as_postgres else []) + pgctl,
                                   capture_output=True)
                # A SIGKILLed postmaster leaves children that exit on their own; wait for them.
                for _ in range(50):
                    if not fl.alive(pm) and not any(fl.alive(c) for c in fl.children(pm)):
                        break
                    time.sleep(0.1)
        self.procs = {}


class PromotionPoller(threading.Thread):
    """Polls a node every `period` s with a new session: when it left recovery, when it first
    accepted a write in a read-write session (libpq's target_session_attrs=read-write test, then
    an INSERT)."""

    def __init__(self, port, period=0.05):
        super().__init__(daemon=True)
        self.port = port
        self.period = period
        self.left_recovery = None
        self.writable = None
        self.polls = 0
        self.stop_flag = threading.Event()

    def run(self):
        url = f"postgres://postgres@127.0.0.1:{self.port}/failover_probe?connect_timeout=2"
        while not self.stop_flag.is_set() and self.writable is None:
            self.polls += 1
            t = time.time()
            out = subprocess.run(["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", url,
                                  "-c", "SELECT NOT pg_is_in_recovery(), current_setting('transaction_read_only')",
                                  "-c", "INSERT INTO probe VALUES (now())"], capture_output=True, text=True)
            first = out.stdout.splitlines()[0] if out.stdout else ""
            if first.startswith("t|") and self.left_recovery is None:
                self.left_recovery = t
            if out.returncode == 0 and first == "t|off":
                self.writable = t
                break
            time.sleep(self.period)

    def stop(self):
        self.stop_flag.set()
        self.join(10)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--pgctl", required=True)
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--before", type=float, default=10.0, help="seconds of load before the kill (10)")
    p.add_argument("--after", type=float, default=30.0, help="seconds of load after it (30)")
    p.add_argument("--deadline", type=float, default=5.0, help="the registrar's --request-deadline (5)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="seconds past the deadline still counted as within it (0.05; see bench/faults.py)")
    p.add_argument("--resume-target", type=float, default=5.0, help="promotion to first 200, at most (5)")
    p.add_argument("--single-host", action="store_true",
                   help="development: the registrar gets the first primary's URL only (no multi-host URL)")
    args = p.parse_args()
    work = Path(args.work)
    targets = fl.Targets()
    af = Formation(work, args.pgctl)
    reg = load = poller = None
    try:
        af.create()
        states = af.states()
        primary = next(n for n, (r, _) in states.items() if r == "primary")
        standby = next(n for n in ("node1", "node2") if n != primary)
        pp, sp = af.ports[primary], af.ports[standby]
        admin = f"postgres://postgres@127.0.0.1:{pp}/postgres"
        fl.psql(admin, "CREATE DATABASE registrar", "CREATE DATABASE failover_probe")
        fl.psql(f"postgres://postgres@127.0.0.1:{pp}/failover_probe", "CREATE TABLE probe (t timestamptz)")
        sync = fl.psql(admin, "SHOW synchronous_standby_names", "SHOW synchronous_commit").split()
        fl.log(f"formation ready: {primary} primary on {pp}, {standby} secondary on {sp}; "
               f"synchronous_standby_names={sync[0:-1]} synchronous_commit={sync[-1]}")
        if args.single_host:
            url = f"postgres://postgres@127.0.0.1:{pp}/registrar"
        else:
            url = f"postgres://postgres@127.0.0.1:{pp},127.0.0.1:{sp}/registrar?target_session_attrs=read-write"
        reg = fl.Registrar(args.binary, work, "registrar", url)
        reg.start()
        fl.log(f"registrar on udp 127.0.0.1:{reg.port}, --database-url {url}")
        load = fl.Load(work, "failover", reg.port, args.rate, args.before + args.after, prefix="f",
                       deadline=args.deadline)
        show = af.show_settings()
        time.sleep(max(0.0, args.before - (time.time() - load.started)))
        poller = PromotionPoller(sp)
        t_kill, autoctl, pm = af.kill_node(primary)
        poller.start()
        fl.log(f"SIGKILL sent to {primary}: postmaster {pm}, pg_autoctl {autoctl}")
        records = load.wait()
        poller.stop()
        t_writable, t_left = poller.writable, poller.left_recovery
        fl.log("load done")
        events = af.events()
        settings = af.settings()
        final_states = af.states()
        new_url = f"postgres://postgres@127.0.0.1:{sp}/registrar"
        acked, found, lost, extra = fl.check_pg(new_url, records)
        log_lines = reg.log_lines("WARN", "ERROR")
    finally:
        if poller:
            poller.stop()
        if load:
            load.stop()
        if reg:
            reg.stop()
        af.stop()

    t0 = load.started
    limit = args.deadline + args.tolerance
    rel = lambda t: "-" if t is None else f"t+{t - t0:.3f} s"
    print(f"\n== failover: pg_auto_failover, monitor + 2 nodes on 127.0.0.1, {args.rate} REGISTER/s, "
          f"{'single-host URL (development)' if args.single_host else 'multi-host URL'}")
    print(f"  SIGKILL of the primary ({primary}: postmaster and pg_autoctl) at {rel(t_kill)}")
    interesting = ("unhealthy", "prepare_promotion", "stop_replication", "wait_primary", "demote")
    shown = set()
    for ts, node, reported, goal, desc in events:
        ts = float(ts)
        if ts >= t_kill - 1 and any(w in desc for w in interesting) and (ts, desc) not in shown:
            shown.add((ts, desc))  # one event per node for a two-node assignment: print it once
            print(f"    monitor {rel(ts)} (kill+{ts - t_kill:.3f} s): {desc[:160]}")
    wait_primary = next((float(ts) for ts, node, rep, goal, desc in events
                         if float(ts) >= t_kill and node == standby and rep == "wait_primary" and "New state" in desc), None)
    print(f"  {standby} left recovery (read-only still) at {rel(t_left)}; accepted a read-write session and a write "
          f"at {rel(t_writable)} = the promotion, kill+{(t_writable - t_kill) if t_writable else float('nan'):.3f} s"
          + (f"; the monitor had its wait_primary report at kill+{wait_primary - t_kill:.3f} s" if wait_primary else ""))
    whole = regload.summarize(records, args.deadline, tolerance=args.tolerance)
    before = regload.summarize(records, args.deadline, until=t_kill, tolerance=args.tolerance)
    during = regload.summarize(records, args.deadline, since=t_kill, until=t_writable, tolerance=args.tolerance) \
        if t_writable else None
    print("  " + regload.format_summary(whole, "whole run"))
    print("  " + regload.format_summary(before, "sent before the kill"))
    if during:
        print("  " + regload.format_summary(during, "sent between kill and promotion"))
    after_p = regload.summarize(records, args.deadline, since=t_writable, tolerance=args.tolerance) if t_writable else None
    if after_p:
        print("  " + regload.format_summary(after_p, "sent after the promotion"))
    # The new primary may take writes from the moment the monitor assigns it wait_primary (its
    # keeper then turns default_transaction_read_only off); our poller, every 50 ms, may see it a
    # little after the registrar does. 200s are looked for from that assignment on.
    assigned = next((float(ts) for ts, node, rep, goal, desc in events
                     if float(ts) >= t_kill and node == standby and goal == "wait_primary"), None)
    resume_from = min(x for x in (assigned, t_writable) if x is not None) if (assigned or t_writable) else None
    ok_between = [r for r in records if r["code"] == 200 and resume_from and t_kill <= r["answered"] < resume_from]
    first = fl.after(records, resume_from) if resume_from else None
    print(f"  200s answered between the kill and the wait_primary assignment"
          f"{' (' + rel(assigned) + ')' if assigned else ''}: {len(ok_between)}"
          + (f" (sent {rel(min(r['sent'] for r in ok_between))} .. {rel(max(r['sent'] for r in ok_between))}, "
             f"answered until {rel(max(r['answered'] for r in ok_between))}: commits under way at the kill)"
             if ok_between else ""))
    last_before = max((r["answered"] for r in records if r["code"] == 200 and r["answered"] < t_kill), default=None)
    print(f"  last 200 before the kill {rel(last_before)}; first 200 after the promotion {rel(first)}"
          + (f" = promotion {'+' if first >= t_writable else '-'} {abs(first - t_writable):.3f} s"
             if first and t_writable else ""))
    print(f"  bindings: acknowledged (200 OK) {acked}, found on the new primary ({standby}) {found}, lost {len(lost)}; "
          f"present without a 200 (outcome unknown to the UA) {fl.describe_unacked(records, extra, args.deadline)}")
    for u, c in lost[:10]:
        print(f"    lost: {u} {c}")
    print(f"  registrar WARN/ERROR log lines: {len(log_lines)}")
    print("  monitor settings used:")
    for name, value, unit in settings:
        print(f"    {name} = {value}{unit}")
    print(f"    keeper timeout.network_partition_timeout = {NETWORK_PARTITION_TIMEOUT}s")
    print("  formation settings before the kill (pg_autoctl show settings) and states at the end:")
    for line in show.strip("\n").splitlines():
        print("    " + line)
    print(f"    {final_states}")

    targets.check("failover: promotion detected", t_writable is not None, rel(t_writable))
    targets.check("failover: bindings lost", acked > 0 and not lost, f"{len(lost)} of {acked} (target 0)")
    targets.check(f"failover: REGISTERs unanswered", whole["unanswered"] == 0, f"{whole['unanswered']} (target 0)")
    targets.check(f"failover: REGISTERs answered after {limit:g} s", whole["late"] == 0,
                  f"{whole['late']} (target 0; {whole['after_deadline']} after {args.deadline:g} s)")
    targets.check("failover: answers other than 200/500/503", whole["other"] == 0, f"{whole['other']} (target 0)")
    targets.check(f"failover: promotion to the first 200", first is not None and first - t_writable <= args.resume_target,
                  (f"{first - t_writable:.3f} s" if first else "none") + f" (target <= {args.resume_target:g} s)")
    return targets.report("bench/failover")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"bench/failover: {' '.join(map(str, e.cmd))[:300]} failed ({e.returncode}): {e.stderr}", file=sys.stderr)
        sys.exit(1)
