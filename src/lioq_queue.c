/*
** lioq_queue.c: ioq.queue and ioq.handle.
**
** A handle is a userdata that embeds its ioq_op, so the op needs no memory
** of its own. Each op moves through three lists of its queue:
**
**   unsent    created by q:read & co., not yet given to the backend (this is
**             also where ops wait while the submission queue is full)
**   inflight  started: the backend and the kernel own it
**   ready     finished without the kernel (cancelled before it was sent, or
**             refused by the backend), waiting for q:wait to report it
**
** and is then "done": its result is in op.res and its handle is an ordinary
** Lua value again. Until then the handle sits in the queue's anchor table
** (the queue's first user value), so Lua cannot collect it, nor the buffer,
** string or file it keeps in its own user values.
*/
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifndef _WIN32
#include <pthread.h>
#endif

#include "lioq.h"

/* Completions handled per backend call. */
#define REAP_BATCH 128

/* Where an op is. STARVED: a multishot receive the kernel disarmed because
** the pool ran dry; it is armed again once buffers come back. */
enum { ST_UNSENT, ST_INFLIGHT, ST_READY, ST_STARVED, ST_DONE };

typedef struct oplist {
  ioq_op *head, *tail;
  size_t n;
} oplist;

#ifdef _WIN32
typedef DWORD thread_id;
#define this_thread() GetCurrentThreadId()
#define same_thread(a, b) ((a) == (b))
#else
typedef pthread_t thread_id;
#define this_thread() pthread_self()
#define same_thread(a, b) pthread_equal(a, b)
#endif

typedef struct lqueue {
  ioq_backend *be;         /* NULL once closed */
#ifndef _WIN32
  pid_t owner;             /* the process that created the ring */
  unsigned long forks;     /* the fork count then */
#endif
  thread_id thread;        /* the thread that created it: the only one that
                              may drive it (io_uring's single issuer) */
  oplist unsent, inflight, ready, starved;
  int *free_slots;         /* anchor slots free for reuse */
  int nfree;               /* how many of them */
  int top;                 /* highest anchor slot ever used */
  int slots_cap;           /* capacity of free_slots (>= top) */
  int closing;             /* destroy is draining: re-arm nothing */
  lua_Integer starvations; /* times a receive found the pool empty */
  struct lhandle *cancels; /* cancels the backend had no room for yet */
  ioq_pool *pool;          /* provided buffers, made on first use; the
                              queue holds a reference until it is collected */
  unsigned pool_count, pool_size;
  int64_t linger_ns;       /* how long close waits for output ops */
  ioq_event events[REAP_BATCH];
  unsigned char act[REAP_BATCH];
} lqueue;

/* Registry key of the queue metatables, one per backend, in backend order. */
#define QUEUE_METATABLES "ioq.queue metatables"

/* Queue user values. */
enum { QUV_ANCHORS = 1, QUV_HANDLE_MT, QUEUE_NUV = QUV_HANDLE_MT };

/* Handle user values. */
enum {
  UV_QUEUE = 1,   /* its queue */
  UV_DATA,        /* the buffer, string or path the kernel uses; or the
                     error message of an op that failed before it started */
  UV_FD,          /* the file or socket object of its descriptor */
  UV_RESULT       /* the object an open or accept resolves to */
};

typedef struct lhandle {
  ioq_op op;               /* first: an ioq_op* is an lhandle* */
  lqueue *q;
  lioq_block *block;       /* the buffer's bytes, referenced while pending */
  lioq_file *file_out;     /* open, accept: receives the new descriptor */
  int slot;                /* index in the anchor table while pending */
  int state;
  int has_msg;             /* UV_DATA holds the error message */
  /* Multishot ops: what arrived and Lua has not taken yet, oldest first
  ** (a descriptor, or a byte count with its pool buffer). */
  struct { int64_t res; int32_t buf; } *items;
  unsigned items_head, items_n, items_cap;
  int family, type;        /* multishot accept: the sockets it makes */
  ioq_pool *pool;          /* multishot receive: where its items' buffers
                              go back to (each item holds a reference) */
  struct lhandle *cancel_next;  /* on q->cancels */
  int cancel_queued;
  int paused;              /* multishot accept: stopped on an error item
                              until Lua takes it */
  lioq_file *pos_file;     /* the file whose kept position the op moved */
  int at_position;         /* asked for the current position (offset -1) */
  lioq_file *file;         /* the file object the op is pending on */
  lioq_oplink link;        /* in file->ops */
} lhandle;

#define handle_of_link(l) \
  ((lhandle *)(void *)((char *)(l) - offsetof(lhandle, link)))

static const char *const op_names[IOQ_NOPCODES] = {
  "nop", "read", "write", "fsync", "open", "sleep", "accept", "connect",
  "recv", "send", "recvfrom", "sendto", "shutdown"
};

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

/* ---------------------------------------------------------------- lists */

static void list_push(oplist *l, ioq_op *op) {
  op->next = NULL;
  op->prev = l->tail;
  if (l->tail) l->tail->next = op;
  else l->head = op;
  l->tail = op;
  l->n++;
}

static void list_remove(oplist *l, ioq_op *op) {
  if (op->prev) op->prev->next = op->next;
  else l->head = op->next;
  if (op->next) op->next->prev = op->prev;
  else l->tail = op->prev;
  op->next = op->prev = NULL;
  l->n--;
}

static size_t queue_pending(const lqueue *q) {
  return q->unsent.n + q->inflight.n + q->ready.n + q->starved.n;
}

#ifdef _WIN32
#define checkprocess(L, q) ((void)0)  /* Windows has no fork */
#define forked_child(q) 0
#else
/*
** Forks, counted by an atfork handler, so that noticing one costs a load
** rather than a getpid() system call on every wait. (glibc drops the
** handler if this module is ever unloaded.)
*/
static volatile unsigned long forks;

static void count_fork(void) {
  forks++;
}

static void watch_forks(void) {
  pthread_atfork(NULL, NULL, count_fork);
}

/*
** A forked child must not drive its parent's queue: the ring (or the
** epoll set and its worker threads) works for the parent. Checked where
** ops reach the kernel, not on every call.
*/
static void checkprocess(lua_State *L, lqueue *q) {
  if (q->forks != forks && getpid() != q->owner)
    luaL_error(L, "this queue belongs to the process that created it "
                  "(make a new queue after fork)");
}

#define forked_child(q) (getpid() != (q)->owner)
#endif

/*
** A queue is driven by the thread that created it: io_uring refuses any
** other (single issuer), and a rule that holds on every backend is one a
** script can rely on. Checked wherever the backend is called.
*/
static void checkowner(lua_State *L, lqueue *q) {
  checkprocess(L, q);
  if (!same_thread(q->thread, this_thread()))
    luaL_error(L, "this queue belongs to the thread that created it "
                  "(make a queue in each thread)");
}

/* ---------------------------------------------------------------- time */

/* Seconds at `arg` (a non-negative number) as nanoseconds; `dflt` if nil. */
static int64_t checkseconds(lua_State *L, int arg, int64_t dflt) {
  lua_Number s;
  if (lua_isnoneornil(L, arg))
    return dflt;
  s = luaL_checknumber(L, arg);
  luaL_argcheck(L, s >= 0, arg, "seconds must be a non-negative number");
  if (s > 1e9)  /* about 31 years: as good as forever, and no overflow */
    s = 1e9;
  return (int64_t)(s * 1e9);
}

/* ioq.now(): monotonic seconds. */
int lioq_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)ioq_now_ns() / 1e9);
  return 1;
}

/* ---------------------------------------------------------------- items */

/* Queues an item of a multishot op for Lua to take. 0 if out of memory. */
static int item_push(lhandle *h, int64_t res, int32_t buf) {
  unsigned i;
  if (h->items_n == h->items_cap) {
    unsigned cap = h->items_cap ? h->items_cap * 2 : 16, k;
    void *p = malloc(cap * sizeof *h->items);
    if (p == NULL || cap < h->items_cap) {
      free(p);
      return 0;
    }
    for (k = 0; k < h->items_n; k++)  /* unroll the ring into the new array */
      memcpy((char *)p + k * sizeof *h->items,
             &h->items[(h->items_head + k) % h->items_cap], sizeof *h->items);
    free(h->items);
    h->items = p;
    h->items_cap = cap;
    h->items_head = 0;
  }
  i = (h->items_head + h->items_n++) % h->items_cap;
  h->items[i].res = res;
  h->items[i].buf = buf;
  return 1;
}

