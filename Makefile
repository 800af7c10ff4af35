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
DEFINES     := -D_GNU_SOURCE -DIOQ_HAVE_URING

PREFIX      ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/5.4
INST_LUADIR ?= $(PREFIX)/share/lua/5.4

BUILD       ?= build
SRCS        := src/lioq_core.c src/lioq_queue.c src/lioq_buffer.c \
               src/lioq_file.c src/backend_uring.c
HDRS        := src/ioq.h src/lioq.h
CORE        := $(BUILD)/ioq/core.so
TESTLIB     := $(BUILD)/ioq_test.so

BUSTED      ?= $(LUA) /usr/bin/busted
LUACHECK    ?= luacheck

.PHONY: all check test lint asan install clean

all: $(CORE)

$(CORE): $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) $(DEFINES) -fPIC -I$(LUA_INCDIR) $(URING_CFLAGS) \
	  $(CFLAGS) $(LIBFLAG) -o $@ $(SRCS) $(URING_LIBS)

$(TESTLIB): spec/support/testsupport.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(WARNINGS) -D_GNU_SOURCE -fPIC -I$(LUA_INCDIR) $(CFLAGS) $(LIBFLAG) \
	  -o $@ spec/support/testsupport.c

# Runs the specs against the freshly built module (not an installed one).
test: $(CORE) $(TESTLIB)
	LUA="$(LUA)" BUSTED="$(BUSTED)" IOQ_CPATH="$(BUILD)" bash spec/run.sh

lint:
	$(LUACHECK) -q lua spec examples bench

check: lint test

# AddressSanitizer + UBSan build in its own folder, running every spec.
# The sanitizer runtime must be preloaded: lua5.4 itself is not instrumented.
asan:
	$(MAKE) BUILD=build-asan CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" LIBFLAG="-shared -fsanitize=address,undefined" build-asan/ioq/core.so build-asan/ioq_test.so
	ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:exitcode=23 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	IOQ_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	  $(MAKE) BUILD=build-asan test

install: $(CORE)
	install -d $(DESTDIR)$(INST_LIBDIR)/ioq $(DESTDIR)$(INST_LUADIR)/ioq
	install -m 0755 $(CORE) $(DESTDIR)$(INST_LIBDIR)/ioq/core.so
	install -m 0644 lua/ioq.lua $(DESTDIR)$(INST_LUADIR)/ioq.lua
	for f in lua/ioq/*.lua; do [ -e "$$f" ] || continue; \
	  install -m 0644 "$$f" $(DESTDIR)$(INST_LUADIR)/ioq/; done

clean:
	rm -rf build build-asan
