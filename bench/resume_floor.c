/*
** resume_floor.c: the least a coroutine loop on this Lua can pay per
** await: one lua_resume + lua_yield round trip of a Lua coroutine that
** calls a C function which yields, driven from C, with nothing else (no
** queue, no task state). bench/ops.lua nop-tasks pays this and more per
** NOP; this is the part no loop design removes.
**
**   cc -O2 -I/usr/include/lua5.4 bench/resume_floor.c -o /tmp/resume_floor -llua5.4
**   valgrind --tool=callgrind --callgrind-out-file=/dev/null /tmp/resume_floor N MODE
**
** Ir per round trip: (Ir at N=200000 - Ir at N=100000) / 100000.
** MODE 0: the C function yields with a continuation (lua_yieldk), as
**         h:await does, and is resumed with two values, which the
**         continuation returns (the shape of ioq's await);
** MODE 1: lua_yield without a continuation, resumed with no value;
** MODE 2: coroutine.yield() from Lua (the base library's C function).
*/
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int yielded_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L) - 1;  /* what the resume brought */
}

static int yield_k(lua_State *L) {
  lua_settop(L, 1);
  return lua_yieldk(L, 0, 0, yielded_k);
}

static int yield_plain(lua_State *L) {
  return lua_yield(L, 0);
}

static const char *const bodies[] = {
  "local y = ... return function(n) local h = {} for _ = 1, n do y(h) end end",
  "local y = ... return function(n) for _ = 1, n do y() end end",
  "local y = coroutine.yield return function(n) for _ = 1, n do y() end end"
};

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 100000;
  int mode = argc > 2 ? atoi(argv[2]) : 0, st, nres;
  lua_State *L, *co;
  if (mode < 0 || mode > 2 || n <= 0) {
    fprintf(stderr, "usage: resume_floor N [0|1|2]\n");
    return 2;
  }
  L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadstring(L, bodies[mode]) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    return 1;
  }
  lua_pushcfunction(L, mode == 0 ? yield_k : yield_plain);
  lua_call(L, 1, 1);  /* the coroutine's body */
  co = lua_newthread(L);
  lua_pushvalue(L, -2);
  lua_xmove(L, co, 1);
  lua_pushinteger(co, (lua_Integer)n);
  st = lua_resume(co, L, 1, &nres);
  while (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (mode == 0) {
      lua_pushboolean(co, 1);
      lua_pushinteger(co, 42);
      st = lua_resume(co, L, 2, &nres);
    } else {
      st = lua_resume(co, L, 0, &nres);
    }
  }
  if (st != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(co, -1));
    return 1;
  }
  lua_close(L);
  return 0;
}
