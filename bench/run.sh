#!/bin/bash
# bench/run.sh: the benchmark suite behind `make bench` (BENCHMARKS.md).
#
#   bash bench/run.sh                    every benchmark; writes
#                                        bench/results/latest.md and .png
#   QUICK=1 bash bench/run.sh            the same, short (about 3 minutes)
#   bash bench/run.sh echo http          some of them; the report goes to
#                                        bench/results/tmp/partial.md/.png
#
# Benchmarks: nop randread direct copy stat readdir spawn echo http idle.
# Each runs all of its contenders in the same run, REPS rounds (5; QUICK:
# 3); round r starts with the r-th contender and goes round from there, so
# drift in a noisy machine hits every contender alike and none always runs
# first. The report gives each contender's median, its ratio to the baselines measured in the same
# rounds, and each target as met or missed. A contender that cannot run
# here (a package missing, a feature it lacks) is a row saying why.
#
# Knobs: LUA (lua5.4), CC (cc), REPS (5; QUICK: 3), QUICK, DATA_DIR
# (where the test files live: bench/results/tmp, or /var/tmp/ioq-bench
# when that filesystem refuses O_DIRECT), SERVER_CPU (0), CLIENT_CPU (1),
# BASE_PORT (19701: the servers use BASE_PORT..BASE_PORT+13), IDLE_CONNS
# (10000: the idle connections of the memory benchmark).
set -euo pipefail
export LC_ALL=C  # decimal points, sort order and tool output as parsed here

cd "$(dirname "$0")/.."

ALL=(nop randread direct copy stat readdir spawn echo http idle)
LUA=${LUA:-lua5.4}
CC=${CC:-cc}
QUICK=${QUICK:-0}
[ "$QUICK" = 1 ] || QUICK=0
# Five rounds in a full run: on a shared 2-CPU machine single runs of the
# copy and the servers can be off by 2x, and a median of five shrugs off two.
REPS=${REPS:-$([ "$QUICK" = 1 ] && echo 3 || echo 5)}
TMP=bench/results/tmp
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-19701}
HOST=127.0.0.1  # fixed: these benchmarks never leave the machine

# Sizes and durations. QUICK keeps every benchmark and every contender and
# shortens each run; its figures are a smoke test, not for comparison.
if [ "$QUICK" = 1 ]; then
  NOP_OPS=640000 READ_OPS=200000 DIRECT_OPS=100000 FIO_SECS=1
  BIG_MIB=64 ECHO_SECS=1 WARMUP=0.3 HTTP_SECS=2
  STAT_OPS=100000 LISTINGS=200 SPAWNS=500
else
  NOP_OPS=6400000 READ_OPS=1000000 DIRECT_OPS=500000 FIO_SECS=4
  BIG_MIB=1024 ECHO_SECS=5 WARMUP=1 HTTP_SECS=10
  STAT_OPS=500000 LISTINGS=1000 SPAWNS=3000
fi
# The stat and readdir benchmarks' tree: FS_DIRS directories of FS_FILES
# empty files (bench/fs_bench.c mkfiles); stats go round all the files,
# listings round the directories. Spawns run SPAWN_PROG, SPAWN_CONC at once.
FS_DIRS=8 FS_FILES=1000
SPAWN_PROG=/bin/true SPAWN_CONC=16
CACHED_MIB=256  # the cached random-read file, also in QUICK runs
CONNS=100 MSG=128
# The idle-connection memory benchmark opens this many in QUICK runs too:
# its target is per connection at 10,000.
IDLE_CONNS=${IDLE_CONNS:-10000}

die() {
  echo "bench/run.sh: $*" >&2
  exit 1
}

note() { echo "== $*" >&2; }

################################################################ arguments

selected=()
for name in "$@"; do
  case " ${ALL[*]} " in
    *" $name "*) selected+=("$name") ;;
    *) die "unknown benchmark '$name' (known: ${ALL[*]})" ;;
  esac
