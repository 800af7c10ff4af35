#!/bin/sh
# mk/wine-lua.sh ARGS...: runs the Windows lua.exe (make windows) under Wine,
# in a Wine prefix of its own under build-win/, quietly.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${WIN_BUILD:-build-win}
case $build in /*) ;; *) build="$root/$build" ;; esac
export WINEPREFIX="$build/wineprefix" WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="   # no Mono or Gecko prompts
exec wine "$build/lua/lua.exe" "$@"
