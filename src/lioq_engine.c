/*
** lioq_engine.c: the completion engine of ioq.queue. It moves ops through
** the queue's lists and settles them; it calls the backend and, in pump
** and deliver only, the Lua API. It touches lioq_queue.h's structs and the
** buffer and file objects an op holds, and calls nothing in the queue's
** other files (lioq_ops.c, lioq_handle.c, lioq_queue.c), which call it.
**
** A handle is a userdata that embeds its ioq_op, so the op needs no memory
** of its own. Each op moves through the lists of its queue:
**
**   unsent    created by q:read & co., not yet given to the backend (this is
**             also where ops wait while the submission queue is full)
**   inflight  started: the backend and the kernel own it
**   ready     finished without the kernel (canceled before it was sent, or
**             refused by the backend), waiting for q:wait to report it
**   starved   a multishot receive the kernel disarmed because the pool ran
**             dry, until buffers come back
**
** and is then "done": its result is in op.res and its handle is an ordinary
** Lua value again. Until then the handle sits in the queue's anchor table
** (the queue's first user value), so Lua cannot collect it, nor the buffer,
** string or file it keeps in its own user values.
**
** The pipeline, in the order an op goes through it (q:wait and h:wait call
** pump, which runs the rest in a loop):
**
**   flush       unsent -> inflight: hands ops to the backend's start,
**               oldest first, until it has no room; an op it refuses goes
**               to ready with its error
**   take_ready  ready -> events: what finished without the kernel
**   reap        inflight -> events: asks the backend for completions
**               (this is where a wait sleeps)
**   apply       one event, in C: records the result and settles the op,
**               or queues a multishot item (and re-arms the op)
**   settle      the end of an op in C: lets go of its buffer, file and
**               descriptor, and sets its state to done (also used by
**               destroy and by __gc, so it calls no Lua)
**   deliver     the Lua half: unanchors the handles apply finished and
**               lists the handles with news for q:wait's `into` table
**   pump        loops flush, take_ready (or reap), deliver until an op
**               finishes or the timeout passes
**
** Cancels (ask_cancel, retry_cancels) and destroy (the end of the queue)
** use the same steps.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

const char *const lioq_op_names[IOQ_NOPCODES] = {
  "nop", "read", "write", "fsync", "open", "sleep", "accept", "connect",
  "recv", "send", "recvfrom", "sendto", "shutdown", "poll", "call",
  "stat", "unlink", "rmdir", "mkdir", "rename", "link", "symlink", "readlink",
  "truncate", "allocate", "datasync", "close", "readv", "writev", "copy"
};

/* ---------------------------------------------------------------- items */

