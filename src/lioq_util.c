/*
** lioq_util.c: the bottom of the binding: helpers every other binding file
** may use (failure results, class tags and checks, class tables, argument
** checks). Calls only Lua's API and ioq_os.h; nothing here knows a class.
*/
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
  LIOQ_QUEUE, LIOQ_HANDLE, LIOQ_BUFFER, LIOQ_FILE, LIOQ_SOCKET, LIOQ_PROCESS
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

/*
** Pops the table a script sees as core.classes.<name> of class `tag` (its
** methods, for lua/ioq.lua to extend) into the registry's class list.
*/
void lioq_setclass(lua_State *L, int tag) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LIOQ_CLASSES);
  lua_insert(L, -2);
  lua_setfield(L, -2, lioq_class_names[tag] + sizeof "ioq." - 1);
  lua_pop(L, 1);
}

/* Registers class `tag` with __index = its methods. */
void lioq_newclass(lua_State *L, int tag, const luaL_Reg *methods,
                   const luaL_Reg *metamethods) {
  lioq_newmetatable(L, tag, metamethods);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lioq_setclass(L, tag);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

/* Seconds at `arg` (a non-negative number) as nanoseconds; `dflt` if nil. */
int64_t lioq_checkseconds(lua_State *L, int arg, int64_t dflt) {
  lua_Number s;
  if (lua_isnoneornil(L, arg))
    return dflt;
  s = luaL_checknumber(L, arg);
  luaL_argcheck(L, s >= 0, arg, "seconds must be a non-negative number");
  if (s > 1e9)  /* about 31 years: as good as forever, and no overflow */
    s = 1e9;
  return (int64_t)(s * 1e9);
}