done
if [ ${#selected[@]} -eq 0 ] || [ ${#selected[@]} -eq ${#ALL[@]} ]; then
  OUT=bench/results/latest
  [ ${#selected[@]} -gt 0 ] || selected=("${ALL[@]}")
else
  OUT=$TMP/partial  # a partial run never overwrites the committed results
fi
selected_has() { case " ${selected[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

################################################################ tools

# Missing contenders are reported as rows, not errors; this names the
# packages that would bring them, once, at the start and the end.
missing_pkgs=()
want() {  # want COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing_pkgs+=("$2")
}
want fio fio
want gnuplot gnuplot-nox
want nginx nginx-light
# Where this nginx looks for its dynamic modules (Debian: /usr/lib/nginx/modules).
nginx_modules() {
  local dir
  dir=$(nginx -V 2>&1 | sed -nE 's/.*--modules-path=([^ ]+).*/\1/p')
  echo "${dir:-/usr/lib/nginx/modules}"
}
if command -v nginx >/dev/null && [ ! -f "$(nginx_modules)/ngx_http_lua_module.so" ]; then
  missing_pkgs+=(libnginx-mod-http-lua)
fi
want wrk wrk
want taskset util-linux
"$LUA" -e 'require "luv"' 2>/dev/null || missing_pkgs+=(lua-luv)
"$LUA" -e 'require "cqueues"' 2>/dev/null || missing_pkgs+=(lua-cqueues)
APT_LINE=
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  APT_LINE="apt-get install -y ${missing_pkgs[*]}"
  note "missing, their rows will say n/a: $APT_LINE"
fi

command -v "$LUA" >/dev/null || die "$LUA not found (apt-get install -y lua5.4 liblua5.4-dev)"
command -v "$CC" >/dev/null || die "$CC not found (apt-get install -y gcc)"

mkdir -p "$TMP"
RESULTS=$TMP/results.tsv
META=$TMP/meta.tsv
: >"$RESULTS"
started=$EPOCHSECONDS

make --no-print-directory >&2
URING_FLAGS=$(pkg-config --cflags --libs liburing 2>/dev/null || echo -luring)
build() {  # build OUTPUT SOURCE [LIBS]: the suite's C programs, warnings as errors
  # shellcheck disable=SC2086  # the flags are meant to split
  "$CC" -O2 -Wall -Wextra -Werror -o "$TMP/$1" "$2" ${3:-}
}
build uring_bench bench/uring_bench.c "$URING_FLAGS"
build echo_uring bench/net/echo_uring.c "$URING_FLAGS"
build load bench/net/load.c
build idle_client bench/net/idle_client.c
build fs_bench bench/fs_bench.c

export LUA_CPATH="$PWD/build/?.so;;"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
# Every ioq contender names its backend: an IOQ_BACKEND left in the
# caller's environment must not turn io_uring rows into epoll ones.
unset IOQ_BACKEND

################################################################ rounds

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Set by the measure_* functions: value (the rate) on success, reason on
# failure; extra: anything worth a note in the row (CPU use, say).
value='' reason='' extra=''

# needs CONTENDER: what a contender needs from this machine; sets reason
# and fails when it is not there.
needs_luv() { "$LUA" -e 'require "luv"' 2>/dev/null || { reason="luv not installed (lua-luv)"; return 1; }; }
needs_cmd() { command -v "$1" >/dev/null || { reason="$1 not installed ($2)"; return 1; }; }
needs_cpus() {
  command -v taskset >/dev/null || { reason="taskset not installed (util-linux)"; return 1; }
  [ "$(nproc)" -gt "$((SERVER_CPU > CLIENT_CPU ? SERVER_CPU : CLIENT_CPU))" ] ||
    { reason="needs CPUs $SERVER_CPU and $CLIENT_CPU, this machine has $(nproc)"; return 1; }
}

# run_rounds BENCH CONTENDER...: REPS rounds of every contender, in rotating
# order, each through measure_BENCH; appends one line per contender to
# RESULTS: bench, contender, median, the samples, why it is n/a, and the
# extras of every round (key=value;...; report.lua takes their medians).
run_rounds() {
  local bench=$1 rep i name n
  shift
  local -a names=("$@")
  local -A samples=() why=() extras=()
  n=${#names[@]}
  for name in "${names[@]}"; do
    samples[$name]='' extras[$name]='' reason=
    "available_$bench" "$name" || true
    why[$name]=${reason//$'\t'/ }
    [ -z "$reason" ] || note "$bench $name: n/a: $reason"
  done
  for ((rep = 0; rep < REPS; rep++)); do
    for ((i = 0; i < n; i++)); do
      name=${names[(i + rep) % n]}
      [ -z "${why[$name]}" ] || continue
      value='' reason='' extra=''
      if "measure_$bench" "$name" && [ -n "$value" ]; then
        samples[$name]+=" $value"
        extras[$name]+="${extra:+$extra;}"
        printf '   %-9s round %d  %-12s %s\n' "$bench" $((rep + 1)) "$name" "$value" >&2
      else
        reason=${reason%%$'\n'*}  # one line, no tabs: it goes in a table cell
        why[$name]=${reason//$'\t'/ }
        why[$name]=${why[$name]:-failed without a reason}
        note "$bench $name: n/a: ${why[$name]}"
      fi
    done
  done
  for name in "${names[@]}"; do
    local med=
    if [ -z "${why[$name]}" ]; then
      # shellcheck disable=SC2086  # the list is meant to split
      med=$(median ${samples[$name]})
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$bench" "$name" "$med" "${samples[$name]# }" \
      "${why[$name]}" "${extras[$name]}" >>"$RESULTS"
  done
}

# run_rate CMD...: runs a program that prints "... rate=R"; sets value.
run_rate() {
  local out
  if ! out=$("$@" 2>"$TMP/stderr.log"); then
    reason=$(grep -m1 . "$TMP/stderr.log" || true)
    reason=${reason:-"$* failed"}
    return 1
  fi
  value=$(sed -nE 's/^(.* )?rate=([0-9.eE+]+).*$/\2/p' <<<"$out")
  [ -n "$value" ] || { reason="no rate in: $out"; return 1; }
}

# run_fio ARGS...: fio's read IOPS for one job (or one group); sets value.
run_fio() {
  local out
  if ! out=$(fio --output-format=terse --terse-version=3 "$@" 2>"$TMP/stderr.log"); then
    reason="fio: $(grep -m1 . "$TMP/stderr.log" || echo failed)"
    return 1
  fi
  # terse v3: field 5 is the error, field 8 the read IOPS
  value=$(awk -F';' '$1 == 3 && $5 == 0 { print $8; exit }' <<<"$out")
  if [ -z "$value" ] || [ "$value" = 0 ]; then
    reason="fio gave no IOPS: $out"
    return 1
  fi
}

FIO_RANDREAD=(--name=randread --rw=randread --bs=4k --norandommap
  --time_based "--runtime=$FIO_SECS")

################################################################ test files

# Written from /dev/urandom, not sparse and not zeros, so every block is
# real data (on disk for O_DIRECT, in the page cache when read cached).
# Made once and reused while the size matches.
make_file() {  # make_file PATH MIB
  if [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -ne $(($2 << 20)) ]; then
    note "creating $1 ($2 MiB)"
    head -c "$(($2 << 20))" /dev/urandom >"$1.part"
    mv "$1.part" "$1"
  fi
}

direct_ok() { dd if="$1" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; }

DATA_DIR=${DATA_DIR:-$TMP}
CACHED_FILE='' BIG_FILE='' DIRECT_NOTE=''
if selected_has randread || selected_has direct || selected_has copy; then
  mkdir -p "$DATA_DIR"
  BIG_FILE=$DATA_DIR/data-${BIG_MIB}M.dat
  if selected_has direct || selected_has copy; then
    make_file "$BIG_FILE" "$BIG_MIB"
    if selected_has direct && ! direct_ok "$BIG_FILE"; then
      note "$DATA_DIR refuses O_DIRECT; trying /var/tmp/ioq-bench"
      DATA_DIR=/var/tmp/ioq-bench
      mkdir -p "$DATA_DIR"
      BIG_FILE=$DATA_DIR/data-${BIG_MIB}M.dat
      make_file "$BIG_FILE" "$BIG_MIB"
      direct_ok "$BIG_FILE" || DIRECT_NOTE="neither $TMP nor /var/tmp accepts O_DIRECT"
    fi
  fi
  CACHED_FILE=$DATA_DIR/data-${CACHED_MIB}M.dat
  selected_has randread && make_file "$CACHED_FILE" "$CACHED_MIB"
fi

################################################################ nop

available_nop() { :; }
measure_nop() {
  case $1 in
    c) run_rate "$TMP/uring_bench" nop "$NOP_OPS" ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua nop "$NOP_OPS" ;;
    ioq-reuse) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua nop-reuse "$NOP_OPS" ;;
    ioq-tasks) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua nop-tasks "$NOP_OPS" ;;
  esac
}

################################################################ randread

available_randread() {
  case $1 in
    fio) needs_cmd fio fio ;;
    luv) needs_luv ;;
  esac
}
measure_randread() {
  case $1 in
    c) run_rate "$TMP/uring_bench" randread "$CACHED_FILE" "$READ_OPS" ;;
    fio) run_fio "${FIO_RANDREAD[@]}" "--filename=$CACHED_FILE" --ioengine=io_uring \
      --iodepth=64 --invalidate=0 --direct=0 ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua randread "$CACHED_FILE" "$READ_OPS" ;;
    ioq-reuse) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua randread-reuse \
      "$CACHED_FILE" "$READ_OPS" ;;
    ioq-epoll) run_rate env IOQ_BACKEND=epoll "$LUA" bench/ops.lua randread-reuse \
      "$CACHED_FILE" "$READ_OPS" ;;
    luv) run_rate "$LUA" bench/luv_randread.lua "$CACHED_FILE" "$READ_OPS" ;;
  esac
}

