"""Instructions per REGISTER (issue 16): a figure no machine's speed or noise moves.

Each registrar runs under `valgrind --tool=callgrind` (Kamailio's forked children too, each
into its own file) twice, for the same wall time, with the refresh scenario at two low rates.
The difference of the summed instruction counts over the difference of the REGISTERs answered
is the cost of one REGISTER: start-up, idle timers and the readiness probe are in both runs and
cancel. PostgreSQL's backends are not counted (the CPU table measures them from /proc).
"""

import glob
import os
import time

# Low enough for either server to keep up under callgrind (tens of times slower than native).
RATES = (10, 30)
SECONDS = 12
# Start to stop of every run: the idle cost of the two runs is the same.
WALL = 90


def measure(bench, args, work, kind):
    """{'kind', 'registers', 'instructions', 'per_register'} for `kind` (registrar-nohttp or
    kamailio); `bench` is the bench module (its Server, prepare and sipp)."""
    runs = []
    for rate in RATES:
        out = work / f"callgrind-{kind}-{rate}"
        out.mkdir()
        server = bench.Server(kind, args.admin_url, work, args)
        started = time.monotonic()
        wrapper = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                   f"--callgrind-out-file={out}/callgrind.out.%p"]
        server.start(wrapper=wrapper, ready_seconds=60)
        try:
            calls = rate * SECONDS
            users = bench.prepare(args, work, server, "refresh", calls, new_prefix="c")
            ok, failed, *_ = bench.sipp(args, work, server, bench.scenario_xml(args, "refresh"), users, rate, calls)
            if failed or ok != calls:
                raise SystemExit(f"{kind} under callgrind at {rate}/s: {ok} of {calls} REGISTERs answered "
                                 f"200 ({failed} failed); the instruction count would not be per REGISTER")
            left = WALL - (time.monotonic() - started)
            if left < 5:
                raise SystemExit(f"{kind} under callgrind took {WALL - left:.0f} s of the {WALL} s window")
            time.sleep(left)
        finally:
            server.stop(wait_seconds=120)
        runs.append((ok, instructions(out)))
        print(f"  {kind} under callgrind, refresh {rate}/s for {SECONDS} s: {ok} REGISTERs, "
              f"{runs[-1][1]:,} instructions in {WALL} s", flush=True)
    (n1, i1), (n2, i2) = runs
    return {"kind": kind, "registers": n2 - n1, "instructions": i2 - i1, "per_register": (i2 - i1) / (n2 - n1)}


def instructions(out):
    """Instructions (Ir) in every callgrind file of a run: one per process."""
    total = 0
    files = glob.glob(os.path.join(out, "callgrind.out.*"))
    for path in files:
        for line in open(path, errors="replace"):
            if line.startswith("summary:") or line.startswith("totals:"):
                total += int(line.split()[1])
                break
    if not files or not total:
        raise SystemExit(f"callgrind wrote no instruction count in {out}")
    return total


def table(rows):
    lines = ["| registrar | REGISTERs (difference of the two runs) | instructions per REGISTER | ours / Kamailio |",
             "|---|---|---|---|"]
    kamailio = next((r["per_register"] for r in rows if r["kind"] == "kamailio"), None)
    for r in rows:
        ratio = f"{r['per_register'] / kamailio:.2f}" if kamailio and r["kind"] != "kamailio" else ""
        lines.append(f"| {r['kind']} | {r['registers']} | {r['per_register']:,.0f} | {ratio} |")
    return "\n".join(lines)