/* Gives back what an item holds: its descriptor, or its pool buffer. */
static void item_drop(lhandle *h, int64_t res, int32_t buf) {
  if (buf >= 0)
    ioq_pool_release(h->pool, buf);
  else if (h->op.code == IOQ_ACCEPT && res >= 0)
    ioq_close((ioq_fd)res, 1);
}

/* Drops every item nobody will take, and the item array. */
static void items_free(lhandle *h) {
  while (h->items_n > 0) {
    unsigned i = h->items_head;
    h->items_head = (h->items_head + 1) % h->items_cap;
    h->items_n--;
    item_drop(h, h->items[i].res, h->items[i].buf);
  }
  free(h->items);
  h->items = NULL;
  h->items_cap = 0;
}

static int cancel(lhandle *h);
static void use_position(lua_State *L, lqueue *q, lhandle *h, int fidx);

/* Puts a pending op on the list of the file object at `idx`, if any. */
static void link_file(lua_State *L, lhandle *h, int idx) {
  lioq_file *f = lioq_toudata(L, idx, TAG_FILE);
  if (f == NULL)
    f = lioq_toudata(L, idx, TAG_SOCKET);
  if (f == NULL)
    return;
  h->file = f;
  h->link.prev = NULL;
  h->link.next = f->ops;
  if (f->ops != NULL)
    f->ops->prev = &h->link;
  f->ops = &h->link;
}

/* Takes a finished op off its file object's list; a close that waited for
** the last op pending there happens now. */
static void unlink_file(lhandle *h) {
  lioq_file *f = h->file;
  if (f == NULL)
    return;
  if (h->link.prev != NULL) h->link.prev->next = h->link.next;
  else f->ops = h->link.next;
  if (h->link.next != NULL) h->link.next->prev = h->link.prev;
  h->link.next = h->link.prev = NULL;
  h->file = NULL;
  lioq_file_release(f);
}

/* Takes h off the list of cancels waiting for room (it is done, and may
** be collected once its anchor goes). */
static void drop_cancel(lhandle *h) {
  lhandle **p = &h->q->cancels;
  while (*p != NULL && *p != h)
    p = &(*p)->cancel_next;
  if (*p == h)
    *p = h->cancel_next;
  h->cancel_next = NULL;
  h->cancel_queued = 0;
}

/*
** Finishes an op in C: frees what it held and records its result. Touches
** no Lua state, so queue destruction in __gc can use it.
*/
static void settle(lhandle *h, int from_gc) {
  h->state = ST_DONE;
  if (h->cancel_queued)
    drop_cancel(h);
  unlink_file(h);
  if (from_gc && h->items != NULL)  /* nobody can take them any more */
    items_free(h);
  if (h->block != NULL) {
    h->block->busy = 0;
    lioq_block_unref(h->block);
    h->block = NULL;
  }
  if (h->file_out != NULL) {
    if (h->op.res >= 0) {
      if (from_gc)  /* nobody can see the file object any more */
        ioq_close((ioq_fd)h->op.res, h->op.code == IOQ_ACCEPT);
      else
        h->file_out->fd = (ioq_fd)h->op.res;
    }
    h->file_out = NULL;
  }
  if (h->pos_file != NULL) {  /* fewer bytes moved than use_position took */
    lioq_file *f = h->pos_file;
    int64_t moved = h->op.res > 0 ? h->op.res : 0;
    if (!from_gc && moved < h->op.len && f->pos == h->op.offset + h->op.len)
      f->pos = h->op.offset + moved;
    h->pos_file = NULL;
  }
}

/* Anchor slots: the anchor table's integer keys, reused through a stack. */
static void release_slot(lqueue *q, int slot) {
  q->free_slots[q->nfree++] = slot;  /* fits: slots_cap >= top */
}

/* ---------------------------------------------------------------- cancels */

/*
** Asks the backend to cancel an op in flight. When it has no room for the
** request now (a full submission queue the kernel will not take yet), the
** op waits on q->cancels and the request is made again before each wait:
** a cancel is never dropped, or a timed-out wait could wait forever.
*/
static int ask_cancel(lqueue *q, lhandle *h) {
  int r = q->be->cls->cancel(q->be, &h->op);
  if (r == -EAGAIN) {
    if (!h->cancel_queued) {
      h->cancel_queued = 1;
      h->cancel_next = q->cancels;
      q->cancels = h;
    }
    return 0;
  }
  return r;
}

static void retry_cancels(lqueue *q) {
  lhandle *h = q->cancels;
  q->cancels = NULL;
  while (h != NULL) {
    lhandle *next = h->cancel_next;
    h->cancel_queued = 0;
    h->cancel_next = NULL;
    if (h->state == ST_INFLIGHT)
      ask_cancel(q, h);
    h = next;
  }
}

/* ---------------------------------------------------------------- driving */

/*
** Gives unsent ops to the backend, oldest first, until it has no room.
** Ops the backend refuses outright finish at once with its error. Starved
** receives go back in once the pool has buffers again.
*/
static void flush(lqueue *q) {
  if (q->starved.n > 0 && q->pool != NULL && q->pool->nfree > 0) {
    ioq_op *op = q->starved.head, *next;
    for (; op != NULL; op = next) {
      next = op->next;
      if (((lhandle *)op)->paused)
        continue;
      list_remove(&q->starved, op);
      ((lhandle *)op)->state = ST_UNSENT;
      list_push(&q->unsent, op);
    }
  }
  while (q->unsent.head != NULL) {
    ioq_op *op = q->unsent.head;
    int r = q->be->cls->start(q->be, op);
    if (r == -EAGAIN) {
      q->be->cls->submit(q->be);
      r = q->be->cls->start(q->be, op);
      if (r == -EAGAIN)
        return;
    }
    list_remove(&q->unsent, op);
    if (r < 0) {
      op->res = r;
      ((lhandle *)op)->state = ST_READY;
      list_push(&q->ready, op);
    } else {
      ((lhandle *)op)->state = ST_INFLIGHT;
      list_push(&q->inflight, op);
    }
  }
}

/* Takes up to REAP_BATCH ops off the ready list as events. */
static int take_ready(lqueue *q) {
  int n = 0;
  while (q->ready.head != NULL && n < REAP_BATCH) {
    ioq_op *op = q->ready.head;
    list_remove(&q->ready, op);
    q->events[n].op = op;
    q->events[n].res = op->res;
    q->events[n].buf = -1;
    q->events[n].more = 0;
    n++;
  }
  return n;
}

/* Asks the backend for completions; ops that are done leave `inflight`. */
static int reap(lqueue *q, int64_t timeout_ns) {
  int i, n = q->be->cls->reap(q->be, q->events, REAP_BATCH, timeout_ns);
  for (i = 0; i < n; i++)
    if (!q->events[i].more)
      list_remove(&q->inflight, q->events[i].op);
  return n;
}

/* What an event means for Lua: nothing yet, news on a multishot handle,
** or a handle that is done. */
enum { ACT_NONE, ACT_NEWS, ACT_DONE };

/*
** Errors after which a multishot accept goes on: the connection that
** failed is gone, the listening socket is fine.
*/
static int accept_goes_on(int64_t res) {
  return res == -ECONNABORTED || res == -EINTR || res == -EAGAIN ||
#ifdef EPROTO
         res == -EPROTO ||
#endif
         res == -ECONNRESET;
}

/*
** Errors that say the process is short of something (descriptors,
** memory): the accept pauses, Lua gets the error as an item, and taking
** that item arms the accept again. Re-arming at once would only spin.
*/
static int accept_pauses(int64_t res) {
  return res == -EMFILE || res == -ENFILE || res == -ENOBUFS ||
         res == -ENOMEM;
}

