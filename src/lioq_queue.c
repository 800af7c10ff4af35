/*
** lioq_queue.c: ioq.queue itself: its options, the choice of backend, the
** methods that are not op constructors (wait, submit, cancel_all, close,
** stats...), and the class's metatables. Calls the engine
** (lioq_engine.c), which does the work, and registers the op constructors
** of lioq_ops.c as methods.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

/* Registry key of the queue metatables, one per backend, in backend order. */
#define QUEUE_METATABLES "ioq.queue metatables"

/* Registry key of the queue methods' lioq_mts. */
#define QUEUE_MTS "ioq.queue classes"

/* Backends this build has, best first. */
static const ioq_backend_class *const backends[] = {
#ifdef IOQ_HAVE_URING
  &ioq_uring_backend,
#endif
#ifdef IOQ_HAVE_EPOLL
  &ioq_epoll_backend,
#endif
#ifdef IOQ_HAVE_IOCP
  &ioq_iocp_backend,
#endif
  NULL
};

/* q:submit(): hands every unsent op to the kernel; returns how many. */
static int queue_submit(lua_State *L) {
  lqueue *q = lioq_checkopenqueue(L);
  int r;
  lioq_checkowner(L, q);
  lioq_flush(q);
  r = q->backend->cls->submit(q->backend);
  if (r < 0)
    return lioq_fail(L, "submit", -r);
  lua_pushinteger(L, r);
  return 1;
}

/* q:wait([timeout [, into]]): returns how many handles resolved. */
static int queue_wait(lua_State *L) {
  lqueue *q = lioq_checkopenqueue(L);
  int64_t timeout = lioq_checkseconds(L, 2, -1);
  int into = 0, n;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    into = 3;
  }
  n = lioq_pump(L, q, 1, timeout, into);
  if (n == LIOQ_STUCK)
    n = 0;  /* nothing can arrive: see pump */
  else if (n < 0)
    return lioq_fail(L, "wait", -n);
  lua_pushinteger(L, n);
  return 1;
}

/*
** q:cancel_all([kind]): asks for every pending op to be canceled, or with
** kind "input" every op that only takes data in (reads, receives, accepts,
** opens, connects, sleeps, nops), leaving writes, sends, fsyncs and
** shutdowns to finish. Each still resolves through the queue. Returns how
** many cancels were asked for.
*/
static int queue_cancel_all(lua_State *L) {
  static const char *const kinds[] = {"all", "input", NULL};
  lqueue *q = lioq_checkopenqueue(L);
  int inputs = luaL_checkoption(L, 2, "all", kinds) == 1;
  oplist *lists[3];
  lua_Integer n = 0;
  int i;
  lioq_checkowner(L, q);
  lists[0] = &q->unsent; lists[1] = &q->inflight; lists[2] = &q->starved;
  for (i = 0; i < 3; i++) {
    ioq_op *op = lists[i]->head, *next;
    for (; op != NULL; op = next) {
      next = op->link.next;  /* lioq_cancel() may move op to another list */
      if (inputs && lioq_is_output(op))
        continue;
      if (op->cancel_requested)
        continue;
      if (lioq_cancel((lhandle *)op) == 0)
        n++;
      else  /* not asked after all: a later cancel or close asks again */
        op->cancel_requested = 0;
    }
  }
  lua_pushinteger(L, n);
  return 1;
}

/* q:features(): the backend's optional features in use, as a list. */
static int queue_features(lua_State *L) {
  lqueue *q = lioq_checkopenqueue(L);
  const char *names[16];
  int i, n = q->backend->cls->features(q->backend, names, 16);
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/*
** q:stats(): a table of counters: pending (ops not resolved), unsent (of
** those, waiting for room in the ring), pool_buffers and pool_free (the
** provided buffers, and how many the kernel may fill now), starvations
** (times a multishot receive found the pool empty and had to wait).
*/
static int queue_stats(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)lioq_pending(q));
  lua_setfield(L, -2, "pending");
  lua_pushinteger(L, (lua_Integer)q->unsent.n);
  lua_setfield(L, -2, "unsent");
  lua_pushinteger(L, q->pool ? (lua_Integer)q->pool->count : 0);
  lua_setfield(L, -2, "pool_buffers");
  lua_pushinteger(L, q->pool != NULL && q->backend != NULL
                     ? (lua_Integer)q->pool->nfree : 0);
  lua_setfield(L, -2, "pool_free");
  lua_pushinteger(L, q->starvations);
  lua_setfield(L, -2, "starvations");
  return 1;
}

