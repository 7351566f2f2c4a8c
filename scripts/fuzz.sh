#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]       (default: 60 s, all targets)
#
# Each target runs in one process (no -jobs: that would leave fuzz-N.log files in the
# working directory) on its seed corpus
# (fuzz/seeds/<target>, committed) plus a working corpus (fuzz/corpus/<target>,
# git-ignored, grows across runs). Before fuzzing, the saved reproducers in
# fuzz/regressions/<target>/ are replayed. At the end a table gives the executions
# (libFuzzer's stat::number_of_executed_units) and the result per target; the exit
# status is non-zero if any target crashed, hung, leaked or failed to build.
#
# Environment:
#   FUZZ_SANITIZER   address | none (default none: the request path has no unsafe code;
#                    `address` also checks the unsafe code of dependencies, ~2x slower)
#   FUZZ_BUILD_ONLY  1: build and replay the regressions, do not fuzz
#   FUZZ_LOG_DIR     where the per-target logs go (default fuzz/target/fuzz-logs)
#   FUZZ_ARGS        extra libFuzzer arguments for every target
#   CARGO_FUZZ_VERSION  version installed when cargo-fuzz is missing (default 0.13.2)
#   FUZZ_TOOLCHAIN   auto (default: nightly if installed, else the default toolchain),
#                    default, or a rustup toolchain name (e.g. stable)
#   FUZZ_TARGET_DIR  cargo target directory (default fuzz/target)
#
# Toolchain: cargo-fuzz needs nightly-only compiler flags. If a nightly toolchain is
# installed it is used; otherwise the default (stable) toolchain is used with
# RUSTC_BOOTSTRAP=1, which unlocks those flags on stable (checked with stable 1.95).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_TARGET=${1:-60}
shift || true
ALL_TARGETS=(frame envelope request connection)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi
SANITIZER=${FUZZ_SANITIZER:-none}
LOG_DIR=${FUZZ_LOG_DIR:-$ROOT/fuzz/target/fuzz-logs}
mkdir -p "$LOG_DIR"

case "$SECONDS_PER_TARGET" in
    ''|*[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number" >&2; exit 2 ;;
esac

# Largest input per target (bytes). Connection seeds are whole pod scenarios.
max_len() {
    case "$1" in
        frame|envelope) echo 16384 ;;
        request|connection) echo 65536 ;;
        *) echo 65536 ;;
    esac
}

# --- toolchain ----------------------------------------------------------------
CARGO=(cargo)
case "${FUZZ_TOOLCHAIN:-auto}" in
    auto)
        if command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
            CARGO=(cargo +nightly)
        fi ;;
    default) ;;
    *) CARGO=(cargo "+$FUZZ_TOOLCHAIN") ;;
esac
if "${CARGO[@]}" --version 2>/dev/null | grep -q nightly; then
    echo "fuzz.sh: using $("${CARGO[@]}" --version)"
else
    export RUSTC_BOOTSTRAP=1
    echo "fuzz.sh: no nightly toolchain; using $("${CARGO[@]}" --version) with RUSTC_BOOTSTRAP=1"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz ${CARGO_FUZZ_VERSION:-0.13.2} from crates.io"
    cargo install cargo-fuzz --locked --version "${CARGO_FUZZ_VERSION:-0.13.2}" || exit 1
fi

# --- build ----------------------------------------------------------------------
# Release build with debug assertions and overflow checks (-a): an arithmetic
# overflow on host data is a crash, not a silent wrap.
FUZZ_FLAGS=(--fuzz-dir fuzz -s "$SANITIZER" -a)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then FUZZ_FLAGS+=(--target-dir "$FUZZ_TARGET_DIR"); fi
build_start=$(date +%s)
echo "fuzz.sh: building ${TARGETS[*]} (sanitizer $SANITIZER)"
for t in "${TARGETS[@]}"; do
    if ! "${CARGO[@]}" fuzz build "${FUZZ_FLAGS[@]}" "$t"; then
        echo "fuzz.sh: build of $t failed" >&2
        exit 1
    fi
done
echo "fuzz.sh: build took $(( $(date +%s) - build_start )) s"

# --- replay the saved reproducers -------------------------------------------------
status=0
declare -A RESULT EXECS SECS
for t in "${TARGETS[@]}"; do
    RESULT[$t]=ok
    dir=fuzz/regressions/$t
    files=()
    if [ -d "$dir" ]; then
        while IFS= read -r -d '' f; do files+=("$f"); done \
            < <(find "$dir" -type f ! -name '*.md' -print0 | sort -z)
    fi
    [ ${#files[@]} -eq 0 ] && continue
    echo "fuzz.sh: replaying ${#files[@]} reproducer(s) for $t"
    if ! "${CARGO[@]}" fuzz run "${FUZZ_FLAGS[@]}" "$t" "${files[@]}" -- -timeout=30 \
        >"$LOG_DIR/$t.regressions.log" 2>&1; then
        echo "fuzz.sh: $t: a saved reproducer still fails (log: $LOG_DIR/$t.regressions.log)" >&2
        tail -n 30 "$LOG_DIR/$t.regressions.log" >&2
        RESULT[$t]="REGRESSION"
        status=1
    fi
done
if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then exit $status; fi

# --- fuzz -------------------------------------------------------------------------
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/artifacts/$t"
    log=$LOG_DIR/$t.log
    echo "fuzz.sh: fuzzing $t for ${SECONDS_PER_TARGET} s (log: $log)"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "${CARGO[@]}" fuzz run "${FUZZ_FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -timeout=30 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    SECS[$t]=$(( $(date +%s) - start ))
    EXECS[$t]=$(grep -a 'stat::number_of_executed_units' "$log" | tail -n 1 | awk '{print $2}')
    [ -n "${EXECS[$t]}" ] || EXECS[$t]=0
    if [ $rc -ne 0 ]; then
        status=1
        RESULT[$t]="CRASH (exit $rc)"
        echo "fuzz.sh: $t failed (exit $rc); artifact(s):" >&2
        grep -a -E 'Test unit written to|^==[0-9]+==|panicked at|ERROR: libFuzzer' "$log" | head -n 20 >&2
    fi
done

echo
printf '%-12s %10s %14s %10s  %s\n' target seconds executions exec/s result
total=0
for t in "${TARGETS[@]}"; do
    e=${EXECS[$t]:-0}; s=${SECS[$t]:-0}
    rate=$(( s > 0 ? e / s : 0 ))
    total=$(( total + e ))
    printf '%-12s %10s %14s %10s  %s\n' "$t" "$s" "$e" "$rate" "${RESULT[$t]}"
done
printf '%-12s %10s %14s\n' total "" "$total"
exit $status
