#!/usr/bin/env bash
# Runs every cargo-fuzz target for DURATION seconds (default 60) on a copy
# of the committed seed corpus, so a run (in CI or locally) never grows the
# repository. Prints each target's execution count; exits non-zero if any
# target crashed, after running the others.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (cargo-fuzz builds with sanitizers); installs
# cargo-fuzz if it is missing. cargo-fuzz keeps crash inputs in fuzz/artifacts/TARGET/.
#
# Every target explores for the same bounded time, fast_vs_rxml (the
# fast tokenizer against rxml) included: its past findings are among
# its seeds, and after the last of them it ran 1.2 million inputs clean
# (see the README, "Fuzzing").
set -euo pipefail

duration=${1:-60}
case $duration in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS]" >&2
	exit 64
	;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
	cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in $(cargo +nightly fuzz list); do
	corpus="$work/corpus/$target"
	mkdir -p "$corpus"
	if compgen -G "fuzz/corpus/$target/seed-*" >/dev/null; then
		cp fuzz/corpus/"$target"/seed-* "$corpus"/
	fi
	log="$work/$target.log"
	echo "== $target: ${duration}s"
	status=0
	cargo +nightly fuzz run "$target" "$corpus" -- \
		-max_total_time="$duration" \
		-rss_limit_mb=2048 \
		-dict="$root/fuzz/xml.dict" \
		-print_final_stats=1 \
		>"$log" 2>&1 || status=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	if [ "$status" -ne 0 ]; then
		# The assertion that failed and the input that made it fail.
		grep -m 1 -A 4 'panicked at' "$log" >&2 || tail -n 40 "$log" >&2
		sed -n '/^Failing input:/,/^Reproduce with:/p' "$log" >&2
		echo "== $target: FAILED (exit $status) after ${execs:-?} executions" >&2
		failed+=("$target")
	else
		echo "== $target: ${execs:-?} executions, $(ls "$corpus" | wc -l) corpus entries"
	fi
done

if [ "${#failed[@]}" -ne 0 ]; then
	echo "crashed: ${failed[*]}" >&2
	exit 1
fi