################################################################ direct

available_direct() {
  if [ -n "$DIRECT_NOTE" ]; then reason=$DIRECT_NOTE; return 1; fi
  case $1 in
    fio-uring | fio-psync) needs_cmd fio fio ;;
    luv) needs_luv ;;
  esac
}
measure_direct() {
  case $1 in
    fio-uring) run_fio "${FIO_RANDREAD[@]}" "--filename=$BIG_FILE" --ioengine=io_uring \
      --iodepth=64 --direct=1 ;;
    c) run_rate "$TMP/uring_bench" randread "$BIG_FILE" "$DIRECT_OPS" direct ;;
    # psync has one read in flight per thread: 64 threads for QD 64.
    fio-psync) run_fio "${FIO_RANDREAD[@]}" "--filename=$BIG_FILE" --ioengine=psync --direct=1 \
      --numjobs=64 --thread --group_reporting ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/ops.lua randread "$BIG_FILE" \
      "$DIRECT_OPS" direct ;;
    luv) run_rate "$LUA" bench/luv_randread.lua "$BIG_FILE" "$DIRECT_OPS" direct ;;
  esac
}

################################################################ copy

available_copy() {
  case $1 in
    luv) needs_luv ;;
  esac
}
# Each copy is timed from start to exit of its process(es), ends with an
# fsync of the copy (coreutils' `sync FILE` for cp, as the example and the
# luv script do), and is checked with cmp afterwards. Rate in MiB/s.
measure_copy() {
  local dest=$DATA_DIR/copy-$1.out t0 t1
  rm -f "$dest"
  sync  # the previous contender's writeback must not land in this one's time
  t0=$EPOCHREALTIME
  case $1 in
    cp) cp "$BIG_FILE" "$dest" && sync "$dest" ;;
    ioq) env IOQ_BACKEND=io_uring "$LUA" bench/ioq_copy.lua "$BIG_FILE" "$dest" >/dev/null ;;
    luv) "$LUA" bench/luv_copy.lua "$BIG_FILE" "$dest" >/dev/null ;;
  esac 2>"$TMP/stderr.log" || { reason=$(grep -m1 . "$TMP/stderr.log" || echo "$1 failed"); return 1; }
  t1=$EPOCHREALTIME
  if ! cmp -s "$BIG_FILE" "$dest"; then
    reason="the copy differs from its source"
    return 1
  fi
  rm -f "$dest"
  value=$(awk -v m="$BIG_MIB" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", m / (b - a) }')
}