/* q:pending(): ops not yet resolved. */
static int queue_pending_count(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  lua_pushinteger(L, (lua_Integer)lioq_pending(q));
  return 1;
}

/*
** Ends the queue's anchors: dropped once every op is done, or, when the
** backend broke with ops still in the kernel, kept in the registry for
** the rest of the Lua state, so that no byte the kernel may still write
** (handles, buffers, strings) is ever freed under it.
*/
static void drop_anchors(lua_State *L, int broken) {
  lua_getiuservalue(L, 1, QVAL_ANCHORS);
  if (broken && lua_istable(L, -1))
    luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, QVAL_ANCHORS);
}

/*
** q:close(): input ops are canceled, output ops finish (up to the queue's
** linger time); returns once the kernel has handed back every op. Closing
** twice does nothing.
*/
static int queue_close(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  if (q->backend != NULL && !lioq_on_owner_thread(q))
    return luaL_error(L, "this queue belongs to the thread that created it "
                         "(close it there)");
  drop_anchors(L, lioq_destroy(q, 0) < 0);
  return 0;
}

static int queue_gc(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  if (q->backend != NULL && !lioq_on_owner_thread(q)) {
    q->backend = NULL;  /* it cannot be drained from here: leave it be */
    drop_anchors(L, 1);
  } else {
    drop_anchors(L, lioq_destroy(q, 1) < 0);
  }
  free(q->free_slots);
  q->free_slots = NULL;
  q->nfree = q->top = q->slots_cap = 0;
  if (q->pool != NULL) {
    ioq_pool_unref(q->pool);
    q->pool = NULL;
  }
  return 0;
}

static int queue_repr(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  if (q->backend == NULL)
    lua_pushfstring(L, "ioq.queue (closed): %p", (void *)q);
  else
    lua_pushfstring(L, "ioq.queue (%s, %I pending): %p", q->backend->cls->name,
                    (lua_Integer)lioq_pending(q), (void *)q);
  return 1;
}

static const ioq_backend_class *find_backend(const char *name) {
  int i;
  for (i = 0; backends[i] != NULL; i++)
    if (strcmp(backends[i]->name, name) == 0)
      return backends[i];
  return NULL;
}

/* An integer field of the options table at arg 1, in lo..hi. */
static lua_Integer intoption(lua_State *L, const char *name, lua_Integer dflt,
                             lua_Integer lo, lua_Integer hi) {
  lua_Integer v = dflt;
  if (lua_getfield(L, 1, name) != LUA_TNIL) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < lo || v > hi)
      luaL_argerror(L, 1, lua_pushfstring(L,
                    "%s must be an integer in %I..%I", name, lo, hi));
  }
  lua_pop(L, 1);
  return v;
}

/* The fields of the options table at arg 1 (see lioq_queue_new). */
static void queue_options(lua_State *L, lua_Integer *entries,
                          const char **backend, lua_Integer *pool_count,
                          lua_Integer *pool_size, int64_t *linger) {
  if (lua_isnoneornil(L, 1))
    return;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getfield(L, 1, "linger") != LUA_TNIL) {
    lua_Number s = lua_tonumber(L, -1);
    luaL_argcheck(L, lua_type(L, -1) == LUA_TNUMBER && s >= 0, 1,
                  "linger must be a non-negative number of seconds");
    *linger = (int64_t)((s > 1e9 ? 1e9 : s) * 1e9);
  }
  lua_pop(L, 1);
  *entries = intoption(L, "entries", *entries, 1, 32768);
  *pool_count = intoption(L, "recv_buffers", *pool_count, 1, 32768);
  luaL_argcheck(L, (*pool_count & (*pool_count - 1)) == 0, 1,
                "recv_buffers must be a power of two");
  *pool_size = intoption(L, "recv_buffer_size", *pool_size, 1, 1 << 20);
  if (lua_getfield(L, 1, "backend") != LUA_TNIL) {
    *backend = lua_tostring(L, -1);
    luaL_argcheck(L, *backend != NULL && lua_type(L, -1) == LUA_TSTRING, 1,
                  "backend must be a string");
  }
  /* the backend name stays on the stack, so the string stays alive */
}

