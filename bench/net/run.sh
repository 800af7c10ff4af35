#!/bin/bash
# bench/net/run.sh: network servers on loopback, ioq against a C server on
# raw liburing (the physical limit) and against luv (libuv), in one run;
# ioq both on io_uring and on its epoll backend (IOQ_BACKEND=epoll).
#
#   bash bench/net/run.sh            about three minutes
#   QUICK=1 bash bench/net/run.sh    shorter windows, about a minute
#
# echo: bench/net/load.c drives each echo server with CONNS connections
#   (100) playing ping-pong with MSG-byte messages (128), and checks every
#   echo byte for byte. Contenders: bench/net/echo_uring.c (C),
#   examples/echo_server.lua on io_uring (ioq) and on epoll (ioq epoll),
#   and bench/net/echo_luv.lua (luv).
# http: wrk -t1 -c100 against examples/http_hello.lua (ioq, on io_uring
#   and on epoll) and the same server on luv, bench/net/http_luv.lua (each
#   checked to answer byte for byte the same before it is measured).
#
# Each round starts every contender afresh, in turn (C, ioq, ioq epoll,
# luv, C, ...), so drift in the machine hits all of them alike; the tables
# show medians over REPS rounds and the ratios between them. Servers run
# pinned to CPU SERVER_CPU (0), the client to CLIENT_CPU (1), everything on
# 127.0.0.1.
#
# Knobs: LUA (lua5.4), CC, REPS (3), CONNS, MSG, ECHO_SECS, WARMUP,
# HTTP_SECS, SERVER_CPU, CLIENT_CPU, and the ports PORT_C, PORT_IOQ,
# PORT_LUV, PORT_IOQ_EPOLL, PORT_HTTP_IOQ, PORT_HTTP_LUV, PORT_HTTP_IOQ_EPOLL
# (19701..19704, 19711..19713).
set -euo pipefail

cd "$(dirname "$0")/../.."

LUA=${LUA:-lua5.4}
CC=${CC:-cc}
REPS=${REPS:-3}
CONNS=${CONNS:-100}
MSG=${MSG:-128}
if [ "${QUICK:-0}" = 1 ]; then
  ECHO_SECS=${ECHO_SECS:-2} WARMUP=${WARMUP:-0.5} HTTP_SECS=${HTTP_SECS:-3}
else
  ECHO_SECS=${ECHO_SECS:-5} WARMUP=${WARMUP:-1} HTTP_SECS=${HTTP_SECS:-10}
fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT_C=${PORT_C:-19701}
PORT_IOQ=${PORT_IOQ:-19702}
PORT_LUV=${PORT_LUV:-19703}
PORT_IOQ_EPOLL=${PORT_IOQ_EPOLL:-19704}
PORT_HTTP_IOQ=${PORT_HTTP_IOQ:-19711}
PORT_HTTP_LUV=${PORT_HTTP_LUV:-19712}
PORT_HTTP_IOQ_EPOLL=${PORT_HTTP_IOQ_EPOLL:-19713}
HOST=127.0.0.1  # fixed: these benchmarks never leave the machine
TMP=bench/results/tmp

die() {
  echo "bench/net/run.sh: $*" >&2
  exit 1
}

for tool in taskset wrk; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y util-linux wrk)"
done
[ "$(nproc)" -gt "$((SERVER_CPU > CLIENT_CPU ? SERVER_CPU : CLIENT_CPU))" ] ||
  die "needs CPUs $SERVER_CPU and $CLIENT_CPU (this machine has $(nproc))"

mkdir -p "$TMP"
make --no-print-directory >&2
# shellcheck disable=SC2046  # pkg-config output is meant to split
"$CC" -O2 -Wall -Wextra -Werror -o "$TMP/echo_uring" bench/net/echo_uring.c \
  $(pkg-config --cflags --libs liburing 2>/dev/null || echo -luring)
"$CC" -O2 -Wall -Wextra -Werror -o "$TMP/load" bench/net/load.c

export LUA_CPATH="$PWD/build/?.so;;"
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
# Each ioq server is started with its backend named: an IOQ_BACKEND left in
# the caller's environment must not turn the io_uring rows into epoll ones.
unset IOQ_BACKEND

# Without luv (Debian's lua-luv) the luv columns are left out, not faked.
HAVE_LUV=1
if ! "$LUA" -e 'require "luv"' 2>/dev/null; then
  echo "luv not found for $LUA (apt-get install -y lua-luv): skipping luv" >&2
  HAVE_LUV=0
fi

# A port someone else listens on would measure their server, not ours.
for port in "$PORT_C" "$PORT_IOQ" "$PORT_LUV" "$PORT_IOQ_EPOLL" \
  "$PORT_HTTP_IOQ" "$PORT_HTTP_LUV" "$PORT_HTTP_IOQ_EPOLL"; do
  if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
    die "port $port on $HOST is in use; set PORT_* to free ports"
  fi
