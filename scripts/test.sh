#!/usr/bin/env bash
# The one command that passes the tests on a fresh machine: installs what
# is missing, then runs formatting and lint checks, every test (unit,
# loopback integration, end-to-end against a real Prosody), and each fuzz
# target for a bounded time.
#
#   FUZZ_SECONDS=60 scripts/test.sh     (default 30 s per fuzz target; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== tests (cargo-nextest, settings in .config/nextest.toml)"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo nextest run --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^ *Summary .* tests? run' "$log" | tail -1)
passed=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
failed=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
if [ "$status" -ne 0 ]; then
    echo "tests: ${passed:-0} passed, ${failed:-1} failed"
    exit "$status"
fi
echo "== benchmarks, compiled and run once each (criterion's test mode; e2e: a 2 s smoke run)"
cargo test --benches

if [ "${FUZZ_SECONDS:-30}" != "0" ]; then
    echo "== fuzzing, ${FUZZ_SECONDS:-30} s per target"
    scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
echo "== all checks passed"
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
