#!/usr/bin/env bash
# Byte-identity check for speed work on msh pagewalk: runs every design × env × page
# size over each synthetic workload with the TLBs and PWCs on and off, drops the two
# fields that depend on speed (accesses_per_s, seconds), and diffs against the recorded outputs.
#   tools/pagewalk/golden/check.sh [MSH_BINARY]          compare with expected/
#   RECORD=1 tools/pagewalk/golden/check.sh [MSH_BINARY]  (re)record expected/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
msh=${1:-$here/../../../target/release/msh}
expected=$here/expected
out=${RECORD:+$expected}
out=${out:-$(mktemp -d)}
mkdir -p "$out"
run() {
    local name=$1
    shift
    "$msh" pagewalk run --designs radix,dmt,pvdmt,ecpt,fpt,asap --env native,virt,nested \
        --pages 4k,thp --json "$@" | jq -S 'del(.accesses_per_s, .seconds)' >"$out/$name.json"
}
for w in gups btree graph stream; do
    for flags in "" "--no-tlb" "--no-pwc" "--no-tlb --no-pwc"; do
        tag=$(echo "$w $flags" | tr -d '-' | tr ' ' '_' | sed 's/_*$//')
        # shellcheck disable=SC2086
        run "$tag" --synthetic "$w" --footprint 1G --accesses 200000 $flags
    done
done
run graph_odd_machine --synthetic graph --footprint 1G --accesses 200000 --config "$here/odd-machine.json"
run gups_8g_seed7 --synthetic gups --footprint 8G --accesses 300000 --seed 7
if [ -z "${RECORD:-}" ]; then
    diff -r "$expected" "$out" && echo "pagewalk golden: identical ($(ls "$out" | wc -l) runs)"
fi
