/*
** lioq_loop.c: the hot path of the coroutine loop (lua/ioq/loop.lua) in C:
** the FIFO of tasks ready to run and the resume of each, the hand-over of
** completions to the tasks that await them, and the common case of
** h:await. Everything else of the loop (timers, cancels, joins, several
** awaiters of one handle, waits outside a task) stays in Lua, which this
** file calls back for what it does not handle itself.
**
** Why: an await through Lua cost some 5-6 C calls, a dozen Lua calls and a
** hash table per op, several times the op itself. Here one C call
** registers the task as the handle's waiter and yields; the poll wakes it
** in C (no Lua per completion), and the runner resumes it with the
** handle's result as the values of that yield, so the task has nothing to
** look up when it wakes.
**
** The Lua side owns the state; C only follows its rules, which are those
** of loop.lua:
**   - a task is a table whose metatable is the Task class, with fields
**     co (its coroutine), status ("ready": to run, or running, as nothing
**     needs to tell them apart; "waiting", "done", "failed"), waiting_on (the handle it awaits), canceled and
**     cancel_pending (see Task:cancel);
**   - waiters[h] is who awaits h: a task, a function, or a list of those;
**     but the one task of the common case waits in C instead, without a
**     hash table: in the loop's array of waiters, at h's anchor slot
**     (h->loop_waiter says where). Lua calls hook(h) before it looks at
**     waiters[h], which moves that task there, and marks h (loop_shared)
**     so the C fast path leaves it to Lua from then on;
**   - a task's coroutine yields WAIT when it waits for a wake-up.
**
** core.loop(WAIT, Task, resumed) makes one loop's functions: start, stop,
** push, nready, run, poll, await, hook (see each below). They share one userdata
** (their upvalue), whose user values hold the Lua half of the state.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

/* The loop's user values: what changes. */
enum {
  LV_RING = 1,   /* the ready FIFO: [2i-1] a task, [2i] the handle that
                    woke it, or false */
  LV_WAITERS,    /* loop.lua's waiters table (per run) */
  LV_QUEUE,      /* the running loop's queue, or nil */
  LV_WSLOTS,     /* the array of waiters: [h->loop_waiter] the task that
                    awaits h */
  LV_WAIT_FOR,   /* loop.lua's wait_for, after_wake, arm_await and */
  LV_AFTER_WAKE, /* timed_end (see await_method) */
  LV_ARM,
  LV_TIMED_END,
  LOOP_NUV = LV_TIMED_END
};

/* The functions' upvalues: the loop, then what never changes. Keys and
** status names are pushed from here (lua_pushstring would look each one
** up in the string table, a cost several times the table access). */
enum {
  UV_LOOP = 1,
  UV_WAIT,       /* what a task yields when it waits */
  UV_TASK,       /* the Task class (the metatable of tasks) */
  UV_RESUMED,    /* resumed(task, ok, ...): the Lua end of a resume that
                    did not come back with WAIT */
  UV_HANDLE_MT,  /* the metatable of (single-shot) handles */
  K_STATUS, K_CO, K_WAITING_ON, K_CANCELED, K_CANCEL_PENDING, K_FN, K_ARGS,
  S_READY, S_WAITING,
  NUPVALUES = S_WAITING
};

static const char *const upvalue_strings[] = {
  "status", "co", "waiting_on", "canceled", "cancel_pending", "fn", "args",
  "ready", "waiting"
};

#define UV(n) lua_upvalueindex(n)

typedef struct lloop {
  lqueue *q;             /* the running loop's queue; NULL between runs */
  lua_State *cur;        /* the thread of the task being resumed, or NULL */
  lua_State *runner;     /* the thread running run(), and where on its */
  int task_idx;          /* stack the task being resumed is */
  lua_Integer head, tail;  /* of the ready FIFO, in entries */
} lloop;

static lloop *getloop(lua_State *L) {
  return lua_touserdata(L, UV(UV_LOOP));
}

static void getuv(lua_State *L, int n) {
  lua_getiuservalue(L, UV(UV_LOOP), n);
}

