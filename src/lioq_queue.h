/*
** lioq_queue.h: what the four files of the queue class share (not the
** rest of the binding, which sees only lioq.h): the queue and handle
** structs, where an op is, and the engine's entry points.
**
**   lioq_engine.c  the completion engine: op lists, the pipeline from
**                  unsent to done, cancels, destroy (no Lua API calls but
**                  in pump and deliver)
**   lioq_ops.c     the op constructors, q:read ... q:recv_multi
**   lioq_handle.c  ioq.handle: h:wait, h:take, h:cancel ...
**   lioq_queue.c   ioq.queue: options, backend choice, the other methods
**
** Each includes this header and lioq.h, and may call the engine; the
** engine calls none of the other three.
*/
#ifndef LIOQ_QUEUE_H
#define LIOQ_QUEUE_H

#include <stdlib.h>
#ifndef _WIN32
#include <pthread.h>
#endif

#include "lioq.h"
#include "ioq_list.h"
#include "ioq_ring.h"

/* Completions handled per backend call. */
#define REAP_BATCH 128

/* Where an op is. STARVED: a multishot receive the kernel disarmed because
** the pool ran dry; it is armed again once buffers come back. */
enum { ST_UNSENT, ST_INFLIGHT, ST_READY, ST_STARVED, ST_DONE };

/* The queue's lists of ops, linked through ioq_op.link. */
typedef ioq_list oplist;

static inline void list_push(oplist *l, ioq_op *op) {
  ioq_list_push(l, op, offsetof(ioq_op, link));
}

static inline void list_remove(oplist *l, ioq_op *op) {
  ioq_list_remove(l, op, offsetof(ioq_op, link));
}

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
  ioq_backend *backend;    /* NULL once closed */
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
  const struct lioq_mts *mts;  /* this Lua state's class metatables */
  ioq_event events[REAP_BATCH];
  unsigned char act[REAP_BATCH];
} lqueue;

/* The queue's user values (lua_getiuservalue indices). */
enum { QVAL_ANCHORS = 1, QVAL_HANDLE_MT, QUEUE_NUV = QVAL_HANDLE_MT };

/* A handle's user values (lua_getiuservalue indices). */
enum {
  HVAL_QUEUE = 1,   /* its queue */
  HVAL_DATA,        /* the buffer, string or path the kernel uses; or the
                     error message of an op that failed before it started */
  HVAL_FD,          /* the file or socket object of its descriptor */
  HVAL_RESULT       /* the object an open or accept resolves to; the
                       process a process wait reaps */
};

/* Which member of a handle's union is in use. */
enum { SIDE_NONE, SIDE_OUT, SIDE_POS, SIDE_VIEW, SIDE_MULTI };

/* An item of a multishot op: a descriptor, or a byte count and the pool
** buffer that holds the bytes (buf -1: none), or -errno. */
typedef struct lioq_item {
  int64_t res;
  int32_t buf;
} lioq_item;

typedef struct lhandle {
  ioq_op op;               /* first: an ioq_op* is an lhandle* */
  lqueue *q;
  lioq_block *block;       /* the buffer's bytes, referenced while pending */
  lioq_file *file;         /* the file object the op is pending on */
  lioq_oplink link;        /* in file->ops */
  struct lhandle *cancel_next;  /* on q->cancels */
  ioq_pool *pool;          /* multishot and pooled receives: where their
                              buffers go back to (each item holds a
                              reference) */
  /* What only some ops need, one at a time (`side` says which): every
  ** handle pays for the largest, not for the sum (idle servers hold a
  ** pending handle per connection). */
  union {
    lioq_file *file_out;   /* SIDE_OUT: open, accept: receives the new
                              descriptor */
    lioq_file *pos_file;   /* SIDE_POS: the file whose kept position the
                              op moved */
    void *view;            /* SIDE_VIEW: q:recv_pooled's buffer view
                              (HVAL_DATA), which the engine lends the pool
                              buffer the bytes came in */
    struct {               /* SIDE_MULTI: multishot ops */
      /* What arrived and Lua has not taken yet, oldest first (a
      ** descriptor, or a byte count with its pool buffer). */
      ioq_ring items;      /* of lioq_item */
      int family, type;    /* multishot accept: the sockets it makes */
    };
  };
  int slot;                /* index in the anchor table while pending */
  /* The coroutine loop's (src/lioq_loop.c; nothing else reads or writes
  ** these, and 0 is their rest state): the index in the loop's array of
  ** waiters of the one task that awaits this handle (0: none there), and
  ** whether lua/ioq/loop.lua's waiters table may hold waiters of it. */
  int loop_waiter;
  uint8_t loop_shared;
  uint8_t state;           /* ST_* */
  uint8_t side;            /* SIDE_*: which member of the union is in use */
  uint8_t has_msg;         /* HVAL_DATA holds the error message */
  uint8_t cancel_queued;
  uint8_t paused;          /* multishot accept: stopped on an error item
                              until Lua takes it (a close: lioq_fs.c) */
  uint8_t at_position;     /* asked for the current position (offset -1) */
  uint8_t pooled;          /* q:recv_pooled: resolves to n and a buffer */
  uint8_t proc_wait;       /* IOQ_POLL for q:wait_process: resolves to the
                              process's end (HVAL_RESULT), named "wait" */
  uint8_t noted;           /* lua/ioq/outputs.lua holds a record of its
                              failure: h:result claims it (lioq_handle.c) */
} lhandle;

