#!/usr/bin/env bash
# The one command that passes the tests on a fresh machine: installs what
# is missing, then runs formatting and lint checks, every test (unit,
# loopback integration, end-to-end against a real Prosody), and each fuzz
# target for a bounded time.
#
#   FUZZ_SECONDS=60 scripts/test.sh     (default 60 s per fuzz target; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# One test at a time: each end-to-end test starts its own Prosody and
# clients, and tokio-xmpp 6 clients have been seen to stall (a stanza
# delivered to their socket never surfaces) when the machine is
# overloaded; serial runs cost seconds and keep the load down.
cargo test --all-targets -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
totals=$(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$log")
passed=${totals% *}
failed=${totals#* }
if [ "$status" -ne 0 ]; then
    echo "tests: $passed passed, $failed failed"
    exit "$status"
fi

if [ "${FUZZ_SECONDS:-60}" != "0" ]; then
    echo "== fuzzing, ${FUZZ_SECONDS:-60} s per target"
    scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
echo "== all checks passed"
echo "tests: $passed passed, $failed failed"