/*
** Applies one event in C (no Lua calls): records a result and settles the
** op, or queues a multishot item. A multishot op that the kernel disarmed
** on its own (the pool ran dry, or the completion queue overflowed) is
** armed again rather than ended; so is an accept that failed for the one
** connection (ECONNABORTED...). One that failed for want of descriptors
** waits until Lua has seen the error.
*/
static int apply(lqueue *q, const ioq_event *ev, int from_gc) {
  lhandle *h = (lhandle *)ev->op;
  ioq_op *op = ev->op;
  int news = 0;
  if (!op->multishot) {
    op->res = ev->res;
    settle(h, from_gc);
    return ACT_DONE;
  }
  if (ev->buf >= 0 || (op->code == IOQ_ACCEPT && ev->res >= 0)) {
    if (ev->res > 0 || op->code == IOQ_ACCEPT) {
      if (item_push(h, ev->res, ev->buf))
        news = 1;
      else
        item_drop(h, ev->res, ev->buf);  /* out of memory: lose this one */
    } else {
      item_drop(h, ev->res, ev->buf);
    }
  }
  if (ev->more)
    return news ? ACT_NEWS : ACT_NONE;
  if (!op->cancel_requested && !q->closing) {
    if (op->code == IOQ_ACCEPT && accept_goes_on(ev->res)) {
      h->state = ST_UNSENT;
      list_push(&q->unsent, op);
      return news ? ACT_NEWS : ACT_NONE;
    }
    if (op->code == IOQ_ACCEPT && accept_pauses(ev->res) &&
        item_push(h, ev->res, -1)) {
      h->paused = 1;
      h->state = ST_STARVED;
      list_push(&q->starved, op);
      return ACT_NEWS;
    }
    if (ev->res == -ENOBUFS) {
      q->starvations++;
      h->state = ST_STARVED;
      list_push(&q->starved, op);
      return news ? ACT_NEWS : ACT_NONE;
    }
    if (ev->res > 0 || (op->code == IOQ_ACCEPT && ev->res >= 0)) {
      h->state = ST_UNSENT;
      list_push(&q->unsent, op);
      return news ? ACT_NEWS : ACT_NONE;
    }
  }
  /* The end: 0 after the peer closed, or an error (ECANCELED...). */
  op->res = ev->res > 0 || (op->code == IOQ_ACCEPT && ev->res >= 0)
          ? -ECANCELED : ev->res;
  settle(h, from_gc);
  return ACT_DONE;
}

/*
** Applies n events, then does their Lua part: drops the anchors of handles
** that are done, and appends every handle with news to the table at
** `into` (0: none). Only that last step can allocate; the caller made room
** on the stack for n handles.
*/
static void deliver(lua_State *L, lqueue *q, int anchors, int n, int into,
                    lua_Integer *count) {
  int i, pushed = 0;
  for (i = 0; i < n; i++)
    q->act[i] = (unsigned char)apply(q, &q->events[i], 0);
  for (i = 0; i < n; i++) {
    lhandle *h = (lhandle *)q->events[i].op;
    if (q->act[i] == ACT_NONE)
      continue;
    lua_rawgeti(L, anchors, h->slot);
    pushed++;
    if (q->act[i] == ACT_DONE && h->slot != 0) {
      lua_pushnil(L);
      lua_rawseti(L, anchors, h->slot);
      release_slot(q, h->slot);
      h->slot = 0;
    }
  }
  for (i = 0; i < pushed; i++) {
    if (into) {
      lua_pushvalue(L, -pushed + i);
      lua_rawseti(L, into, ++*count);
    } else {
      ++*count;
    }
  }
  lua_pop(L, pushed);
}

/* Pump's answer when only starved receives are pending and nothing in the
** kernel can ever complete: waiting would be forever. */
#define STUCK (-ENOBUFS)

/*
** Drives the queue until at least one op finishes or `timeout_ns` passes
** (< 0: no limit). Finished ops are settled and unanchored, and appended to
** the table at `into` when that is not 0. Returns how many finished;
** STUCK when nothing is in the kernel but receives waiting for pool
** buffers that only Lua can give back; or -errno when the backend fails.
**
** Buffer views a script dropped go back to the pool only when the garbage
** collector finalizes them, which cannot happen while C sleeps here: so
** before it would sleep on starved receives alone, pump runs a full
** collection once. Finalizers may run any Lua code then (even close this
** queue), so everything is looked at again afterwards.
*/
static int pump(lua_State *L, lqueue *q, int qidx, int64_t timeout_ns,
                int into) {
  int64_t deadline = timeout_ns > 0 ? ioq_now_ns() + timeout_ns : 0;
  lua_Integer count = 0;
  int anchors, collected = 0;
  if (queue_pending(q) == 0)
    return 0;
  checkowner(L, q);
  if (!lua_checkstack(L, REAP_BATCH + 4))  /* no room: memory, not depth */
    luaL_error(L, "not enough memory");
  lua_getiuservalue(L, qidx, QUV_ANCHORS);
  anchors = lua_gettop(L);
  for (;;) {
    int n;
    if (q->be == NULL) {  /* closed by a finalizer */
      lua_pop(L, 1);
      return (int)count;
    }
    flush(q);
    if (q->cancels != NULL)
      retry_cancels(q);
    n = take_ready(q);
    if (n == 0 && q->inflight.n == 0 && q->unsent.n == 0 &&
        q->starved.n > 0) {
      if (!collected) {
        collected = 1;
        lua_gc(L, LUA_GCCOLLECT, 0);
        continue;
      }
      if (timeout_ns < 0) {
        lua_pop(L, 1);
        return count > 0 ? (int)count : STUCK;
      }
    }
    if (n == 0) {
      int64_t wait = timeout_ns;
      if (timeout_ns > 0) {
        wait = deadline - ioq_now_ns();
        if (wait < 0) wait = 0;
      }
      if (q->cancels != NULL && (wait < 0 || wait > 1000000))
        wait = 1000000;  /* come back soon to ask again */
      n = reap(q, wait);
      if (n == -EINTR)
        n = 0;
      else if (n < 0) {
        lua_pop(L, 1);
        return n;
      }
    }
    deliver(L, q, anchors, n, into, &count);
    if (count > 0 || timeout_ns == 0 || queue_pending(q) == 0)
      break;
    if (timeout_ns > 0 && ioq_now_ns() >= deadline)
      break;
  }
  lua_pop(L, 1);
  return (int)count;
}

/*
** Ops that send data out, which a close hands to the kernel and waits for
** rather than cancels: what a script wrote is never dropped silently.
*/
static int is_output(const ioq_op *op) {
  switch (op->code) {
    case IOQ_WRITE: case IOQ_SEND: case IOQ_SENDTO: case IOQ_FSYNC:
    case IOQ_SHUTDOWN:
      return !op->multishot;
    default:
      return 0;
  }
}

/* Ends an op that never reached the kernel with `res`. */
static void settle_unsent(oplist *l, ioq_op *op, int64_t res, int from_gc) {
  list_remove(l, op);
  op->res = res;
  settle((lhandle *)op, from_gc);
}

/*
** Asks for every op in flight that `pick` selects (NULL: all) to be
** cancelled.
*/
static void cancel_inflight(lqueue *q, int (*pick)(const ioq_op *)) {
  ioq_op *op;
  for (op = q->inflight.head; op != NULL; op = op->next)
    if ((pick == NULL || pick(op)) && !op->cancel_requested) {
      op->cancel_requested = 1;
      ask_cancel(q, (lhandle *)op);
    }
}

static int is_input(const ioq_op *op) {
  return !is_output(op);
}

