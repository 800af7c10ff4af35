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
  lua_pushfstring(L, "%s: %s", what, ioq_strerror(err));
  lua_pushinteger(L, err);
  return 3;
}

const char lioq_tags[LIOQ_NTAGS];
const char *const lioq_class_names[LIOQ_NTAGS] = {
  LIOQ_QUEUE, LIOQ_HANDLE, LIOQ_BUFFER, LIOQ_FILE, LIOQ_SOCKET
};

/* The userdata at idx if it is of class `tag`, else NULL. */
void *lioq_toudata(lua_State *L, int idx, int tag) {
  void *p = lua_touserdata(L, idx);
  if (p != NULL && lua_getmetatable(L, idx)) {
    int ok = lua_rawgeti(L, -1, 1) == LUA_TLIGHTUSERDATA &&
             lua_touserdata(L, -1) == (void *)&lioq_tags[tag];
    lua_pop(L, 2);
    if (ok)
      return p;
  }
  return NULL;
}

void *lioq_checkudata(lua_State *L, int idx, int tag) {
  void *p = lioq_toudata(L, idx, tag);
  if (p == NULL)
    luaL_typeerror(L, idx, lioq_class_names[tag]);
  return p;
}

/*
** Pushes a new metatable of class `tag`: its tag, a dotted __name (so
** errors read "ioq.buffer expected"), and the metamethods. The first
** metatable of a class is also registered under its name.
*/
void lioq_newmetatable(lua_State *L, int tag, const luaL_Reg *metamethods) {
  const char *name = lioq_class_names[tag];
  lua_newtable(L);
  lua_pushlightuserdata(L, (void *)&lioq_tags[tag]);
  lua_rawseti(L, -2, 1);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  luaL_setfuncs(L, metamethods, 0);
  if (luaL_getmetatable(L, name) == LUA_TNIL) {
    lua_pushvalue(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, name);
  }
  lua_pop(L, 1);
}

/* Registers class `tag` with __index = its methods. */
void lioq_newclass(lua_State *L, int tag, const luaL_Reg *methods,
                   const luaL_Reg *metamethods) {
  lioq_newmetatable(L, tag, metamethods);
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
  E(EPROTONOSUPPORT), E(ENOTEMPTY), E(EDQUOT),
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

/* Pushes a table of the classes' method tables, for lua/ioq.lua to extend. */
static void push_classes(lua_State *L) {
  static const char *const classes[][2] = {
    {"queue", LIOQ_QUEUE}, {"handle", LIOQ_HANDLE},
    {"buffer", LIOQ_BUFFER}, {"file", LIOQ_FILE}, {"socket", LIOQ_SOCKET},
  };
  size_t i;
  lua_newtable(L);
  for (i = 0; i < sizeof classes / sizeof classes[0]; i++) {
    if (strcmp(classes[i][1], LIOQ_QUEUE) == 0) {  /* shared by backends */
      lua_getfield(L, LUA_REGISTRYINDEX, LIOQ_QUEUE_METHODS);
      lua_setfield(L, -2, classes[i][0]);
      continue;
    }
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
    {"queue_of", lioq_queue_of},
    {"socket", lioq_socket_new},
    {"socketpair", lioq_socketpair},
    {"signalfd", lioq_signalfd},
    {"signame", lioq_signame},
    {NULL, NULL}
  };
  /* The classes are made once per Lua state: a second require (after
  ** package.loaded was reset) must find the very same metatables, or
  ** objects made before and after would not share their methods. */
  if (luaL_getmetatable(L, LIOQ_QUEUE) == LUA_TNIL) {
    lioq_open_buffer(L);
    lioq_open_file(L);
    lioq_open_socket(L);
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
