#!/bin/sh
# Build every cargo-fuzz target and run each for a bounded time from its seed corpus; exits
# non-zero on the first crash (libFuzzer leaves the input in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [seconds per target, default 20] [target ...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). Stable Rust is enough: RUSTC_BOOTSTRAP=1 lets
# it take the nightly flags (-Zsanitizer=address) cargo-fuzz passes. New inputs found go to a
# scratch directory, so the committed corpus only changes by hand (see README.md).
set -eu
cd "$(dirname "$0")"
secs=${1:-20}
[ $# -gt 0 ] && shift
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
targets=${*:-$(cargo fuzz list)}
start=$(date +%s)
cargo fuzz build
echo "built in $(($(date +%s) - start)) s"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    mkdir -p "$scratch/$t" "corpus/$t"
    echo "== $t: $secs s"
    # the scratch corpus first: libFuzzer writes what it finds into the first directory
    cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 2>"$scratch/$t.log" || {
        grep -v '^#' "$scratch/$t.log" | tail -40 >&2
        echo "FAILED: $t (input saved under fuzz/artifacts/$t/)" >&2
        exit 1
    }
    grep '^Done' "$scratch/$t.log"
done
echo "all targets clean, $(($(date +%s) - start)) s in all"
