#!/usr/bin/env bash
# Records one workload system-wide with kernel call chains and writes the
# trimmed `perf script` text used as a test fixture:
#
#   sudo bash kernel-patches/workloads/record.sh dup1 [SECONDS] > perf-dup1.txt
#
# Needs root (kernel call chains) and perf (Debian: linux-perf). The event is
# the software cpu-clock: this VM has no hardware PMU. The fixture keeps the
# workload's own samples: up to 200 that go through a lock primitive (lock or
# unlock: with cpu-clock, an hrtimer, time spent with interrupts off surfaces
# at the unlock that turns them back on) and the first 40 that do not (a few hundred KB at most).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name=${1:?usage: record.sh WORKLOAD [SECONDS]}
seconds=${2:-2}
[ -f "$here/$name.c" ] || { echo "record.sh: no workload $here/$name.c" >&2; exit 2; }
command -v perf >/dev/null || { echo "record.sh: perf missing (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -Wall -pthread "$here/$name.c" -o "$work/$name"
perf record -q -a -g -e cpu-clock -o "$work/perf.data" -- "$work/$name" "$seconds" >&2
perf script -i "$work/perf.data" 2>/dev/null | awk -v comm="$name" '
  function flush() {
    if (sample != "" && own) {
      if (locked && kept_locked < 200) { printf "%s\n", sample; kept_locked++ }
      else if (!locked && kept_other < 40) { printf "%s\n", sample; kept_other++ }
    }
    sample = ""; own = 0; locked = 0
  }
  /^[^ \t]/ { flush(); sample = $0 "\n"; own = ($1 == comm); unknown = 0; next }
  /^[ \t]/ {
    # User stacks without frame pointers unwind into runs of [unknown]: keep one.
    if ($2 == "[unknown]") { if (unknown++) next } else unknown = 0
    sample = sample $0 "\n"
    if ($2 ~ /^(_raw_(spin|read|write)_(un)?(lock|trylock)|down_(read|write)|up_(read|write)|mutex_(un)?lock|__mutex_lock|(native_)?queued_spin_lock_slowpath|rwsem_down)/) locked = 1
    next
  }
  /^$/ { flush() }
  END { flush() }
'