/*
** The end of a queue, shared by q:close(), <close> and __gc; calls no Lua
** code. Input ops (reads, receives, accepts, sleeps...) are cancelled.
** Output ops (writes, sends, fsyncs, shutdowns) still unsent are handed to
** the kernel, and each is waited for up to the queue's linger time, then
** cancelled too. Every op is reaped before the backend is freed: the
** kernel owns an op's memory until then. Returns 0, or -1 when the
** backend broke and the ops still in it (with every byte they point to)
** must be left alive, never freed.
*/
static int destroy(lqueue *q, int from_gc) {
  ioq_backend *be = q->be;
  ioq_op *op, *next;
  int64_t deadline;
  int lingered = 0;
  if (be == NULL)
    return 0;
  q->closing = 1;
  while ((op = q->starved.head) != NULL)
    settle_unsent(&q->starved, op, -ECANCELED, from_gc);
  while ((op = q->ready.head) != NULL) {
    list_remove(&q->ready, op);
    settle((lhandle *)op, from_gc);
  }
  for (op = q->unsent.head; op != NULL; op = next) {
    next = op->next;
    if (!is_output(op) || forked_child(q))
      settle_unsent(&q->unsent, op, -ECANCELED, from_gc);
  }
  if (forked_child(q)) {
    /* The kernel works for the parent, not for us: leave its ops be. */
    while ((op = q->inflight.head) != NULL)
      settle_unsent(&q->inflight, op, -ECANCELED, from_gc);
    q->be = NULL;
    be->cls->destroy(be);
    return 0;
  }
  cancel_inflight(q, is_input);
  deadline = ioq_now_ns() + q->linger_ns;
  while (q->inflight.n > 0 || q->unsent.n > 0 || q->ready.n > 0) {
    int64_t wait = -1;
    int i, n;
    flush(q);
    while ((op = q->ready.head) != NULL) {  /* refused by the backend */
      list_remove(&q->ready, op);
      settle((lhandle *)op, from_gc);
    }
    if (!lingered && ioq_now_ns() >= deadline) {
      lingered = 1;
      while ((op = q->unsent.head) != NULL)
        settle_unsent(&q->unsent, op, -ECANCELED, from_gc);
      cancel_inflight(q, NULL);
    }
    if (q->inflight.n == 0)
      continue;
    if (q->cancels != NULL)
      retry_cancels(q);
    if (!lingered) {
      wait = deadline - ioq_now_ns();
      if (wait < 0) wait = 0;
    }
    if (q->cancels != NULL && (wait < 0 || wait > 1000000))
      wait = 1000000;  /* come back soon to ask again */
    n = reap(q, wait);
    if (n < 0 && n != -EINTR) {
      /* The ring is broken (or refuses this thread): the kernel may
      ** still write into these ops and buffers, so keep them alive. */
      q->be = NULL;
      return -1;
    }
    for (i = 0; i < n; i++)
      apply(q, &q->events[i], from_gc);
  }
  q->be = NULL;
  be->cls->destroy(be);
  return 0;
}

/* ---------------------------------------------------------------- closing files */

/* May this thread call the queue's backend? */
static int may_drive(lqueue *q) {
  return q->be != NULL && !forked_child(q) &&
         same_thread(q->thread, this_thread());
}

/*
** Ends the ops pending on a file object that Lua is closing; lioq_file.c
** closes the descriptor once none is left. Output already asked for goes
** out first: unsent ops are handed to the kernel, which tries each at
** once. Then every op still pending is cancelled, except writes and
** fsyncs to a file (not a socket), which finish soon by themselves and
** whose data a close must not drop. The cancels are submitted at once,
** so that the kernel lets go of the descriptor (and a peer sees the
** close) as soon as it has handed the ops back.
*/
void lioq_end_ops(lioq_file *f) {
  lioq_oplink *l;
  for (l = f->ops; l != NULL; l = l->next) {
    lhandle *h = handle_of_link(l);
    if (h->state == ST_UNSENT && may_drive(h->q)) {
      flush(h->q);
      h->q->be->cls->submit(h->q->be);
    }
  }
  for (l = f->ops; l != NULL; l = l->next) {
    lhandle *h = handle_of_link(l);
    if ((f->family == 0 && is_output(&h->op)) || h->op.cancel_requested)
      continue;
    if (h->state == ST_INFLIGHT && !may_drive(h->q))
      continue;  /* another process's or thread's kernel work */
    cancel(h);
    if (h->state == ST_INFLIGHT)
      h->q->be->cls->submit(h->q->be);
  }
}

/* ---------------------------------------------------------------- queue */

static lqueue *checkqueue(lua_State *L) {
  return lioq_checkudata(L, 1, TAG_QUEUE);
}

static lqueue *checkopenqueue(lua_State *L) {
  lqueue *q = checkqueue(L);
  luaL_argcheck(L, q->be != NULL, 1, "queue is closed");
  return q;
}

/* Makes sure a new anchor slot can be released later without allocating. */
static void reserve_slot(lua_State *L, lqueue *q) {
  if (q->nfree == 0 && q->top >= q->slots_cap) {
    int cap = q->slots_cap ? q->slots_cap * 2 : 64;
    int *s;
    if (cap <= q->slots_cap)
      luaL_error(L, "too many pending operations");
    s = realloc(q->free_slots, (size_t)cap * sizeof *s);
    if (s == NULL)
      luaL_error(L, "not enough memory");
    q->free_slots = s;
    q->slots_cap = cap;
  }
}

/*
** How an op is made, in this order, by every op constructor below:
**
**   1. newop() makes every Lua object the op needs: its handle and, for
**      open and accept, the object it resolves to. An allocation can run
**      a garbage-collection step, and with it any finalizer, which may
**      close the queue, a buffer or a file. So:
**   2. only then is the state the op depends on checked (the queue open,
**      the buffer open and idle, the descriptor open) and pointers into
**      it taken; nothing from here on runs Lua code;
**   3. commit() anchors the handle and queues the op.
**
** An argument error raised in step 2 leaves an unanchored, never-pending
** handle behind for the collector, and nothing else.
*/
static lhandle *newop(lua_State *L, int code, size_t extra, int family,
                      int type) {
  /* How many arguments each op takes, the queue included: the handle is
  ** pushed above them, where an absent optional argument reads as nil. */
  static const int nargs[IOQ_NOPCODES] = {
    1, 5, 5, 2, 4, 2, 2, 4, 4, 4, 4, 5, 3
  };
  lqueue *q = checkqueue(L);
  /* Only the user values the op needs (reading a missing one gives nil). */
  int nuv = (code == IOQ_NOP || code == IOQ_SLEEP) ? UV_QUEUE
          : (code == IOQ_OPEN || code == IOQ_ACCEPT) ? UV_RESULT : UV_FD;
  lhandle *h;
  lua_settop(L, nargs[code]);
  h = lua_newuserdatauv(L, sizeof *h + extra, nuv);
  memset(h, 0, sizeof *h + extra);
  if (extra > 0)
    h->op.addr = h + 1;  /* a socket address, right after the handle */
  h->op.code = (uint8_t)code;
  h->op.fd = IOQ_NOFD;
  h->op.offset = -1;
  h->q = q;
  h->state = ST_DONE;  /* not pending until committed */
  lua_getiuservalue(L, 1, QUV_HANDLE_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, UV_QUEUE);
  if (code == IOQ_OPEN || (code == IOQ_ACCEPT && family != 0)) {
    h->file_out = code == IOQ_OPEN ? lioq_file_prepare(L)
                                   : lioq_socket_prepare(L, family, type);
    lua_setiuservalue(L, -2, UV_RESULT);
  }
  luaL_argcheck(L, q->be != NULL, 1, "queue is closed");
  reserve_slot(L, q);
  return h;
}

/*
** Anchors the handle on top of the stack in its queue (at stack index 1):
** the one step of queueing an op that can fail (out of memory), so it
** comes before any state changes. An emergency collection runs no
** finalizers, so no Lua code runs here either.
*/
static void anchor(lua_State *L, lhandle *h) {
  lqueue *q = h->q;
  int slot = q->nfree > 0 ? q->free_slots[q->nfree - 1] : q->top + 1;
  lua_getiuservalue(L, 1, QUV_ANCHORS);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, slot);
  lua_pop(L, 1);
  if (q->nfree > 0) q->nfree--;
  else q->top++;
  h->slot = slot;
}

/*
** Queues the anchored op, which uses `block` (or NULL) and is pending on
** the file object at `fidx` (or 0). Cannot fail.
*/
static int enqueue(lua_State *L, lhandle *h, lioq_block *block, int fidx) {
  lqueue *q = h->q;
  if (block != NULL) {
    block->busy = 1;
    block->refs++;
    h->block = block;
  }
  if (fidx != 0) {
    link_file(L, h, fidx);
    if (h->op.code == IOQ_READ || h->op.code == IOQ_WRITE)
      use_position(L, q, h, fidx);
  }
  h->state = ST_UNSENT;
  list_push(&q->unsent, &h->op);
  return 1;
}

static int commit(lua_State *L, lhandle *h, lioq_block *block, int fidx) {
  anchor(L, h);
  return enqueue(L, h, block, fidx);
}

static int64_t checkoffset(lua_State *L, int arg) {
  lua_Integer off;
  if (lua_isnoneornil(L, arg))
    return -1;
  off = luaL_checkinteger(L, arg);
  luaL_argcheck(L, off >= 0, arg, "offset must be non-negative");
  return off;
}

