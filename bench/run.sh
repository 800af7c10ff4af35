#!/bin/bash
# bench/run.sh: per-op cost of ioq against raw liburing, and random reads
# against luv (libuv) and through ioq's epoll backend.
#
# Builds the module (make) and bench/uring_bench.c, makes a 256 MiB file and
# reads it once so the page cache holds it, then runs each group of jobs
# REPS times. Within a round every contender of the group runs once, in
# turn (C, ioq, ..., C, ioq, ...), so that drift in the machine (frequency,
# noisy neighbours) hits all of them alike. Prints the median rate of each
# and its ratios to C and to luv measured in the same rounds.
#
#   nop group:      C, ioq nop, ioq nop-reuse
#   randread group: C, ioq randread, ioq randread-reuse (both io_uring),
#                   ioq randread-reuse on the epoll backend, and luv's
#                   uv.fs_read (bench/luv_randread.lua), the last left out
#                   when luv is not installed
#
#   bash bench/run.sh            full counts (about a minute and a half)
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

# Each ioq contender names its backend: an IOQ_BACKEND left in the
# caller's environment must not turn the io_uring rows into epoll ones, and
# an explicit name makes the queue fail rather than fall back silently.
unset IOQ_BACKEND

HAVE_LUV=1
if ! "$LUA" -e 'require "luv"' 2>/dev/null; then
  echo "luv not found for $LUA (apt-get install -y lua-luv): skipping luv" >&2
  HAVE_LUV=0
fi

# job_cmd NAME: sets cmd to the command line of that contender. The C
# program does the same work for a job and its -reuse variant.
job_cmd() {
  case $1 in
    C-nop) cmd=("$TMP/uring_bench" nop "$NOP_OPS") ;;
    C-randread) cmd=("$TMP/uring_bench" randread "$BENCH_FILE" "$READ_OPS") ;;
    nop | nop-reuse) cmd=(env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua "$1" "$NOP_OPS") ;;
    randread | randread-reuse)
      cmd=(env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua "$1" "$BENCH_FILE" "$READ_OPS") ;;
    randread-reuse-epoll)
      cmd=(env IOQ_BACKEND=epoll "$LUA" bench/ops.lua randread-reuse "$BENCH_FILE" "$READ_OPS") ;;
    randread-luv) cmd=("$LUA" bench/luv_randread.lua "$BENCH_FILE" "$READ_OPS") ;;
  esac
}

# label NAME: the row's name in the table.
label() {
  case $1 in
    randread-reuse-epoll) echo "randread-reuse (epoll)" ;;
    randread-luv) echo "randread (luv fs_read)" ;;
    *) echo "$1" ;;
  esac
}

NOP_GROUP=(C-nop nop nop-reuse)
READ_GROUP=(C-randread randread randread-reuse randread-reuse-epoll)
[ "$HAVE_LUV" = 1 ] && READ_GROUP+=(randread-luv)

cmd=()
declare -A rates med
run_group() {
  local name line rep
  for name in "$@"; do rates[$name]=''; done
  for ((rep = 1; rep <= REPS; rep++)); do
    for name in "$@"; do
      job_cmd "$name"
      line=$("${cmd[@]}")
      printf '%-21s %s\n' "$name" "$line" >&2
      rates[$name]+=" $(rate_of "$line")"
    done
  done
  for name in "$@"; do
    # shellcheck disable=SC2086  # the list is meant to split
    med[$name]=$(median ${rates[$name]})
  done
}
run_group "${NOP_GROUP[@]}"
run_group "${READ_GROUP[@]}"

# row NAME C_NAME: one table line; "vs luv" only for reads, with luv there.
row() {
  local luv=0
  [ "$2" = C-randread ] && luv=${med[randread-luv]:-0}
  awk -v j="$(label "$1")" -v c="${med[$2]}" -v r="${med[$1]}" -v l="$luv" \
    'BEGIN { printf "%-23s %12.0f %12.0f %7.2f %7s\n", j, c, r, r / c,
             (l > 0 ? sprintf("%.2f", r / l) : "-") }'
}

echo
printf '%-23s %12s %12s %7s %7s\n' job "C ops/s" "ops/s" "vs C" "vs luv"
for name in "${NOP_GROUP[@]:1}"; do row "$name" C-nop; done
for name in "${READ_GROUP[@]:1}"; do row "$name" C-randread; done
echo "(medians of $REPS rounds, C in each; nop: $NOP_OPS ops, randread: $READ_OPS ops)"
awk -v e="${med[randread-reuse-epoll]}" -v l="${med[randread-luv]:-0}" 'BEGIN {
  if (l > 0) printf "target: randread on epoll >= luv fs_read: %s (%.2f)\n",
                    (e >= l ? "met" : "MISSED"), e / l }'

# The coroutine layer: tasks and awaits against raw nops, in one script.
echo
if [ "${QUICK:-0}" = 1 ]; then "$LUA" bench/tasks.lua 20000 1; else "$LUA" bench/tasks.lua 100000 3; fi
