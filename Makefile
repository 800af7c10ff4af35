# ioq: make, make check, make asan, make install.
# Every variable below may be overridden on the command line (LuaRocks does).

LUA         ?= lua5.4
PKG_CONFIG  ?= pkg-config
LUA_PC      ?= lua5.4
LUA_INCDIR  ?= $(shell $(PKG_CONFIG) --variable=includedir $(LUA_PC) 2>/dev/null)/lua5.4
URING_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags liburing 2>/dev/null)
URING_LIBS  ?= $(shell $(PKG_CONFIG) --libs liburing 2>/dev/null || echo -luring)
CC          ?= cc
CFLAGS      ?= -O2 -g
LIBFLAG     ?= -shared
WARNINGS    := -std=c11 -Wall -Wextra -Werror -pedantic -Wshadow \
               -Wmissing-prototypes -Wstrict-prototypes -Wpointer-arith \
               -Wwrite-strings -Wundef -Wdeclaration-after-statement
DEFINES     := -D_GNU_SOURCE -DIOQ_HAVE_URING -DIOQ_HAVE_EPOLL

PREFIX      ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(PREFIX)/share/lua/5.4

BUILD       ?= build
# The C sources, listed once, in the rockspec (mk/sources.lua reads them).
SRCS        := $(shell $(LUA) mk/sources.lua linux)
HDRS        := $(wildcard src/*.h)
CORE        := $(BUILD)/ioq/core.so
SHIMS       := $(BUILD)/no_ext_arg.so $(BUILD)/slow_lookup.so  # LD_PRELOAD shims, see "test shims"
TESTLIB     := $(BUILD)/ioq_test.so $(BUILD)/no_uring $(BUILD)/alloc_host \
               $(SHIMS)
LUA_LIBS    ?= $(shell $(PKG_CONFIG) --libs $(LUA_PC) 2>/dev/null || echo -llua5.4)

BUSTED      ?= $(LUA) /usr/bin/busted
LUACHECK    ?= luacheck

.PHONY: all check test lint asan asan-build valgrind fuzz soak demo install clean \
        windows windows-build test-windows

all: $(CORE)

$(CORE): $(SRCS) $(HDRS) Makefile rockspec/ioq-scm-1.rockspec
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) $(DEFINES) -fPIC -I$(LUA_INCDIR) $(URING_CFLAGS) \
	  $(CFLAGS) $(LIBFLAG) -o $@ $(SRCS) $(URING_LIBS) -pthread

$(BUILD)/no_uring: spec/support/no_uring.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -D_GNU_SOURCE $(CFLAGS) -o $@ spec/support/no_uring.c

$(BUILD)/alloc_host: spec/support/alloc_host.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -I$(LUA_INCDIR) $(CFLAGS) $(ALLOC_HOST_FLAGS) -o $@ spec/support/alloc_host.c $(LUA_LIBS)

# -z nodelete: the watchdog's thread outlives lua_close, which unloads
# C modules; the library must stay mapped under it.
$(BUILD)/ioq_test.so: spec/support/testsupport.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -D_GNU_SOURCE -fPIC -I$(LUA_INCDIR) $(CFLAGS) $(LIBFLAG) \
	  -o $@ spec/support/testsupport.c -pthread -Wl,-z,nodelete

# ---------------------------------------------------------------- test shims
# LD_PRELOAD libraries that make this kernel look like an older one to ioq
# (spec/regress/uring_spec.lua). The sanitizer build gets them too, built
# without instrumentation: they only change what the kernel reports.
$(BUILD)/no_ext_arg.so: spec/support/no_ext_arg.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -D_GNU_SOURCE -fPIC $(URING_CFLAGS) -O2 -g -shared \
	  -o $@ spec/support/no_ext_arg.c -ldl

# Host names whose lookup is slow or gives chosen addresses
# (spec/connect_name_spec.lua).
$(BUILD)/slow_lookup.so: spec/support/slow_lookup.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -D_GNU_SOURCE -fPIC -O2 -g -shared \
	  -o $@ spec/support/slow_lookup.c -ldl

.PHONY: asan-shims
asan-build: asan-shims
asan-shims:
	$(MAKE) BUILD=build-asan build-asan/no_ext_arg.so build-asan/slow_lookup.so

ASAN_FLAGS  := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=all

asan-build:
	$(MAKE) BUILD=build-asan CFLAGS="$(ASAN_FLAGS)" \
	  LIBFLAG="-shared -fsanitize=address,undefined" \
	  ALLOC_HOST_FLAGS="-fsanitize=address,undefined" \
	  build-asan/ioq/core.so build-asan/ioq_test.so build-asan/no_uring \
	  build-asan/alloc_host

# The specs against this checkout's build (never an installed ioq).
test: $(CORE) $(TESTLIB)
	IOQ_MODES=plain LUA="$(LUA)" bash spec/run.sh

# The specs again on an AddressSanitizer + UBSan build.
asan: asan-build
	IOQ_MODES=asan LUA="$(LUA)" bash spec/run.sh

lint:
	$(LUACHECK) -q lua spec examples bench

# The specs again under valgrind memcheck (slow: a few minutes).
valgrind: $(CORE) $(TESTLIB)
	IOQ_MODES=valgrind LUA="$(LUA)" bash spec/run.sh

# Everything CI runs: lint, then the specs on the plain build, on the
# sanitizer build, under valgrind, and as the Windows build under Wine,
# ending with one summary line.
check: lint $(CORE) $(TESTLIB) asan-build windows-build
	IOQ_MODES="plain asan valgrind wine" LUA="$(LUA)" bash spec/run.sh

# The randomized API fuzzer for FUZZ_SECONDS (default 600) split over the
# backends; IOQ_FUZZ_SEED=n IOQ_FUZZ_ITERS=n replays one run.
FUZZ_SECONDS ?= 600
SOAK_SECONDS ?= 600
LUA_ENV = LUA_PATH="lua/?.lua;lua/?/init.lua;spec/?.lua;;" LUA_CPATH="$(BUILD)/?.so;;"

fuzz: $(CORE) $(TESTLIB)
	@set -e; backends=$$($(LUA_ENV) $(LUA) -e 'print(table.concat(require("ioq").backends(), " "))'); \
	n=$$(echo $$backends | wc -w); \
	for b in $$backends; do \
	  IOQ_BACKEND=$$b $(LUA_ENV) $(LUA) spec/fuzz/fuzz.lua $$(( $(FUZZ_SECONDS) / n )); \
	done

# An echo server under load for SOAK_SECONDS; memory and descriptors must
# stay flat (spec/soak/soak.lua prints the samples).
soak: $(CORE)
	$(LUA_ENV) $(LUA) spec/soak/soak.lua $(SOAK_SECONDS)

# The main demo: copy a file with many reads in flight, and check it.
demo: $(CORE)
	LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) examples/copy.lua

# The benchmark suite (BENCHMARKS.md): every benchmark, each contender in
# the same run, alternating; writes bench/results/latest.md and latest.png.
# QUICK=1: short runs, about two minutes. BENCH="echo http": only those
# (nop randread direct copy echo http idle stat readdir spawn; report in
# bench/results/tmp/partial.md).
# Contenders need fio gnuplot-nox nginx-light libnginx-mod-http-lua lua-luv
# lua-cqueues wrk; a missing one is a row saying so, and the run prints the
# apt-get line.
.PHONY: bench
bench: $(CORE)
	QUICK="$(QUICK)" LUA="$(LUA)" bash bench/run.sh $(BENCH)

install: $(CORE)
	install -d $(DESTDIR)$(INST_LIBDIR)/ioq $(DESTDIR)$(INST_LUADIR)/ioq
	install -m 0755 $(CORE) $(DESTDIR)$(INST_LIBDIR)/ioq/core.so
	install -m 0644 lua/ioq.lua $(DESTDIR)$(INST_LUADIR)/ioq.lua
	for f in lua/ioq/*.lua; do [ -e "$$f" ] || continue; \
	  install -m 0644 "$$f" $(DESTDIR)$(INST_LUADIR)/ioq/; done

clean:
	rm -rf build build-asan $(WIN_BUILD)/ioq $(WIN_BUILD)/ioq_test.dll

# ---------------------------------------------------------------- Windows
# make windows: ioq/core.dll for 64-bit Windows, cross-built with mingw-w64
# against a Lua 5.4 built for Windows from Debian's lua5.4 source package
# (mk/windows-lua.sh, cached in build-win/lua). make test-windows runs the
# specs under Wine with that lua.exe.
WIN_CC      ?= x86_64-w64-mingw32-gcc
WIN_BUILD   ?= build-win
WIN_LUA     := $(WIN_BUILD)/lua
WIN_SRCS    := $(shell $(LUA) mk/sources.lua windows)
WIN_CORE    := $(WIN_BUILD)/ioq/core.dll
WIN_TESTLIB := $(WIN_BUILD)/ioq_test.dll
WIN_CFLAGS  := $(WARNINGS) -D_WIN32_WINNT=0x0601 -I$(WIN_LUA)/include -O2 \
               -shared -static-libgcc

windows: $(WIN_CORE)
windows-build: $(WIN_CORE) $(WIN_TESTLIB)

$(WIN_LUA)/lua.exe:
	sh mk/windows-lua.sh $(WIN_LUA)

$(WIN_CORE): $(WIN_SRCS) $(HDRS) Makefile rockspec/ioq-scm-1.rockspec $(WIN_LUA)/lua.exe
	@mkdir -p $(dir $@)
	$(WIN_CC) $(WIN_CFLAGS) -DIOQ_HAVE_IOCP -o $@ $(WIN_SRCS) \
	  $(WIN_LUA)/lua54.dll -lws2_32 -lmswsock

$(WIN_TESTLIB): spec/support/testsupport_win.c Makefile $(WIN_LUA)/lua.exe
	@mkdir -p $(dir $@)
	$(WIN_CC) $(WIN_CFLAGS) -o $@ spec/support/testsupport_win.c \
	  $(WIN_LUA)/lua54.dll

# The specs under Wine, through spec/run.sh's "wine" mode.
test-windows: windows-build
	IOQ_MODES=wine LUA="$(LUA)" bash spec/run.sh