#define handle_of_link(l) \
  ((lhandle *)(void *)((char *)(l) - offsetof(lhandle, link)))

/* The op codes' names, for messages ("read: ...") and h.op. */
extern const char *const lioq_op_names[IOQ_NOPCODES];

/* The metatable of multishot handles, in the registry. */
#define MULTISHOT_MT "ioq.handle multishot"

/* ---------------------------------------------------------- class checks */

/*
** The class checks of the hot path. lioq_checkudata reads a class tag out
** of an object's metatable (five API calls); the queue's methods compare
** the address of the metatable with those of this Lua state's classes
** instead, kept in a lioq_mts: the first upvalue of every queue method
** (lioq_open_queue makes it, once per state, and keeps it in the
** registry). A function that has no such upvalue gets NULL from
** lioq_mts_of, and the general checks, which also name the error.
*/
typedef struct lioq_mts {
  const char *mark;         /* lioq_tags: this is a lioq_mts */
  const void *queue[4];     /* one per backend (unused: NULL) */
  const void *handle[2];    /* handles, multishot handles */
  const void *buffer, *file, *socket;
} lioq_mts;

/* Pushes this state's lioq_mts, made on first use (lioq_queue.c). */
lioq_mts *lioq_push_mts(lua_State *L);

static inline const lioq_mts *lioq_mts_of(lua_State *L) {
  const lioq_mts *c = lua_touserdata(L, lua_upvalueindex(1));
  return c != NULL && c->mark == lioq_tags ? c : NULL;
}

/* The address of the metatable of the value at idx, or NULL. */
static inline const void *lioq_mtof(lua_State *L, int idx) {
  const void *mt = NULL;
  if (lua_getmetatable(L, idx)) {
    mt = lua_topointer(L, -1);
    lua_pop(L, 1);
  }
  return mt;
}

/* ---------------------------------------------------------------- engine */

/* Pump's answer when only starved receives are pending and nothing in the
** kernel can ever complete: waiting would be forever. */
#define LIOQ_STUCK (-ENOBUFS)

/* lioq_owner.c */
void lioq_owner_init(lqueue *q);
int lioq_forked_child(const lqueue *q);
void lioq_checkowner(lua_State *L, lqueue *q);
int lioq_on_owner_thread(const lqueue *q);
void lioq_items_free(lhandle *h);

/* The oldest item (items.n > 0), and taking it. */
static inline lioq_item *lioq_item_first(lhandle *h) {
  return ioq_ring_at(&h->items, sizeof(lioq_item), 0);
}

static inline void lioq_item_shift(lhandle *h) {
  ioq_ring_shift(&h->items, sizeof(lioq_item));
}
void lioq_flush(lqueue *q);
int lioq_pump(lua_State *L, lqueue *q, int qidx, int64_t timeout_ns,
              int into);
int lioq_cancel(lhandle *h);
int lioq_is_output(const ioq_op *op);
int lioq_destroy(lqueue *q, int from_gc);

static inline size_t lioq_pending(const lqueue *q) {
  return q->unsent.n + q->inflight.n + q->ready.n + q->starved.n;
}

/* ---------------------------------------------------------------- ops */

