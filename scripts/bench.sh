#!/usr/bin/env bash
# The end-to-end benchmark (README "Performance"): jatproxy against a
# plain TCP relay and inside a real Prosody, one table, under 5 minutes.
#
#   scripts/bench.sh                 the whole benchmark
#   scripts/bench.sh soak 600        RSS over a 10-minute steady load
#   E2E_SECONDS=3 scripts/bench.sh   longer runs (default 1.5 s each)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prosody >/dev/null 2>&1; then
    scripts/setup.sh
fi
exec cargo bench --bench e2e -- "$@"
