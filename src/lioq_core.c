/*
** lioq_core.c: the ioq.core module: constructors, errno names, and the
** helpers the other binding files share.
*/
#include <errno.h>
#include <string.h>

#include "lioq.h"

/* Pushes fail, "what: strerror(err)", err, as luaL_fileresult does. */
int lioq_fail(lua_State *L, const char *what, int err) {
  luaL_pushfail(L);
  lua_pushfstring(L, "%s: %s", what, strerror(err));
  lua_pushinteger(L, err);
  return 3;
}

/*
** Creates the metatable `name` with a dotted __name (so type errors read
** "ioq.buffer expected"), the metamethods, and __index = methods.
*/
void lioq_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                   const luaL_Reg *metamethods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, metamethods, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

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
  E(EPROTONOSUPPORT), E(ENOTEMPTY), E(EDQUOT), E(ETIME),
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

/* Pushes a table of the classes' method tables, for lua/ioq.lua to extend. */
static void push_classes(lua_State *L) {
  static const char *const classes[][2] = {
    {"queue", LIOQ_QUEUE}, {"handle", LIOQ_HANDLE},
    {"buffer", LIOQ_BUFFER}, {"file", LIOQ_FILE},
  };
  size_t i;
  lua_newtable(L);
  for (i = 0; i < sizeof classes / sizeof classes[0]; i++) {
    luaL_getmetatable(L, classes[i][1]);
    lua_getfield(L, -1, "__index");
    if (lua_iscfunction(L, -1)) {  /* an __index function keeps its table */
      lua_getupvalue(L, -1, 1);
      lua_remove(L, -2);
    }
    lua_setfield(L, -3, classes[i][0]);
    lua_pop(L, 1);
  }
}

int luaopen_ioq_core(lua_State *L);

int luaopen_ioq_core(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"queue", lioq_queue_new},
    {"buffer", lioq_buffer_new},
    {"backends", lioq_backends},
    {"now", lioq_now},
    {NULL, NULL}
  };
  lioq_open_buffer(L);
  lioq_open_file(L);
  lioq_open_queue(L);
  luaL_newlib(L, funcs);
  push_errnos(L);
  lua_setfield(L, -2, "errno");
  push_classes(L);
  lua_setfield(L, -2, "classes");
  lua_pushliteral(L, IOQ_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