################################################################ stat

# The tree the stat and readdir contenders share, made once (fs_bench
# keeps what exists); every name it holds is in the dentry cache after
# the first round, so these measure each way's cost per call, not a disk.
FS_TREE=''
make_tree() {
  [ -z "$FS_TREE" ] || return 0
  FS_TREE=$DATA_DIR/fstree
  mkdir -p "$DATA_DIR"
  if [ ! -e "$FS_TREE/d$((FS_DIRS - 1))/f$(printf %04d $((FS_FILES - 1)))" ]; then
    note "creating $FS_TREE ($FS_DIRS directories of $FS_FILES files)"
    "$TMP/fs_bench" mkfiles "$FS_TREE" "$FS_DIRS" "$FS_FILES" || die "cannot make $FS_TREE"
  fi
}

# What the ioq contenders of these benchmarks need from ioq itself (the
# calls come from branches merged late): a reason when it is missing.
needs_ioq() {  # needs_ioq LUA-EXPRESSION WHAT
  "$LUA" -e "local ioq = require 'ioq'; assert($1)" 2>/dev/null ||
    { reason="this ioq has no $2"; return 1; }
}

available_stat() {
  case $1 in
    ioq | ioq-raw | ioq-epoll) needs_ioq 'ioq.queue().stat' 'q:stat' ;;
    luv) needs_luv ;;
  esac
}
measure_stat() {
  local args=("$FS_TREE" "$FS_DIRS" "$FS_FILES" "$STAT_OPS")
  case $1 in
    c) run_rate "$TMP/fs_bench" stat "${args[@]}" ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/platform.lua stat "${args[@]}" ;;
    ioq-raw) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/platform.lua stat-raw "${args[@]}" ;;
    ioq-epoll) run_rate env IOQ_BACKEND=epoll "$LUA" bench/platform.lua stat "${args[@]}" ;;
    luv) run_rate "$LUA" bench/luv_platform.lua stat "${args[@]}" ;;
  esac
}

################################################################ readdir

available_readdir() {
  case $1 in
    ioq | ioq-epoll) needs_ioq 'ioq.queue().readdir' 'q:readdir' ;;
    ioq-iter) needs_ioq 'ioq.fs.dir' 'ioq.fs.dir' ;;
    luv) needs_luv ;;
  esac
}
measure_readdir() {
  local args=("$FS_TREE" "$FS_DIRS" "$LISTINGS")
  case $1 in
    c) run_rate "$TMP/fs_bench" readdir "${args[@]}" ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/platform.lua readdir "${args[@]}" ;;
    ioq-iter) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/platform.lua readdir-iter "${args[@]}" ;;
    ioq-epoll) run_rate env IOQ_BACKEND=epoll "$LUA" bench/platform.lua readdir "${args[@]}" ;;
    luv) run_rate "$LUA" bench/luv_platform.lua readdir "${args[@]}" ;;
  esac
}

################################################################ spawn

