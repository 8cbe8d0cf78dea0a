#!/usr/bin/env bash
# Zero 429s, measured: for every vendor-style quota origin of
# tests/budget_pacing.rs (IETF structured and trio, GitHub, Discord, OpenAI,
# Anthropic, Shopify; fixed and sliding windows, token and leaky buckets),
# 50 concurrent Python clients (tests/py/quota_clients.py) call the API
#   - with no proxy,
#   - through ezthrottle with learning off (`pin = true` at the quota's
#     nominal rate, as a user would configure it by hand),
#   - through ezthrottle with nothing configured for the host,
# and the table gives, per API, the 429s the origin's limiter answered and
# the share of the quota used (two windows from the first request; buckets:
# the run less 1 s against their drain rate). No thresholds: the asserted
# guarantees are the non-ignored tests in tests/budget_pacing.rs.
#
#   bash benches/dialects.sh
#
# Knobs (environment):
#   CARGO_TARGET_DIR  where the release build goes (default /var/cache/ezthrottle-release)
#   EZT_PYTHON    the Python for the clients (default: .venv/bin/python,
#                 created with `python3 -m venv .venv` when missing, as
#                 scripts/test does; the clients use only the standard library)
#   SKIP_BUILD=1  do not build first (cargo still builds what is missing)
#
# The no-proxy runs go one at a time (they keep both cores busy), then the
# proxied runs four at a time, each with its own origin and proxy, all on
# 127.0.0.1. About 4 minutes on two cores.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

log() { printf 'dialects: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

case ${1:-} in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1 (see --help)" ;;
esac

# ---- Python for the clients ------------------------------------------------------
if [ -z "${EZT_PYTHON:-}" ]; then
    if ! .venv/bin/python -c 'import json, urllib.request' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || die "python3 not found (scripts/test installs it)"
        log "creating .venv (python3 -m venv .venv)"
        rm -rf .venv
        python3 -m venv .venv || die "python3 -m venv .venv failed (EZT_SETUP_ONLY=1 scripts/test sets it up)"
    fi
    EZT_PYTHON="$ROOT/.venv/bin/python"
fi
export EZT_PYTHON
"$EZT_PYTHON" -c 'import json, threading, urllib.request' || die "EZT_PYTHON=$EZT_PYTHON cannot run the clients"

# ---- release build -----------------------------------------------------------------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/ezthrottle-release}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo test --release --test budget_pacing --no-run (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo test --release --test budget_pacing --no-run >&2
fi

# ---- the runs -------------------------------------------------------------------------
# The test prints the table on stdout (progress on stderr); keep only the
# table and its notes, with libtest's own lines dropped.
OUT=$(mktemp "${TMPDIR:-/tmp}/ezthrottle-dialects.XXXXXX")
trap 'rm -f "$OUT"' EXIT
log "cargo test --release --test budget_pacing -- --ignored --nocapture --exact dialect_table"
cargo test --release --test budget_pacing -- --ignored --nocapture --exact dialect_table >"$OUT" \
    || { cat "$OUT" >&2; die "dialect_table failed"; }
printf '\n'
grep -E '^(\||[0-9]+ clients|client errors|wall time)' "$OUT"