static void setuv(lua_State *L, int n) {
  lua_setiuservalue(L, UV(UV_LOOP), n);
}

/* t[key], t at idx (absolute), key the upvalue k. */
static int rawgetfield(lua_State *L, int idx, int k) {
  lua_pushvalue(L, UV(k));
  return lua_rawget(L, idx);
}

/* t[key] = the value on top (popped). */
static void rawsetfield(lua_State *L, int idx, int k) {
  lua_pushvalue(L, UV(k));
  lua_insert(L, -2);
  lua_rawset(L, idx);
}

/* Short strings are interned: equal strings are the same value. */
static int field_is(lua_State *L, int idx, int k, int v) {
  int r;
  rawgetfield(L, idx, k);
  r = lua_rawequal(L, -1, UV(v));
  lua_pop(L, 1);
  return r;
}

static int field_truthy(lua_State *L, int idx, int k) {
  int r;
  rawgetfield(L, idx, k);
  r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

static void set_status(lua_State *L, int task, int status) {
  lua_pushvalue(L, UV(status));
  rawsetfield(L, task, K_STATUS);
}

/* Appends task (at `task`) and what woke it (at `h`, 0: nothing) to the
** ready FIFO, whose table is at `ring`. */
static void ring_push(lua_State *L, lloop *s, int ring, int task, int h) {
  lua_Integer i = s->tail + 1;
  if (h != 0) lua_pushvalue(L, h); else lua_pushboolean(L, 0);
  lua_rawseti(L, ring, 2 * i);
  lua_pushvalue(L, task);
  lua_rawseti(L, ring, 2 * i - 1);
  s->tail = i;  /* only once both are in (they may raise out of memory) */
}

/* start(q, waiters): a run begins on queue q. */
static int loop_start(lua_State *L) {
  lloop *s = getloop(L);
  lqueue *q = lioq_checkudata(L, 1, TAG_QUEUE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushvalue(L, 1);
  setuv(L, LV_QUEUE);
  lua_pushvalue(L, 2);
  setuv(L, LV_WAITERS);
  lua_newtable(L);
  setuv(L, LV_RING);
  lua_newtable(L);
  setuv(L, LV_WSLOTS);
  s->q = q;
  s->cur = NULL;
  s->head = 1;
  s->tail = 0;
  return 0;
}

/* Forgets the waiters in C of the ops on list l: the array they were in
** goes with the run. */
static void forget_waiters(oplist *l) {
  ioq_op *op;
  for (op = l->head; op != NULL; op = op->link.next) {
    ((lhandle *)op)->loop_waiter = 0;
    ((lhandle *)op)->loop_shared = 0;
  }
}

/* stop(): the run ended; nothing of it is held any more. (Its queue may
** serve another run: ops still pending on it lose their waiters here.) */
static int loop_stop(lua_State *L) {
  lloop *s = getloop(L);
  if (s->q != NULL) {
    forget_waiters(&s->q->unsent);
    forget_waiters(&s->q->inflight);
    forget_waiters(&s->q->ready);
    forget_waiters(&s->q->starved);
  }
  s->q = NULL;
  s->cur = NULL;
  s->head = 1;
  s->tail = 0;
  lua_pushnil(L);
  setuv(L, LV_QUEUE);
  lua_pushnil(L);
  setuv(L, LV_WAITERS);
  lua_newtable(L);
  setuv(L, LV_RING);
  lua_newtable(L);
  setuv(L, LV_WSLOTS);
  return 0;
}

/* hook(h): loop.lua is about to look at waiters[h]: the task that awaits
** h in C, if any, moves there, and the C fast path leaves h to Lua until
** h is done. */
static int loop_hook(lua_State *L) {
  lhandle *h = lioq_checkudata(L, 1, TAG_HANDLE);
  lua_settop(L, 1);
  h->loop_shared = 1;
  if (h->loop_waiter != 0) {
    getuv(L, LV_WSLOTS);   /* 2 */
    getuv(L, LV_WAITERS);  /* 3 */
    lua_rawgeti(L, 2, h->loop_waiter);  /* 4 */
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 4);
    lua_rawset(L, 3);  /* first, as it may raise (out of memory) */
    lua_pushnil(L);
    lua_rawseti(L, 2, h->loop_waiter);
    h->loop_waiter = 0;
  }
  return 0;
}

/* push(task): appends a task (its status already "ready") to the FIFO. */
static int loop_push(lua_State *L) {
  lloop *s = getloop(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  getuv(L, LV_RING);
  ring_push(L, s, 2, 1, 0);
  return 0;
}

/* nready(): how many entries the FIFO holds. */
static int loop_nready(lua_State *L) {
  lloop *s = getloop(L);
  lua_pushinteger(L, s->tail - s->head + 1);
  return 1;
}

/*
** run(): resumes the tasks that are ready, in order. Tasks made ready
** meanwhile wait for the next round, so a task that keeps yielding cannot
** starve the queue. May run nested (a blocking wait in a task's own
** coroutine runs it from inside a round), so the task being resumed is
** saved and put back around each resume.
**
** A task's coroutine is its function itself (no wrapper: a suspended task
** holds no frame but its own). Each resume hands it: on its first run,
** the task's arguments (task.args, a table.pack; task.fn and task.args go
** then, which is how Task:cancel knows a task ran); when a handle woke it
** and it was not canceled meanwhile, the handle and its result (what the
** await in C returns); otherwise nothing (it reads task.wake_value).
*/
static int loop_run(lua_State *L) {
  lloop *s = getloop(L);
  lua_Integer last = s->tail;
  lua_State *prev = s->cur, *prev_runner = s->runner;
  int prev_idx = s->task_idx;
  int ring, wait, base;
  lua_settop(L, 0);
  getuv(L, LV_RING);      /* 1 */
  lua_pushvalue(L, UV(UV_WAIT));  /* 2 */
  ring = 1; wait = 2;
  base = lua_gettop(L);
  while (s->head <= last) {
    lua_Integer i = s->head++;
    lua_State *co;
    int st, nres = 0, narg = 0;
    lua_settop(L, base);
    lua_rawgeti(L, ring, 2 * i - 1);  /* base+1: the task */
    lua_rawgeti(L, ring, 2 * i);      /* base+2: the handle, or false */
    lua_pushnil(L);
    lua_rawseti(L, ring, 2 * i - 1);
    lua_pushnil(L);
    lua_rawseti(L, ring, 2 * i);
    if (!lua_istable(L, base + 1) || !field_is(L, base + 1, K_STATUS, S_READY))
      continue;
    rawgetfield(L, base + 1, K_CO);   /* base+3 */
    co = lua_tothread(L, base + 3);
    if (co == NULL)
      continue;
    if (!lua_checkstack(co, 8) || !lua_checkstack(L, 8))
      luaL_error(L, "not enough memory");
    if (lua_status(co) == LUA_OK) {  /* the first run */
      if (rawgetfield(L, base + 1, K_ARGS) == LUA_TTABLE) {  /* base+4 */
        lua_Integer j, n;
        lua_getfield(L, base + 4, "n");
        n = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (n < 0 || n > 1000000 || !lua_checkstack(L, (int)n + 8) ||
            !lua_checkstack(co, (int)n + 8))
          luaL_error(L, "not enough memory");
        for (j = 1; j <= n; j++)
          lua_rawgeti(L, base + 4, j);
        narg = (int)n;
      }
      lua_remove(L, base + 4);
      lua_pushnil(L);
      rawsetfield(L, base + 1, K_FN);
      lua_pushnil(L);
      rawsetfield(L, base + 1, K_ARGS);
    } else if (lua_toboolean(L, base + 2) &&
               !field_truthy(L, base + 1, K_CANCELED)) {
      /* (task.waiting_on stays: it counts only while "waiting", and
      ** whatever makes a task wait sets it.) */
      lhandle *h = lua_touserdata(L, base + 2);
      lua_pushvalue(L, base + 2);
      narg = 1 + lioq_push_result(L, h, base + 2);
    }
    lua_xmove(L, co, narg);
    s->cur = co;
    s->runner = L;
    s->task_idx = base + 1;
    st = lioq_resume(co, L, narg, &nres);
    s->cur = prev;
    s->runner = prev_runner;
    s->task_idx = prev_idx;
    if (st != LUA_YIELD && st != LUA_OK)
      nres = 1;  /* the error object (the coroutine keeps its frames, for
                    the traceback) */
    if (!lua_checkstack(L, nres + 4))
      luaL_error(L, "not enough memory");
    lua_xmove(co, L, nres);  /* base+4 ... */
    if (st == LUA_YIELD && nres == 1 && lua_rawequal(L, -1, wait))
      continue;  /* it waits for a wake-up */
    /* Anything else: resumed(task, how, ...) in Lua, how being 1 (a plain
    ** yield, its values), 2 (the function returned, its results) or 3 (it
    ** raised, the error). */
    lua_pushvalue(L, UV(UV_RESUMED));
    lua_insert(L, base + 4);
    lua_pushvalue(L, base + 1);
    lua_insert(L, base + 5);
    lua_pushinteger(L, st == LUA_YIELD ? 1 : st == LUA_OK ? 2 : 3);
    lua_insert(L, base + 6);
    lua_call(L, 2 + nres, 0);
  }
  if (s->head > s->tail) {
    s->head = 1;
    s->tail = 0;
  }
  return 0;
}

/*
** poll(timeout, into): waits for completions on the loop's queue (as
** q:wait(timeout, into)) and wakes, in C, each task that awaits in C a
** handle that is done; the other handles (their waiters in loop.lua's
** table, or none; items of multishot ops) are left in `into`, from 1, for
** loop.lua's dispatch.
** Returns how many handles came, and how many of them are in `into`; or
** fail, msg, errno.
*/
static int loop_poll(lua_State *L) {
  lloop *s = getloop(L);
  int64_t timeout = lioq_checkseconds(L, 1, -1);
  lua_Integer i, n, kept = 0;
  int r;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->q == NULL || s->q->backend == NULL)
    return luaL_error(L, "queue is closed");
  lua_settop(L, 2);
  getuv(L, LV_QUEUE);    /* 3 */
  getuv(L, LV_WSLOTS);   /* 4 */
  getuv(L, LV_RING);     /* 5 */
  r = lioq_pump(L, s->q, 3, timeout, 2);
  if (r == LIOQ_STUCK)
    r = 0;  /* nothing can arrive: see pump */
  else if (r < 0)
    return lioq_fail(L, "wait", -r);
  n = r;
  for (i = 1; i <= n; i++) {
    lhandle *h;
    lua_settop(L, 5);
    lua_rawgeti(L, 2, i);   /* 6: the handle */
    h = lua_touserdata(L, 6);
    if (h != NULL && h->loop_waiter != 0 && h->state == ST_DONE) {
      int w = h->loop_waiter;
      lua_rawgeti(L, 4, w);  /* 7: its task */
      lua_pushnil(L);
      lua_rawseti(L, 4, w);
      h->loop_waiter = 0;
      if (field_is(L, 7, K_STATUS, S_WAITING)) {
        set_status(L, 7, S_READY);
        ring_push(L, s, 5, 7, 6);
      }
      continue;
    }
    if (h != NULL && h->state == ST_DONE)
      h->loop_shared = 0;  /* dispatch takes its waiters */
    if (++kept != i) {
      lua_pushvalue(L, 6);
      lua_rawseti(L, 2, kept);
    }
  }
  lua_settop(L, 2);
  for (i = kept + 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, 2, i);
  }
  lua_pushinteger(L, n);
  lua_pushinteger(L, kept);
  return 2;
}

