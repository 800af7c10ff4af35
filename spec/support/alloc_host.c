/*
** alloc_host.c: runs a Lua script once for every allocation it makes,
** failing that allocation, to prove each failure becomes a Lua memory
** error that leaks nothing and leaves nothing broken.
**
**   build/alloc_host SCRIPT [FIRST [STEP]]
**
** Run n (n = FIRST, FIRST+STEP, ...) gives a fresh Lua state an allocator
** that fails the n-th growing allocation made after the standard
** libraries are open, runs SCRIPT in protected mode, then closes the
** state (finalizers included). It stops at the first run that needs no
** failure. A run is wrong if the script ends with an error that is not a
** memory error (some failures Lua absorbs, growing its string table for
** one: then the script just succeeds). Under ASan the build reports any
** leak or bad access. The last line reads "alloc: N runs, M memory
** errors, K wrong".
** Built for the specs only (spec/alloc_spec.lua).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static long countdown = -1;   /* < 0: never fail */
static int failing;           /* growing allocations still to fail */
static int injected;

/* A place for a debugger's breakpoint: `break injection_point`. */
__attribute__((noinline)) static void injection_point(void) {
  __asm__ volatile("");
}

/*
** When an allocation fails, Lua collects garbage and asks once more; so
** the n-th growing allocation fails together with that retry, and the
** failure reaches the code that asked for the memory.
*/
static void *alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Lua may assume that shrinking a block never fails. */
  if (ptr == NULL || nsize > osize) {
    if (countdown >= 0 && countdown-- == 0) {
      failing = 2;
      injection_point();
    }
    if (failing > 0) {
      failing--;
      injected = 1;
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}

/* Loads and runs the script: in protected mode, where errors may happen. */
static int run_script(lua_State *L) {
  const char *path = lua_tostring(L, 1);
  if (luaL_loadfile(L, path) != LUA_OK)
    return lua_error(L);
  lua_call(L, 0, 0);
  return 0;
}

int main(int argc, char **argv) {
  long first = argc > 2 ? atol(argv[2]) : 1, step = argc > 3 ? atol(argv[3]) : 1;
  long n, runs = 0, memerrs = 0, wrong = 0;
  if (argc < 2 || first < 1 || step < 1) {
    fprintf(stderr, "usage: alloc_host SCRIPT [FIRST [STEP]]\n");
    return 2;
  }
  for (n = first;; n += step) {
    lua_State *L = lua_newstate(alloc, NULL);
    int status;
    if (L == NULL) return 3;
    luaL_openlibs(L);
    lua_pushcfunction(L, run_script);
    lua_pushstring(L, argv[1]);
    injected = 0;
    countdown = n - 1;
    status = lua_pcall(L, 1, 0, 0);
    countdown = -1;
    failing = 0;
    runs++;
    if (injected && status != LUA_OK) {
      if (status == LUA_ERRMEM || status == LUA_ERRERR ||
          (lua_type(L, -1) == LUA_TSTRING &&
           strstr(lua_tostring(L, -1), "not enough memory") != NULL)) {
        memerrs++;
      } else {
        wrong++;
        fprintf(stderr, "alloc: run %ld: %s\n", n, lua_tostring(L, -1));
      }
    } else if (status != LUA_OK) {
      wrong++;
      fprintf(stderr, "alloc: run %ld, no failure injected: %s\n", n,
              lua_tostring(L, -1));
    }
    lua_close(L);
    if (!injected)
      break;
  }
  printf("alloc: %ld runs, %ld memory errors, %ld wrong\n", runs, memerrs, wrong);
  return wrong ? 1 : 0;
}
