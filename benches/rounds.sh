#!/usr/bin/env bash
# A figure of record for issue 17's targets: benches/compare.sh run ROUNDS
# times in a row (each run measures every proxy in ONLY once, one after the
# other, so the proxies alternate over the rounds), then each row's CPU µs
# per answered request run by run, its median, and its ratio to nginx's row
# of the same section: the ratio of the medians, and the ratio within each
# run (paired: the two measured minutes apart) with its median and spread.
#
#   benches/rounds.sh                      # 5 rounds, ezthrottle,pingora,nginx
#   ROUNDS=3 RATE=15000 benches/rounds.sh  # paced, as compare.sh's RATE
#   ROUNDS=7 DURATION=20 SKIP_BUILD=1 BIN=... benches/rounds.sh
#
# Why: flat out on these 2-core VMs one binary's CPU per request moves by
# a fifth from run to run (docs/performance.md, "Where we stand"), more than
# the 1.25× line the issue draws, so one run decides nothing. Every knob of
# compare.sh passes through; ONLY defaults to ezthrottle,pingora,nginx, and
# MITM=0 IDLE_CONNS=0 (rounds compare CPU, not memory). Each run's whole
# output is kept in OUT_DIR (default: a new directory under /tmp, printed).
# REPORT_ONLY=1 with OUT_DIR runs nothing and reports on the run-N.md files
# already there (say, the runs of several sessions copied into one place).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-5}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a whole number of runs, not '$ROUNDS'" >&2; exit 1; }
export ONLY=${ONLY:-ezthrottle,pingora,nginx} MITM=${MITM:-0} IDLE_CONNS=${IDLE_CONNS:-0}
if [ "${REPORT_ONLY:-0}" != 1 ]; then
    OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/ezthrottle-rounds.XXXXXX)}
    mkdir -p "$OUT_DIR"
    echo "rounds: $ROUNDS runs of benches/compare.sh (ONLY=$ONLY), outputs in $OUT_DIR" >&2
fi

if [ "${REPORT_ONLY:-0}" = 1 ]; then
    [ -n "${OUT_DIR:-}" ] || { echo "REPORT_ONLY=1 needs OUT_DIR" >&2; exit 1; }
    ROUNDS=$(find "$OUT_DIR" -maxdepth 1 -name 'run-*.md' | wc -l)
    [ "$ROUNDS" -gt 0 ] || { echo "no run-N.md in $OUT_DIR" >&2; exit 1; }
fi
for i in $(seq 1 "$ROUNDS"); do
    [ "${REPORT_ONLY:-0}" = 1 ] && break
    echo "rounds: run $i of $ROUNDS" >&2
    if ! benches/compare.sh > "$OUT_DIR/run-$i.md" 2> "$OUT_DIR/run-$i.err"; then
        tail -n 20 "$OUT_DIR/run-$i.err" >&2
        echo "rounds: run $i failed (its output: $OUT_DIR/run-$i.md, $OUT_DIR/run-$i.err)" >&2
        exit 1
    fi
    # After every run, so that a session cut short keeps what it measured;
    # one run (its sleeps and builds) is the slow part of a round.
    SKIP_BUILD=1 && export SKIP_BUILD
done

python3 - "$OUT_DIR" "$ROUNDS" <<'PY'
import statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])

def tables(text):
    """{section: {proxy label: (cpu, user, kernel, req/s)}} of one run's report."""
    found, section = {}, None
    for line in text.splitlines():
        if line.startswith("| plain HTTP"):
            section = "plain HTTP"
        elif line.startswith("| intercepted HTTPS"):
            section = "intercepted HTTPS"
        elif not line.startswith("|"):
            section = None
        elif section and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) < 7:
                continue
            try:
                rps, cpu, user, kernel = (float(cells[i].replace(",", "")) for i in (1, 4, 5, 6))
            except ValueError:
                continue
            found.setdefault(section, {})[cells[0]] = (cpu, user, kernel, rps)
    return found

runs = [tables((out / f"run-{i}.md").read_text()) for i in range(1, rounds + 1)]
rig = ""
for line in (out / f"run-{rounds}.md").read_text().splitlines():
    if line.startswith("Rig: "):
        rig = line
med = statistics.median
for section in ("plain HTTP", "intercepted HTTPS"):
    labels = []
    for r in runs:
        for label in r.get(section, {}):
            if label not in labels:
                labels.append(label)
    if not labels:
        continue
    nginx = next((l for l in labels if l.startswith("nginx")), None)
    print(f"\n| {section}: CPU µs per answered request, {rounds} runs | by run | median | user | kernel "
          "| req/s | × nginx, medians | × nginx within a run: median (lowest–highest) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for label in labels:
        got = [r[section][label] for r in runs if label in r.get(section, {})]
        cpu = [g[0] for g in got]
        row = (f"| {label} | {' / '.join(f'{c:.1f}' for c in cpu)} | **{med(cpu):.1f}** "
               f"| {med(g[1] for g in got):.1f} | {med(g[2] for g in got):.1f} | {med(g[3] for g in got):,.0f} ")
        if nginx and label != nginx:
            theirs = [r[section][nginx][0] for r in runs if nginx in r.get(section, {})]
            paired = [r[section][label][0] / r[section][nginx][0] for r in runs
                      if label in r.get(section, {}) and nginx in r.get(section, {})]
            row += (f"| **{med(cpu) / med(theirs):.2f}×** "
                    f"| {med(paired):.2f}× ({min(paired):.2f}–{max(paired):.2f}) |")
        else:
            row += "| | |"
        print(row)
print()
print(f"Each run: benches/compare.sh, every proxy once in turn; only 2xx answers counted; "
      f"CPU = utime+stime of the proxy's processes. {rig}")
PY
