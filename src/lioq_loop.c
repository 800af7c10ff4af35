/*
** lioq_loop.c: the hot path of the coroutine loop (lua/ioq/loop.lua) in C:
** the FIFO of tasks ready to run and the resume of each, the hand-over of
** completions to the tasks that await them, and the common case of
** h:await, with or without a timeout (the timer of a timed await is a
** deadline in the task's record here, in a heap of its own: see the
** timers below). Everything else of the loop (the other timers, cancels,
** joins, several awaiters of one handle, waits outside a task) stays in
** Lua, which this file calls back for what it does not handle itself.
**
** Why: an await through Lua cost some 5-6 C calls, a dozen Lua calls and a
** hash table per op, several times the op itself. Here one C call
** registers the task as the handle's waiter and yields; the poll wakes it
** in C (no Lua per completion), and the runner resumes it with the
** handle's result as the values of that yield, so the task has nothing to
** look up when it wakes. And none of that touches a Lua table: what the
** hot path needs of a task lives in a C record (ltask), the FIFO is a C
** array of record numbers, a handle names the task that awaits it in C by
** that number (h->loop_waiter), and the poll pushes the result straight
** onto the task's coroutine. (Where the rest of an await's cost goes, and
** the floor of any coroutine loop on Lua 5.4: bench/resume_floor.c.)
**
** The Lua side owns the rest of the state; C follows its rules, which are
** those of loop.lua:
**   - a task is a table whose metatable is the Task class, with fields
**     co (its coroutine), id (its record here, from new), status
**     ("ready": to run, or running, as nothing needs to tell them apart;
**     "waiting", "done", "failed"), waiting_on (the handle it awaits),
**     canceled and cancel_pending (see Task:cancel);
**   - waiters[h] is who awaits h: a task, a function, or a list of those;
**     but the one task of the common case waits in C instead (its record
**     says so: cwait), and its table still says "ready": loop.lua calls
**     hook(h) before it looks at waiters[h], and sync(id) before it looks
**     at a live task's status, which move such a task there (status
**     "waiting", waiting_on h, waiters[h]) and mark h (loop_shared) so the
**     C fast path leaves it to Lua until h is done;
**   - a task's coroutine yields WAIT when it waits for a wake-up in Lua
**     (an await in C yields nothing: its record tells the runner);
**   - every cancel starts in Task:cancel, which calls sync: from then on
**     (the record's flag `slow`) the hot path reads the task's cancel
**     fields in its table, as Lua does.
**
** core.loop(WAIT, Task, resumed) makes one loop's functions: start, stop,
** new, free, sync, push, nready, run, poll, await, hook, next_timer,
** fire_timers (see each below).
** They share one userdata (their upvalue), whose user values hold the Lua
** half of the state.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

/* The loop's user values: what changes. */
enum {
  LV_RECS = 1,   /* the userdata that holds the records (see grow) */
  LV_RING,       /* the userdata that holds the FIFO */
  LV_WAITERS,    /* loop.lua's waiters table (per run) */
  LV_QUEUE,      /* the running loop's queue, or nil */
  LV_THEAP,      /* the userdata that holds the timer heap */
  LV_WAIT_FOR,   /* loop.lua's wait_for, after_wake, fired and */
  LV_AFTER_WAKE, /* timed_end (see await_method) */
  LV_FIRED,
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
  UV_TASKS,      /* [id] the task table of record id (it holds the task and
                    its coroutine alive) */
  /* (The loop's for its life, emptied between runs: an upvalue is
  ** cheaper to reach than a user value.) */
  K_STATUS, K_WAITING_ON, K_CANCELED, K_CANCEL_PENDING, K_FN, K_ARGS,
  S_WAITING,
  NUPVALUES = S_WAITING
};

static const char *const upvalue_strings[] = {
  "status", "waiting_on", "canceled", "cancel_pending", "fn", "args",
  "waiting"
};

#define UV(n) lua_upvalueindex(n)