available_spawn() {
  [ -x "$SPAWN_PROG" ] || { reason="$SPAWN_PROG is not there"; return 1; }
  case $1 in
    ioq | ioq-epoll) needs_ioq 'ioq.process' 'ioq.process' ;;
    luv) needs_luv ;;
  esac
}
measure_spawn() {
  local args=("$SPAWN_PROG" "$SPAWNS" "$SPAWN_CONC")
  case $1 in
    c) run_rate "$TMP/fs_bench" spawn "${args[@]}" ;;
    ioq) run_rate env IOQ_BACKEND=io_uring "$LUA" bench/platform.lua spawn "${args[@]}" ;;
    ioq-epoll) run_rate env IOQ_BACKEND=epoll "$LUA" bench/platform.lua spawn "${args[@]}" ;;
    luv) run_rate "$LUA" bench/luv_platform.lua spawn "${args[@]}" ;;
  esac
}

################################################################ servers

# The one server running at a time; the trap stops it however we leave.
server_pid='' server_log=''

cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Ports: one per server, so a server that failed to stop is never mistaken
# for the next one.
port_of() {
  local i=0 s
  for s in echo-c echo-ioq echo-ioq-epoll echo-luv echo-cqueues \
    http-ioq http-ioq-epoll http-luv http-nginx http-nginx-lua \
    idle-c idle-ioq idle-ioq-epoll idle-luv; do
    [ "$s" != "$1" ] || { echo $((BASE_PORT + i)); return; }
    i=$((i + 1))
  done
  die "no port for $1"
}

# server_cmd SERVER: sets cmd to its command line, and ready to the line it
# prints when it listens (empty: poll the port). An ioq server names its
# backend in that line, which must be the one asked for.
server_cmd() {
  local port
  port=$(port_of "$1")
  ready='ready$'
  case $1 in  # the idle benchmark runs the echo servers
    echo-c | idle-c) cmd=("$TMP/echo_uring" "$port") ;;
    echo-ioq | idle-ioq) ready='(io_uring backend), ready$'
      cmd=(env IOQ_BACKEND=io_uring "$LUA" examples/echo_server.lua "$port" "$HOST") ;;
    echo-ioq-epoll | idle-ioq-epoll) ready='(epoll backend), ready$'
      cmd=(env IOQ_BACKEND=epoll "$LUA" examples/echo_server.lua "$port" "$HOST") ;;
    echo-luv | idle-luv) cmd=("$LUA" bench/net/echo_luv.lua "$port") ;;
    echo-cqueues) cmd=("$LUA" bench/net/echo_cqueues.lua "$port") ;;
    http-ioq) ready='(io_uring backend), ready$'
      cmd=(env IOQ_BACKEND=io_uring "$LUA" examples/http_hello.lua "$port" "$HOST") ;;
    http-ioq-epoll) ready='(epoll backend), ready$'
      cmd=(env IOQ_BACKEND=epoll "$LUA" examples/http_hello.lua "$port" "$HOST") ;;
    http-luv) cmd=("$LUA" bench/net/http_luv.lua "$port") ;;
    http-nginx | http-nginx-lua) ready=
      local dir=$PWD/$TMP/${1#http-}
      nginx_conf "$port" "$dir" "${1#http-}"
      cmd=(nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;') ;;
  esac
}

# nginx in the foreground with one worker; everything it writes stays in
# DIR. nginx answers every request from its configuration; nginx-lua runs
# a Lua handler (ngx_lua, as OpenResty users write them) for each.
nginx_conf() {  # nginx_conf PORT DIR nginx|nginx-lua
  local dir=$2 modules='' handler='return 200 "Hello, world\n";'
  if [ "$3" = nginx-lua ]; then
    # Debian's Lua module needs the development kit module loaded first.
    [ ! -f "$(nginx_modules)/ndk_http_module.so" ] ||
      modules="load_module $(nginx_modules)/ndk_http_module.so;"$'\n'
    modules+="load_module $(nginx_modules)/ngx_http_lua_module.so;"
    handler='content_by_lua_block { ngx.print("Hello, world\n") }'
  fi
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
$modules
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;  # the Lua servers never close a busy connection either
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen $HOST:$1;
    location / { default_type text/plain; $handler }
  }
}
EOF
}

