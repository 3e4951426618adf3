#!/usr/bin/env bash
# Replays every fuzz target over its committed corpus, each input once, and
# fails if any input crashes (a panic, a broken invariant, a sanitizer report,
# a timeout or running out of memory). No fuzzing happens here; see
# docs/fuzzing.md for fuzzing itself.
#
# Usage: fuzz/replay.sh            (from anywhere)
# Needs the nightly toolchain named in fuzz/rust-toolchain.toml; installs
# cargo-fuzz if it is missing. Prints `N passed, M failed` last and exits
# non-zero when M > 0.
set -euo pipefail

# fuzz/: its rust-toolchain.toml selects nightly, which cargo-fuzz needs.
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "replay: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "replay: building the fuzz targets" >&2
cargo fuzz build -O

passed=0
failed=0
failures=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    corpus="$PWD/corpus/$target"
    if [[ ! -d $corpus ]] || [[ -z $(ls -A "$corpus") ]]; then
        echo "replay: $target: no corpus in fuzz/corpus/$target" >&2
        failed=$((failed + 1))
        failures+=("$target")
        continue
    fi
    started=$SECONDS
    if cargo fuzz run -O "$target" "$corpus" -- -runs=0 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        echo "replay: $target: $(ls "$corpus" | wc -l) inputs ok ($((SECONDS - started)) s)" >&2
        passed=$((passed + 1))
    else
        echo "replay: $target: FAILED" >&2
        # The panic or sanitizer report, then the input that caused it.
        grep -m1 -A3 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" >&2 || tail -n 40 "$log" >&2
        grep -E "^(Running|Test unit written to|artifact_prefix)" "$log" | tail -n 2 >&2 || true
        failed=$((failed + 1))
        failures+=("$target")
    fi
done

if ((failed > 0)); then
    echo "replay: failed: ${failures[*]}" >&2
fi
echo "$passed passed, $failed failed"
((failed == 0))
