#!/usr/bin/env bash
# Builds and runs the fuzz targets (docs/SECURITY.md, "Fuzzing"; fuzz/README.md).
#
#   fuzz/run.sh build                    build every target (libFuzzer, coverage instrumented)
#   fuzz/run.sh check [SECONDS]          the test command's step: replay every committed corpus,
#                                        then fuzz each target for its share of SECONDS (60)
#   fuzz/run.sh campaign [RUNS] [T...]   the long campaign: each target (or those named) for RUNS
#                                        executions (10,000,000), one at a time under nice -n 19;
#                                        new inputs go to fuzz/work/T, figures to fuzz/work/*.log
#   fuzz/run.sh cmin [T...]              merge fuzz/work/T into fuzz/corpus/T, keeping only inputs
#                                        that add coverage (what gets committed)
#   fuzz/run.sh replay [T...]            run each committed corpus once
#
# Stable Rust: the build passes rustc the same flags `cargo fuzz build --sanitizer none` does
# (sancov coverage, compare tracing, `--cfg fuzzing`), none of them unstable, so neither a
# nightly nor cargo-fuzz is needed. With cargo-fuzz installed, the same targets also run as
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O TARGET     (from fuzz/)
# A crash leaves its input in fuzz/artifacts/TARGET/; reproduce with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"

# Every target; keep in step with Cargo.toml's [[bin]]s.
# SLOT: add permessage_deflate here once the engine has permessage-deflate (see README.md).
TARGETS=(frame handshake token jwt envelope_json msgpack zlib encrypted mesh_wire)

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=target/$TRIPLE/release
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth --cfg fuzzing -Cdebug-assertions -Ccodegen-units=1"

build() {
    # --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
    cargo build -q --release --locked --target "$TRIPLE" --bins
}

replay() {
    local t n
    for t in "$@"; do
        mkdir -p "corpus/$t"
        n=$(find "corpus/$t" -type f | wc -l)
        "$BIN/$t" -runs=0 -timeout=10 "corpus/$t" 2>"target/replay-$t.log" || {
            tail -40 "target/replay-$t.log"
            echo "fuzz: replaying corpus/$t FAILED (log: fuzz/target/replay-$t.log)" >&2
            return 1
        }
        echo "fuzz: replayed $t: $n inputs, ok"
    done
}

# fuzz SECONDS_EACH TARGET...: new inputs go to a scratch directory, the committed corpus is read only.
fuzz_for() {
    local secs=$1 t scratch
    shift
    for t in "$@"; do
        scratch=$(mktemp -d)
        mkdir -p "artifacts/$t"
        if ! "$BIN/$t" -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="artifacts/$t/" "$scratch" "corpus/$t" >"target/fuzz-$t.log" 2>&1; then
            tail -40 "target/fuzz-$t.log"
            echo "fuzz: $t FOUND A CRASH: input in fuzz/artifacts/$t/ (log: fuzz/target/fuzz-$t.log)" >&2
            rm -rf "$scratch"
            return 1
        fi
        echo "fuzz: $t ${secs}s: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$t.log" | grep -o '[0-9]*$') runs, no crash"
        rm -rf "$scratch"
    done
}

campaign() {
    local runs=$1 t line
    shift
    mkdir -p work
    for t in "$@"; do
        mkdir -p "work/$t" "artifacts/$t"
        echo "fuzz: campaign $t: $runs runs (log: fuzz/work/$t.log)"
        nice -n 19 "$BIN/$t" -runs="$runs" -max_len="${MAX_LEN:-8192}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="artifacts/$t/" "work/$t" "corpus/$t" >"work/$t.log" 2>&1 || {
            tail -30 "work/$t.log"
            echo "fuzz: $t FOUND A CRASH: input in fuzz/artifacts/$t/" >&2
            return 1
        }
        line=$(grep -E '^#[0-9]+' "work/$t.log" | tail -1)
        echo "fuzz: $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "work/$t.log"); last: $line"
    done
}

cmin() {
    local t
    for t in "$@"; do
        local merged
        merged=$(mktemp -d)
        "$BIN/$t" -merge=1 -timeout=10 "$merged" "corpus/$t" ${work:+"work/$t"} >"target/cmin-$t.log" 2>&1
        # Regression inputs stay whole and keep their names.
        mkdir -p "$merged.regress"
        find "corpus/$t" -name 'regress-*' -exec cp {} "$merged.regress/" \;
        rm -rf "corpus/$t"
        mkdir -p "corpus/$t"
        cp "$merged.regress"/* "corpus/$t/" 2>/dev/null || true
        rm -rf "$merged.regress"
        # Content-named, so a rerun of the merge does not rename what is already committed.
        for f in "$merged"/*; do
            [ -e "$f" ] || continue
            cp "$f" "corpus/$t/$(sha1sum "$f" | cut -c1-16)"
        done
        rm -rf "$merged"
        echo "fuzz: cmin $t: $(find "corpus/$t" -type f | wc -l) inputs"
    done
}

cmd=${1:-check}
shift || true
case "$cmd" in
    build) build ;;
    replay) build; replay "${@:-${TARGETS[@]}}" ;;
    check)
        total=${1:-60}
        build
        replay "${TARGETS[@]}"
        fuzz_for $(( total / ${#TARGETS[@]} )) "${TARGETS[@]}"
        ;;
    campaign)
        runs=${1:-10000000}
        shift || true
        build
        campaign "$runs" "${@:-${TARGETS[@]}}"
        ;;
    cmin)
        build
        work=1
        for t in "${@:-${TARGETS[@]}}"; do
            [ -d "work/$t" ] || mkdir -p "work/$t"
        done
        cmin "${@:-${TARGETS[@]}}"
        ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