# CPU time, for the servers' cost per request: utime + stime (fields 14
# and 15 of /proc/PID/stat, every thread of the process) of PID and all
# its descendants (nginx's worker), in clock ticks.
CLK_TCK=$(getconf CLK_TCK)
tree_ticks() {  # tree_ticks PID
  local total=0 pid line children
  local -a todo=("$1") f
  while [ ${#todo[@]} -gt 0 ]; do
    pid=${todo[0]}
    todo=("${todo[@]:1}")
    read -r line <"/proc/$pid/stat" 2>/dev/null || continue
    read -ra f <<<"${line##*) }"  # f[0] is field 3, the state
    total=$((total + f[11] + f[12]))
    children=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
    # shellcheck disable=SC2206  # the list is meant to split
    todo+=($children)
  done
  echo "$total"
}

# start_server SERVER: runs it on SERVER_CPU and waits until it serves.
start_server() {
  local i port
  port=$(port_of "$1")
  port_free "$port" || { reason="port $port is in use (set BASE_PORT)"; return 1; }
  server_cmd "$1"
  server_log=$TMP/server-$1.log
  : >"$server_log"  # now: the last round's "ready" must not be read as this one's
  taskset -c "$SERVER_CPU" "${cmd[@]}" >"$server_log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 100; i++)); do
    if [ -n "$ready" ]; then
      grep -q 'ready$' "$server_log" && break
    elif ! port_free "$port"; then
      break
    fi
    kill -0 "$server_pid" 2>/dev/null || { i=100; break; }
    sleep 0.1
  done
  if [ "$i" -ge 100 ]; then
    reason="did not start: $(grep -m1 . "$server_log" || echo 'no output')"
    cleanup
    return 1
  fi
  if [ -n "$ready" ] && ! grep -q -- "$ready" "$server_log"; then
    reason="ran on another backend than asked: $(cat "$server_log")"
    cleanup
    return 1
  fi
}

# Stops the server with SIGTERM, as a user would; it must end cleanly.
stop_server() {
  local i status=0
  kill -TERM "$server_pid"
  for ((i = 0; i < 50; i++)); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    cleanup
    kill -KILL "$server_pid" 2>/dev/null || true
    reason="ignored SIGTERM for 5 s (log: $server_log)"
    return 1
  fi
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" = 0 ] || { reason="exited with status $status (log: $server_log)"; return 1; }
}

################################################################ echo

available_echo() {
  needs_cpus || return 1
  case $1 in
    luv) needs_luv ;;
    cqueues) "$LUA" -e 'require "cqueues"' 2>/dev/null ||
      { reason="cqueues not installed for $LUA (lua-cqueues)"; return 1; } ;;
  esac
}
# bench/net/load.c keeps CONNS connections in a MSG-byte ping-pong and
# checks every echoed byte; the rate is round trips per second.
measure_echo() {
  local line
  start_server "echo-$1" || return 1
  if ! line=$(taskset -c "$CLIENT_CPU" "$TMP/load" -c "$CONNS" -m "$MSG" -w "$WARMUP" \
    -d "$ECHO_SECS" -p "$server_pid" "$HOST" "$(port_of "echo-$1")" 2>"$TMP/stderr.log"); then
    reason="load client: $(grep -m1 . "$TMP/stderr.log" || echo failed)"
    cleanup
    return 1
  fi
  stop_server || return 1
  value=$(sed -nE 's/^.* rate=([0-9.]+).*$/\1/p' <<<"$line")
  extra="server_cpu=$(sed -nE "s/^.* cpu$SERVER_CPU=([0-9.]+).*\$/\\1/p" <<<"$line")"
  extra+=";client_cpu=$(sed -nE "s/^.* cpu$CLIENT_CPU=([0-9.]+).*\$/\\1/p" <<<"$line")"
  extra+=";server_own=$(sed -nE 's/^.* server_cpu=([0-9.]+).*$/\1/p' <<<"$line")"
  extra+=";cpu_us=$(sed -nE 's/^.* server_us=([0-9.]+).*$/\1/p' <<<"$line")"
}

################################################################ http

available_http() {
  needs_cpus || return 1
  needs_cmd wrk wrk || return 1
  case $1 in
    luv) needs_luv ;;
    nginx) needs_cmd nginx nginx-light ;;
    nginx-lua) needs_cmd nginx nginx-light || return 1
      [ -f "$(nginx_modules)/ngx_http_lua_module.so" ] ||
        { reason="nginx's Lua module not installed (libnginx-mod-http-lua)"; return 1; } ;;
  esac
}

# The answer to a fixed pipelined exchange (keep-alive, a body to drop,
# HTTP/1.0, then Connection: close, after which the server must close).
http_exchange() (
  exec 3<>"/dev/tcp/$HOST/$1"
  printf '%b' "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" \
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n" \
    "GET /never HTTP/1.1\r\n\r\n" >&3
  # A server that closes with /never unread resets the connection: the
  # answers before are read all the same; only a server that does not
  # close (timeout's 124) fails here.
  timeout 5 cat <&3 2>/dev/null
  [ $? -ne 124 ]
)

# Before the first measurement of each server: the Lua servers must answer
# byte for byte alike (same work for wrk); nginx must answer 200 with the
# same body (its headers are its own).
http_expected=
http_check() {
  local port=$2 got
  if [ "${1%-lua}" = nginx ]; then
    got=$(printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
      timeout 5 bash -c "exec 3<>/dev/tcp/$HOST/$port; cat >&3; cat <&3") || true
    case $got in  # nginx-lua's body comes chunked
      "HTTP/1.1 200 OK"*"Hello, world"*) return 0 ;;
      *) reason="$1 answered: $(head -n1 <<<"$got")"; return 1 ;;
    esac
  fi
  got=$(http_exchange "$port" | od -An -c) || { reason="the HTTP check failed"; return 1; }
  [ -n "$http_expected" ] || http_expected=$got
  [ "$got" = "$http_expected" ] || { reason="answers differently from the other Lua servers"; return 1; }
}

