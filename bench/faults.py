#!/usr/bin/env python3
"""SPEC F3, measured: a registrar crash under load (PostgreSQL and SQLite) and a frozen
PostgreSQL (SIGSTOP) under load. Called by bench/faults, which provides the tools, the binary and
a work directory; see RELIABILITY.md for how to read what it prints.

Crash: `registrar serve` takes regload's REGISTERs (a new AoR each); mid-run it gets SIGKILL and
is started again on the same database and port while the load goes on. Afterwards every AoR that
was answered 200 must have its binding in `location` (username + contact, not expired): lost = 0.

Stall: mid-run every process of the PostgreSQL cluster (postmaster and children) gets SIGSTOP,
then SIGCONT some seconds later. Every REGISTER sent meanwhile must be answered (500/503, or 200
once the database is back) within the request deadline, and 200s must resume within 10 s of
SIGCONT.
"""

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import faultlib as fl  # noqa: E402
import regload  # noqa: E402


def crash(args, backend, targets, admin_url=None):
    work = Path(args.work)
    name = f"crash-{backend}"
    if backend == "postgres":
        db = "faults_crash"
        fl.psql(admin_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db}")
        url = admin_url.rsplit("/", 1)[0] + "/" + db
        extra = []
    else:
        dbfile = work / "crash.db"
        url = f"sqlite://{dbfile}?mode=rwc"
        extra = ["--sqlite-synchronous", "full"]
    reg = fl.Registrar(args.binary, work, name, url, extra=extra)
    load = None
    try:
        reg.start()  # migrates the new database itself
        if backend == "sqlite":
            sync = reg.log_lines("sqlite synchronous=")
            fl.log(f"{name}: {sync[-1].split('INFO', 1)[-1].strip() if sync else 'no synchronous line in the log'}")
        fl.log(f"{name}: registrar on udp 127.0.0.1:{reg.port}; load {args.rate}/s for {args.seconds:g} s")
        load = fl.Load(work, name, reg.port, args.rate, args.seconds, prefix=f"c{backend[0]}", deadline=args.deadline)
        time.sleep(args.seconds * 0.4)
        t_kill = reg.kill()
        fl.log(f"{name}: SIGKILL sent to the registrar")
        time.sleep(args.down)
        t_restart = time.time()
        t_ready = reg.start()
        fl.log(f"{name}: restarted; answering {t_ready - t_restart:.2f} s after the restart")
        records = load.wait()
        if backend == "postgres":
            acked, found, lost, extra_rows = fl.check_pg(url, records)
        else:
            acked, found, lost, extra_rows = fl.check_sqlite(dbfile, records, work)
    finally:
        if load:
            load.stop()
        reg.stop()
    s = regload.summarize(records, args.deadline, tolerance=args.tolerance)
    before = regload.summarize(records, args.deadline, until=t_kill)
    resumed = fl.after(records, t_ready)
    print(f"\n== crash, {backend}{' (--sqlite-synchronous full)' if backend == 'sqlite' else ''}: "
          f"SIGKILL at t+{t_kill - load.started:.1f} s, restarted at t+{t_restart - load.started:.1f} s")
    print("  " + regload.format_summary(s, "load"))
    print(f"  sent before the kill {before['sent']}, 200 before the kill {before['ok_200']}; "
          f"first 200 after the restart {resumed - t_restart:.3f} s after it" if resumed else
          "  no 200 after the restart")
    print(f"  acknowledged (200 OK) {acked}, found in location {found}, lost {len(lost)}")
    print(f"  bindings present although not answered 200 (outcome unknown to the UA): "
          f"{fl.describe_unacked(records, extra_rows, args.deadline)}")
    for u, c in lost[:10]:
        print(f"    lost: {u} {c}")
    targets.check(f"crash {backend}: bindings lost", not lost and acked > 0, f"{len(lost)} of {acked} (target 0)")
    targets.check(f"crash {backend}: 200s after the restart", resumed is not None,
                  "yes" if resumed else "none")


def pg_pids(datadir):
    pm = fl.postmaster_pid(datadir)
    return [pm] + fl.children(pm)


