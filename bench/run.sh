#!/bin/bash
# bench/run.sh: per-op cost of ioq against raw liburing.
#
# Builds the module (make) and bench/uring_bench.c, makes a 256 MiB file and
# reads it once so the page cache holds it, then runs each job REPS times,
# alternating C and Lua (C, Lua, C, Lua, ...) so that drift in the machine
# (frequency, noisy neighbours) hits both sides alike. Prints the median
# rate of each side and the ratio ioq/C.
#
#   bash bench/run.sh            full counts (about half a minute)
#   QUICK=1 bash bench/run.sh    a tenth of the counts, for a smoke test
#
# Other knobs: LUA (default lua5.4), CC, REPS (default 3), NOP_OPS,
# READ_OPS, BENCH_FILE (default bench/results/tmp/randread.dat).
set -euo pipefail

cd "$(dirname "$0")/.."

LUA=${LUA:-lua5.4}
CC=${CC:-cc}
REPS=${REPS:-3}
TMP=bench/results/tmp
BENCH_FILE=${BENCH_FILE:-$TMP/randread.dat}
FILE_MIB=256
if [ "${QUICK:-0}" = 1 ]; then
  NOP_OPS=${NOP_OPS:-1280000}
  READ_OPS=${READ_OPS:-200000}
else
  NOP_OPS=${NOP_OPS:-12800000}
  READ_OPS=${READ_OPS:-2000000}
fi

mkdir -p "$TMP"
make --no-print-directory >&2
# shellcheck disable=SC2046  # pkg-config output is meant to split
"$CC" -O2 -Wall -Wextra -Werror -o "$TMP/uring_bench" bench/uring_bench.c \
  $(pkg-config --cflags --libs liburing 2>/dev/null || echo -luring)

# Written, not sparse, so every block is real data in the page cache.
if [ "$(stat -c %s "$BENCH_FILE" 2>/dev/null || echo 0)" -ne $((FILE_MIB << 20)) ]; then
  echo "creating $BENCH_FILE ($FILE_MIB MiB)" >&2
  dd if=/dev/zero of="$BENCH_FILE" bs=1M count=$FILE_MIB status=none
fi
cat "$BENCH_FILE" >/dev/null

export LUA_CPATH="$PWD/build/?.so;;"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"

# The rate= field of a result line; fails loudly on anything else.
rate_of() {
  local line=$1 rate
  rate=$(sed -nE 's/^.* rate=([0-9.eE+]+).*$/\1/p' <<<"$line")
  if [ -z "$rate" ]; then
    echo "run.sh: no rate in output: $line" >&2
    exit 1
  fi
  echo "$rate"
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Each Lua job is measured against the C job of the same kind; the reuse
# variant (h:resubmit) is the same work as randread for C.
JOBS=(nop nop-reuse randread randread-reuse)
declare -A c_med lua_med
for job in "${JOBS[@]}"; do
  case $job in
    nop*) cjob=(nop "$NOP_OPS"); ljob=("$job" "$NOP_OPS") ;;
    *) cjob=(randread "$BENCH_FILE" "$READ_OPS"); ljob=("$job" "$BENCH_FILE" "$READ_OPS") ;;
  esac
  c_rates=() lua_rates=()
  for ((rep = 1; rep <= REPS; rep++)); do
    line=$("$TMP/uring_bench" "${cjob[@]}")
    echo "C    $line" >&2
    c_rates+=("$(rate_of "$line")")
    line=$("$LUA" bench/ops.lua "${ljob[@]}")
    echo "ioq  $line" >&2
    lua_rates+=("$(rate_of "$line")")
  done
  c_med[$job]=$(median "${c_rates[@]}")
  lua_med[$job]=$(median "${lua_rates[@]}")
done

echo
printf '%-15s %12s %12s %7s\n' job "C ops/s" "ioq ops/s" ratio
for job in "${JOBS[@]}"; do
  awk -v j="$job" -v c="${c_med[$job]}" -v l="${lua_med[$job]}" \
    'BEGIN { printf "%-15s %12.0f %12.0f %7.2f\n", j, c, l, l / c }'
done
echo "(medians of $REPS runs each; nop: $NOP_OPS ops, randread: $READ_OPS ops)"

# The coroutine layer: tasks and awaits against raw nops, in one script.
echo
if [ "${QUICK:-0}" = 1 ]; then "$LUA" bench/tasks.lua 20000 1; else "$LUA" bench/tasks.lua 100000 3; fi
