#!/bin/sh
# mk/windows-lua.sh DIR: a Lua 5.4 for Windows (lua.exe, lua54.dll, headers),
# cross-built with mingw-w64 from Debian's own lua5.4 source package, with
# Debian's security patches applied. The result is cached in DIR (make
# windows uses build-win/lua); running it again costs nothing.
#
# `apt-get source` needs a deb-src entry: the script adds one for Debian's
# main archive when none is there (with sudo when not root).
set -eu
dir=${1:?usage: mk/windows-lua.sh DIR}
cross=${CROSS:-x86_64-w64-mingw32-}
[ -f "$dir/lua54.dll" ] && [ -f "$dir/lua.exe" ] && exit 0

have_src() { apt-get source --print-uris lua5.4 >/dev/null 2>&1; }
if ! have_src; then
  sudo=
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "adding a deb-src entry for Debian's main archive, for apt-get source"
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")" |
    $sudo tee /etc/apt/sources.list.d/ioq-deb-src.sources >/dev/null
  $sudo apt-get update -qq
fi

work="$dir.src"
rm -rf "$work"
mkdir -p "$work"
( cd "$work" && apt-get source --download-only lua5.4 >/dev/null 2>&1 )
tar -xzf "$work"/lua5.4_*.orig.tar.gz -C "$work"
tar -xJf "$work"/lua5.4_*.debian.tar.xz -C "$work"
src=$(echo "$work"/lua-5.4.*)
# Debian's build-system patches are for its shared-library packaging; the
# CVE fixes apply to the sources every build uses.
for p in "$work"/debian/patches/*cve*.patch; do
  [ -e "$p" ] || continue
  patch -d "$src" -p1 -s < "$p"
done
make -s -C "$src/src" mingw CC="${cross}gcc -std=gnu99" AR="${cross}ar rc" \
  RANLIB="${cross}ranlib" >/dev/null
mkdir -p "$dir/include"
cp "$src/src/lua.exe" "$src/src/lua54.dll" "$dir/"
for h in lua.h luaconf.h lualib.h lauxlib.h lua.hpp; do
  cp "$src/src/$h" "$dir/include/"
done
rm -rf "$work"
echo "built $dir/lua.exe and $dir/lua54.dll from $(basename "$src")"