/* Queues an item of a multishot op for Lua to take. 0 if out of memory. */
static int item_push(lhandle *h, int64_t res, int32_t buf) {
  lioq_item *it;
  if (!ioq_ring_reserve(&h->items, sizeof *it, 1, 16))
    return 0;
  it = ioq_ring_push(&h->items, sizeof *it);
  it->res = res;
  it->buf = buf;
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
void lioq_items_free(lhandle *h) {
  while (h->items.n > 0) {
    lioq_item *it = ioq_ring_shift(&h->items, sizeof *it);
    item_drop(h, it->res, it->buf);
  }
  ioq_ring_free(&h->items);
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
  int started = h->state == ST_INFLIGHT;  /* the backend took it */
  h->state = ST_DONE;
  if (h->op.code == IOQ_CALL && h->op.buf != NULL) {  /* the op's reference */
    lioq_call *c = h->op.buf;
    h->op.buf = NULL;
    if (c->settle != NULL)
      c->settle(c);
    lioq_call_unref(c);
  }
  if (h->cancel_queued)
    drop_cancel(h);
  unlink_file(h);
  if (from_gc && h->side == SIDE_MULTI && h->items.v != NULL)  /* nobody
                                                        can take them */
    lioq_items_free(h);
  if (h->block != NULL) {
    h->block->busy = 0;
    lioq_block_unref(h->block);
    h->block = NULL;
  }
  if (h->side == SIDE_OUT) {
    if (h->op.res >= 0) {
      if (from_gc)  /* nobody can see the file object any more */
        ioq_close((ioq_fd)h->op.res, h->op.code == IOQ_ACCEPT);
      else
        h->file_out->fd = (ioq_fd)h->op.res;
    }
    h->file_out = NULL;
    h->side = SIDE_NONE;
  }
  if (h->op.code >= IOQ_STAT)  /* what a file-system op holds (lioq_fs.c) */
    lioq_fs_settle(h, started, from_gc);
  if (h->side == SIDE_POS) {  /* fewer bytes moved than use_position took */
    lioq_file *f = h->pos_file;
    int64_t moved = h->op.res > 0 ? h->op.res : 0;
    if (!from_gc && moved < h->op.len && f->pos == h->op.offset + h->op.len)
      f->pos = h->op.offset + moved;
    h->pos_file = NULL;
    h->side = SIDE_NONE;
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
  int r = q->backend->cls->cancel(q->backend, &h->op);
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
void lioq_flush(lqueue *q) {
  if (q->starved.n > 0 && q->pool != NULL && q->pool->nfree > 0) {
    ioq_op *op = q->starved.head, *next;
    for (; op != NULL; op = next) {
      next = op->link.next;
      if (((lhandle *)op)->paused)
        continue;
      list_remove(&q->starved, op);
      ((lhandle *)op)->state = ST_UNSENT;
      list_push(&q->unsent, op);
    }
  }
  while (q->unsent.head != NULL) {
    ioq_op *op = q->unsent.head;
    int r = q->backend->cls->start(q->backend, op);
    if (r == -EAGAIN) {
      q->backend->cls->submit(q->backend);
      r = q->backend->cls->start(q->backend, op);
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
  int i, n = q->backend->cls->reap(q->backend, q->events, REAP_BATCH, timeout_ns);
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
    if (op->use_pool && ev->res == -ENOBUFS && !op->cancel_requested &&
        !q->closing) {
      /* Data came and the pool was empty: wait for a buffer, as a
      ** multishot receive does, rather than fail. */
      q->starvations++;
      h->state = ST_STARVED;
      list_push(&q->starved, op);
      return ACT_NONE;
    }
    op->res = ev->res;
    if (h->pooled && h->block != NULL && ev->res >= 0 &&
        (uint64_t)ev->res < h->block->size)
      h->block->size = (size_t)ev->res;  /* no pool: its own buffer, cut */
    /* A pooled receive: the bytes are in pool buffer ev->buf, which its
    ** view takes (not in a finalizer: the view may be finalized). */
    if (ev->buf >= 0 && (ev->res <= 0 || from_gc || h->side != SIDE_VIEW ||
        h->view == NULL ||
        !lioq_buffer_set_view(h->view, h->pool, ev->buf, (size_t)ev->res)))
      ioq_pool_release(h->pool, ev->buf);
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

/*
** Drives the queue until at least one op finishes or `timeout_ns` passes
** (< 0: no limit). Finished ops are settled and unanchored, and appended to
** the table at `into` when that is not 0. Returns how many finished;
** LIOQ_STUCK when nothing is in the kernel but receives waiting for pool
** buffers that only Lua can give back; or -errno when the backend fails.
**
** Buffer views a script dropped go back to the pool only when the garbage
** collector finalizes them, which cannot happen while C sleeps here: so
** before it would sleep on starved receives alone, pump runs a full
** collection once. Finalizers may run any Lua code then (even close this
** queue), so everything is looked at again afterwards.
*/
int lioq_pump(lua_State *L, lqueue *q, int qidx, int64_t timeout_ns,
                int into) {
  int64_t deadline = timeout_ns > 0 ? ioq_now_ns() + timeout_ns : 0;
  lua_Integer count = 0;
  int anchors, collected = 0;
  if (lioq_pending(q) == 0)
    return 0;
  lioq_checkowner(L, q);
  if (!lua_checkstack(L, REAP_BATCH + 4))  /* no room: memory, not depth */
    luaL_error(L, "not enough memory");
  lua_getiuservalue(L, qidx, QVAL_ANCHORS);
  anchors = lua_gettop(L);
  for (;;) {
    int n;
    if (q->backend == NULL) {  /* closed by a finalizer */
      lua_pop(L, 1);
      return (int)count;
    }
    lioq_flush(q);
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
        return count > 0 ? (int)count : LIOQ_STUCK;
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
    if (count > 0 || timeout_ns == 0 || lioq_pending(q) == 0)
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
int lioq_is_output(const ioq_op *op) {
  switch (op->code) {
    case IOQ_WRITE: case IOQ_SEND: case IOQ_SENDTO: case IOQ_FSYNC:
    case IOQ_SHUTDOWN: case IOQ_WRITEV: case IOQ_TRUNCATE: case IOQ_ALLOCATE:
    case IOQ_DATASYNC: case IOQ_CLOSE: case IOQ_COPY:
      return !op->multishot;
    case IOQ_CALL:  /* a sendto to a host name: lookup and send on a worker */
      return op->addr == (const void *)lioq_op_names[IOQ_SENDTO];
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
** canceled.
*/
static void cancel_inflight(lqueue *q, int (*pick)(const ioq_op *)) {
  ioq_op *op;
  for (op = q->inflight.head; op != NULL; op = op->link.next)
    if ((pick == NULL || pick(op)) && !op->cancel_requested) {
      op->cancel_requested = 1;
      ask_cancel(q, (lhandle *)op);
    }
}

static int is_input(const ioq_op *op) {
  return !lioq_is_output(op);
}

/*
** The end of a queue, shared by q:close(), <close> and __gc; calls no Lua
** code. Input ops (reads, receives, accepts, sleeps...) are canceled.
** Output ops (writes, sends, fsyncs, shutdowns) still unsent are handed to
** the kernel, and each is waited for up to the queue's linger time, then
** canceled too. Every op is reaped before the backend is freed: the
** kernel owns an op's memory until then. Returns 0, or -1 when the
** backend broke and the ops still in it (with every byte they point to)
** must be left alive, never freed.
*/
int lioq_destroy(lqueue *q, int from_gc) {
  ioq_backend *be = q->backend;
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
    next = op->link.next;
    if (!lioq_is_output(op) || lioq_forked_child(q))
      settle_unsent(&q->unsent, op, -ECANCELED, from_gc);
  }
  if (lioq_forked_child(q)) {
    /* The kernel works for the parent, not for us: leave its ops be. */
    while ((op = q->inflight.head) != NULL)
      settle_unsent(&q->inflight, op, -ECANCELED, from_gc);
    q->backend = NULL;
    be->cls->destroy(be);
    return 0;
  }
  cancel_inflight(q, is_input);
  deadline = ioq_now_ns() + q->linger_ns;
  while (q->inflight.n > 0 || q->unsent.n > 0 || q->ready.n > 0) {
    int64_t wait = -1;
    int i, n;
    lioq_flush(q);
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
      q->backend = NULL;
      return -1;
    }
    for (i = 0; i < n; i++)
      apply(q, &q->events[i], from_gc);
  }
  q->backend = NULL;
  be->cls->destroy(be);
  return 0;
}

/* ---------------------------------------------------------------- closing files */

/* May this thread call the queue's backend? */
static int may_drive(lqueue *q) {
  return q->backend != NULL && !lioq_forked_child(q) &&
         lioq_on_owner_thread(q);
}

/*
** Ends the ops pending on a file object that Lua is closing; lioq_file.c
** closes the descriptor once none is left. Output already asked for goes
** out first: unsent ops are handed to the kernel, which tries each at
** once. Then every op still pending is canceled, except writes and
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
      lioq_flush(h->q);
      h->q->backend->cls->submit(h->q->backend);
    }
  }
  for (l = f->ops; l != NULL; l = l->next) {
    lhandle *h = handle_of_link(l);
    if ((!lioq_is_socket(f) && lioq_is_output(&h->op)) || h->op.cancel_requested)
      continue;
    if (h->state == ST_INFLIGHT && !may_drive(h->q))
      continue;  /* another process's or thread's kernel work */
    lioq_cancel(h);
    if (h->state == ST_INFLIGHT)
      h->q->backend->cls->submit(h->q->backend);
  }
}

/*
** Asks for the op to be canceled. An unsent op is canceled on the spot;
** a started one when the kernel agrees. Either way the handle still
** resolves through the queue. Returns true if a cancel was asked for.
*/
int lioq_cancel(lhandle *h) {
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

