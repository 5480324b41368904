#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the committed seed corpus
# in fuzz/corpus/<target>/ (new inputs libFuzzer finds go to fuzz/corpus-new/<target>/, which
# git ignores). Needs the nightly toolchain and cargo-fuzz (installed here if missing).
# Prints executions and findings per target; exits 1 if any target found a crash (its input is
# in fuzz/artifacts/<target>/: commit it as a regression seed once fixed).
#
#   scripts/fuzz.sh 300            # 5 minutes per target
#   JOBS=2 scripts/fuzz.sh 300     # two targets at once
#   scripts/fuzz.sh 60 ingest      # only these targets
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
jobs="${JOBS:-1}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install --locked cargo-fuzz

cd fuzz
targets="${*:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build --release >/dev/null

run() {
    local t=$1 log="fuzz/logs/$1.log"
    mkdir -p "corpus-new/$t" "corpus/$t" logs
    # Seeds are read from corpus/<t>; what libFuzzer adds goes to corpus-new/<t> (first dir).
    if cargo +nightly fuzz run --release "$t" "corpus-new/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"logs/$t.log" 2>&1; then
        result=ok
    else
        result=CRASH
    fi
    execs=$(grep -m1 'stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
    rate=$(grep -m1 'stat::average_exec_per_sec' "logs/$t.log" | awk '{print $2}')
    printf '%-18s %-6s %12s execs  %8s/s  (%s)\n' "$t" "$result" "${execs:-?}" "${rate:-?}" "$log"
}

export -f run
export seconds
status=0
mkdir -p logs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run {}' | tee logs/summary || true
grep -q CRASH logs/summary && status=1
exit $status
