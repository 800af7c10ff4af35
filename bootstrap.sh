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
# one is missing, so running it again costs nothing.
set -eu
cd "$(dirname "$0")"
what=${1:-demo}

pkgs="make gcc libc6-dev pkg-config lua5.4 liblua5.4-dev liburing-dev"
case $what in
  demo) ;;
  test) pkgs="$pkgs lua-busted lua-check valgrind gcc-mingw-w64-x86-64 wine64 patch xz-utils" ;;
  *) echo "usage: sh bootstrap.sh demo|test" >&2; exit 2 ;;
esac

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

case $what in
  demo) make demo ;;
  test) make check ;;
esac