/*
** The common case of h:await([timeout]): in the task the runner is
** resuming, a pending handle of the loop's queue, no cancel pending,
** nobody else awaiting it. Then the task becomes h's waiter, WAIT is on
** top, and it returns 1 (untimed; the stack h, WAIT) or 2 (a timeout, the
** task's timer armed by loop.lua's arm_await; the stack h, task, WAIT):
** the caller yields. Otherwise it returns 0, the stack as it was but for
** a nil timeout, for the general await in Lua. `timed_ok`: whether a
** timeout may take this way (only where set_lua gave arm_await).
*/
static int try_await(lua_State *L, lloop *s, int timed_ok) {
  lhandle *h;
  int ishandle, timed = 0, task, wslots;
  if (L != s->cur || lua_gettop(L) > 2 || !lua_isyieldable(L))
    return 0;
  if (!lua_isnoneornil(L, 2)) {
    /* (Anything but a number >= 0 is the Lua path's to refuse; NaN too.) */
    if (!timed_ok || lua_type(L, 2) != LUA_TNUMBER || !(lua_tonumber(L, 2) >= 0))
      return 0;
    timed = 1;
  } else {
    lua_settop(L, 1);
  }
  /* A handle: the metatable of single-shot ones (multishot handles have
  ** their own, and take the general way). */
  ishandle = lua_getmetatable(L, 1) && lua_rawequal(L, -1, UV(UV_HANDLE_MT));
  lua_settop(L, 1 + timed);
  if (!ishandle)
    return 0;
  h = lua_touserdata(L, 1);
  if (h->q != s->q || h->state == ST_DONE || h->op.multishot ||
      h->loop_shared || h->loop_waiter != 0 || h->slot <= 0)
    return 0;
  /* The task: on the runner's stack (it is inside lua_resume). */
  lua_pushvalue(s->runner, s->task_idx);
  lua_xmove(s->runner, L, 1);
  task = lua_gettop(L);
  if (field_truthy(L, task, K_CANCEL_PENDING)) {
    lua_settop(L, 1 + timed);
    return 0;
  }
  getuv(L, LV_WSLOTS);
  wslots = lua_gettop(L);
  if (lua_rawgeti(L, wslots, h->slot) != LUA_TNIL) {
    lua_settop(L, 1 + timed);
    return 0;  /* an op done that had this slot: not taken yet */
  }
  lua_pop(L, 1);
  /* What may raise (out of memory) first: then nothing waits yet. */
  lua_pushvalue(L, 1);
  rawsetfield(L, task, K_WAITING_ON);
  lua_pushvalue(L, task);
  lua_rawseti(L, wslots, h->slot);
  h->loop_waiter = h->slot;
  if (timed) {
    /* arm_await(task, h, timeout); if it fails, h has no waiter again. */
    getuv(L, LV_ARM);
    lua_pushvalue(L, task);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
      h->loop_waiter = 0;
      lua_pushnil(L);
      lua_rawseti(L, wslots, h->slot);
      lua_error(L);
    }
  }
  set_status(L, task, S_WAITING);
  if (timed) {
    lua_copy(L, task, 2);  /* the timeout's place */
    lua_settop(L, 2);
  } else {
    lua_settop(L, 1);
  }
  lua_pushvalue(L, UV(UV_WAIT));
  return 1 + timed;
}