declare -A http_checked=()
measure_http() {
  local port out ticks0 ticks1 requests
  port=$(port_of "http-$1")
  start_server "http-$1" || return 1
  if [ -z "${http_checked[$1]:-}" ]; then
    http_check "$1" "$port" || { cleanup; return 1; }
    http_checked[$1]=1
  fi
  ticks0=$(tree_ticks "$server_pid")
  if ! out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c100 -d"${HTTP_SECS}s" "http://$HOST:$port/" 2>&1); then
    reason="wrk failed: $(grep -m1 . <<<"$out")"
    cleanup
    return 1
  fi
  ticks1=$(tree_ticks "$server_pid")
  stop_server || return 1
  requests=$(sed -nE 's/^ *([0-9]+) requests in .*/\1/p' <<<"$out")
  if [ -n "$requests" ] && [ "$requests" -gt 0 ]; then
    extra="cpu_us=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="$requests" \
      'BEGIN { printf "%.3f", 1e6 * t / hz / n }')"
    extra+=";server_cpu=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v s="$HTTP_SECS" \
      'BEGIN { printf "%.0f", 100 * t / hz / s }')"
  fi
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    reason="wrk saw errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | head -n1)"
    return 1
  fi
  value=$(sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' <<<"$out")
}

################################################################ idle

# Both the server and the idle client hold IDLE_CONNS descriptors: raise
# the soft limit (and, as root, the hard one) for this shell and its
# children, once.
IDLE_FDS=$((IDLE_CONNS + 256))
idle_limits=''
available_idle() {
  local lo hi
  needs_cpus || return 1
  if [ -z "$idle_limits" ]; then
    idle_limits=raised
    [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge "$IDLE_FDS" ] ||
      ulimit -Hn "$IDLE_FDS" 2>/dev/null || true
    [ "$(ulimit -Sn)" = unlimited ] || [ "$(ulimit -Sn)" -ge "$IDLE_FDS" ] ||
      ulimit -Sn "$IDLE_FDS" 2>/dev/null || true
  fi
  if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$IDLE_FDS" ]; then
    reason="needs ulimit -n >= $IDLE_FDS (the hard limit is $(ulimit -Hn))"
    return 1
  fi
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
  [ $((hi - lo)) -gt "$IDLE_CONNS" ] ||
    { reason="needs more than $IDLE_CONNS local ports (net.ipv4.ip_local_port_range is $lo-$hi)"; return 1; }
  case $1 in
    luv) needs_luv ;;
  esac
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Resident memory of the echo server before and after the idle client
# opened IDLE_CONNS connections (and checked every tenth is served); the
# value is the growth per connection, in KiB. The server closes them
# (SIGTERM), and the client exits when its first connection ends.
measure_idle() {
  local rss0 rss1 client_pid log=$TMP/idle-client.log i
  start_server "idle-$1" || return 1
  sleep 0.2  # anything the server does right after "ready" is not per connection
  rss0=$(rss_kib "$server_pid")
  : >"$log"
  taskset -c "$CLIENT_CPU" "$TMP/idle_client" -n "$IDLE_CONNS" -e 10 "$HOST" \
    "$(port_of "idle-$1")" >"$log" 2>&1 &
  client_pid=$!
  for ((i = 0; i < 600; i++)); do  # a minute at most
    grep -q 'ready$' "$log" && break
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q 'ready$' "$log"; then
    reason="idle client: $(grep -m1 . "$log" || echo 'no answer in 60 s')"
    kill "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
    cleanup
    return 1
  fi
  sleep 0.5  # let the server settle (the last accepts, its own timers)
  rss1=$(rss_kib "$server_pid")
  stop_server || { kill "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true; return 1; }
  for ((i = 0; i < 50; i++)); do
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$client_pid" 2>/dev/null || true
  wait "$client_pid" 2>/dev/null || true
  value=$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')
  extra="rss0_kib=$rss0;rss1_kib=$rss1"
}

################################################################ the run

meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not installed"; }
tool_version() {  # tool_version COMMAND PACKAGE: the package's version, if the tool is there
  if command -v "$1" >/dev/null; then pkg_version "$2"; else echo "not installed"; fi
}

: >"$META"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta mode "$([ "$QUICK" = 1 ] && echo "QUICK=1 (short runs: a smoke test, not for comparison)" ||
  echo "full")"
meta rounds "$REPS"
# The hypervisor, not a container around us: the CPUs are what matter.
virt=$(systemd-detect-virt --vm 2>/dev/null) || true
case $virt in
  none) virt="bare metal" ;;
  '') if grep -qw hypervisor /proc/cpuinfo; then virt="a VM"; else virt="no hypervisor seen"; fi ;;
  *) virt="$virt VM" ;;