def stall(args, targets, admin_url, pgdir):
    work = Path(args.work)
    name = "stall-postgres"
    db = "faults_stall"
    fl.psql(admin_url, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db}")
    url = admin_url.rsplit("/", 1)[0] + "/" + db
    reg = fl.Registrar(args.binary, work, name, url)
    datadir = Path(pgdir) / "data"
    load = None
    stopped = []
    try:
        reg.start()
        fl.log(f"{name}: registrar on udp 127.0.0.1:{reg.port}; load {args.rate}/s for {args.stall_seconds:g} s, "
               f"PostgreSQL frozen for {args.stall:g} s from t+{args.stall_at:g} s")
        load = fl.Load(work, name, reg.port, args.rate, args.stall_seconds, prefix="s", deadline=args.deadline)
        time.sleep(args.stall_at)
        # The postmaster first (it forks no more then), then its children, listed again until stable.
        pm = fl.postmaster_pid(datadir)
        fl.signal_all([pm], signal.SIGSTOP)
        stopped = [pm]
        while True:
            more = [p for p in fl.children(pm) if p not in stopped]
            if not more:
                break
            fl.signal_all(more, signal.SIGSTOP)
            stopped += more
        t_stop = time.time()
        fl.log(f"{name}: SIGSTOP sent to {len(stopped)} PostgreSQL processes")
        time.sleep(args.stall)
        fl.signal_all(stopped, signal.SIGCONT)
        t_cont = time.time()
        stopped = []
        fl.log(f"{name}: SIGCONT sent")
        records = load.wait()
    finally:
        if stopped:
            fl.signal_all(stopped, signal.SIGCONT)
        if load:
            load.stop()
        reg.stop()
    limit = args.deadline + args.tolerance
    during = regload.summarize(records, args.deadline, since=t_stop, until=t_cont, tolerance=args.tolerance)
    whole = regload.summarize(records, args.deadline, tolerance=args.tolerance)
    first = fl.after(records, t_cont)
    late = [r for r in records if r["code"] is not None and r["latency"] > args.deadline]
    # REGISTERs sent during the stall, by outcome.
    sel = [r for r in records if t_stop <= r["sent"] < t_cont]
    within = lambda codes: sum(1 for r in sel if r["code"] in codes and r["latency"] <= limit)
    print(f"\n== stall, postgres: SIGSTOP at t+{t_stop - load.started:.1f} s for {t_cont - t_stop:.1f} s "
          f"(every process of the cluster)")
    print("  " + regload.format_summary(whole, "whole run"))
    print("  " + regload.format_summary(during, "sent during the stall"))
    print(f"  sent during the stall {during['sent']}: answered 500/503 within {limit:g} s "
          f"{within((500, 503))}, answered 200 within {limit:g} s {within((200,))} (after SIGCONT), "
          f"answered late (after {limit:g} s) {during['late']}, unanswered {during['unanswered']}, "
          f"other codes {during['other']}")
    if late:
        worst = max(late, key=lambda r: r["latency"])
        print(f"  answers after {args.deadline:g} s in the whole run: {len(late)}, codes "
              f"{sorted(set(r['code'] for r in late))}, the latest {worst['latency']:.4f} s "
              f"(sent t+{worst['sent'] - load.started:.3f} s)")
    print(f"  first 200 after SIGCONT: " + (f"{first - t_cont:.3f} s after it" if first else "none"))
    lines = reg.log_lines("WARN", "ERROR")
    print(f"  registrar WARN/ERROR log lines: {len(lines)}")
    targets.check("stall: REGISTERs sent during the stall", during["sent"] > 0, during["sent"])
    targets.check(f"stall: sent during the stall answered after {limit:g} s", during["late"] == 0, f"{during['late']} (target 0)")
    targets.check("stall: sent during the stall unanswered", during["unanswered"] == 0,
                  f"{during['unanswered']} (target 0)")
    targets.check("stall: sent during the stall answered other than 200/500/503", during["other"] == 0,
                  f"{during['other']} (target 0)")
    targets.check(f"stall: whole run answered after {limit:g} s or unanswered (H6)", whole["late"] + whole["unanswered"] == 0,
                  f"{whole['late']} late, {whole['unanswered']} unanswered (target 0)")
    targets.check("stall: SIGCONT to the first 200", first is not None and first - t_cont <= 10.0,
                  (f"{first - t_cont:.3f} s" if first else "none") + " (target <= 10 s)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--pg-dir", help="cluster directory (bench/pg.sh) to use for PostgreSQL")
    p.add_argument("--admin-url", help="that cluster's admin URL")
    p.add_argument("--short", action="store_true", help="CI: ~12 s of load per crash, 24 s around the stall")
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--deadline", type=float, default=5.0, help="the registrar's --request-deadline (5)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="seconds past the deadline still counted as within it: the registrar's timer "
                        "starts after it read the request, and the answer must still reach the client (0.05)")
    p.add_argument("--scenarios", default="crash-postgres,crash-sqlite,stall")
    args = p.parse_args()
    if args.short:
        args.seconds, args.down, args.stall_seconds, args.stall_at, args.stall = 12.0, 1.0, 24.0, 5.0, 8.0
    else:
        args.seconds, args.down, args.stall_seconds, args.stall_at, args.stall = 30.0, 2.0, 40.0, 10.0, 8.0
    scen = args.scenarios.split(",")
    targets = fl.Targets()
    t0 = time.time()
    for s in scen:
        if s == "crash-postgres":
            crash(args, "postgres", targets, args.admin_url)
        elif s == "crash-sqlite":
            crash(args, "sqlite", targets)
        elif s == "stall":
            stall(args, targets, args.admin_url, args.pg_dir)
        else:
            raise SystemExit(f"unknown scenario {s}")
    print(f"\nbench/faults: {', '.join(scen)} at {args.rate} REGISTER/s, {'short' if args.short else 'full'} mode, "
          f"{time.time() - t0:.0f} s")
    return targets.report("bench/faults")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks end what we started
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        print(f"bench/faults: {' '.join(map(str, e.cmd))[:200]} failed ({e.returncode}): {e.stderr}", file=sys.stderr)
        sys.exit(1)