/* How long close waits for output ops by default. */
#define LINGER_NS (5 * (int64_t)1000000000)

/* ioq.queue([{entries = n, backend = name, linger = seconds, ...}]) */
int lioq_queue_new(lua_State *L) {
  lua_Integer entries = 256, pool_count = 256, pool_size = 4096;
  int64_t linger = LINGER_NS;
  const char *want = "auto";
  const char *env = getenv("IOQ_BACKEND");
  lqueue *q;
  int r = -ENOSYS, i;
  queue_options(L, &entries, &want, &pool_count, &pool_size, &linger);
  if (strcmp(want, "auto") == 0 && env != NULL && *env != '\0')
    want = env;
  if (strcmp(want, "auto") != 0 && find_backend(want) == NULL)
    return luaL_argerror(L, 1, lua_pushfstring(L,
                         "unknown backend '%s'", want));
  q = lua_newuserdatauv(L, sizeof *q, QUEUE_NUV);
  memset(q, 0, sizeof *q);
  lioq_owner_init(q);
  q->linger_ns = linger;
  q->pool_count = (unsigned)pool_count;
  q->pool_size = (unsigned)pool_size;
  lua_getfield(L, LUA_REGISTRYINDEX, QUEUE_MTS);
  q->mts = lua_touserdata(L, -1);  /* the registry keeps it */
  lua_pop(L, 1);
  luaL_setmetatable(L, LIOQ_QUEUE);  /* for __gc, before the ring exists */
  lua_newtable(L);
  lua_setiuservalue(L, -2, QVAL_ANCHORS);
  luaL_getmetatable(L, LIOQ_HANDLE);
  lua_setiuservalue(L, -2, QVAL_HANDLE_MT);
  for (i = 0; backends[i] != NULL; i++) {
    if (strcmp(want, "auto") != 0 && strcmp(want, backends[i]->name) != 0)
      continue;
    r = backends[i]->create(&q->backend, (unsigned)entries);
    if (r == 0 || (r != -EPERM && r != -ENOSYS && r != -ENOMEM))
      break;
  }
  if (r != 0)
    return luaL_error(L, "cannot create a queue (%s): %s", want,
                      ioq_strerror(-r));
  /* The metatable whose methods table says which backend this is. */
  lua_getfield(L, LUA_REGISTRYINDEX, QUEUE_METATABLES);
  lua_rawgeti(L, -1, i + 1);
  lua_setmetatable(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* ioq.backends(): the backends that work here, best first. */
int lioq_backends(lua_State *L) {
  int i, n = 0;
  lua_newtable(L);
  for (i = 0; backends[i] != NULL; i++) {
    ioq_backend *be;
    if (backends[i]->create(&be, 2) == 0) {
      be->cls->destroy(be);
      lua_pushstring(L, backends[i]->name);
      lua_rawseti(L, -2, ++n);
    }
  }
  return 1;
}

/*
** core.classes.queue[k] = v: a method a script adds or replaces goes into
** the shared table and into every backend's __index, so it takes effect on
** every queue (upvalues: the shared table, the list of __index tables).
*/
static int methods_set(lua_State *L) {
  lua_Integer i, n;
  lua_settop(L, 3);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, lua_upvalueindex(1));
  n = (lua_Integer)lua_rawlen(L, lua_upvalueindex(2));
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, lua_upvalueindex(2), i);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  }
  return 0;
}

static int methods_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1))
    return 2;
  lua_pushnil(L);
  return 1;
}