esac
meta machine "$(nproc) CPUs ($virt), \
$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), \
$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
# shellcheck disable=SC1091  # the system's own file
meta os "$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r) $(uname -m)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
meta lua "$("$LUA" -v 2>&1 | cut -d' ' -f1-2)"
# The commit goes in through the environment: `lua -e CODE ARG` would run
# ARG as a script, and give CODE no arg[1].
meta ioq "$(IOQ_GIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src lua 2>/dev/null || echo +changes)" \
  "$LUA" -e 'local ioq = require "ioq"
  print(ioq.version .. " (git " .. os.getenv("IOQ_GIT") .. "), io_uring features: " ..
        table.concat(ioq.queue{ backend = "io_uring" }:features(), " "))')"
meta liburing "$(pkg-config --modversion liburing 2>/dev/null || echo unknown)"
meta gcc "$("$CC" --version | head -n1)"
meta fio "$(tool_version fio fio)"
meta luv "$(pkg_version lua-luv)$("$LUA" -e 'print(", libuv " .. require("luv").version_string())' 2>/dev/null || true)"
meta cqueues "$(pkg_version lua-cqueues) (run under $("$LUA" -v 2>&1 | cut -d' ' -f1-2))"
meta nginx "$(tool_version nginx nginx-light), Lua module $(pkg_version libnginx-mod-http-lua)"
meta wrk "$(tool_version wrk wrk)"
meta gnuplot "$(tool_version gnuplot gnuplot-nox)"
if [ -n "$BIG_FILE$CACHED_FILE" ] || selected_has stat || selected_has readdir; then
  meta files "$DATA_DIR on $(df -T "$DATA_DIR" | awk 'NR == 2 { print $2 }')${DIRECT_NOTE:+ ($DIRECT_NOTE)}"
fi
meta sizes "NOP: $NOP_OPS ops; cached reads: $READ_OPS ops of 4 KiB on $CACHED_MIB MiB; \
O_DIRECT reads: $DIRECT_OPS ops on $BIG_MIB MiB (fio: ${FIO_SECS} s); copy: $BIG_MIB MiB; \
stat: $STAT_OPS stats round $((FS_DIRS * FS_FILES)) files, 64 in flight; \
readdir: $LISTINGS listings of $FS_FILES-entry directories, 8 in flight; \
spawn: $SPAWNS runs of $SPAWN_PROG, $SPAWN_CONC at once; \
echo: $CONNS connections, $MSG B, ${ECHO_SECS} s after ${WARMUP} s; http: wrk -t1 -c100 -d${HTTP_SECS}s; \
idle: $IDLE_CONNS connections, a round trip on every tenth"
meta servers "pinned to CPU $SERVER_CPU, load generators (load.c, wrk) to CPU $CLIENT_CPU"

for bench in "${selected[@]}"; do
  note "$bench"
  case $bench in
    nop) run_rounds nop c ioq ioq-reuse ioq-tasks ;;
    randread)
      cat "$CACHED_FILE" >/dev/null  # into the page cache
      run_rounds randread c fio ioq ioq-reuse ioq-epoll luv ;;
    direct) run_rounds direct fio-uring fio-psync c ioq luv ;;
    copy)
      cat "$BIG_FILE" >/dev/null  # every contender copies from the page cache
      run_rounds copy cp ioq luv ;;
    stat) make_tree; run_rounds stat c ioq ioq-raw ioq-epoll luv ;;
    readdir) make_tree; run_rounds readdir c ioq ioq-iter ioq-epoll luv ;;
    spawn) run_rounds spawn c ioq ioq-epoll luv ;;
    echo) run_rounds echo c ioq ioq-epoll luv cqueues ;;
    http) run_rounds http nginx nginx-lua ioq ioq-epoll luv ;;
    idle) run_rounds idle c ioq ioq-epoll luv ;;
  esac
done

meta load "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end \
(other work on the machine shows here)"
meta took "$((EPOCHSECONDS - started)) s"
meta missing "${APT_LINE:+to fill the n/a rows: $APT_LINE}"

"$LUA" bench/report.lua "$RESULTS" "$META" "$OUT.md" "$TMP/chart.dat"
wrote="$OUT.md"
if command -v gnuplot >/dev/null; then
  subtitle="$(sed -n 's/^date\t//p' "$META"), $(nproc) vCPUs, Linux $(uname -r)"
  [ "$QUICK" = 0 ] || subtitle+=", QUICK=1 (smoke test)"
  data='' idle=''  # '' for a panel with nothing to show (a partial run)
  [ ! -s "$TMP/chart.dat" ] || data=$TMP/chart.dat
  [ ! -s "$TMP/chart-idle.dat" ] || idle=$TMP/chart-idle.dat
  gnuplot -e "data='$data'; idle='$idle'; out='$OUT.png'; subtitle='$subtitle'" bench/chart.gp
  wrote+=" and $OUT.png"
else
  note "gnuplot not installed: no chart (apt-get install -y gnuplot-nox)"
fi
cat "$OUT.md"
note "wrote $wrote in $((EPOCHSECONDS - started)) s"
[ -z "$APT_LINE" ] || note "some rows are n/a for missing packages: $APT_LINE"