done

# The one server running at a time; the trap stops it however we leave.
server_pid=
server_log=

cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME CMD...: runs CMD on SERVER_CPU, waits for its "ready".
# An ioq server names its backend in that line; a queue that quietly ended
# up on another backend than the one asked for would make the row a lie.
start_server() {
  local name=$1 i
  shift
  server_log=$TMP/net-$name.log
  taskset -c "$SERVER_CPU" "$@" >"$server_log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 100; i++)); do
    if grep -q 'ready$' "$server_log"; then
      [ -z "$backend" ] || grep -q "($backend backend), ready\$" "$server_log" ||
        die "$name did not run on $backend: $(cat "$server_log")"
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$server_log" >&2
  die "$name server did not get ready"
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
    kill -KILL "$server_pid"
    wait "$server_pid" || true
    server_pid=
    die "the server ignored SIGTERM for 5 s (log: $server_log)"
  fi
  wait "$server_pid" || status=$?
  server_pid=
  [ "$status" = 0 ] || die "the server exited with status $status (log: $server_log)"
}

# field NAME LINE: the value of NAME=... in a load line; fails loudly.
field() {
  local v
  v=$(sed -nE "s/^(.* )?$1=([0-9.eE+-]+).*\$/\\2/p" <<<"$2")
  [ -n "$v" ] || die "no $1= in: $2"
  echo "$v"
}

median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# server_cmd NAME: sets cmd to the command line of that server, and
# backend to the ioq backend it must report (empty for the others).
server_cmd() {
  backend=
  case $1 in
    C) cmd=("$TMP/echo_uring" "$PORT_C") ;;
    ioq) backend=io_uring
      cmd=(env IOQ_BACKEND=io_uring "$LUA" examples/echo_server.lua "$PORT_IOQ" "$HOST") ;;
    ioq-epoll) backend=epoll
      cmd=(env IOQ_BACKEND=epoll "$LUA" examples/echo_server.lua "$PORT_IOQ_EPOLL" "$HOST") ;;
    luv) cmd=("$LUA" bench/net/echo_luv.lua "$PORT_LUV") ;;
    http-ioq) backend=io_uring
      cmd=(env IOQ_BACKEND=io_uring "$LUA" examples/http_hello.lua "$PORT_HTTP_IOQ" "$HOST") ;;
    http-ioq-epoll) backend=epoll
      cmd=(env IOQ_BACKEND=epoll "$LUA" examples/http_hello.lua "$PORT_HTTP_IOQ_EPOLL" "$HOST") ;;
    http-luv) cmd=("$LUA" bench/net/http_luv.lua "$PORT_HTTP_LUV") ;;
  esac
}

port_of() {
  case $1 in
    C) echo "$PORT_C" ;; ioq) echo "$PORT_IOQ" ;; luv) echo "$PORT_LUV" ;;
    ioq-epoll) echo "$PORT_IOQ_EPOLL" ;;
    http-ioq) echo "$PORT_HTTP_IOQ" ;; http-luv) echo "$PORT_HTTP_LUV" ;;
    http-ioq-epoll) echo "$PORT_HTTP_IOQ_EPOLL" ;;
  esac
}

# The answer to a fixed pipelined exchange (keep-alive, a body to drop,
# HTTP/1.0, then Connection: close, after which the server must close).
http_exchange() (
  exec 3<>"/dev/tcp/$HOST/$1"
  printf '%b' "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody" \
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n" \
    "GET /never HTTP/1.1\r\n\r\n" >&3
  timeout 5 cat <&3
)

echo "$(date -u +%F) $(uname -sr), $(nproc) CPUs, $("$LUA" -v 2>&1 | cut -d' ' -f1-2)," \
  "ioq features: $("$LUA" -e 'print(table.concat(require("ioq").queue():features(), " "))')" >&2

################################################################ echo

ECHO=(C ioq ioq-epoll)
[ "$HAVE_LUV" = 1 ] && ECHO+=(luv)
cmd=() backend=
declare -A rates cpu_s cpu_c
for name in "${ECHO[@]}"; do rates[$name]='' cpu_s[$name]='' cpu_c[$name]=''; done

for ((rep = 1; rep <= REPS; rep++)); do
  for name in "${ECHO[@]}"; do
    server_cmd "$name"
    start_server "$name" "${cmd[@]}"
    line=$(taskset -c "$CLIENT_CPU" "$TMP/load" -c "$CONNS" -m "$MSG" -w "$WARMUP" \
      -d "$ECHO_SECS" -p "$server_pid" "$HOST" "$(port_of "$name")") ||
      die "the load client failed against $name"
    stop_server
    printf 'echo %-9s %s\n' "$name" "$line" >&2
    rates[$name]+=" $(field rate "$line")"
    cpu_s[$name]+=" $(field "cpu$SERVER_CPU" "$line")"
    cpu_c[$name]+=" $(field "cpu$CLIENT_CPU" "$line")"
  done