/* What the hot path needs of a live task. Record 0 is never used (a
** handle's loop_waiter 0 means none). */
typedef struct ltask {
  lua_State *co;       /* its coroutine (UV_TASKS[id].co holds it) */
  lhandle *h;          /* the handle it awaits in C: pending, so the
                          queue's anchors hold it (see sync) */
  int queued;          /* its entries in the FIFO */
  int next_free;       /* on the free list: the next free record */
  unsigned char live;  /* between new and free */
  unsigned char cwait; /* waits in C for h (its table says "ready") */
  unsigned char woke;  /* h's end made it ready: resume it with h's result */
  unsigned char started;  /* resumed once (its fn and args are gone) */
  unsigned char slow;  /* Task:cancel saw it: read its cancel fields */
  unsigned char armed; /* its await's timer is armed (due) */
  unsigned char tfired;   /* that timer fired during this await */
  int nargs;           /* woke: the values on co's stack for its resume */
  int hpos;            /* its entry in the timer heap + 1; 0: none */
  int64_t due, at;     /* armed: when the timer fires; the entry's key (a
                          lower bound of due: see the timers below) */
} ltask;

typedef struct lloop {
  lqueue *q;             /* the running loop's queue; NULL between runs */
  lua_State *cur;        /* the thread of the task being resumed, or NULL */
  int cur_id;            /* and its record */
  int depth;             /* runs of run() in progress (they nest) */
  const void *wait;      /* WAIT (kept by an upvalue), to compare yields */
  const void *handle_mt; /* the metatable of (single-shot) handles */
  ltask *recs;           /* LV_RECS's array: [0, nrecs) */
  int nrecs, top;        /* its size; records [1, top] were ever used */
  int free_head;         /* the free list of records (0: empty) */
  int *ring;             /* LV_RING's array: the FIFO, [head, tail) */
  int ring_size, head, tail;
  int *theap;            /* LV_THEAP's array: the timer heap, [0, theap_n);
                            its size is nrecs (a record has one entry) */
  int theap_n, tlive;    /* its entries; the armed timers among them */
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

static int field_truthy(lua_State *L, int idx, int k) {
  int r;
  rawgetfield(L, idx, k);
  r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

/*
** A new array of `n` zeroed elements of `size` bytes, a userdata left on
** the stack (setuv installs it). Raises out of memory.
**
** Making it is a step of the collector, which may run finalizers, and a
** finalizer may use this loop: spawn a task (the records, the heap grow),
** push one (the FIFO grows). So the callers read the loop's state only
** after this returns, and check again that they still need what they
** asked for: nothing else here runs a collector step (table writes, stack
** growth and moving values between threads do not).
*/
static void *newarray(lua_State *L, size_t n, size_t size) {
  void *p;
  if (n > (size_t)0x7fffffff / size)
    luaL_error(L, "not enough memory");
  p = lua_newuserdatauv(L, n * size, 0);
  memset(p, 0, n * size);
  return p;
}

/* Room for `more` entries at the FIFO's tail. Raises out of memory before
** anything changed. Compacts only when no run is in progress: a run keeps
** the positions it was started with. */
static void ring_reserve(lua_State *L, lloop *s, int more) {
  while (s->tail + more > s->ring_size) {
    size_t n;
    int *p;
    if (s->depth == 0 && s->head > 0) {
      memmove(s->ring, s->ring + s->head,
              (size_t)(s->tail - s->head) * sizeof *s->ring);
      s->tail -= s->head;
      s->head = 0;
      continue;
    }
    n = (size_t)s->ring_size * 2;
    if (n < (size_t)s->tail + (size_t)more + 16)
      n = (size_t)s->tail + (size_t)more + 16;
    p = newarray(L, n, sizeof *p);
    if ((size_t)s->ring_size >= n || (size_t)s->tail + (size_t)more > n) {
      lua_pop(L, 1);  /* a finalizer grew or filled it meanwhile */
      continue;
    }
    memcpy(p, s->ring, (size_t)s->tail * sizeof *p);
    s->ring = p;
    s->ring_size = (int)n;
    setuv(L, LV_RING);
  }
}

/* Appends record id to the FIFO (room reserved). */
static void ring_put(lloop *s, int id) {
  s->ring[s->tail++] = id;
  s->recs[id].queued++;
}

/* A record ended and out of the FIFO goes back to the free list. */
static void release(lloop *s, int id) {
  ltask *t = &s->recs[id];
  t->co = NULL;
  t->h = NULL;
  t->next_free = s->free_head;
  s->free_head = id;
}

/*
** The timers of timed awaits in C (h:await(timeout) in try_await): a
** deadline in the task's record, and a min-heap of record numbers keyed by
** each record's `at`. Most of them never fire (a stream read's timeout is
** armed and ended around every read), so the entries are lazy, as
** loop.lua's heap of Lua timers: ending a wait only disarms the record
** (its entry stays), arming it again for a later deadline leaves the
** entry too (only an earlier one moves it); an entry that comes to the top
** early goes back at its record's deadline, one whose record is not armed
** leaves then; and when most entries are of disarmed records the heap is
** rebuilt without them. So at <= due, and the top's `at` is a lower bound
** of every deadline: a poll may sleep until it without settling anything.
** No Lua table, no closure, no Lua call per arm; the Lua side learns of a
** timer only when it fires (loop.lua's fired, through fire_timers).
*/
static void th_place(lloop *s, int i, int id) {
  s->theap[i] = id;
  s->recs[id].hpos = i + 1;
}

static void th_up(lloop *s, int i) {
  int id = s->theap[i];
  int64_t at = s->recs[id].at;
  while (i > 0) {
    int p = (i - 1) / 2, pid = s->theap[p];
    if (s->recs[pid].at <= at)
      break;
    th_place(s, i, pid);
    i = p;
  }
  th_place(s, i, id);
}

static void th_down(lloop *s, int i) {
  int n = s->theap_n, id = s->theap[i];
  int64_t at = s->recs[id].at;
  for (;;) {
    int c = 2 * i + 1;
    if (c >= n)
      break;
    if (c + 1 < n && s->recs[s->theap[c + 1]].at < s->recs[s->theap[c]].at)
      c++;
    if (s->recs[s->theap[c]].at >= at)
      break;
    th_place(s, i, s->theap[c]);
    i = c;
  }
  th_place(s, i, id);
}

/* Takes record id's entry out of the heap. */
static void th_remove(lloop *s, int id) {
  int i = s->recs[id].hpos - 1, last = --s->theap_n;
  s->recs[id].hpos = 0;
  if (i != last) {
    int m = s->theap[last];
    th_place(s, i, m);
    th_down(s, i);
    th_up(s, s->recs[m].hpos - 1);
  }
}

/* Rebuilds the heap with only the armed records' entries. */
static void th_filter(lloop *s) {
  int i, k = 0;
  for (i = 0; i < s->theap_n; i++) {
    int id = s->theap[i];
    if (s->recs[id].armed)
      th_place(s, k++, id);
    else
      s->recs[id].hpos = 0;
  }
  s->theap_n = k;
  for (i = k / 2 - 1; i >= 0; i--)
    th_down(s, i);
}

/* Arms record id's timer for `due` (an entry is always room: the heap is
** as large as the records). */
static void timer_arm(lloop *s, int id, int64_t due) {
  ltask *t = &s->recs[id];
  if (!t->armed) {
    t->armed = 1;
    s->tlive++;
  }
  t->due = due;
  if (t->hpos == 0) {
    t->at = due;
    s->theap[s->theap_n] = id;
    th_up(s, s->theap_n++);
  } else if (due < t->at) {
    t->at = due;
    th_up(s, t->hpos - 1);
  }
}

static void timer_disarm(lloop *s, ltask *t) {
  if (!t->armed)
    return;
  t->armed = 0;
  s->tlive--;
  if (s->theap_n > 2 * s->tlive + 32)
    th_filter(s);
}

/* Settles the top: drops entries of disarmed records there and moves the
** ones that came up early to their deadlines, until the top is an armed
** record's own deadline, the next to fire. Returns its record, or 0. */
static int th_settle(lloop *s) {
  while (s->theap_n > 0) {
    int id = s->theap[0];
    ltask *t = &s->recs[id];
    if (!t->armed) {
      th_remove(s, id);
    } else if (t->due > t->at) {
      t->at = t->due;
      th_down(s, 0);
    } else {
      return id;
    }
  }
  return 0;
}

/* next_timer(): seconds until the next timer of an await in C fires (0
** if due), or nothing when none is armed. */
static int loop_next_timer(lua_State *L) {
  lloop *s = getloop(L);
  int64_t now, d;
  if (s->tlive == 0) {
    if (s->theap_n > 0)
      th_filter(s);
    return 0;
  }
  now = ioq_now_ns();
  d = s->recs[s->theap[0]].at - now;  /* (a lower bound: see above) */
  if (d <= 0) {
    d = s->recs[th_settle(s)].at - now;
    if (d < 0)
      d = 0;
  }
  lua_pushnumber(L, (lua_Number)d / 1e9);
  return 1;
}

/* fire_timers(): the awaits in C whose timers are due give up on their
** handles (loop.lua's fired(task, h), which cancels the op as a timeout
** does): the task then wakes with h's end, and its await says it timed
** out (tfired). A task that h's end woke already keeps its result. */
static int loop_fire_timers(lua_State *L) {
  lloop *s = getloop(L);
  int64_t now;
  if (s->tlive == 0)
    return 0;
  now = ioq_now_ns();
  if (s->recs[s->theap[0]].at > now)
    return 0;
  lua_settop(L, 0);
  for (;;) {
    int id = th_settle(s);
    ltask *t;
    lua_State *co;
    if (id == 0 || s->recs[id].at > now)
      break;
    t = &s->recs[id];
    th_remove(s, id);
    t->armed = 0;
    s->tlive--;
    co = t->co;
    /* The task is suspended in await_method's frame, h at its 1. */
    if (t->queued > 0 || t->woke || co == NULL ||
        lua_status(co) != LUA_YIELD || lua_touserdata(co, 1) != t->h ||
        !lua_checkstack(L, 4) || !lua_checkstack(co, 2))
      continue;
    t->tfired = 1;
    getuv(L, LV_FIRED);
    lua_rawgeti(L, UV(UV_TASKS), id);
    lua_pushvalue(co, 1);
    lua_xmove(co, L, 1);
    lua_call(L, 2, 0);  /* (Lua ran: the records may have moved) */
  }
  return 0;
}

/* The records and the FIFO, empty: at a run's start and end. */
static void reset(lua_State *L, lloop *s) {
  int id;
  for (id = 1; id <= s->top; id++) {
    lua_pushnil(L);
    lua_rawseti(L, UV(UV_TASKS), id);
  }
  /* The arrays first (see newarray), then the state. */
  newarray(L, 16, sizeof *s->theap);
  newarray(L, 16, sizeof *s->recs);
  newarray(L, 64, sizeof *s->ring);
  s->ring = lua_touserdata(L, -1);
  setuv(L, LV_RING);
  s->ring_size = 64;
  s->recs = lua_touserdata(L, -1);
  setuv(L, LV_RECS);
  s->nrecs = 16;
  s->theap = lua_touserdata(L, -1);
  setuv(L, LV_THEAP);
  s->theap_n = s->tlive = 0;
  s->top = 0;
  s->free_head = 0;
  s->head = s->tail = 0;
  s->depth = 0;
  s->cur = NULL;
  s->cur_id = 0;
}

/* start(q, waiters): a run begins on queue q. */
static int loop_start(lua_State *L) {
  lloop *s = getloop(L);
  lqueue *q = lioq_checkudata(L, 1, TAG_QUEUE);
  luaL_checktype(L, 2, LUA_TTABLE);
  reset(L, s);
  lua_pushvalue(L, 1);
  setuv(L, LV_QUEUE);
  lua_pushvalue(L, 2);
  setuv(L, LV_WAITERS);
  s->q = q;
  return 0;
}

/* Forgets the waiters in C of the ops on list l: their records go with
** the run. */
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
  lua_pushnil(L);
  setuv(L, LV_QUEUE);
  lua_pushnil(L);
  setuv(L, LV_WAITERS);
  reset(L, s);
  return 0;
}

/* new(task, co): a record for a new task; returns its id. */
static int loop_new(lua_State *L) {
  lloop *s = getloop(L);
  lua_State *co;
  ltask *t;
  int id;
  luaL_checktype(L, 1, LUA_TTABLE);
  co = lua_tothread(L, 2);
  luaL_argcheck(L, co != NULL, 2, "thread expected");
  lua_settop(L, 1);
  while (s->free_head == 0 && s->top + 1 >= s->nrecs) {
    int n = s->nrecs < 8 ? 16 : s->nrecs * 2;
    void *heap = newarray(L, (size_t)n, sizeof *s->theap);
    void *recs = newarray(L, (size_t)n, sizeof *s->recs);
    if (s->nrecs >= n) {  /* a finalizer (a spawn) grew them meanwhile */
      lua_pop(L, 2);
      continue;
    }
    memcpy(recs, s->recs, (size_t)(s->top + 1) * sizeof *s->recs);
    memcpy(heap, s->theap, (size_t)s->theap_n * sizeof *s->theap);
    s->recs = recs;
    setuv(L, LV_RECS);
    s->theap = heap;
    setuv(L, LV_THEAP);
    s->nrecs = n;
  }
  id = s->free_head != 0 ? s->free_head : s->top + 1;
  lua_pushvalue(L, 1);
  lua_rawseti(L, UV(UV_TASKS), id);  /* (may raise: then nothing changed) */
  if (id == s->free_head)
    s->free_head = s->recs[id].next_free;
  else
    s->top = id;
  t = &s->recs[id];
  memset(t, 0, sizeof *t);
  t->co = co;
  t->live = 1;
  lua_pushinteger(L, id);
  return 1;
}

static ltask *checkrec(lua_State *L, lloop *s, int arg) {
  lua_Integer id = luaL_checkinteger(L, arg);
  luaL_argcheck(L, id > 0 && id <= s->top && s->recs[id].live, arg,
                "no such task");
  return &s->recs[id];
}

/* free(id): the task ended (its record is reused once out of the FIFO). */
static int loop_free(lua_State *L) {
  lloop *s = getloop(L);
  ltask *t = checkrec(L, s, 1);
  int id = (int)(t - s->recs);
  if (t->cwait && t->h != NULL && t->h->loop_waiter == id)
    t->h->loop_waiter = 0;
  timer_disarm(s, t);
  if (t->hpos != 0)  /* (its number may serve another task) */
    th_remove(s, id);
  t->live = 0;
  t->cwait = t->woke = 0;
  lua_pushnil(L);
  lua_rawseti(L, UV(UV_TASKS), id);
  if (t->queued == 0)
    release(s, id);
  return 0;
}

/* Moves the task that awaits the handle at `hidx` in C, if any, to
** waiters[h] (status "waiting", waiting_on h), and marks h so that the C
** fast path leaves it to Lua until it is done. */
static void hook(lua_State *L, lloop *s, int hidx) {
  lhandle *h = lua_touserdata(L, hidx);
  int top = lua_gettop(L);
  if (h == NULL)
    return;
  h->loop_shared = 1;
  if (h->loop_waiter != 0) {
    int id = h->loop_waiter;
    lua_rawgeti(L, UV(UV_TASKS), id);  /* top+1: the task */
    getuv(L, LV_WAITERS);              /* top+2 */
    lua_pushvalue(L, hidx);
    lua_pushvalue(L, top + 1);
    lua_rawset(L, top + 2);  /* first, as it may raise (out of memory) */
    /* (Neither field is new in the table: these allocate nothing.) */
    lua_pushvalue(L, hidx);
    rawsetfield(L, top + 1, K_WAITING_ON);
    lua_pushvalue(L, UV(S_WAITING));
    rawsetfield(L, top + 1, K_STATUS);
    s->recs[id].cwait = 0;
    h->loop_waiter = 0;
  }
  lua_settop(L, top);
}

/* hook(h): loop.lua is about to look at waiters[h]. */
static int loop_hook(lua_State *L) {
  lioq_checkudata(L, 1, TAG_HANDLE);
  lua_settop(L, 1);
  hook(L, getloop(L), 1);
  return 0;
}

/* sync(id, task): loop.lua is about to look at the task's status
** (Task:cancel): if it waits in C, it moves to Lua (see hook); its cancel
** fields count from now on. A task of an earlier run, which a deadlock
** left unended, has no record any more (or another task has its number):
** then nothing. */
static int loop_sync(lua_State *L) {
  lloop *s = getloop(L);
  lua_Integer id = luaL_checkinteger(L, 1);
  ltask *t;
  if (id <= 0 || id > s->top || !s->recs[id].live)
    return 0;
  lua_settop(L, 2);
  lua_rawgeti(L, UV(UV_TASKS), id);
  if (!lua_rawequal(L, 2, 3))
    return 0;
  lua_settop(L, 0);
  t = &s->recs[id];
  t->slow = 1;
  /* Its handle, from the queue's anchors. One that is not anchored any
  ** more is done, on its way to its poll: the task stays (its wait ends
  ** with h's result, and a cancel then goes to its next wait). */
  if (t->cwait && t->h->slot > 0) {
    getuv(L, LV_QUEUE);
    lua_getiuservalue(L, -1, QVAL_ANCHORS);
    if (lua_istable(L, -1) && lua_rawgeti(L, -1, t->h->slot) == LUA_TUSERDATA &&
        lua_touserdata(L, -1) == (void *)t->h)
      hook(L, s, lua_gettop(L));
  }
  return 0;
}

/* push(id): appends a task (its status already "ready") to the FIFO, to
** be resumed with no values. Id 0 is a task that a run left unended (see
** loop.lua's reset_loop): it never runs again. */
static int loop_push(lua_State *L) {
  lloop *s = getloop(L);
  ltask *t;
  if (luaL_checkinteger(L, 1) == 0)
    return 0;
  ring_reserve(L, s, 1);  /* first: it may move the records (newarray) */
  t = checkrec(L, s, 1);
  if (t->woke) {  /* (not expected: its wake by h's end goes) */
    lua_settop(t->co, -t->nargs - 1);
    t->woke = 0;
  }
  ring_put(s, (int)(t - s->recs));
  return 0;
}

/* nready(): how many entries the FIFO holds. */
static int loop_nready(lua_State *L) {
  lloop *s = getloop(L);
  lua_pushinteger(L, s->tail - s->head);
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
** and it was not canceled meanwhile, true and the handle's result (what
** the await in C returns); otherwise nothing (it reads task.wake_value).
*/
static int loop_run(lua_State *L) {
  lloop *s = getloop(L);
  int last = s->tail;
  lua_State *prev = s->cur;
  int prev_id = s->cur_id;
  int depth = s->depth + 1;
  lua_settop(L, 0);
  if (!lua_checkstack(L, 16))
    luaL_error(L, "not enough memory");
  s->depth = depth;
  while (s->head < last && s->head < s->tail) {
    int id = s->ring[s->head++];
    ltask *t = &s->recs[id];
    lua_State *co;
    int st, nres = 0, narg = 0;
    t->queued--;
    if (!t->live) {
      if (t->queued == 0)
        release(s, id);
      continue;
    }
    co = t->co;
    st = lua_status(co);
    if (st != LUA_YIELD && (st != LUA_OK || t->started))
      continue;  /* running (a nested run), or dead */
    if (t->woke) {
      /* The poll left its values on its stack. (task.waiting_on is not
      ** set for a wait in C: Task:cancel reads it only after sync put it
      ** there.) */
      t->woke = 0;
      narg = t->nargs;
      if (t->slow) {  /* canceled meanwhile? then it reads task.canceled */
        lua_rawgeti(L, UV(UV_TASKS), id);
        if (field_truthy(L, 1, K_CANCELED)) {
          lua_settop(co, -narg - 1);
          narg = 0;
        }
        lua_settop(L, 0);
      }
    } else if (!t->started) {  /* the first run */
      lua_rawgeti(L, UV(UV_TASKS), id);  /* 1: the task */
      if (rawgetfield(L, 1, K_ARGS) == LUA_TTABLE) {  /* 2 */
        lua_Integer j, n;
        lua_getfield(L, 2, "n");
        n = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (n < 0 || n > 1000000 || !lua_checkstack(L, (int)n + 8) ||
            !lua_checkstack(co, (int)n + 8))
          luaL_error(L, "not enough memory");
        for (j = 1; j <= n; j++)
          lua_rawgeti(L, 2, j);
        narg = (int)n;
      }
      lua_remove(L, 2);
      lua_pushnil(L);
      rawsetfield(L, 1, K_FN);
      lua_pushnil(L);
      rawsetfield(L, 1, K_ARGS);
      lua_xmove(L, co, narg);
      lua_settop(L, 0);
      t->started = 1;
    }
    s->cur = co;
    s->cur_id = id;
    st = lioq_resume(co, L, narg, &nres);
    s->cur = prev;
    s->cur_id = prev_id;
    s->depth = depth;  /* (a nested run that raised left it higher) */
    if (st == LUA_YIELD) {
      if (nres == 0 && s->recs[id].cwait)
        continue;  /* it waits in C (try_await) */
      if (nres == 1 && lua_topointer(co, -1) == s->wait) {
        lua_settop(co, -2);
        continue;  /* it waits for a wake-up */
      }
    }
    if (st != LUA_YIELD && st != LUA_OK)
      nres = 1;  /* the error object (the coroutine keeps its frames, for
                    the traceback) */
    if (!lua_checkstack(L, nres + 4))
      luaL_error(L, "not enough memory");
    /* Anything else: resumed(task, how, ...) in Lua, how being 1 (a plain
    ** yield, its values), 2 (the function returned, its results) or 3 (it
    ** raised, the error). */
    lua_pushvalue(L, UV(UV_RESUMED));
    lua_rawgeti(L, UV(UV_TASKS), id);
    lua_pushinteger(L, st == LUA_YIELD ? 1 : st == LUA_OK ? 2 : 3);
    lua_xmove(co, L, nres);
    lua_call(L, 2 + nres, 0);
  }
  s->depth = depth - 1;
  if (s->head >= s->tail)
    s->head = s->tail = 0;
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
  int r, top;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->q == NULL || s->q->backend == NULL)
    return luaL_error(L, "queue is closed");
  lua_settop(L, 2);
  getuv(L, LV_QUEUE);    /* 3 */
  r = lioq_pump(L, s->q, 3, timeout, 2);
  if (r == LIOQ_STUCK)
    r = 0;  /* nothing can arrive: see pump */
  else if (r < 0)
    return lioq_fail(L, "wait", -r);
  n = r;
  if (!lua_checkstack(L, 40))
    luaL_error(L, "not enough memory");
  top = 3;
  for (i = 1; i <= n; i++) {
    lhandle *h;
    int hidx;
    if (top > 32) {
      lua_settop(L, 3);  /* (handles seen pile up until here) */
      top = 3;
    }
    lua_rawgeti(L, 2, i);   /* hidx: the handle */
    hidx = ++top;
    h = lua_touserdata(L, hidx);
    if (h != NULL && h->loop_waiter != 0 && h->state == ST_DONE) {
      /* Its result goes on its coroutine's stack now, the values its
      ** resume will pass: true, then the result. (Only out of memory
      ** raises here, and that ends the run: see loop.lua's drive.)
      ** Making the result and the FIFO's room may run finalizers (see
      ** newarray), which may move the records or move this wait to Lua
      ** (hook): the record is looked at only after both. */
      int id, nv;
      ltask *t;
      lua_pushboolean(L, 1);
      nv = 1 + lioq_push_result(L, h, hidx);
      ring_reserve(L, s, 1);
      id = h->loop_waiter;
      t = &s->recs[id];
      if (id != 0 && t->live && t->cwait && t->h == h) {
        if (!lua_checkstack(t->co, nv + 8))
          luaL_error(L, "not enough memory");
        h->loop_waiter = 0;
        lua_xmove(L, t->co, nv);
        t->nargs = nv;
        t->cwait = 0;
        t->woke = 1;
        ring_put(s, id);
        continue;
      }
      lua_pop(L, nv);
      h->loop_waiter = 0;
    }
    if (h != NULL && h->state == ST_DONE)
      h->loop_shared = 0;  /* dispatch takes its waiters */
    if (++kept != i) {
      lua_rawseti(L, 2, kept);
      top--;
    }
  }
  lua_settop(L, 3);
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
** nobody else awaiting it. Then the task becomes h's waiter (its record
** says cwait; with a timeout, its timer is armed: see the timers above),
** the stack is h, h's metatable, and it returns the context of
** await_woken_k: the task's record number times 2, plus 1 if timed. The
** caller yields no value, which is how the runner tells this wait (a
** plain coroutine.yield() leaves the record as it was). Otherwise it
** returns 0, the stack as it was but for a nil timeout, for the general
** await in Lua. `timed_ok`: whether a timeout may take this way (only
** where set_lua gave fired and timed_end).
*/
static int try_await(lua_State *L, lloop *s, int timed_ok) {
  lhandle *h;
  ltask *t;
  int n = lua_gettop(L), timed = 0, id;
  int64_t due = 0;
  if (L != s->cur || n > 2 || !lua_isyieldable(L))
    return 0;
  if (n == 2) {
    if (lua_isnil(L, 2)) {
      lua_settop(L, 1);
    } else {
      /* (Anything but a number >= 0 is the Lua path's to refuse; NaN
      ** too.) */
      lua_Number secs;
      if (!timed_ok || lua_type(L, 2) != LUA_TNUMBER ||
          !((secs = lua_tonumber(L, 2)) >= 0))
        return 0;
      if (secs > 1e9)  /* (as lioq_checkseconds) */
        secs = 1e9;
      due = ioq_now_ns() + (int64_t)(secs * 1e9);
      timed = 1;
    }
  }
  /* A handle: the metatable of single-shot ones (multishot handles have
  ** their own, and take the general way). From here the stack is h,
  ** [timeout,] its metatable, until the end. */
  h = lua_touserdata(L, 1);
  if (h == NULL || !lua_getmetatable(L, 1))
    return 0;
  id = s->cur_id;
  t = &s->recs[id];
  if (lua_topointer(L, -1) != s->handle_mt || h->q != s->q ||
      h->state == ST_DONE || h->op.multishot || h->loop_shared ||
      h->loop_waiter != 0 || h->slot <= 0 || !t->live)
    goto general;
  if (t->slow) {  /* its table: the cancel fields */
    lua_rawgeti(L, UV(UV_TASKS), id);  /* 3 + timed */
    if (field_truthy(L, 3 + timed, K_CANCEL_PENDING))
      goto general;
  }
  /* (h needs no reference here: the queue's anchors hold it while it is
  ** pending, and its poll hands it over.) */
  if (timed)
    timer_arm(s, id, due);
  t->h = h;
  t->cwait = 1;
  t->tfired = 0;
  h->loop_waiter = id;
  if (timed)
    lua_remove(L, 2);
  lua_settop(L, 2);  /* h, the metatable */
  return id * 2 + timed;
general:
  lua_settop(L, 1 + timed);
  return 0;
}