/*
** await(h [, timeout]): try_await for loop.lua's h:await: yields WAIT; the
** values the runner resumes the task with are what this returns (h and
** its result; or nothing, when something else woke it: the caller then
** does what loop.lua's await does after a wake-up). Returns false at once
** when it does not apply.
*/
static int loop_await(lua_State *L) {
  if (try_await(L, getloop(L), 0))
    return lua_yield(L, 1);
  lua_pushboolean(L, 0);
  return 1;
}

#if LUA_VERSION_NUM >= 502
/*
** h:await([timeout]) and h:wait([timeout]) themselves, in C (Lua 5.2 and
** later: they yield and call Lua with continuations), so a task suspended
** in an await holds no Lua frame of the loop's, only this C one. The
** common case is try_await; anything else is loop.lua's wait_for(name,
** h, timeout, 1) (1: this frame, which its errors count to name the
** caller's line); after a wake-up that was not h's end,
** loop.lua's after_wake(h). A timed await in C arms the task's timer with
** loop.lua's arm_await(task, h, timeout) and, once h woke it, hands the
** result through timed_end(task, h, ...) (which disarms it and names a
** timeout). set_lua(wait_for, after_wake, arm_await, timed_end) gives them.
*/
static int all_results_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/* ctx: what try_await returned (2: timed, the task at 2). */
static int await_woken_k(lua_State *L, int status, lua_KContext ctx) {
  int base = (int)ctx;
  (void)status;
  /* The stack: h, [the task,] then what the resume brought. */
  if (lua_gettop(L) > base && lua_rawequal(L, 1, base + 1)) {
    if (base == 1)
      return lua_gettop(L) - 2;  /* h's result */
    /* timed_end(task, h, h's result...) */
    lua_copy(L, 2, 1);  /* task, task, h, ... */
    getuv(L, LV_TIMED_END);
    lua_replace(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);  /* (it does not yield) */
    return lua_gettop(L);
  }
  lua_settop(L, 1);
  getuv(L, LV_AFTER_WAKE);
  lua_insert(L, 1);
  lua_call(L, 1, LUA_MULTRET);  /* (it does not yield) */
  return lua_gettop(L);
}

