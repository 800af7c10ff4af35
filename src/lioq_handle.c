/*
** lioq_handle.c: ioq.handle, the value every op returns: h:wait, h:result,
** h:cancel, h:timeout, h:resubmit, h:take and the fields h.op, h.queue,
** h.buffer, h.length (h:resubmit lives with the op constructors, in
** lioq_ops.c). Touches the handle and its queue's lists through the engine
** (lioq_engine.c).
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

static lhandle *checkhandle(lua_State *L) {
  return lioq_checkhandle(L);
}

/*
** The outcome of a pooled receive (handle at 1): n and the buffer of those
** n bytes (its view, which the engine lent the pool buffer; where the
** queue has no pool, the op's own buffer, cut to n bytes), or 0 alone at
** the end of the stream.
*/
static int push_pooled(lua_State *L, lhandle *h, int idx) {
  lua_Integer n = (lua_Integer)h->op.res;
  lua_pushinteger(L, n);
  if (n == 0)
    return 1;
  lua_getiuservalue(L, idx, HVAL_DATA);
  return 2;
}

/* Pushes the outcome of handle h, which is at idx: its value, or fail,
** msg, errno. Returns how many values, and leaves nothing else on the
** stack (the loop's C runner resumes a task with exactly those). */
int lioq_push_result(lua_State *L, lhandle *h, int idx) {
  int64_t res = h->op.res;
  if (res < 0 && h->op.code == IOQ_CALL && !h->has_msg &&
      res != -ECANCELED && res != -ETIMEDOUT)
    return lioq_call_result(L, h, idx);  /* its own message */
  if (res < 0) {
    int err = (int)-res;
    luaL_pushfail(L);
    if (h->has_msg)
      lua_getiuservalue(L, idx, HVAL_DATA);
    else if (err == ETIMEDOUT)
      lua_pushfstring(L, "%s: timed out", lioq_opname(h));
    else if (err == ECANCELED)
      lua_pushfstring(L, "%s: canceled", lioq_opname(h));
    else
      lua_pushfstring(L, "%s: %s", lioq_opname(h), ioq_strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  switch (h->op.code) {
    case IOQ_CALL:
      return lioq_call_result(L, h, idx);
    case IOQ_RECV:
      if (h->pooled)
        return push_pooled(L, h, idx);
      /* fall through */
    case IOQ_READ:
    case IOQ_WRITE:
    case IOQ_SEND:
    case IOQ_SENDTO:
      lua_pushinteger(L, (lua_Integer)res);
      return 1;
    case IOQ_RECVFROM:
      lua_pushinteger(L, (lua_Integer)res);
      return 1 + lioq_pushaddr(L, h->op.addr, h->op.addrlen);
    case IOQ_OPEN:
    case IOQ_ACCEPT:
      lua_getiuservalue(L, idx, HVAL_RESULT);
      return 1;
    case IOQ_POLL:
      if (h->proc_wait) {  /* exactly its values: the C runner counts */
        int at = lua_gettop(L) + 1, n;
        lua_getiuservalue(L, idx, HVAL_RESULT);
        n = lioq_process_result(L, at);
        lua_remove(L, at);
        return n;
      }
      /* The directions ready: "r" (readable, or hung up or failed, which
      ** a read reports), "w", or "rw". */
      lua_pushstring(L, (res & IOQ_POLLOUT) && (res & ~IOQ_POLLOUT)
                        ? "rw" : (res & IOQ_POLLOUT) ? "w" : "r");
      return 1;
    default:
      if (h->op.code >= IOQ_STAT)
        return lioq_fs_push_result(L, h);
      lua_pushboolean(L, 1);
      return 1;
  }
}

#define CLAIM_KEY "ioq.claim"

/* core.queue_of(h): h.queue without the __index detour (for lua/ioq.lua). */
int lioq_queue_of(lua_State *L) {
  checkhandle(L);
  lua_getiuservalue(L, 1, HVAL_QUEUE);
  return 1;
}

/* h:done() */
static int handle_done(lua_State *L) {
  lua_pushboolean(L, checkhandle(L)->state == ST_DONE);
  return 1;
}

/* h:result(): the outcome; raises while the op is pending. */
static int handle_result(lua_State *L) {
  lhandle *h = checkhandle(L);
  if (h->state != ST_DONE)
    return luaL_error(L, "handle is pending: wait for it first");
  if (h->noted) {  /* the script looks at a failure the run would report */
    h->noted = 0;
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, CLAIM_KEY);
    if (lua_isfunction(L, -1)) {
      lua_pushvalue(L, 1);
      lua_call(L, 1, 0);
    }
    lua_settop(L, 1);
  }
  return lioq_push_result(L, h, 1);
}

/*
** The outputs whose failure the run reports unless the script looks at
** it (lua/ioq/outputs.lua) are marked in C, so that h:result, a hot path
** of loops that wait for batches, stays a C function that calls back to
** Lua only for a marked handle. core.note_handle(h, flag) marks or
** unmarks h; core.set_claim(fn) gives what h:result calls for a marked
** one: fn(h).
*/
int lioq_note_handle(lua_State *L) {
  lhandle *h = lioq_checkudata(L, 1, TAG_HANDLE);
  h->noted = (uint8_t)lua_toboolean(L, 2);
  return 0;
}

int lioq_set_claim(lua_State *L) {
  if (!lua_isnil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, CLAIM_KEY);
  return 0;
}

/* h:cancel(): true if asked, false if already done, or fail, msg, errno. */
static int handle_cancel(lua_State *L) {
  lhandle *h = checkhandle(L);
  int r;
  if (h->state == ST_INFLIGHT) {
    if (h->q->backend == NULL) {  /* left with a broken backend at close */
      lua_pushboolean(L, 0);
      return 1;
    }
    lioq_checkowner(L, h->q);
  }
  r = lioq_cancel(h);
  if (r == -EALREADY) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0) {
    h->op.cancel_requested = 0;
    return lioq_fail(L, "cancel", -r);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** h:wait([timeout]): drives the queue until the handle resolves, then
** returns its result. When the timeout passes first the op is canceled,
** and once the kernel hands it back, it resolves to "timed out" (or to its
** real result if it finished anyway).
*/
static int handle_wait(lua_State *L) {
  lhandle *h = checkhandle(L);
  int64_t timeout = lioq_checkseconds(L, 2, -1);
  int64_t deadline = timeout >= 0 ? ioq_now_ns() + timeout : 0;
  int pumped = 0, timed_out = 0;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, HVAL_QUEUE);  /* index 2 */
  while (h->state != ST_DONE) {
    int64_t left = -1;
    int n;
    if (h->q->backend == NULL)
      return luaL_error(L, "queue is closed");
    if (timeout >= 0 && !timed_out) {
      left = deadline - ioq_now_ns();
      if (left <= 0 && pumped) {
        timed_out = 1;
        lioq_cancel(h);  /* on failure the op still ends by itself */
        left = -1;
      } else if (left < 0) {
        left = 0;
      }
    }
    n = lioq_pump(L, h->q, 2, left, 0);
    if (n == LIOQ_STUCK && h->paused) {  /* an accept waits for its error */
      luaL_pushfail(L);
      lua_pushfstring(L, "%s: paused on an error that h:take() hands over",
                      lioq_opname(h));
      lua_pushinteger(L, EAGAIN);
      return 3;
    }
    if (n == LIOQ_STUCK) {
      luaL_pushfail(L);
      lua_pushfstring(L, "%s: every buffer of the queue's pool is held by "
                      "a buffer view (close the views)", lioq_opname(h));
      lua_pushinteger(L, ENOBUFS);
      return 3;
    }
    if (n < 0)
      return lioq_fail(L, "wait", -n);
    pumped = 1;
  }
  if (timed_out && h->op.res == -ECANCELED)
    h->op.res = -ETIMEDOUT;
  lua_settop(L, 1);
  return lioq_push_result(L, h, 1);
}

/*
** h:timeout(seconds): arms a timeout that the backend enforces, if the op
** has not been handed to it yet (on io_uring, a linked timeout). Returns
** true if armed; false if the op is already in flight or done, in which
** case the caller must time it out itself (a timer and h:cancel()).
*/
static int handle_timeout(lua_State *L) {
  lhandle *h = checkhandle(L);
  int64_t ns = lioq_checkseconds(L, 2, 0);
  luaL_argcheck(L, ns > 0, 2, "timeout must be positive");
  if (h->state != ST_UNSENT) {
    lua_pushboolean(L, 0);
    return 1;
  }
  h->op.timeout_ns = ns;
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Takes an error item of a multishot accept (EMFILE...): the accept paused
** on it goes on once Lua has seen it. Returns fail, msg, errno.
*/
static int take_error(lua_State *L, lhandle *h) {
  int err = (int)-lioq_item_first(h)->res;
  lioq_item_shift(h);
  if (h->paused) {
    h->paused = 0;
    if (h->state == ST_STARVED) {
      list_remove(&h->q->starved, &h->op);
      h->state = ST_UNSENT;
      list_push(&h->q->unsent, &h->op);
    }
  }
  return lioq_fail(L, lioq_opname(h), err);
}

/*
** h:take(): the oldest item a multishot handle has received (a socket, or
** a buffer view of the bytes); fail, "<op>: nothing yet", EAGAIN while
** none has come and the op is still armed; once it has ended and every
** item is taken, nil alone at the end of the stream (the peer closed, as
** io.read says end of file) or fail, msg, errno (ECANCELED after
** h:cancel()...).
*/
static int handle_take(lua_State *L) {
  lhandle *h = checkhandle(L);
  luaL_argcheck(L, h->op.multishot, 1, "not a multishot handle");
  if (h->items.n > 0 && lioq_item_first(h)->res < 0)
    return take_error(L, h);
  if (h->items.n > 0) {
    /* Make the object first (a finalizer may run, even take items), then
    ** take the item: nothing between the two can fail or run Lua code. */
    void *obj = h->op.code == IOQ_ACCEPT
              ? (void *)lioq_socket_prepare(L, h->family, h->type)
              : lioq_buffer_push_view(L);
    if (h->items.n > 0 && lioq_item_first(h)->res >= 0) {
      lioq_item *it = lioq_item_first(h);
      if (h->op.code == IOQ_ACCEPT)
        ((lioq_file *)obj)->fd = (ioq_fd)it->res;
      else
        lioq_buffer_set_view(obj, h->pool, it->buf, (size_t)it->res);
      lioq_item_shift(h);
      return 1;
    }
    lua_pop(L, 1);
    return handle_take(L);  /* a finalizer took it: look again */
  }
  if (h->state != ST_DONE) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: nothing yet", lioq_opname(h));
    lua_pushinteger(L, EAGAIN);
    return 3;
  }
  if (h->op.res == 0) {  /* the end of the stream */
    luaL_pushfail(L);
    return 1;
  }
  return lioq_push_result(L, h, 1);
}

/* __gc of multishot handles: what nobody took goes back (descriptors are
** closed, buffers return to the pool). A handle still pending here is
** being collected with its queue, whose destroy does that instead. */
static int handle_gc(lua_State *L) {
  lhandle *h = lua_touserdata(L, 1);
  if (h != NULL && h->state == ST_DONE && h->side == SIDE_MULTI)
    lioq_items_free(h);
  return 0;
}

/*
** Methods first (the common case), then the fields op, queue, buffer.
** Upvalues: the methods, the lioq_mts (for the class checks of h.buffer,
** a field read once per op in loops that reuse buffers).
*/
static int handle_index(lua_State *L) {
  const lioq_mts *c;
  const void *mt;
  lhandle *h;
  const char *key;
  size_t len;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1;
  c = lua_touserdata(L, lua_upvalueindex(2));
  mt = lioq_mtof(L, 1);
  if (mt != NULL && (mt == c->handle[0] || mt == c->handle[1]))
    h = lua_touserdata(L, 1);
  else
    h = checkhandle(L);
  /* The field by its name's length first: no string compares for the
  ** common h.buffer of loops that reuse buffers. */
  key = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &len) : NULL;
  if (key != NULL) {
    if (len == 2 && memcmp(key, "op", 2) == 0) {
      lua_pushstring(L, lioq_opname(h));
      return 1;
    }
    if (len == 5 && memcmp(key, "queue", 5) == 0) {
      lua_getiuservalue(L, 1, HVAL_QUEUE);
      return 1;
    }
    if (len == 6 && memcmp(key, "buffer", 6) == 0) {
      lua_getiuservalue(L, 1, HVAL_DATA);
      mt = lioq_mtof(L, -1);
      if ((mt == NULL || mt != c->buffer) &&
          lioq_toudata(L, -1, TAG_BUFFER) == NULL)
        lua_pushnil(L);
      return 1;
    }
    if (len == 6 && memcmp(key, "length", 6) == 0) {  /* bytes a transfer
                                                          asked for */
      switch (h->op.code) {
        case IOQ_READ: case IOQ_WRITE: case IOQ_RECV: case IOQ_SEND:
        case IOQ_RECVFROM: case IOQ_SENDTO:
          if (!h->op.multishot) {
            lua_pushinteger(L, (lua_Integer)h->op.len);
            return 1;
          }
          break;
        default:
          break;
      }
    }
  }
  lua_pushnil(L);
  return 1;
}