/*
** await(h): try_await for loop.lua's h:await on Lua 5.1: yields WAIT; the
** values the runner resumes the task with are what this returns (true and
** h's result; or nothing, when something else woke it: the caller then
** does what loop.lua's await does after a wake-up). Returns false at once
** when it does not apply.
*/
static int loop_await(lua_State *L) {
  if (try_await(L, getloop(L), 0))
    return lua_yield(L, 0);
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
** loop.lua's after_wake(h, fired). A timed await in C arms the task's
** timer here (see the timers above), whose firing calls loop.lua's
** fired(task, h); when it fired, h's result goes through timed_end(h,
** ...), which names a cancel a timeout. set_lua(wait_for, after_wake,
** fired, timed_end) gives them.
*/
static int all_results_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/* ctx: what try_await returned (the task's record, timed). */
static int await_woken_k(lua_State *L, int status, lua_KContext ctx) {
  int top = lua_gettop(L), fired = 0;
  (void)status;
  if (ctx & 1) {  /* the wait is over: its timer too */
    lloop *s = getloop(L);
    ltask *t = &s->recs[ctx >> 1];
    fired = t->tfired;
    t->tfired = 0;
    timer_disarm(s, t);
  }
  /* The stack: h, the metatable, then what the resume brought: true and
  ** h's result, or nothing. */
  if (top > 2) {
    if (!fired)
      return top - 3;  /* h's result */
    /* timed_end(h, h's result...): a cancel of the timer's is a timeout */
    lua_remove(L, 3);   /* h, mt, ... */
    lua_copy(L, 1, 2);  /* h, h, ... */
    getuv(L, LV_TIMED_END);
    lua_replace(L, 1);  /* timed_end, h, ... */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);  /* (it does not yield) */
    return lua_gettop(L);
  }
  /* after_wake(h, fired) */
  lua_settop(L, 1);
  getuv(L, LV_AFTER_WAKE);
  lua_insert(L, 1);
  lua_pushboolean(L, fired);
  lua_call(L, 2, LUA_MULTRET);  /* (it does not yield) */
  return lua_gettop(L);
}