static int await_method(lua_State *L, const char *name) {
  lloop *s = getloop(L);
  int r = try_await(L, s, 1);
  if (r)
    return lua_yieldk(L, 1, r, await_woken_k);
  getuv(L, LV_WAIT_FOR);
  lua_insert(L, 1);
  lua_pushstring(L, name);
  lua_insert(L, 2);
  lua_settop(L, 4);
  lua_pushinteger(L, 1);  /* up: this frame */
  lua_callk(L, 4, LUA_MULTRET, 0, all_results_k);
  return lua_gettop(L);
}

static int loop_await_method(lua_State *L) {
  return await_method(L, "await");
}

static int loop_wait_method(lua_State *L) {
  return await_method(L, "wait");
}

/* set_lua(wait_for, after_wake, arm_await, timed_end): see await_method. */
static int loop_set_lua(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);
  setuv(L, LV_TIMED_END);
  setuv(L, LV_ARM);
  setuv(L, LV_AFTER_WAKE);
  setuv(L, LV_WAIT_FOR);
  return 0;
}
#endif

/* core.loop(WAIT, Task, resumed): a loop's functions (see the top). */
int lioq_loop_new(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"start", loop_start},
    {"stop", loop_stop},
    {"push", loop_push},
    {"nready", loop_nready},
    {"run", loop_run},
    {"poll", loop_poll},
    {"await", loop_await},
    {"hook", loop_hook},