static uint32_t checklength(lua_State *L, int arg, size_t max) {
  lua_Integer len;
  if (lua_isnoneornil(L, arg))
    len = (lua_Integer)max;
  else {
    len = luaL_checkinteger(L, arg);
    luaL_argcheck(L, len >= 0, arg, "length must be non-negative");
    if ((lua_Unsigned)len > max)
      luaL_argerror(L, arg, lua_pushfstring(L,
                    "length exceeds the data size (%I bytes)",
                    (lua_Integer)max));
  }
  return len > (lua_Integer)IOQ_MAX_RW ? IOQ_MAX_RW : (uint32_t)len;
}

/* The buffer at `arg`, open and not owned by another op. */
static lioq_block *checkidle(lua_State *L, int arg) {
  lioq_block *b = lioq_checkblock(L, arg);
  luaL_argcheck(L, !b->busy, arg, "buffer in use by a pending operation");
  return b;
}

/*
** The bytes of the buffer or string at `arg` (a buffer is then returned
** in *bp, a string gives NULL), and their size.
*/
static const void *checkdata(lua_State *L, int arg, size_t *size,
                             lioq_block **bp) {
  lioq_block *b;
  if (lua_type(L, arg) == LUA_TSTRING) {
    *bp = NULL;
    return lua_tolstring(L, arg, size);
  }
  if (lioq_toudata(L, arg, TAG_BUFFER) == NULL)
    luaL_typeerror(L, arg, "ioq.buffer or string");
  b = checkidle(L, arg);
  *bp = b;
  *size = b->size;
  return b->data;
}

/* Sets the op's descriptor, from the argument at 2; the handle keeps a
** file object there alive. */
static void setfd(lua_State *L, lhandle *h) {
  h->op.fd = lioq_checkfd(L, 2);
  if (lua_type(L, 2) == LUA_TUSERDATA) {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, UV_FD);
  }
}

/* Keeps the buffer, string or path at `arg` alive while the kernel uses it. */
static void keepdata(lua_State *L, int arg) {
  lua_pushvalue(L, arg);
  lua_setiuservalue(L, -2, UV_DATA);
}

/*
** Where descriptors have no position of their own (IOCP), a read or write
** at the current position (offset -1) of an ioq.file (at fidx) uses the
** position the object keeps and moves it past the bytes asked for, so the
** next op starts there; settle() moves it back if fewer bytes moved. A
** write to a file opened to append keeps offset -1: the end of the file.
** Called by commit, once nothing can fail.
*/
static void use_position(lua_State *L, lqueue *q, lhandle *h, int fidx) {
  lioq_file *f;
  h->pos_file = NULL;
  h->at_position = h->op.offset == -1;
  if (!(q->be->caps & IOQ_CAP_NO_POSITION) || !h->at_position)
    return;
  f = lioq_toudata(L, fidx, TAG_FILE);
  if (f == NULL || (f->append && h->op.code == IOQ_WRITE))
    return;
  h->op.offset = f->pos;
  f->pos += h->op.len;
  h->pos_file = f;
}

/* q:read(f, buf [, offset [, length]]) */
static int queue_read(lua_State *L) {
  lhandle *h = newop(L, IOQ_READ, 0, 0, 0);
  lioq_block *b;
  setfd(L, h);
  b = checkidle(L, 3);
  h->op.offset = checkoffset(L, 4);
  h->op.len = checklength(L, 5, b->size);
  h->op.buf = b->data;
  keepdata(L, 3);
  return commit(L, h, b, 2);
}

/* q:write(f, data [, offset [, length]]): data is a buffer or a string. */
static int queue_write(lua_State *L) {
  lhandle *h = newop(L, IOQ_WRITE, 0, 0, 0);
  lioq_block *b;
  size_t size;
  setfd(L, h);
  h->op.buf = (void *)checkdata(L, 3, &size, &b);  /* the kernel only reads */
  h->op.offset = checkoffset(L, 4);
  h->op.len = checklength(L, 5, size);
  keepdata(L, 3);  /* a string stays alive while the kernel reads it */
  return commit(L, h, b, 2);
}

/* q:fsync(f) */
static int queue_fsync(lua_State *L) {
  lhandle *h = newop(L, IOQ_FSYNC, 0, 0, 0);
  setfd(L, h);
  return commit(L, h, NULL, 2);
}

/* q:nop() */
static int queue_nop(lua_State *L) {
  return commit(L, newop(L, IOQ_NOP, 0, 0, 0), NULL, 0);
}

/* q:sleep(seconds) */
static int queue_sleep(lua_State *L) {
  lhandle *h = newop(L, IOQ_SLEEP, 0, 0, 0);
  luaL_checkany(L, 2);
  h->op.ns = checkseconds(L, 2, 0);
  return commit(L, h, NULL, 0);
}

/* io.open's mode letters as open(2) flags; -1 when the mode is invalid. */
static int mode_flags(const char *mode) {
  int flags;
  switch (*mode++) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
  }
  if (*mode == '+') {
    flags = (flags & ~O_ACCMODE) | O_RDWR;
    mode++;
  }
  for (; *mode; mode++) {
    switch (*mode) {
      case 'b': break;
      case 'x': flags |= O_EXCL; break;
      case 'd': flags |= O_DIRECT; break;
      default: return -1;
    }
  }
  return flags | O_CLOEXEC;
}

/* q:open(path [, mode [, perm]]): resolves to an ioq.file. */
static int queue_open(lua_State *L) {
  lhandle *h = newop(L, IOQ_OPEN, 0, 0, 0);
  size_t plen;
  const char *path = luaL_checklstring(L, 2, &plen);
  int flags = mode_flags(luaL_optstring(L, 3, "r"));
  lua_Integer perm = luaL_optinteger(L, 4, 0666);
  luaL_argcheck(L, strlen(path) == plen, 2, "path contains a zero byte");
  luaL_argcheck(L, flags != -1, 3, "invalid mode");
  luaL_argcheck(L, perm >= 0 && perm <= 07777, 4, "invalid permissions");
  h->op.buf = (void *)path;
  h->op.flags = flags;
  h->op.mode = (int)perm;
  keepdata(L, 2);
  h->file_out->append = (flags & O_APPEND) != 0;
  return commit(L, h, NULL, 0);
}

/* The socket object at arg 2 (not checked to be open: see opensocket). */
static lioq_file *checksocketarg(lua_State *L) {
  return lioq_checkudata(L, 2, TAG_SOCKET);
}

/* The socket at arg 2, open; the handle keeps it alive. */
static lioq_file *opensocket(lua_State *L, lhandle *h) {
  lioq_file *s = checksocketarg(L);
  luaL_argcheck(L, s->fd != IOQ_NOFD, 2, "attempt to use a closed socket");
  setfd(L, h);
  return s;
}

/*
** Commits an op that failed before it could start (its address did not
** resolve): it resolves, through the queue like any other, to
** fail, msg, err, where msg is the string at `msgidx`.
*/
static int commit_failed(lua_State *L, lhandle *h, int msgidx, int err) {
  lqueue *q = h->q;
  lua_pushvalue(L, msgidx);
  lua_setiuservalue(L, -2, UV_DATA);
  h->has_msg = 1;
  commit(L, h, NULL, 0);
  list_remove(&q->unsent, &h->op);
  h->op.res = -err;
  h->state = ST_READY;
  list_push(&q->ready, &h->op);
  return 1;
}

/* q:accept(s): resolves to the new ioq.socket. */
static int queue_accept(lua_State *L) {
  lioq_file *s = checksocketarg(L);
  lhandle *h = newop(L, IOQ_ACCEPT, 0, s->family, s->type);
  opensocket(L, h);
  return commit(L, h, NULL, 2);
}

/*
** Resolves the address at args hostarg, hostarg + 1 for the socket at
** arg 2 into the op's address. Returns 0 when it resolved, or the errno
** of a failed lookup with its message (one value) pushed. A lookup cannot run Lua
** code, but pushing its message can: check state after this.
*/
static int resolve(lua_State *L, lhandle *h, int hostarg) {
  lioq_file *s = checksocketarg(L);
  int err = 0;
  const char *msg = lioq_toaddr(L, s->family, hostarg, hostarg + 1,
                                h->op.addr, &h->op.addrlen, &err);
  if (msg == NULL)
    return 0;
  lua_pushfstring(L, "%s: %s", op_names[h->op.code], msg);
  lua_remove(L, -2);  /* lioq_toaddr's own message */
  return err;
}

