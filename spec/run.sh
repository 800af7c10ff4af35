#!/bin/bash
# Runs every spec under busted, once per backend given in IOQ_BACKENDS
# (default: every backend this machine supports), and ends with one plain
# summary line: "N passed, N failed, N skipped".
# IOQ_PRELOAD (set by `make asan`) is preloaded into the Lua processes only.
set -u
LUA=${LUA:-lua5.4}
BUSTED=${BUSTED:-"$LUA /usr/bin/busted"}
export IOQ_CPATH=${IOQ_CPATH:-build}
run() { if [ -n "${IOQ_PRELOAD:-}" ]; then LD_PRELOAD="$IOQ_PRELOAD" "$@"; else "$@"; fi; }
backends=${IOQ_BACKENDS:-$(LUA_CPATH="$IOQ_CPATH/?.so;;" LUA_PATH="lua/?.lua;;" \
  run $LUA -e 'print(table.concat(require("ioq").backends(), " "))')}
if [ -z "$backends" ]; then
  echo "no usable backend found (could ioq.core load from $IOQ_CPATH?)"
  echo "0 passed, 1 failed"
  exit 1
fi
passed=0 failed=0 skipped=0 status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for backend in $backends; do
  echo "== specs on backend: $backend"
  IOQ_BACKEND=$backend run timeout 1200 $BUSTED -o utfTerminal "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  summary=$(grep -aE '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$log" | tail -n 1 |
    sed -E 's/\x1b\[[0-9;]*m//g')
  if [ -z "$summary" ]; then
    echo "busted ended without a summary (exit $rc)"
    failed=$((failed + 1)); status=1; continue
  fi
  read -r s f e p <<<"$(grep -oE '[0-9]+ (success|failure|error|pending)' <<<"$summary" |
    awk '{ printf "%s ", $1 }')"
  passed=$((passed + s)); failed=$((failed + f + e)); skipped=$((skipped + p))
  [ "$rc" -eq 0 ] || status=1
done
[ "$failed" -eq 0 ] || status=1
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
