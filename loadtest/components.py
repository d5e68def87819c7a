#!/usr/bin/env python3
"""User-space instructions per request by component, from a callgrind
profile that loadtest/instructions.sh kept: each function's own (exclusive)
instructions, summed by the crate or library its source file belongs to.

    python3 loadtest/components.py RUN_DIR/callgrind-vestibule-1000.out REQUESTS

REQUESTS is the profile's request count (the `requests` column of
RUN_DIR/instructions.tsv). Prints a Markdown table, largest first.
"""

import re
import subprocess
import sys

# (component, pattern on the source path of the function), first match wins.
BUCKETS = [
    ("memcpy/memset (libc)", r"/string/|memmove|memset|memcpy"),
    ("other libc", r"libc\.so|/libc-|/nptl/|/sysdeps/"),
    ("allocator (mimalloc)", r"mimalloc"),
    ("header maps and names (http crate)", r"/http-\d"),
    ("HTTP/1 parsing (httparse)", r"/httparse-"),
    ("TLS (rustls, aws-lc/ring)", r"rustls|aws-lc|/ring-"),
    ("Pingora: proxy", r"pingora-proxy"),
    ("Pingora: core (protocols, connectors, server)", r"pingora-core"),
    ("Pingora: http (request/response heads)", r"pingora-http"),
    ("Pingora: other (timeout, pool, load balancing, error)", r"pingora-"),
    ("tokio (scheduler, I/O, timers)", r"/tokio-"),
    ("bytes", r"/bytes-"),
    ("Vestibule gateway", r"/gateway/src/"),
    ("Vestibule config", r"/config/src/"),
    ("prometheus", r"prometheus"),
]

# Code inlined from the standard library is filed under its own source
# (/rustc/...); it is counted for the crate of the function it was inlined
# into, named first in the symbol.
CRATES = [
    ("header maps and names (http crate)", "http"),
    ("HTTP/1 parsing (httparse)", "httparse"),
    ("Pingora: proxy", "pingora_proxy"),
    ("Pingora: core (protocols, connectors, server)", "pingora_core"),
    ("Pingora: http (request/response heads)", "pingora_http"),
    ("Pingora: other (timeout, pool, load balancing, error)", "pingora_"),
    ("tokio (scheduler, I/O, timers)", "tokio"),
    ("bytes", "bytes"),
    ("Vestibule gateway", "vestibule_gateway"),
    ("Vestibule config", "vestibule_config"),
]


def bucket(where):
    path, _, func = where.partition(":")
    if "/rustc/" in path or "library/" in path:
        m = re.search(r"([a-z_][a-z0-9_]*)::", func)
        crate = m.group(1) if m else ""
        for name, prefix in CRATES:
            if crate == prefix or (prefix.endswith("_") and crate.startswith(prefix)):
                return name
        return "Rust std/core/alloc (not in a crate above)"
    return next((b for b, pat in BUCKETS if re.search(pat, path)), "other")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    profile, requests = sys.argv[1], int(sys.argv[2])
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", profile],
                         capture_output=True, text=True, check=True).stdout
    totals, total = {}, 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if not m:
            continue
        n, where = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in where:
            total = n
            continue
        name = bucket(where)
        totals[name] = totals.get(name, 0) + n
    print(f"| component | instructions / request | share |\n|---|---|---|")
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {n / requests:,.0f} | {100 * n / total:.1f}% |")
    print(f"| **total** | **{total / requests:,.0f}** | |")


if __name__ == "__main__":
    main()