/* q:connect(s, host, port) or q:connect(s, path): resolves to true. */
static int queue_connect(lua_State *L) {
  lhandle *h;
  int err;
  h = newop(L, IOQ_CONNECT, sizeof(struct sockaddr_storage), 0, 0);  /* 5 */
  if ((err = resolve(L, h, 3)) != 0)
    lua_insert(L, 5);  /* the message under the handle */
  luaL_argcheck(L, h->q->be != NULL, 1, "queue is closed");
  opensocket(L, h);
  if (err != 0)
    return commit_failed(L, h, 5, err);
  return commit(L, h, NULL, 2);
}

/* q:recv(s, buf [, length]): the byte count; 0 when the peer has closed.
** Also q:recvfrom, which has room for the sender's address. */
static int recv_op(lua_State *L, int code, size_t extra) {
  lhandle *h = newop(L, code, extra, 0, 0);
  lioq_block *b;
  opensocket(L, h);
  b = checkidle(L, 3);
  h->op.len = checklength(L, 4, b->size);
  h->op.buf = b->data;
  keepdata(L, 3);
  return commit(L, h, b, 2);
}

static int queue_recv(lua_State *L) {
  return recv_op(L, IOQ_RECV, 0);
}

/* q:recvfrom(s, buf [, length]): the byte count, then the sender's host
** and port (or path). */
static int queue_recvfrom(lua_State *L) {
  return recv_op(L, IOQ_RECVFROM, sizeof(struct sockaddr_storage));
}

/* Fills a send or sendto of the buffer or string at arg 3. */
static void send_data(lua_State *L, lhandle *h, lioq_block **bp) {
  size_t size;
  h->op.buf = (void *)checkdata(L, 3, &size, bp);
  h->op.len = checklength(L, 4, size);
  keepdata(L, 3);
}

/* q:send(s, data [, length]): the byte count (may be short). */
static int queue_send(lua_State *L) {
  lhandle *h = newop(L, IOQ_SEND, 0, 0, 0);
  lioq_block *b;
  opensocket(L, h);
  send_data(L, h, &b);
  return commit(L, h, b, 2);
}

/* q:sendto(s, data, host, port) or q:sendto(s, data, path): the byte
** count. The data is checked before any lookup. */
static int queue_sendto(lua_State *L) {
  lhandle *h;
  lioq_block *b;
  int err;
  if (lua_type(L, 3) != LUA_TSTRING && lioq_testblock(L, 3) == NULL)
    return luaL_typeerror(L, 3, "ioq.buffer or string");
  h = newop(L, IOQ_SENDTO, sizeof(struct sockaddr_storage), 0, 0);  /* 6 */
  if ((err = resolve(L, h, 4)) != 0)
    lua_insert(L, 6);
  luaL_argcheck(L, h->q->be != NULL, 1, "queue is closed");
  opensocket(L, h);
  if (err != 0)
    return commit_failed(L, h, 6, err);
  lua_pushnil(L);  /* no length argument: the whole data */
  lua_replace(L, 4);
  send_data(L, h, &b);
  return commit(L, h, b, 2);
}

/* q:shutdown(s [, how]): resolves to true. */
static int queue_shutdown(lua_State *L) {
  lhandle *h = newop(L, IOQ_SHUTDOWN, 0, 0, 0);
  opensocket(L, h);
  h->op.flags = lioq_checkhow(L, 3);
  return commit(L, h, NULL, 2);
}

#define MULTISHOT_MT "ioq.handle multishot"

/* Makes a handle multishot, for the sockets it accepts or the buffers it
** receives into. */
static void multishot(lua_State *L, lhandle *h, lioq_file *s) {
  luaL_setmetatable(L, MULTISHOT_MT);
  h->op.multishot = 1;
  h->family = s->family;
  h->type = s->type;
}

/*
** q:accept_multi(s): one multishot accept that stays armed and yields a
** socket per connection: h:take() (or h:next() in lua/ioq.lua) hands them
** over, until h:cancel(). Fails with EOPNOTSUPP where the backend cannot.
*/
static int queue_accept_multi(lua_State *L) {
  lqueue *q = checkopenqueue(L);
  lhandle *h;
  lioq_file *s;
  if (!(q->be->caps & IOQ_CAP_MULTISHOT_ACCEPT))
    return lioq_fail(L, "accept_multi", EOPNOTSUPP);
  h = newop(L, IOQ_ACCEPT, 0, 0, 0);  /* each item makes its own socket */
  s = opensocket(L, h);
  multishot(L, h, s);
  return commit(L, h, NULL, 2);
}

/*
** q:recv_multi(s): one multishot receive into the queue's pool of provided
** buffers: each chunk that arrives is a buffer view for h:take(); closing
** (or collecting) the view gives its buffer back to the kernel. A socket
** costs no buffer while it is idle. Fails with EOPNOTSUPP where the
** backend has no pool.
*/
static int queue_recv_multi(lua_State *L) {
  lqueue *q = checkopenqueue(L);
  lhandle *h;
  lioq_file *s;
  if (!(q->be->caps & IOQ_CAP_POOL))
    return lioq_fail(L, "recv_multi", EOPNOTSUPP);
  h = newop(L, IOQ_RECV, 0, 0, 0);
  s = opensocket(L, h);
  if (q->pool == NULL) {
    int r;
    checkowner(L, q);
    if ((r = q->be->cls->pool(q->be, q->pool_count, q->pool_size,
                              &q->pool)) < 0)
      return lioq_fail(L, "recv_multi", -r);
    q->pool->refs++;  /* the queue's own, so q->pool outlives the backend */
  }
  multishot(L, h, s);
  h->op.use_pool = 1;
  h->pool = q->pool;
  return commit(L, h, NULL, 2);
}

/* q:submit(): hands every unsent op to the kernel; returns how many. */
static int queue_submit(lua_State *L) {
  lqueue *q = checkopenqueue(L);
  int r;
  checkowner(L, q);
  flush(q);
  r = q->be->cls->submit(q->be);
  if (r < 0)
    return lioq_fail(L, "submit", -r);
  lua_pushinteger(L, r);
  return 1;
}

/* q:wait([timeout [, into]]): returns how many handles resolved. */
static int queue_wait(lua_State *L) {
  lqueue *q = checkopenqueue(L);
  int64_t timeout = checkseconds(L, 2, -1);
  int into = 0, n;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    into = 3;
  }
  n = pump(L, q, 1, timeout, into);
  if (n == STUCK)
    n = 0;  /* nothing can arrive: see pump */
  else if (n < 0)
    return lioq_fail(L, "wait", -n);
  lua_pushinteger(L, n);
  return 1;
}

/*
** q:cancel_all([kind]): asks for every pending op to be cancelled, or with
** kind "input" every op that only takes data in (reads, receives, accepts,
** opens, connects, sleeps, nops), leaving writes, sends, fsyncs and
** shutdowns to finish. Each still resolves through the queue. Returns how
** many cancels were asked for.
*/
static int queue_cancel_all(lua_State *L) {
  static const char *const kinds[] = {"all", "input", NULL};
  lqueue *q = checkopenqueue(L);
  int inputs = luaL_checkoption(L, 2, "all", kinds) == 1;
  oplist *lists[3];
  lua_Integer n = 0;
  int i;
  checkowner(L, q);
  lists[0] = &q->unsent; lists[1] = &q->inflight; lists[2] = &q->starved;
  for (i = 0; i < 3; i++) {
    ioq_op *op = lists[i]->head, *next;
    for (; op != NULL; op = next) {
      next = op->next;  /* cancel() may move op to another list */
      if (inputs && is_output(op))
        continue;
      if (!op->cancel_requested && cancel((lhandle *)op) == 0)
        n++;
    }
  }
  lua_pushinteger(L, n);
  return 1;
}

/* q:features(): the backend's optional features in use, as a list. */
static int queue_features(lua_State *L) {
  lqueue *q = checkopenqueue(L);
  const char *s = q->be->cls->features(q->be);
  int n = 0;
  lua_newtable(L);
  while (*s) {
    const char *end = strchr(s, ' ');
    size_t len = end ? (size_t)(end - s) : strlen(s);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, ++n);
    s += len;
    while (*s == ' ') s++;
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
  lqueue *q = checkqueue(L);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)queue_pending(q));
  lua_setfield(L, -2, "pending");
  lua_pushinteger(L, (lua_Integer)q->unsent.n);
  lua_setfield(L, -2, "unsent");
  lua_pushinteger(L, q->pool ? (lua_Integer)q->pool->count : 0);
  lua_setfield(L, -2, "pool_buffers");
  lua_pushinteger(L, q->pool != NULL && q->be != NULL
                     ? (lua_Integer)q->pool->nfree : 0);
  lua_setfield(L, -2, "pool_free");
  lua_pushinteger(L, q->starvations);
  lua_setfield(L, -2, "starvations");
  return 1;
}

