"""Listening ports for the servers the benchmarks start.

A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range every
outgoing TCP connection (SIPp, psql, the pool) takes its source port from. Between choosing such
a port and the server binding it, a connection can take it: CI once failed when Kamailio's TLS
listener found its port held by a client socket. So the ports here come from below the ephemeral
range, and each is checked free for both UDP and TCP (the -tls rows use one number for both).
"""

import random
import socket


def _ephemeral_range():
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _free(port):
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    """A port free for UDP and TCP on 127.0.0.1, outside the ephemeral range."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 65536) if not low <= p <= high]
    for _ in range(200):
        port = random.choice(candidates)
        if _free(port):
            return port
    raise SystemExit("no free port below the ephemeral range")


if __name__ == "__main__":
    # The e2e scripts take their ports from here too.
    print(free_port())