static int await_method(lua_State *L, const char *name) {
  lloop *s = getloop(L);
  int r = try_await(L, s, 1);
  if (r)
    return lua_yieldk(L, 0, r, await_woken_k);
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

/* set_lua(wait_for, after_wake, fired, timed_end): see await_method. */
static int loop_set_lua(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);
  setuv(L, LV_TIMED_END);
  setuv(L, LV_FIRED);
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
    {"new", loop_new},
    {"free", loop_free},
    {"sync", loop_sync},
    {"push", loop_push},
    {"nready", loop_nready},
    {"run", loop_run},
    {"poll", loop_poll},
    {"await", loop_await},
    {"hook", loop_hook},
    {"next_timer", loop_next_timer},
    {"fire_timers", loop_fire_timers},
#if LUA_VERSION_NUM >= 502
    {"await_method", loop_await_method},
    {"wait_method", loop_wait_method},
    {"set_lua", loop_set_lua},
#endif
    {NULL, NULL}
  };
  lloop *s;
  size_t i;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  lua_createtable(L, 0, 16);  /* 4 */
  s = lua_newuserdatauv(L, sizeof *s, LOOP_NUV);  /* 5: UV_LOOP */
  memset(s, 0, sizeof *s);
  s->wait = lua_topointer(L, 1);
  luaL_getmetatable(L, LIOQ_HANDLE);
  s->handle_mt = lua_topointer(L, -1);  /* (the registry keeps it) */
  lua_pop(L, 1);
  lua_pushvalue(L, 1);  /* UV_WAIT */
  lua_pushvalue(L, 2);  /* UV_TASK */
  lua_pushvalue(L, 3);  /* UV_RESUMED */
  lua_newtable(L);      /* UV_TASKS */
  for (i = 0; i < sizeof upvalue_strings / sizeof *upvalue_strings; i++)
    lua_pushstring(L, upvalue_strings[i]);
  luaL_setfuncs(L, funcs, NUPVALUES);
  return 1;
}