done

declare -A med
for name in "${ECHO[@]}"; do
  # shellcheck disable=SC2086  # the lists are meant to split
  med[$name]=$(median ${rates[$name]})
  # shellcheck disable=SC2086
  cpu_s[$name]=$(median ${cpu_s[$name]})
  # shellcheck disable=SC2086
  cpu_c[$name]=$(median ${cpu_c[$name]})
done

label() {
  case $1 in
    C) echo "C liburing" ;; ioq) echo "ioq" ;; luv) echo "luv" ;;
    ioq-epoll | http-ioq-epoll) echo "ioq (epoll)" ;; http-*) echo "${1#http-}" ;;
  esac
}

echo
echo "echo: $CONNS connections, $MSG-byte ping-pong, ${ECHO_SECS} s after ${WARMUP} s warm-up"
printf '%-12s %10s %7s %7s %7s %9s %9s\n' server "req/s" "vs C" "vs ioq" "vs luv" \
  "cpu$SERVER_CPU %" "cpu$CLIENT_CPU %"
for name in "${ECHO[@]}"; do
  awk -v n="$(label "$name")" -v r="${med[$name]}" -v c="${med[C]}" -v i="${med[ioq]}" \
    -v l="${med[luv]:-0}" -v s="${cpu_s[$name]}" -v k="${cpu_c[$name]}" \
    'BEGIN { printf "%-12s %10.0f %7.2f %7.2f %7s %9.0f %9.0f\n", n, r, r / c, r / i,
             (l > 0 ? sprintf("%.2f", r / l) : "-"), s, k }'
done
echo "(medians of $REPS rounds; cpuN %: how busy CPU N was, server on $SERVER_CPU, client on $CLIENT_CPU)"
awk -v i="${med[ioq]}" -v c="${med[C]}" -v l="${med[luv]:-0}" 'BEGIN {
  printf "targets: ioq >= 0.80 of C: %s (%.2f)", (i >= 0.8 * c ? "met" : "MISSED"), i / c
  if (l > 0) printf "; ioq >= 1.5x luv: %s (%.2f)", (i >= 1.5 * l ? "met" : "MISSED"), i / l
  printf "\n" }'
awk -v e="${med[ioq-epoll]}" -v i="${med[ioq]}" -v l="${med[luv]:-0}" 'BEGIN {
  printf "targets: ioq (epoll) >= 0.80 of ioq: %s (%.2f)", (e >= 0.8 * i ? "met" : "MISSED"), e / i
  if (l > 0) printf "; ioq (epoll) >= luv: %s (%.2f)", (e >= l ? "met" : "MISSED"), e / l
  printf "\n" }'

################################################################ http

HTTP=(http-ioq http-ioq-epoll)
[ "$HAVE_LUV" = 1 ] && HTTP+=(http-luv)
declare -A hrates
expected=
for ((rep = 1; rep <= REPS; rep++)); do
  for name in "${HTTP[@]}"; do
    server_cmd "$name"
    start_server "$name" "${cmd[@]}"
    port=$(port_of "$name")
    if [ "$rep" = 1 ]; then  # same bytes from both, or the race is unfair
      got=$(http_exchange "$port" | od -An -c) || die "$name: the HTTP check failed"
      [ -z "$expected" ] && expected=$got
      [ "$got" = "$expected" ] || die "$name answers differently from ${HTTP[0]}"
    fi
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c100 -d"${HTTP_SECS}s" "http://$HOST:$port/") ||
      die "wrk failed against $name"
    stop_server
    rps=$(sed -nE 's/^Requests\/sec: *([0-9.]+).*/\1/p' <<<"$out")
    [ -n "$rps" ] || die "no Requests/sec from wrk: $out"
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
      echo "$out" >&2
      die "wrk saw errors against $name"
    fi
    printf '%-14s requests/s=%s\n' "$name" "$rps" >&2
    hrates[$name]+=" $rps"
  done
done

echo
echo "http: wrk -t1 -c100 -d${HTTP_SECS}s, keep-alive GET / answered \"Hello, world\""
printf '%-12s %10s %7s %7s\n' server "req/s" "vs ioq" "vs luv"
declare -A hmed
for name in "${HTTP[@]}"; do
  # shellcheck disable=SC2086
  hmed[$name]=$(median ${hrates[$name]})
done
for name in "${HTTP[@]}"; do
  awk -v n="$(label "$name")" -v r="${hmed[$name]}" -v i="${hmed[http-ioq]}" \
    -v l="${hmed[http-luv]:-0}" \
    'BEGIN { printf "%-12s %10.0f %7.2f %7s\n", n, r, r / i,
             (l > 0 ? sprintf("%.2f", r / l) : "-") }'
done
echo "(medians of $REPS rounds; responses checked byte-identical)"
