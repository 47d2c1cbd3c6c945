#!/usr/bin/env bash
# Builds and runs the fuzz targets (docs/SECURITY.md, "Fuzzing"; fuzz/README.md).
#
#   fuzz/run.sh build                    build every target (libFuzzer, coverage instrumented)
#   fuzz/run.sh check [SECONDS]          the test command's step: replay every committed corpus,
#                                        then fuzz each target for its share of SECONDS (60)
#   fuzz/run.sh campaign [RUNS] [T...]   the long campaign: each target (or those named) for RUNS
#                                        executions (10,000,000), one at a time under nice -n 19
#                                        (MAX_TIME=SECONDS stops each sooner); new inputs go to
#                                        fuzz/work/T, figures to fuzz/work/T.N.log (N: session)
#   fuzz/run.sh cmin [T...]              merge fuzz/work/T into fuzz/corpus/T, keeping only inputs
#                                        that add coverage (what gets committed)
#   fuzz/run.sh replay [T...]            run each committed corpus once
#   fuzz/run.sh figures [T...]           the campaigns' figures as a markdown table
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
TARGETS=(frame handshake token jwt envelope_json msgpack zlib encrypted mesh_wire permessage_deflate)

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=target/$TRIPLE/release
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth --cfg fuzzing -Cdebug-assertions -Ccodegen-units=1"

build() {
    # --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
    # Not --locked: fuzz/Cargo.lock follows the engine's dependencies, which change without it.
    cargo build -q --release --target "$TRIPLE" --bins
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
        # One log per session (a campaign may be resumed: work/T keeps what it found).
        local n=1
        while [ -e "work/$t.$n.log" ]; do n=$((n + 1)); done
        local log="work/$t.$n.log"
        echo "fuzz: campaign $t: $runs runs${MAX_TIME:+ or ${MAX_TIME}s} (log: fuzz/$log)"
        nice -n 19 "$BIN/$t" -runs="$runs" ${MAX_TIME:+-max_total_time="$MAX_TIME"} -max_len="${MAX_LEN:-8192}" \
            -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="artifacts/$t/" "work/$t" "corpus/$t" >"$log" 2>&1 || {
            tail -30 "$log"
            echo "fuzz: $t FOUND A CRASH: input in fuzz/artifacts/$t/" >&2
            return 1
        }
        line=$(grep -E '^#[0-9]+' "$log" | tail -1)
        echo "fuzz: $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | grep -o 'in [0-9]*' | cut -c4-)s; last: $line"
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

# A markdown table of the campaigns so far: runs and seconds summed over the sessions in
# fuzz/work/T.N.log, the last coverage (cov: edges, ft: features), the committed corpus.
figures() {
    local t runs secs cov ft n size
    echo "| target | runs | seconds (nice 19, shared host) | coverage (edges) | features | corpus (inputs, size) | crash inputs left |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
    for t in "$@"; do
        runs=0 secs=0 cov=0 ft=0
        for f in work/"$t".*.log; do
            [ -e "$f" ] || continue
            n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$f" | grep -o '[0-9]*$' || true)
            runs=$((runs + ${n:-0}))
            n=$(grep -Eo '^#[0-9]+.*' "$f" | tail -1)
            secs=$((secs + $(grep -o 'Done [0-9]* runs in [0-9]*' "$f" | grep -o '[0-9]*$' || echo 0)))
            local c fe
            c=$(echo "$n" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo 0)
            fe=$(echo "$n" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo 0)
            [ "${c:-0}" -gt "$cov" ] && cov=$c
            [ "${fe:-0}" -gt "$ft" ] && ft=$fe
        done
        n=$(find "corpus/$t" -type f | wc -l)
        size=$(cat "corpus/$t"/* 2>/dev/null | wc -c | awk '{printf "%d KB", $1 / 1024}')
        echo "| \`$t\` | $runs | ${secs}s | $cov | $ft | $n, $size | $(ls "artifacts/$t" 2>/dev/null | wc -l) |"
    done
}

# All in functions, called from the last line: bash has read the whole script before it runs
# anything, so editing the file during a long campaign does not change the running one.
main() {
    cmd=${1:-check}
    shift || true
    case "$cmd" in
        build) build ;;
        replay) build; replay "${@:-${TARGETS[@]}}" ;;
        check)
            total=${1:-60}
            build
            replay "${TARGETS[@]}"
            if [ "$total" -gt 0 ]; then
                fuzz_for $(( (total + ${#TARGETS[@]} - 1) / ${#TARGETS[@]} )) "${TARGETS[@]}"
            fi
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
        figures) figures "${@:-${TARGETS[@]}}" ;;
        *) sed -n '2,22p' "$0"; exit 2 ;;
    esac
}

main "$@"; exit $?