static int handle_repr(lua_State *L) {
  lhandle *h = checkhandle(L);
  lua_pushfstring(L, "ioq.handle (%s, %s): %p", lioq_opname(h),
                  h->state == ST_DONE ? "done" : "pending", (void *)h);
  return 1;
}

void lioq_open_handle(lua_State *L) {
  static const luaL_Reg handle_methods[] = {
    {"done", handle_done},
    {"result", handle_result},
    {"wait", handle_wait},
    {"cancel", handle_cancel},
    {"timeout", handle_timeout},
    {"resubmit", lioq_handle_resubmit},
    {"take", handle_take},
    {NULL, NULL}
  };
  static const luaL_Reg handle_meta[] = {
    {"__tostring", handle_repr},
    {NULL, NULL}
  };
  /* Handles: a C __index, for the fields that live in each handle. */
  lioq_mts *mts = lioq_push_mts(L);
  lioq_newmetatable(L, TAG_HANDLE, handle_meta);
  mts->handle[0] = lua_topointer(L, -1);
  lua_newtable(L);
  lua_pushvalue(L, -3);  /* the lioq_mts: their class checks */
  luaL_setfuncs(L, handle_methods, 1);
  lua_pushvalue(L, -1);
  lioq_setclass(L, TAG_HANDLE);
  lua_pushvalue(L, -3);  /* the lioq_mts */
  lua_pushcclosure(L, handle_index, 2);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* Multishot handles: the same class, plus a __gc for untaken items. */
  lioq_newmetatable(L, TAG_HANDLE, handle_meta);
  mts->handle[1] = lua_topointer(L, -1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_gc);
  lua_setfield(L, -2, "__gc");
  lua_setfield(L, LUA_REGISTRYINDEX, MULTISHOT_MT);
  lua_pop(L, 2);
}
