#!/usr/bin/env python3
"""Names the callers in a memcpy_count.c table (COPIES=1 benches/instructions.sh).

    copies.py TABLE BINARY REQUESTS

Prints the bytes and calls copied per request, then the callers with the
most bytes per request, each with its most frequent sizes. Callers are
named from the binary's symbol table (`nm`), so a function that inlined
another carries its copies."""
import bisect
import collections
import os
import subprocess
import sys

table, binary, requests = sys.argv[1], sys.argv[2], float(sys.argv[3])
real = os.path.realpath(binary)
spans = []  # (start, end, file offset) of the binary's executable mappings
for line in open(table + ".maps"):
    f = line.split()
    if len(f) >= 6 and "x" in f[1] and os.path.realpath(f[5]) == real:
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        spans.append((lo, hi, int(f[2], 16)))
loads = []  # (file offset, virtual address, size) of the binary's LOAD segments
for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    f = line.split()
    if f and f[0] == "LOAD":
        loads.append((int(f[1], 16), int(f[2], 16), int(f[4], 16)))
symbols = []
for line in subprocess.run(["nm", "-C", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    f = line.split(" ", 2)
    if len(f) == 3 and f[1] in "tTwW":
        symbols.append((int(f[0], 16), f[2]))
symbols.sort()
starts = [s for s, _ in symbols]


def name(address):
    for lo, hi, offset in spans:
        if lo <= address < hi:
            at = address - lo + offset
            for file_offset, vaddr, size in loads:
                if file_offset <= at < file_offset + size:
                    i = bisect.bisect_right(starts, at - file_offset + vaddr) - 1
                    return symbols[i][1] if i >= 0 else "?"
    return "(another library)"


sizes = collections.defaultdict(collections.Counter)
total = collections.Counter()
calls = 0
for line in open(table):
    caller, size, count = line.split()
    who, size, count = name(int(caller, 16)), int(size), int(count)
    sizes[who][size] += count
    total[who] += size * count
    calls += count
print(f"  {sum(total.values()) / requests:,.0f} bytes in {calls / requests:.1f} copies a request")
for who, copied in total.most_common(12):
    top = sorted(sizes[who].items(), key=lambda kv: -kv[0] * kv[1])[:5]
    shown = ", ".join(f"{size} B x{count / requests:.2f}" for size, count in top)
    print(f"  {copied / requests:8,.0f} B  {who[:100]}\n             {shown}")