extern const luaL_Reg lioq_op_methods[];
int lioq_handle_resubmit(lua_State *L);
lhandle *lioq_newop(lua_State *L, int code, int nargs, size_t extra);
void lioq_commit(lua_State *L, lhandle *h, lioq_block *block, int fidx);
int lioq_commit_failed(lua_State *L, lhandle *h, int msgidx, int err);

/* ---------------------------------------------------------------- fs */

/* lioq_fs.c: the file-system ops (IOQ_STAT and after). */
extern const luaL_Reg lioq_fs_methods[];
void lioq_fs_settle(lhandle *h, int started, int from_gc);
int lioq_fs_push_result(lua_State *L, lhandle *h);

/* ---------------------------------------------------------------- calls */

/*
** An IOQ_CALL op of the binding (lioq_call.c: q:resolve, q:readdir...).
** op.buf is one of these, malloc'd with the call's own fields after it;
** op.call is its `run` on a worker thread; op.addr its name. The op holds
** a reference while it is pending (the engine lets go of it in settle) and
** a box userdata in the handle's HVAL_DATA holds one, so the result stays
** for h:result() and the memory outlives whichever goes last, even at
** lua_close, when the box may be finalized before the queue's close has
** waited for the worker.
*/
typedef struct lioq_call lioq_call;
struct lioq_call {
  size_t refs;
  /* On the Lua thread, once: the op has ended (no Lua calls). Optional. */
  void (*settle)(lioq_call *c);
  /* The outcome as Lua values (the handle at stack index idx), but for ECANCELED and
  ** ETIMEDOUT, which are said the same way for every op. */
  int (*push)(lua_State *L, lioq_call *c, int64_t res, int idx);
  /* Frees what the call holds (not c itself). Optional. */
  void (*release)(lioq_call *c);
};

static inline void lioq_call_unref(lioq_call *c) {
  if (--c->refs == 0) {
    if (c->release != NULL)
      c->release(c);
    free(c);
  }
}

/* The op's name in messages and h.op ("read"; a call's own, "resolve";
** "wait" for q:wait_process's poll). */
static inline const char *lioq_opname(const lhandle *h) {
  return h->op.code == IOQ_CALL ? (const char *)h->op.addr
         : h->proc_wait ? "wait" : lioq_op_names[h->op.code];
}

extern const luaL_Reg lioq_call_methods[];
int lioq_call_result(lua_State *L, lhandle *h, int idx);

/*
** q:connect and q:sendto to a host name (lioq_ops.c asks
** lioq_addr_is_name): lioq_named_new makes the handle of op `code`, the
** queue's first `nargs` arguments with the host at hostarg and the port
** after it, and every object it needs (the handle on top); it returns
** the call, which lioq_named_commit queues on the socket at 2 with the
** bytes a sendto sends (kept alive by the caller in the handle, `block`
** made busy as commit does).
*/
void *lioq_named_new(lua_State *L, int code, int nargs, int hostarg);
int lioq_named_commit(lua_State *L, void *call, const void *data,
                      uint32_t len, lioq_block *block);

/* ---------------------------------------------------------------- handle */

void lioq_open_handle(lua_State *L);
int lioq_push_result(lua_State *L, lhandle *h, int idx);

/* The queue at argument 1 (the receiver of every queue method). */
static inline lqueue *lioq_checkqueue(lua_State *L) {
  const lioq_mts *c = lioq_mts_of(L);
  if (c != NULL) {
    const void *mt = lioq_mtof(L, 1);
    if (mt != NULL && (mt == c->queue[0] || mt == c->queue[1] ||
                       mt == c->queue[2] || mt == c->queue[3]))
      return lua_touserdata(L, 1);
  }
  return lioq_checkudata(L, 1, TAG_QUEUE);
}

/* The handle at argument 1 (the receiver of every handle method, whose
** first upvalue is the lioq_mts too). */
static inline struct lhandle *lioq_checkhandle(lua_State *L) {
  const lioq_mts *c = lioq_mts_of(L);
  if (c != NULL) {
    const void *mt = lioq_mtof(L, 1);
    if (mt != NULL && (mt == c->handle[0] || mt == c->handle[1]))
      return lua_touserdata(L, 1);
  }
  return lioq_checkudata(L, 1, TAG_HANDLE);
}

static inline lqueue *lioq_checkopenqueue(lua_State *L) {
  lqueue *q = lioq_checkqueue(L);
  luaL_argcheck(L, q->backend != NULL, 1, "queue is closed");
  return q;
}

#endif