#if LUA_VERSION_NUM >= 502
    {"await_method", loop_await_method},
    {"wait_method", loop_wait_method},
    {"set_lua", loop_set_lua},
#endif
    {NULL, NULL}
  };
  lloop *s;
  size_t i;
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_createtable(L, 0, 8);  /* 4 */
  s = lua_newuserdatauv(L, sizeof *s, LOOP_NUV);  /* 5: UV_LOOP */
  s->q = NULL;
  s->cur = s->runner = NULL;
  s->task_idx = 0;
  s->head = 1;
  s->tail = 0;
  lua_newtable(L);
  lua_setiuservalue(L, 5, LV_RING);
  lua_newtable(L);
  lua_setiuservalue(L, 5, LV_WSLOTS);
  lua_pushvalue(L, 1);  /* UV_WAIT */
  lua_pushvalue(L, 2);  /* UV_TASK */
  lua_pushvalue(L, 3);  /* UV_RESUMED */
  luaL_getmetatable(L, LIOQ_HANDLE);  /* UV_HANDLE_MT */
  for (i = 0; i < sizeof upvalue_strings / sizeof *upvalue_strings; i++)
    lua_pushstring(L, upvalue_strings[i]);
  luaL_setfuncs(L, funcs, NUPVALUES);
  return 1;
}
