#!/bin/sh
# bootstrap.sh: set up a fresh Debian 12 machine for ioq, build, and run.
#
#   sh bootstrap.sh demo   the main demo: examples/copy.lua
#   sh bootstrap.sh test   every check: luacheck, then all specs on a plain
#                          and on an ASan+UBSan build and under valgrind,
#                          on every backend, and the Windows build (IOCP,
#                          cross-built with mingw-w64) under Wine
#
# Installs the Debian packages it needs (with sudo when not root) only when
# one is missing, so running it again costs nothing. The lists below are
# the one place that says what the build and the tests need: each command
# they run, with the package that provides it, is looked up after the
# install, so a missing entry fails here, by name, not halfway through.
set -eu
cd "$(dirname "$0")"
what=${1:-demo}

# command:package for every command the scripts run
demo_cmds="make:make cc:gcc pkg-config:pkg-config lua5.4:lua5.4"
test_cmds="busted:lua-busted luacheck:lua-check valgrind:valgrind
  x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64 wine:wine
  patch:patch xz:xz-utils tar:tar timeout:coreutils curl:curl"
# headers and libraries, found with pkg-config: module:package
demo_libs="lua5.4:liblua5.4-dev liburing:liburing-dev"
# packages with no command of their own: the 64-bit Wine that `wine` runs
test_pkgs="wine64"

case $what in
  demo) cmds=$demo_cmds extra= ;;
  test) cmds="$demo_cmds $test_cmds" extra=$test_pkgs ;;
  *) echo "usage: sh bootstrap.sh demo|test" >&2; exit 2 ;;
esac

pkgs=$extra
for pair in $cmds $demo_libs; do pkgs="$pkgs ${pair#*:}"; done
missing=
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing:$missing"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends $missing
fi

bad=
for pair in $cmds; do
  command -v "${pair%%:*}" >/dev/null 2>&1 ||
    bad="$bad
  command '${pair%%:*}' (package ${pair#*:})"
done
for pair in $demo_libs; do
  pkg-config --exists "${pair%%:*}" 2>/dev/null ||
    bad="$bad
  library '${pair%%:*}' (package ${pair#*:})"
done
if [ -n "$bad" ]; then
  echo "bootstrap.sh: still missing after the install:$bad" >&2
  exit 1
fi

case $what in
  demo) make demo ;;
  test) make check ;;
esac
