/*
** lioq_core.c: the top of the binding: luaopen_ioq_core, the module
** opener. It opens every class (each in its own file), and builds the
** module table: constructors, errno names, core.classes. Nothing calls
** into this file.
*/
#include <errno.h>

#include "lioq.h"

static const struct { const char *name; int value; } errnos[] = {
#define E(x) {#x, x}
  E(EPERM), E(ENOENT), E(EINTR), E(EIO), E(ENXIO), E(E2BIG), E(EBADF),
  E(EAGAIN), E(ENOMEM), E(EACCES), E(EFAULT), E(EBUSY), E(EEXIST),
  E(EXDEV), E(ENODEV), E(ENOTDIR), E(EISDIR), E(EINVAL), E(ENFILE),
  E(EMFILE), E(EFBIG), E(ENOSPC), E(ESPIPE), E(EROFS), E(EPIPE),
  E(ENAMETOOLONG), E(ENOSYS), E(ELOOP), E(EOPNOTSUPP), E(ENOTSOCK),
  E(EADDRINUSE), E(EADDRNOTAVAIL), E(ENETUNREACH), E(ECONNABORTED),
  E(ECONNRESET), E(ENOBUFS), E(EISCONN), E(ENOTCONN), E(ETIMEDOUT),
  E(ECONNREFUSED), E(EHOSTUNREACH), E(EALREADY), E(EINPROGRESS),
  E(ECANCELED), E(EMSGSIZE), E(EDESTADDRREQ), E(EAFNOSUPPORT),
  E(EPROTONOSUPPORT), E(ENOTEMPTY), E(EDQUOT), E(ESRCH), E(ECHILD),
#ifdef ETIME
  E(ETIME),
#endif
#undef E
};

/* ioq.errno: names to numbers, and numbers back to names. */
static void push_errnos(lua_State *L) {
  size_t i;
  lua_createtable(L, 0, 2 * (int)(sizeof errnos / sizeof errnos[0]));
  for (i = 0; i < sizeof errnos / sizeof errnos[0]; i++) {
    lua_pushinteger(L, errnos[i].value);
    lua_setfield(L, -2, errnos[i].name);
    lua_pushstring(L, errnos[i].name);
    lua_rawseti(L, -2, errnos[i].value);
  }
}

/* ioq.now(): monotonic seconds. */
static int now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)ioq_now_ns() / 1e9);
  return 1;
}

/* core.classes: the classes' method tables, for lua/ioq.lua to extend. */
static void push_classes(lua_State *L) {
  lua_newtable(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LIOQ_CLASSES);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_settable(L, -5);
  }
  lua_pop(L, 1);
}

int luaopen_ioq_core(lua_State *L);

int luaopen_ioq_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"queue", lioq_queue_new},
    {"buffer", lioq_buffer_new},
    {"backends", lioq_backends},
    {"now", now},
    {"queue_of", lioq_queue_of},
    {"note_handle", lioq_note_handle},
    {"set_claim", lioq_set_claim},
    {"loop", lioq_loop_new},
    {"socket", lioq_socket_new},
    {"socketpair", lioq_socketpair},
    {"signalfd", lioq_signalfd},
    {"signame", lioq_signame},
    {"spawn", lioq_spawn},
    {NULL, NULL}
  };
  /* The classes are made once per Lua state: a second require (after
  ** package.loaded was reset) must find the very same metatables, or
  ** objects made before and after would not share their methods. */
  if (luaL_getmetatable(L, LIOQ_QUEUE) == LUA_TNIL) {
    lioq_open_buffer(L);
    lioq_open_file(L);
    lioq_open_socket(L);
    lioq_open_process(L);
    lioq_open_handle(L);
    lioq_open_queue(L);
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  push_errnos(L);
  lua_setfield(L, -2, "errno");
  push_classes(L);
  lua_setfield(L, -2, "classes");
  lua_pushliteral(L, IOQ_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