/* q:pending(): ops not yet resolved. */
static int queue_pending_m(lua_State *L) {
  lqueue *q = checkqueue(L);
  lua_pushinteger(L, (lua_Integer)queue_pending(q));
  return 1;
}

/*
** Ends the queue's anchors: dropped once every op is done, or, when the
** backend broke with ops still in the kernel, kept in the registry for
** the rest of the Lua state, so that no byte the kernel may still write
** (handles, buffers, strings) is ever freed under it.
*/
static void drop_anchors(lua_State *L, int broken) {
  lua_getiuservalue(L, 1, QUV_ANCHORS);
  if (broken && lua_istable(L, -1))
    luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, QUV_ANCHORS);
}

/*
** q:close(): input ops are cancelled, output ops finish (up to the queue's
** linger time); returns once the kernel has handed back every op. Closing
** twice does nothing.
*/
static int queue_close(lua_State *L) {
  lqueue *q = checkqueue(L);
  if (q->be != NULL && !same_thread(q->thread, this_thread()))
    return luaL_error(L, "this queue belongs to the thread that created it "
                         "(close it there)");
  drop_anchors(L, destroy(q, 0) < 0);
  return 0;
}

static int queue_gc(lua_State *L) {
  lqueue *q = checkqueue(L);
  if (q->be != NULL && !same_thread(q->thread, this_thread())) {
    q->be = NULL;  /* it cannot be drained from here: leave it be */
    drop_anchors(L, 1);
  } else {
    drop_anchors(L, destroy(q, 1) < 0);
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
  lqueue *q = checkqueue(L);
  if (q->be == NULL)
    lua_pushfstring(L, "ioq.queue (closed): %p", (void *)q);
  else
    lua_pushfstring(L, "ioq.queue (%s, %I pending): %p", q->be->cls->name,
                    (lua_Integer)queue_pending(q), (void *)q);
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
#ifndef _WIN32
  q->owner = getpid();
  q->forks = forks;
#endif
  q->thread = this_thread();
  q->linger_ns = linger;
  q->pool_count = (unsigned)pool_count;
  q->pool_size = (unsigned)pool_size;
  luaL_setmetatable(L, LIOQ_QUEUE);  /* for __gc, before the ring exists */
  lua_newtable(L);
  lua_setiuservalue(L, -2, QUV_ANCHORS);
  luaL_getmetatable(L, LIOQ_HANDLE);
  lua_setiuservalue(L, -2, QUV_HANDLE_MT);
  for (i = 0; backends[i] != NULL; i++) {
    if (strcmp(want, "auto") != 0 && strcmp(want, backends[i]->name) != 0)
      continue;
    r = backends[i]->create(&q->be, (unsigned)entries);
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

/* ---------------------------------------------------------------- handle */

static lhandle *checkhandle(lua_State *L) {
  return lioq_checkudata(L, 1, TAG_HANDLE);
}

/* Pushes the handle's outcome: its value, or fail, msg, errno. */
static int push_result(lua_State *L, lhandle *h) {
  int64_t res = h->op.res;
  if (res < 0) {
    int err = (int)-res;
    luaL_pushfail(L);
    if (h->has_msg)
      lua_getiuservalue(L, 1, UV_DATA);
    else if (err == ETIMEDOUT)
      lua_pushliteral(L, "timed out");
    else if (err == ECANCELED)
      lua_pushliteral(L, "canceled");
    else
      lua_pushfstring(L, "%s: %s", op_names[h->op.code], ioq_strerror(err));
    lua_pushinteger(L, err);
    return 3;
  }
  switch (h->op.code) {
    case IOQ_READ:
    case IOQ_WRITE:
    case IOQ_RECV:
    case IOQ_SEND:
    case IOQ_SENDTO:
      lua_pushinteger(L, (lua_Integer)res);
      return 1;
    case IOQ_RECVFROM:
      lua_pushinteger(L, (lua_Integer)res);
      return 1 + lioq_pushaddr(L, h->op.addr, h->op.addrlen);
    case IOQ_OPEN:
    case IOQ_ACCEPT:
      lua_getiuservalue(L, 1, UV_RESULT);
      return 1;
    default:
      lua_pushboolean(L, 1);
      return 1;
  }
}

/* core.queue_of(h): h.queue without the __index detour (for lua/ioq.lua). */
int lioq_queue_of(lua_State *L) {
  checkhandle(L);
  lua_getiuservalue(L, 1, UV_QUEUE);
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
  return push_result(L, h);
}

/*
** Asks for the op to be cancelled. An unsent op is cancelled on the spot;
** a started one when the kernel agrees. Either way the handle still
** resolves through the queue. Returns true if a cancel was asked for.
*/
static int cancel(lhandle *h) {
  lqueue *q = h->q;
  switch (h->state) {
    case ST_UNSENT:
      list_remove(&q->unsent, &h->op);
      h->op.res = -ECANCELED;
      h->state = ST_READY;
      list_push(&q->ready, &h->op);
      return 0;
    case ST_INFLIGHT:
      if (h->op.cancel_requested)
        return 0;
      h->op.cancel_requested = 1;
      return ask_cancel(q, h);
    case ST_STARVED:  /* a multishot receive waiting for buffers */
      list_remove(&q->starved, &h->op);
      h->op.cancel_requested = 1;
      h->op.res = -ECANCELED;
      h->state = ST_READY;
      list_push(&q->ready, &h->op);
      return 0;
    default:
      return -EALREADY;
  }
}

/* h:cancel(): true if asked, false if already done, or fail, msg, errno. */
static int handle_cancel(lua_State *L) {
  lhandle *h = checkhandle(L);
  int r;
  if (h->state == ST_INFLIGHT)
    checkowner(L, h->q);
  r = cancel(h);
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
** returns its result. When the timeout passes first the op is cancelled,
** and once the kernel hands it back, it resolves to "timed out" (or to its
** real result if it finished anyway).
*/
static int handle_wait(lua_State *L) {
  lhandle *h = checkhandle(L);
  int64_t timeout = checkseconds(L, 2, -1);
  int64_t deadline = timeout >= 0 ? ioq_now_ns() + timeout : 0;
  int pumped = 0, timed_out = 0;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_QUEUE);  /* index 2 */
  while (h->state != ST_DONE) {
    int64_t left = -1;
    int n;
    if (h->q->be == NULL)
      return luaL_error(L, "queue is closed");
    if (timeout >= 0 && !timed_out) {
      left = deadline - ioq_now_ns();
      if (left <= 0 && pumped) {
        timed_out = 1;
        cancel(h);  /* on failure the op still ends by itself */
        left = -1;
      } else if (left < 0) {
        left = 0;
      }
    }
    n = pump(L, h->q, 2, left, 0);
    if (n == STUCK) {
      luaL_pushfail(L);
      lua_pushfstring(L, "%s: every buffer of the queue's pool is held by "
                      "a buffer view (close the views)", op_names[h->op.code]);
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
  return push_result(L, h);
}

/*
** h:timeout(seconds): arms a timeout that the backend enforces, if the op
** has not been handed to it yet (on io_uring, a linked timeout). Returns
** true if armed; false if the op is already in flight or done, in which
** case the caller must time it out itself (a timer and h:cancel()).
*/
static int handle_timeout(lua_State *L) {
  lhandle *h = checkhandle(L);
  int64_t ns = checkseconds(L, 2, 0);
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
** h:resubmit([offset]): starts a resolved read, write, recv, send, recvfrom,
** sendto, fsync, nop or sleep again with the same descriptor, buffer (or
** string), length and address, at `offset` if given (reads and writes).
** A loop of I/O then needs no new handle per op.
*/
static int handle_resubmit(lua_State *L) {
  lhandle *h = checkhandle(L);
  lqueue *q = h->q;
  lioq_block *b = NULL;
  int code = h->op.code;
  int64_t off = h->at_position ? -1 : h->op.offset;
  ioq_fd fd = h->op.fd;
  luaL_argcheck(L, h->state == ST_DONE, 1, "handle is pending");
  luaL_argcheck(L, code != IOQ_OPEN && code != IOQ_ACCEPT &&
                   code != IOQ_CONNECT && code != IOQ_SHUTDOWN, 1,
                "only data transfers, fsync, nop and sleep can be resubmitted");
  if (!lua_isnoneornil(L, 2)) {
    luaL_argcheck(L, code == IOQ_READ || code == IOQ_WRITE, 2,
                  "only reads and writes take an offset");
    off = checkoffset(L, 2);
  }
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_QUEUE);              /* 2 */
  lua_getiuservalue(L, 1, UV_DATA);               /* 3 */
  lua_getiuservalue(L, 1, UV_FD);                 /* 4 */
  luaL_argcheck(L, q->be != NULL, 1, "queue is closed");
  if (lua_type(L, 4) == LUA_TUSERDATA) {  /* the file may have been closed */
    fd = lioq_tofd(L, 4);
    if (fd == IOQ_NOFD)
      return luaL_error(L, "the handle's file is closed");
  }
  if (lua_type(L, 3) == LUA_TUSERDATA) {
    b = lioq_toudata(L, 3, TAG_BUFFER) ? lioq_checkblock(L, 3) : NULL;
    if (b != NULL && b->busy)
      return luaL_error(L, "buffer in use by a pending operation");
  }
  reserve_slot(L, q);
  lua_pushvalue(L, 1);                            /* the handle on top */
  lua_pushvalue(L, 2);
  lua_replace(L, 1);                              /* the queue at 1 */
  anchor(L, h);  /* first: the handle keeps its old result if this fails */
  h->op.fd = fd;
  h->op.offset = off;
  h->op.res = 0;
  h->op.timeout_ns = 0;
  h->op.cancel_requested = 0;
  return enqueue(L, h, b, 4);
}

/*
** Takes an error item of a multishot accept (EMFILE...): the accept paused
** on it goes on once Lua has seen it. Returns fail, msg, errno.
*/
static int take_error(lua_State *L, lhandle *h) {
  int err = (int)-h->items[h->items_head].res;
  h->items_head = (h->items_head + 1) % h->items_cap;
  h->items_n--;
  if (h->paused) {
    h->paused = 0;
    if (h->state == ST_STARVED) {
      list_remove(&h->q->starved, &h->op);
      h->state = ST_UNSENT;
      list_push(&h->q->unsent, &h->op);
    }
  }
  return lioq_fail(L, op_names[h->op.code], err);
}

/*
** h:take(): the oldest item a multishot handle has received (a socket, or
** a buffer view of the bytes); false if none yet and the op is still
** armed; once it has ended and every item is taken, nil, "end of stream"
** (the peer closed) or fail, msg, errno (ECANCELED after h:cancel()...).
*/
static int handle_take(lua_State *L) {
  lhandle *h = checkhandle(L);
  luaL_argcheck(L, h->op.multishot, 1, "not a multishot handle");
  if (h->items_n > 0 && h->items[h->items_head].res < 0)
    return take_error(L, h);
  if (h->items_n > 0) {
    /* Make the object first (a finalizer may run, even take items), then
    ** take the item: nothing between the two can fail or run Lua code. */
    void *obj = h->op.code == IOQ_ACCEPT
              ? (void *)lioq_socket_prepare(L, h->family, h->type)
              : lioq_buffer_push_view(L);
    if (h->items_n > 0 && h->items[h->items_head].res >= 0) {
      unsigned i = h->items_head;
      if (h->op.code == IOQ_ACCEPT)
        ((lioq_file *)obj)->fd = (ioq_fd)h->items[i].res;
      else if (!lioq_buffer_set_view(obj, h->pool, h->items[i].buf,
                                     (size_t)h->items[i].res))
        return luaL_error(L, "not enough memory");
      h->items_head = (h->items_head + 1) % h->items_cap;
      h->items_n--;
      return 1;
    }
    lua_pop(L, 1);
    return handle_take(L);  /* a finalizer took it: look again */
  }
  if (h->state != ST_DONE) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (h->op.res == 0) {
    luaL_pushfail(L);
    lua_pushliteral(L, "end of stream");
    return 2;
  }
  return push_result(L, h);
}

/* __gc of multishot handles: what nobody took goes back (descriptors are
** closed, buffers return to the pool). A handle still pending here is
** being collected with its queue, whose destroy does that instead. */
static int handle_gc(lua_State *L) {
  lhandle *h = lua_touserdata(L, 1);
  if (h != NULL && h->state == ST_DONE)
    items_free(h);
  return 0;
}

/* Methods first (the common case), then the fields op, queue, buffer. */
static int handle_index(lua_State *L) {
  lhandle *h;
  const char *key;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1;
  h = checkhandle(L);
  key = lua_tostring(L, 2);
  if (key != NULL) {
    if (strcmp(key, "op") == 0) {
      lua_pushstring(L, op_names[h->op.code]);
      return 1;
    }
    if (strcmp(key, "queue") == 0) {
      lua_getiuservalue(L, 1, UV_QUEUE);
      return 1;
    }
    if (strcmp(key, "length") == 0) {  /* bytes a transfer asked for */
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
    if (strcmp(key, "buffer") == 0) {
      lua_getiuservalue(L, 1, UV_DATA);
      if (lioq_toudata(L, -1, TAG_BUFFER) == NULL)
        lua_pushnil(L);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

static int handle_repr(lua_State *L) {
  lhandle *h = checkhandle(L);
  lua_pushfstring(L, "ioq.handle (%s, %s): %p", op_names[h->op.code],
                  h->state == ST_DONE ? "done" : "pending", (void *)h);
  return 1;
}

void lioq_open_queue(lua_State *L) {
#ifndef _WIN32
  static pthread_once_t once = PTHREAD_ONCE_INIT;
#endif
  static const luaL_Reg queue_methods[] = {
    {"read", queue_read},
    {"write", queue_write},
    {"fsync", queue_fsync},
    {"nop", queue_nop},
    {"sleep", queue_sleep},
    {"open", queue_open},
    {"accept", queue_accept},
    {"connect", queue_connect},
    {"recv", queue_recv},
    {"send", queue_send},
    {"recvfrom", queue_recvfrom},
    {"sendto", queue_sendto},
    {"shutdown", queue_shutdown},
    {"accept_multi", queue_accept_multi},
    {"recv_multi", queue_recv_multi},
    {"submit", queue_submit},
    {"wait", queue_wait},
    {"pending", queue_pending_m},
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
  static const luaL_Reg handle_methods[] = {
    {"done", handle_done},
    {"result", handle_result},
    {"wait", handle_wait},
    {"cancel", handle_cancel},
    {"timeout", handle_timeout},
    {"resubmit", handle_resubmit},
    {"take", handle_take},
    {NULL, NULL}
  };
  static const luaL_Reg handle_meta[] = {
    {"__tostring", handle_repr},
    {NULL, NULL}
  };
  int i;
#ifndef _WIN32
  pthread_once(&once, watch_forks);
#endif
  /* Handles: a C __index, for the fields that live in each handle. */
  lioq_newmetatable(L, TAG_HANDLE, handle_meta);
  lua_newtable(L);
  luaL_setfuncs(L, handle_methods, 0);
  lua_pushcclosure(L, handle_index, 1);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* Multishot handles: the same class, plus a __gc for untaken items. */
  lioq_newmetatable(L, TAG_HANDLE, handle_meta);
  lua_insert(L, -2);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_gc);
  lua_setfield(L, -2, "__gc");
  lua_setfield(L, LUA_REGISTRYINDEX, MULTISHOT_MT);
  lua_pop(L, 1);
  /* Queues: one metatable per backend, whose __index table holds the
  ** methods and the backend's name, so both q:read and q.backend are one
  ** plain table lookup. */
  lua_newtable(L);                            /* the methods, for reference */
  luaL_setfuncs(L, queue_methods, 0);
  lua_newtable(L);                            /* the metatables, in order */
  for (i = 0; backends[i] != NULL; i++) {
    lioq_newmetatable(L, TAG_QUEUE, queue_meta);
    lua_newtable(L);                          /* its __index */
    luaL_setfuncs(L, queue_methods, 0);
    lua_pushstring(L, backends[i]->name);
    lua_setfield(L, -2, "backend");
    lua_setfield(L, -2, "__index");
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, QUEUE_METATABLES);
  lua_setfield(L, LUA_REGISTRYINDEX, LIOQ_QUEUE_METHODS);
}