/* pairs(core.classes.queue): the shared methods. */
static int methods_pairs(lua_State *L) {
  lua_pushcfunction(L, methods_next);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushnil(L);
  return 3;
}

/*
** The lioq_mts of this Lua state (see lioq_queue.h), made by the first
** class that needs it, after the buffer, file and socket classes; the
** handle and queue classes add their own metatables. The registry keeps
** it for the life of the state.
*/
lioq_mts *lioq_push_mts(lua_State *L) {
  lioq_mts *mts;
  if (lua_getfield(L, LUA_REGISTRYINDEX, QUEUE_MTS) == LUA_TUSERDATA)
    return lua_touserdata(L, -1);
  lua_pop(L, 1);
  mts = lua_newuserdatauv(L, sizeof *mts, 0);
  memset(mts, 0, sizeof *mts);
  mts->mark = lioq_tags;
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, QUEUE_MTS);
  luaL_getmetatable(L, LIOQ_BUFFER);
  mts->buffer = lua_topointer(L, -1);
  luaL_getmetatable(L, LIOQ_FILE);
  mts->file = lua_topointer(L, -1);
  luaL_getmetatable(L, LIOQ_SOCKET);
  mts->socket = lua_topointer(L, -1);
  lua_pop(L, 3);
  return mts;
}

void lioq_open_queue(lua_State *L) {
  static const luaL_Reg queue_methods[] = {
    {"submit", queue_submit},
    {"wait", queue_wait},
    {"pending", queue_pending_count},
    {"features", queue_features},
    {"stats", queue_stats},
    {"cancel_all", queue_cancel_all},
    {"close", queue_close},
    {NULL, NULL}
  };
  static const luaL_Reg queue_meta[] = {
    {"__tostring", queue_repr},
    {"__close", queue_close},
    {"__gc", queue_gc},
    {NULL, NULL}
  };
  int i;
  lioq_mts *mts = lioq_push_mts(L);  /* the methods' upvalue */
  /* Queues: one metatable per backend, whose __index table holds the
  ** methods and the backend's name, so both q:read and q.backend are one
  ** plain table lookup. The methods are the same closures everywhere. */
  lua_newtable(L);                            /* the shared methods */
  lua_insert(L, -2);
  lua_pushvalue(L, -1);
  lua_insert(L, -3);                          /* mts, methods, mts */
  luaL_setfuncs(L, lioq_op_methods, 1);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, lioq_fs_methods, 1);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, lioq_call_methods, 1);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, queue_methods, 1);
  lua_remove(L, -2);
  lua_newtable(L);                            /* the metatables, in order */
  lua_newtable(L);                            /* their __index tables */
  for (i = 0; backends[i] != NULL; i++) {
    lioq_newmetatable(L, TAG_QUEUE, queue_meta);
    if (i < (int)(sizeof mts->queue / sizeof mts->queue[0]))
      mts->queue[i] = lua_topointer(L, -1);
    lua_newtable(L);                          /* its __index */
    lua_pushnil(L);
    while (lua_next(L, -6)) {                 /* the shared methods */
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
    lua_pushstring(L, backends[i]->name);
    lua_setfield(L, -2, "backend");
    lua_pushvalue(L, -1);
    lua_rawseti(L, -4, i + 1);
    lua_setfield(L, -2, "__index");
    lua_rawseti(L, -3, i + 1);
  }
  lua_insert(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, QUEUE_METATABLES);
  /* The class table Lua sees: empty, so that every write reaches
  ** methods_set; reads fall through to the shared methods. */
  lua_newtable(L);                            /* the proxy */
  lua_createtable(L, 0, 3);                   /* its metatable */
  lua_pushvalue(L, -4);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -4);
  lua_pushvalue(L, -4);
  lua_pushcclosure(L, methods_set, 2);
  lua_setfield(L, -2, "__newindex");
  lua_pushvalue(L, -4);
  lua_pushcclosure(L, methods_pairs, 1);
  lua_setfield(L, -2, "__pairs");
  lua_setmetatable(L, -2);
  lioq_setclass(L, TAG_QUEUE);                /* pops the proxy */
  lua_pop(L, 2);
}
