#!/bin/bash
# Runs every spec under busted, for each build mode in IOQ_MODES and each
# backend in IOQ_BACKENDS, and ends with one plain summary line:
# "N passed, N failed, N skipped".
#
#   IOQ_MODES     "plain" (build/), "asan" (build-asan/, ASan+UBSan, the
#                 sanitizer runtime preloaded into the Lua processes only),
#                 "valgrind" (build/, busted under valgrind memcheck),
#                 "wine" (build-win/, the Windows build under Wine, with
#                 spec/support/runner.lua since busted cannot run there);
#                 default "plain"
#   IOQ_BACKENDS  default: every backend ioq.backends() finds here
set -u
LUA=${LUA:-lua5.4}
BUSTED=${BUSTED:-"$LUA /usr/bin/busted"}
modes=${IOQ_MODES:-plain}
passed=0 failed=0 skipped=0 status=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() { if [ -n "${IOQ_PRELOAD:-}" ]; then LD_PRELOAD="$IOQ_PRELOAD" "$@"; else "$@"; fi; }
# Leaks that count are definite ones; the "possibly lost" blocks of a Lua
# state that busted ends with os.exit are not ours and only bury the report.
VALGRIND="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"

# Runs Lua code against the build in $IOQ_CPATH: lua ARGS...
run_lua() {
  LUA_CPATH="$IOQ_CPATH/?.so;;" LUA_PATH="lua/?.lua;;" run $LUA "$@"
}
wine_run() {
  LUA_CPATH="$IOQ_CPATH/?.dll;;" LUA_PATH="lua/?.lua;;" $WINE_LUA "$@"
}

count() {  # adds busted's summary in $log to the totals
  local summary s f e p
  summary=$(grep -aE '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' "$log" |
    tail -n 1 | sed -E 's/\x1b\[[0-9;]*m//g')
  if [ -z "$summary" ]; then
    echo "busted ended without a summary"
    failed=$((failed + 1)); status=1; return
  fi
  read -r s f e p <<<"$(grep -oE '[0-9]+ (success|failure|error|pending)' <<<"$summary" |
    awk '{ printf "%s ", $1 }')"
  passed=$((passed + s)); failed=$((failed + f + e)); skipped=$((skipped + p))
}

# The Windows lua.exe under Wine; luassert and say are pure Lua, taken from
# Debian's packages through Wine's Z: drive.
WINE_LUA="sh mk/wine-lua.sh"
WINE_PATH='Z:\usr\share\lua\5.1\?.lua;Z:\usr\share\lua\5.1\?\init.lua;;'

for mode in $modes; do
  wrap=
  runner=$BUSTED
  lua=run_lua
  unset IOQ_VALGRIND LUA_PATH
  case $mode in
    plain) export IOQ_CPATH=build; unset IOQ_PRELOAD ;;
    valgrind) export IOQ_CPATH=build IOQ_VALGRIND=1; unset IOQ_PRELOAD; wrap=$VALGRIND ;;
    wine)
      export IOQ_CPATH=build-win; unset IOQ_PRELOAD
      lua=wine_run
      runner="$WINE_LUA spec/support/runner.lua"
      export LUA_PATH=$WINE_PATH
      [ $# -gt 0 ] || set -- spec/*_spec.lua $(ls spec/regress/*_spec.lua 2>/dev/null)
      ;;
    asan)
      export IOQ_CPATH=build-asan
      export IOQ_PRELOAD="$(${CC:-cc} -print-file-name=libasan.so) $(${CC:-cc} -print-file-name=libubsan.so)"
      export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:exitcode=23
      export LSAN_OPTIONS=suppressions=$PWD/spec/lsan.supp:print_suppressions=0
      export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      ;;
    *) echo "unknown mode $mode"; exit 2 ;;
  esac
  backends=${IOQ_BACKENDS:-$($lua -e 'print(table.concat(require("ioq").backends(), " "))' | tr -d '\r')}
  if [ -z "$backends" ]; then
    echo "no usable backend found (could ioq.core load from $IOQ_CPATH?)"
    failed=$((failed + 1)); status=1; continue
  fi
  for backend in $backends; do
    echo "== specs: $mode build, $backend backend"
    # shellcheck disable=SC2086  # $wrap and $BUSTED are command words
    IOQ_BACKEND=$backend run timeout 900 $wrap $runner -o utfTerminal "$@" 2>&1 | tee "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    count
  done
done
[ "$failed" -eq 0 ] || status=1
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
