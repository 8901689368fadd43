#!/usr/bin/env python3
"""A SIP REGISTER load client over UDP that records, per AoR, what happened (SPEC F2, F3).

SIPp counts 200s but cannot say which AoR got one; a fault benchmark has to, because every AoR
answered 200 must afterwards have its binding in `location`. Each REGISTER here is a new AoR
(PREFIX + index @ DOMAIN), with its own Call-ID, branch and tag and a Contact naming this
client's socket. Requests are paced evenly at --rate and sent once (no retransmission): one
without a final answer within --timeout counts as unanswered.

    bench/regload.py --target 127.0.0.1:5060 --rate 300 --duration 30 --out run.json

The record file (.json, or .csv by extension) holds one row per REGISTER: index, aor, contact,
call_id, sent (Unix time), code (or null), answered (Unix time, or null), latency (s, or null).
A response later than --timeout is not an answer: its code is kept in late_code.
Other scripts import load_records() and summarize() to classify the rows by time window.
"""

import argparse
import asyncio
import csv
import json
import math
import os
import re
import signal
import socket
import sys
import time

CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+)", re.IGNORECASE)
FIELDS = ["index", "aor", "contact", "call_id", "sent", "code", "answered", "latency", "late_code"]


class Client(asyncio.DatagramProtocol):
    def __init__(self, args, local):
        self.args = args
        self.local = local  # (ip, port) of our socket, named in Via and Contact
        self.run = f"{os.getpid():x}{int(time.time() * 1000) % 0xFFFFFF:x}"
        self.records = []  # index -> record dict
        self.pending = {}  # call-id bytes -> (index, monotonic send time)
        self.duplicates = 0
        self.strays = 0
        self.send_errors = 0
        self.icmp_errors = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc):  # ICMP port unreachable while the registrar is down
        self.icmp_errors += 1

    def datagram_received(self, data, addr):
        now = time.monotonic()
        if not data.startswith(b"SIP/2.0 "):
            self.strays += 1
            return
        try:
            code = int(data[8:11])
        except ValueError:
            self.strays += 1
            return
        if code < 200:
            return  # provisional: not an answer
        m = CALL_ID.search(data)
        if not m:
            self.strays += 1
            return
        entry = self.pending.pop(m.group(1).strip(), None)
        if entry is None:
            self.duplicates += 1
            return
        index, t_sent = entry
        rec = self.records[index]
        latency = now - t_sent
        if latency > self.args.timeout:
            rec["late_code"] = code
            return
        rec["code"] = code
        rec["latency"] = round(latency, 6)
        rec["answered"] = round(rec["sent"] + latency, 6)

    def send(self, index):
        a = self.args
        user = f"{a.prefix}{index}"
        call_id = f"{self.run}-{index}@regload"
        ip, port = self.local
        contact = f"sip:{user}@{ip}:{port}"
        msg = (
            f"REGISTER sip:{a.domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{self.run}x{index};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:{user}@{a.domain}>;tag={self.run}t{index}\r\n"
            f"To: <sip:{user}@{a.domain}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 REGISTER\r\n"
            f"Contact: <{contact}>\r\n"
            f"Expires: {a.expires}\r\n"
            f"User-Agent: regload\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        t = time.monotonic()
        wall = time.time()
        self.records.append({"index": index, "aor": f"{user}@{a.domain}", "contact": contact,
                             "call_id": call_id, "sent": round(wall, 6), "code": None,
                             "answered": None, "latency": None, "late_code": None})
        self.pending[call_id.encode()] = (len(self.records) - 1, t)
        try:
            self.transport.sendto(msg, a.target)
        except OSError:
            self.send_errors += 1


async def run(args):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        except OSError:
            pass
    sock.bind((args.bind, 0))
    local = sock.getsockname()
    transport, client = await loop.create_datagram_endpoint(lambda: Client(args, local), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    total = args.count if args.count is not None else math.inf
    end = time.monotonic() + args.duration if args.duration is not None else math.inf
    interval = 1.0 / args.rate
    t0 = time.monotonic()
    i = 0
    if not args.quiet:
        print(f"regload: {args.rate}/s to {args.target[0]}:{args.target[1]} from {local[0]}:{local[1]}, "
              f"AoRs {args.prefix}{args.start}..@{args.domain}", file=sys.stderr, flush=True)
    while i < total and not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        # Evenly paced: request i is due at t0 + i/rate. Behind schedule (a busy machine), send
        # what is due at once, at most 50 ms worth, so the rate stays the promised one.
        due = t0 + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        burst = 0
        while i < total and t0 + i * interval <= now and burst < max(1, args.rate // 20):
            client.send(args.start + i)
            i += 1
            burst += 1
        await asyncio.sleep(0)
    last_send = time.monotonic()
    # Wait for the answers: until none is pending or the last request's timeout has passed.
    while client.pending and time.monotonic() < last_send + args.timeout:
        await asyncio.sleep(0.05)
    transport.close()
    return client, time.monotonic() - t0


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def summarize(records, deadline=5.0, since=None, until=None, tolerance=0.0):
    """Figures over the records sent in [since, until) (Unix times; None = unbounded). `late`
    counts answers later than deadline + tolerance, `after_deadline` those later than deadline."""
    sel = [r for r in records if (since is None or r["sent"] >= since) and (until is None or r["sent"] < until)]
    codes = {}
    lat = []
    late = 0
    after_deadline = 0
    oks = []
    for r in sel:
        c = r["code"]
        if c is None:
            continue
        codes[c] = codes.get(c, 0) + 1
        lat.append(r["latency"])
        if r["latency"] > deadline:
            after_deadline += 1
        if r["latency"] > deadline + tolerance:
            late += 1
        if c == 200:
            oks.append(r["answered"])
    s = {
        "sent": len(sel),
        "ok_200": codes.get(200, 0),
        "err_500": codes.get(500, 0),
        "err_503": codes.get(503, 0),
        "other": sum(n for c, n in codes.items() if c not in (200, 500, 503)),
        "other_codes": {str(c): n for c, n in sorted(codes.items()) if c not in (200, 500, 503)},
        "unanswered": sum(1 for r in sel if r["code"] is None),
        "late": late,
        "after_deadline": after_deadline,
        "deadline": deadline,
        "tolerance": tolerance,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "max": max(lat) if lat else None,
        "first_200": min(oks) if oks else None,
        "last_200": max(oks) if oks else None,
    }
    return s


def stamp(t):
    if t is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def ms(v):
    return "-" if v is None else f"{v * 1000:.1f} ms"


def format_summary(s, label="regload"):
    other = f" {s['other_codes']}" if s["other"] else ""
    return (f"{label}: sent {s['sent']}, 200 {s['ok_200']}, 500 {s['err_500']}, 503 {s['err_503']}, "
            f"other {s['other']}{other}, unanswered {s['unanswered']}, "
            f"answered after {s['deadline']:g} s {s['after_deadline']}"
            + (f" (after {s['deadline'] + s['tolerance']:g} s: {s['late']})" if s["tolerance"] else "") + "; "
            f"latency p50 {ms(s['p50'])}, p99 {ms(s['p99'])}, max {ms(s['max'])}; "
            f"first 200 {stamp(s['first_200'])}, last 200 {stamp(s['last_200'])}")


def write_records(path, records, meta):
    if path.endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            for r in records:
                w.writerow(r)
    else:
        with open(path, "w") as f:
            json.dump({"meta": meta, "records": records}, f)


def load_records(path):
    if path.endswith(".csv"):
        out = []
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                num = lambda v, t: None if v in ("", None) else t(v)
                out.append({"index": int(r["index"]), "aor": r["aor"], "contact": r["contact"],
                            "call_id": r["call_id"], "sent": float(r["sent"]), "code": num(r["code"], int),
                            "answered": num(r["answered"], float), "latency": num(r["latency"], float),
                            "late_code": num(r["late_code"], int)})
        return out
    with open(path) as f:
        return json.load(f)["records"]


def host_port(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return (socket.gethostbyname(host), int(port))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=host_port, required=True, help="registrar HOST:PORT (UDP)")
    p.add_argument("--rate", type=int, default=300, help="REGISTERs per second, paced evenly (default 300)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, help="seconds of load (default 10 unless --count)")
    g.add_argument("--count", type=int, help="number of REGISTERs")
    p.add_argument("--prefix", default="rl", help="AoR user prefix; user = PREFIX + index (default rl)")
    p.add_argument("--start", type=int, default=0, help="first index (default 0)")
    p.add_argument("--domain", default="example.com", help="AoR domain (default example.com)")
    p.add_argument("--expires", type=int, default=3600, help="Expires of each REGISTER (default 3600)")
    p.add_argument("--timeout", type=float, default=8.0, help="seconds to wait for a final answer (default 8)")
    p.add_argument("--deadline", type=float, default=5.0, help="answers later than this count as late (default 5)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="also count answers later than deadline + this (default 0: not shown)")
    p.add_argument("--bind", default="127.0.0.1", help="local IP to bind (default 127.0.0.1)")
    p.add_argument("--out", help="record file, .json or .csv")
    p.add_argument("--summary-json", help="also write the summary as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no start line on stderr")
    args = p.parse_args(argv)
    if args.duration is None and args.count is None:
        args.duration = 10.0
    if args.rate < 1:
        p.error("--rate must be at least 1")

    client, elapsed = asyncio.run(run(args))
    records = client.records
    s = summarize(records, args.deadline, tolerance=args.tolerance)
    s.update(elapsed=round(elapsed, 3), achieved_rate=None, duplicates=client.duplicates, strays=client.strays,
             send_errors=client.send_errors, icmp_errors=client.icmp_errors,
             late_beyond_timeout=sum(1 for r in records if r["late_code"] is not None))
    if records:
        span = records[-1]["sent"] - records[0]["sent"]
        s["achieved_rate"] = round((len(records) - 1) / span, 1) if span > 0 else None
    meta = {"target": f"{args.target[0]}:{args.target[1]}", "rate": args.rate, "prefix": args.prefix,
            "domain": args.domain, "expires": args.expires, "timeout": args.timeout,
            "deadline": args.deadline, "summary": s}
    if args.out:
        write_records(args.out, records, meta)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(s, f)
    print(format_summary(s) + f"; achieved {s['achieved_rate']}/s"
          + (f"; send errors {s['send_errors']}" if s["send_errors"] else "")
          + (f"; answers after the {args.timeout:g} s timeout {s['late_beyond_timeout']}" if s["late_beyond_timeout"] else ""),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
