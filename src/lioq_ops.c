/*
** lioq_ops.c: the op constructors, q:read ... q:recv_multi (and io.open's
** mode letters), and h:resubmit, which starts a finished op again. Each
** checks its arguments, fills an ioq_op in a new handle, and queues it on
** the queue's unsent list; the engine (lioq_engine.c) does the rest. Touches the handle it makes and the
** objects its arguments name; calls the engine and lioq.h's helpers.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

static void use_position(lqueue *q, lhandle *h, lioq_file *f);

/*
** The buffer, file or socket object at idx and its class (*tag), by the
** address of its metatable (see lioq_mts); NULL for anything else, which
** the general checks then look at.
*/
static void *argobj(lua_State *L, const lqueue *q, int idx, int *tag) {
  const lioq_mts *c = q != NULL ? q->mts : NULL;
  const void *mt = c != NULL ? lioq_mtof(L, idx) : NULL;
  if (mt == NULL)
    return NULL;
  if (mt == c->file) *tag = TAG_FILE;
  else if (mt == c->socket) *tag = TAG_SOCKET;
  else if (mt == c->buffer) *tag = TAG_BUFFER;
  else return NULL;
  return lua_touserdata(L, idx);
}

/*
** The file or socket object at idx, or NULL. Objects of those classes
** with a metatable of their own (a signals file) take the general check.
*/
static lioq_file *fileobj(lua_State *L, const lqueue *q, int idx) {
  int tag = -1;
  lioq_file *f = argobj(L, q, idx, &tag);
  if (f != NULL)
    return tag == TAG_FILE || tag == TAG_SOCKET ? f : NULL;
  if (lua_type(L, idx) != LUA_TUSERDATA)
    return NULL;
  if ((f = lioq_toudata(L, idx, TAG_FILE)) == NULL)
    f = lioq_toudata(L, idx, TAG_SOCKET);
  return f;
}

/* The block of the buffer at arg (open), or NULL if it is no buffer. */
static lioq_block *bufferarg(lua_State *L, const lqueue *q, int arg) {
  int tag = -1;
  lbuffer *ub = argobj(L, q, arg, &tag);
  if (tag != TAG_BUFFER)
    return NULL;
  luaL_argcheck(L, ub->block != NULL, arg, "buffer is closed");
  return ub->block;
}

/* The block of the buffer at arg, open and idle (lioq_checkidle). */
static lioq_block *idlebuffer(lua_State *L, const lqueue *q, int arg) {
  lioq_block *b = bufferarg(L, q, arg);
  return b != NULL ? lioq_idleblock(L, arg, b) : lioq_checkidle(L, arg);
}

/* Puts a pending op on the list of file object f, if any. */
static void link_file(lhandle *h, lioq_file *f) {
  if (f == NULL)
    return;
  h->file = f;
  h->link.prev = NULL;
  h->link.next = f->ops;
  if (f->ops != NULL)
    f->ops->prev = &h->link;
  f->ops = &h->link;
}

/* Makes sure a new anchor slot can be released later without allocating. */
static void lioq_reserve_slot(lua_State *L, lqueue *q) {
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
static lhandle *newop_at(lua_State *L, int code, int nargs, size_t extra,
                         int family, int type) {
  lqueue *q = lioq_checkqueue(L);
  /* Only the user values the op needs (reading a missing one gives nil);
  ** the file-system ops keep a second path or object in HVAL_RESULT. */
  int nuv = (code == IOQ_NOP || code == IOQ_SLEEP) ? HVAL_QUEUE
          : (code == IOQ_OPEN || code == IOQ_ACCEPT || code == IOQ_POLL ||
             code >= IOQ_CALL)
          ? HVAL_RESULT : HVAL_FD;  /* fs ops: a second path or object */
  lhandle *h;
  if (lua_gettop(L) != nargs)  /* usually equal: a cheaper call */
    lua_settop(L, nargs);
  h = lua_newuserdatauv(L, sizeof *h + extra, nuv);
  memset(h, 0, sizeof *h + extra);
  if (extra > 0)
    h->op.addr = h + 1;  /* a socket address, right after the handle */
  h->op.code = (uint8_t)code;
  h->op.fd = IOQ_NOFD;
  h->op.offset = -1;
  h->q = q;
  h->state = ST_DONE;  /* not pending until committed */
  lua_getiuservalue(L, 1, QVAL_HANDLE_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, HVAL_QUEUE);
  if (code == IOQ_OPEN || (code == IOQ_ACCEPT && family != 0)) {
    h->file_out = code == IOQ_OPEN ? lioq_file_prepare(L)
                                   : lioq_socket_prepare(L, family, type);
    lua_setiuservalue(L, -2, HVAL_RESULT);
    h->side = SIDE_OUT;
  }
  luaL_argcheck(L, q->backend != NULL, 1, "queue is closed");
  lioq_reserve_slot(L, q);
  return h;
}

static lhandle *newop(lua_State *L, int code, size_t extra, int family,
                      int type) {
  /* How many arguments each op takes, the queue included: the handle is
  ** pushed above them, where an absent optional argument reads as nil. */
  static const int nargs[IOQ_NOPCODES] = {
    1, 5, 5, 2, 4, 2, 2, 4, 4, 4, 4, 5, 3, 3, 1
  };
  return newop_at(L, code, nargs[code], extra, family, type);
}

/*
** Anchors the handle on top of the stack in its queue (at stack index 1):
** the one step of queueing an op that can fail (out of memory), so it
** comes before any state changes. An emergency collection runs no
** finalizers, so no Lua code runs here either.
*/
static void lioq_anchor(lua_State *L, lhandle *h) {
  lqueue *q = h->q;
  int slot = q->nfree > 0 ? q->free_slots[q->nfree - 1] : q->top + 1;
  lua_getiuservalue(L, 1, QVAL_ANCHORS);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, slot);
  lua_pop(L, 1);
  if (q->nfree > 0) q->nfree--;
  else q->top++;
  h->slot = slot;
}

/*
** Queues the anchored op, which uses `block` (or NULL) and is pending on
** file object f (or NULL). Cannot fail.
*/
static void lioq_enqueue(lhandle *h, lioq_block *block, lioq_file *f) {
  lqueue *q = h->q;
  if (block != NULL) {
    block->busy = 1;
    block->refs++;
    h->block = block;
  }
  link_file(h, f);
  if (h->op.code == IOQ_READ || h->op.code == IOQ_WRITE ||
      h->op.code == IOQ_READV || h->op.code == IOQ_WRITEV)
    use_position(q, h, f);
  h->state = ST_UNSENT;
  list_push(&q->unsent, &h->op);
}

/* Commits an op pending on file object f (setfd's), or on none. */
static void commit_on(lua_State *L, lhandle *h, lioq_block *block,
                      lioq_file *f) {
  lioq_anchor(L, h);
  lioq_enqueue(h, block, f);
}

/* Commits an op pending on the file object at fidx (or on none: 0). */
static void commit(lua_State *L, lhandle *h, lioq_block *block, int fidx) {
  commit_on(L, h, block, fidx != 0 ? fileobj(L, h->q, fidx) : NULL);
}

static int64_t lioq_checkoffset(lua_State *L, int arg) {
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

/* The buffer (open) at `arg`, or NULL for a string; raises for others. */
static lioq_block *checkdataarg(lua_State *L, const lqueue *q, int arg) {
  lioq_block *b;
  if (lua_type(L, arg) == LUA_TSTRING)
    return NULL;
  if ((b = bufferarg(L, q, arg)) == NULL &&
      (b = lioq_testblock(L, arg)) == NULL)
    luaL_typeerror(L, arg, "ioq.buffer or string");
  return b;
}

/*
** The bytes of the buffer or string at `arg` (a buffer is then returned
** in *bp, a string gives NULL), and their size.
*/
static const void *checkdata(lua_State *L, const lqueue *q, int arg,
                             size_t *size, lioq_block **bp) {
  lioq_block *b = checkdataarg(L, q, arg);
  if (b == NULL) {
    *bp = NULL;
    return lua_tolstring(L, arg, size);
  }
  *bp = lioq_idleblock(L, arg, b);
  *size = b->size;
  return b->data;
}

/* Sets the op's descriptor, from the argument at 2; the handle keeps a
** file object there alive. Returns that file or socket object, or NULL
** (a number, a Lua io file). */
static lioq_file *setfd(lua_State *L, lhandle *h) {
  lioq_file *f = fileobj(L, h->q, 2);
  if (f != NULL) {
    luaL_argcheck(L, f->fd != IOQ_NOFD, 2, lioq_is_socket(f)
                  ? "attempt to use a closed socket"
                  : "attempt to use a closed file");
    h->op.fd = f->fd;
  } else {
    h->op.fd = lioq_checkfd(L, 2);
  }
  if (lua_type(L, 2) == LUA_TUSERDATA) {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, HVAL_FD);
  }
  return f;
}

/* Keeps the buffer, string or path at `arg` alive while the kernel uses it. */
static void keepdata(lua_State *L, int arg) {
  lua_pushvalue(L, arg);
  lua_setiuservalue(L, -2, HVAL_DATA);
}

/*
** Where descriptors have no position of their own (IOCP), a read or write
** at the current position (offset -1) of an ioq.file (at fidx) uses the
** position the object keeps and moves it past the bytes asked for, so the
** next op starts there; settle() moves it back if fewer bytes moved. A
** write to a file opened to append keeps offset -1: the end of the file.
** Called by commit, once nothing can fail.
*/
static void use_position(lqueue *q, lhandle *h, lioq_file *f) {
  h->at_position = h->op.offset == -1;
  if (!(q->backend->caps & IOQ_CAP_NO_POSITION) || !h->at_position)
    return;
  if (f == NULL || lioq_is_socket(f) || (f->append && h->op.code == IOQ_WRITE))
    return;
  h->op.offset = f->pos;
  f->pos += h->op.len;
  h->pos_file = f;
  h->side = SIDE_POS;
}

/* q:read(f, buf [, offset [, length]]) */
static int queue_read(lua_State *L) {
  lhandle *h = newop(L, IOQ_READ, 0, 0, 0);
  lioq_file *f = setfd(L, h);
  lioq_block *b = idlebuffer(L, h->q, 3);
  h->op.offset = lioq_checkoffset(L, 4);
  h->op.len = checklength(L, 5, b->size);
  h->op.buf = b->data;
  keepdata(L, 3);
  commit_on(L, h, b, f);
  return 1;
}

/* q:write(f, data [, offset [, length]]): data is a buffer or a string. */
static int queue_write(lua_State *L) {
  lhandle *h = newop(L, IOQ_WRITE, 0, 0, 0);
  lioq_file *f = setfd(L, h);
  lioq_block *b;
  size_t size;
  h->op.buf = (void *)checkdata(L, h->q, 3, &size, &b);  /* only read */
  h->op.offset = lioq_checkoffset(L, 4);
  h->op.len = checklength(L, 5, size);
  keepdata(L, 3);  /* a string stays alive while the kernel reads it */
  /* On a socket a write is a send: write(2) would raise SIGPIPE once the
  ** peer has gone, where a send says EPIPE (the offset means nothing). */
  if (f != NULL && lioq_is_socket(f))
    h->op.code = IOQ_SEND;
  commit_on(L, h, b, f);
  return 1;
}

/* q:fsync(f) */
static int queue_fsync(lua_State *L) {
  lhandle *h = newop(L, IOQ_FSYNC, 0, 0, 0);
  commit_on(L, h, NULL, setfd(L, h));
  return 1;
}

/* q:nop() */
static int queue_nop(lua_State *L) {
  commit(L, newop(L, IOQ_NOP, 0, 0, 0), NULL, 0);
  return 1;
}

/* q:sleep(seconds) */
static int queue_sleep(lua_State *L) {
  lhandle *h = newop(L, IOQ_SLEEP, 0, 0, 0);
  luaL_checkany(L, 2);
  h->op.ns = lioq_checkseconds(L, 2, 0);
  commit(L, h, NULL, 0);
  return 1;
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
  /* The arguments first: a number path becomes a string here, which can
  ** run a finalizer; newop then makes the objects and checks the queue. */
  size_t plen;
  const char *path = luaL_checklstring(L, 2, &plen);
  int flags = mode_flags(luaL_optstring(L, 3, "r"));
  lua_Integer perm = luaL_optinteger(L, 4, 0666);
  lhandle *h = newop(L, IOQ_OPEN, 0, 0, 0);
  luaL_argcheck(L, strlen(path) == plen, 2, "path contains a zero byte");
  luaL_argcheck(L, flags != -1, 3, "invalid mode");
  luaL_argcheck(L, perm >= 0 && perm <= 07777, 4, "invalid permissions");
  h->op.buf = (void *)path;
  h->op.flags = flags;
  h->op.mode = (int)perm;
  keepdata(L, 2);
  h->file_out->append = (flags & O_APPEND) != 0;
  commit(L, h, NULL, 0);
  return 1;
}

/* The socket object at arg 2 (not checked to be open: see opensocket). */
static lioq_file *checksocketarg(lua_State *L) {
  return lioq_checkudata(L, 2, TAG_SOCKET);
}

/* The socket at arg 2, open; the handle keeps it alive. */
static lioq_file *opensocket(lua_State *L, lhandle *h) {
  int tag = -1;
  lioq_file *s = argobj(L, h->q, 2, &tag);
  if (tag != TAG_SOCKET)
    s = lioq_checkudata(L, 2, TAG_SOCKET);
  luaL_argcheck(L, s->fd != IOQ_NOFD, 2, "attempt to use a closed socket");
  h->op.fd = s->fd;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, HVAL_FD);
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
  lua_setiuservalue(L, -2, HVAL_DATA);
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
  commit(L, h, NULL, 2);
  return 1;
}

/*
** Resolves the address at args hostarg, hostarg + 1 for the socket at
** arg 2 into the op's address. Returns 0 when it resolved, or the errno
** of a failed lookup with its message (one value) pushed. A lookup cannot run Lua
** code, but pushing its message can: check state after this.
*/
static int resolve(lua_State *L, lhandle *h, int hostarg) {
  lioq_file *s = checksocketarg(L);
  int err = lioq_toaddr(L, s->family, hostarg, hostarg + 1, h->op.addr,
                        &h->op.addrlen);
  if (err == 0)
    return 0;
  lua_pushfstring(L, "%s: %s", lioq_op_names[h->op.code], lua_tostring(L, -1));
  lua_remove(L, -2);  /* lioq_toaddr's own message */
  return -err;
}

/* Whether the host at hostarg is a name for the socket at 2: the op then
** looks it up on a worker thread (lioq_call.c), never on this one. */
static int named(lua_State *L, int hostarg) {
  lua_settop(L, hostarg + 1);  /* a missing port reads as nil, as in newop */
  return lioq_addr_is_name(L, checksocketarg(L)->family, hostarg,
                           hostarg + 1);
}

/* q:connect(s, host, port) or q:connect(s, path): resolves to true. */
static int queue_connect(lua_State *L) {
  lhandle *h;
  int err;
  if (named(L, 3)) {
    void *c = lioq_named_new(L, IOQ_CONNECT, 4, 3);
    return lioq_named_commit(L, c, NULL, 0, NULL);
  }
  h = newop(L, IOQ_CONNECT, sizeof(struct sockaddr_storage), 0, 0);  /* 5 */
  if ((err = resolve(L, h, 3)) != 0)
    lua_insert(L, 5);  /* the message under the handle */
  luaL_argcheck(L, h->q->backend != NULL, 1, "queue is closed");
  opensocket(L, h);
  if (err != 0)
    return commit_failed(L, h, 5, err);
  commit(L, h, NULL, 2);
  return 1;
}

/* q:recv(s, buf [, length]): the byte count; 0 when the peer has closed.
** Also q:recvfrom, which has room for the sender's address. */
static int recv_op(lua_State *L, int code, size_t extra) {
  lhandle *h = newop(L, code, extra, 0, 0);
  lioq_file *s = opensocket(L, h);
  lioq_block *b = idlebuffer(L, h->q, 3);
  h->op.len = checklength(L, 4, b->size);
  h->op.buf = b->data;
  keepdata(L, 3);
  commit_on(L, h, b, s);
  return 1;
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
  h->op.buf = (void *)checkdata(L, h->q, 3, &size, bp);
  h->op.len = checklength(L, 4, size);
  keepdata(L, 3);
}

/* q:send(s, data [, length]): the byte count (may be short). */
static int queue_send(lua_State *L) {
  lhandle *h = newop(L, IOQ_SEND, 0, 0, 0);
  lioq_file *s = opensocket(L, h);
  lioq_block *b;
  send_data(L, h, &b);
  commit_on(L, h, b, s);
  return 1;
}

/* q:sendto(s, data, host, port) or q:sendto(s, data, path): the byte
** count. The data is checked before any lookup. */
static int queue_sendto(lua_State *L) {
  lhandle *h;
  lioq_block *b;
  int err;
  checkdataarg(L, NULL, 3);
  if (named(L, 4)) {
    void *c = lioq_named_new(L, IOQ_SENDTO, 5, 4);
    const void *data;
    size_t size;
    data = checkdata(L, NULL, 3, &size, &b);  /* after the objects: see newop */
    lua_pushvalue(L, 3);  /* the handle keeps the bytes */
    lua_setiuservalue(L, -2, HVAL_RESULT);
    return lioq_named_commit(L, c, data, size > IOQ_MAX_RW ? IOQ_MAX_RW
                             : (uint32_t)size, b);
  }
  h = newop(L, IOQ_SENDTO, sizeof(struct sockaddr_storage), 0, 0);  /* 6 */
  if ((err = resolve(L, h, 4)) != 0)
    lua_insert(L, 6);
  luaL_argcheck(L, h->q->backend != NULL, 1, "queue is closed");
  opensocket(L, h);
  if (err != 0)
    return commit_failed(L, h, 6, err);
  lua_pushnil(L);  /* no length argument: the whole data */
  lua_replace(L, 4);
  send_data(L, h, &b);
  commit(L, h, b, 2);
  return 1;
}

/* q:shutdown(s [, how]): resolves to true. */
static int queue_shutdown(lua_State *L) {
  lhandle *h = newop(L, IOQ_SHUTDOWN, 0, 0, 0);
  opensocket(L, h);
  h->op.flags = lioq_checkhow(L, 3);
  commit(L, h, NULL, 2);
  return 1;
}

/*
** q:poll(f, "r" | "w"): resolves once the descriptor is readable (or hung
** up, or failed) or writable, to the directions ready ("r", "w", "rw").
** One direction per op: the epoll backend waits on one.
*/
static int queue_poll(lua_State *L) {
  static const char *const dirs[] = {"r", "w", NULL};
  int dir = luaL_checkoption(L, 3, NULL, dirs);
  lhandle *h = newop(L, IOQ_POLL, 0, 0, 0);
  setfd(L, h);
  h->op.flags = dir == 0 ? IOQ_POLLIN : IOQ_POLLOUT;
  commit(L, h, NULL, 2);
  return 1;
}

/*
** q:wait_process(p): resolves once the child process p has ended, to its
** exit status and the name of the signal that ended it (or nil); a poll
** of the process's waitable descriptor (its pidfd, or its handle on
** Windows), so a timeout or a cancel leaves the child alone.
*/
static int queue_wait_process(lua_State *L) {
  lhandle *h;
  ioq_fd fd;
  lua_settop(L, 2);
  lioq_process_waitable(L, 2);  /* checks p; its waitable, at 3 */
  h = newop(L, IOQ_POLL, 0, 0, 0);
  fd = lioq_tofd(L, 3);
  luaL_argcheck(L, fd != IOQ_NOFD, 2, "process is closed");
  h->op.fd = fd;
  h->op.flags = IOQ_POLLIN;
  h->proc_wait = 1;
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, HVAL_FD);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, HVAL_RESULT);
  commit(L, h, NULL, 3);
  return 1;
}

/* Makes a handle multishot, for the sockets it accepts or the buffers it
** receives into. */
static void multishot(lua_State *L, lhandle *h, lioq_file *s) {
  luaL_setmetatable(L, MULTISHOT_MT);
  h->op.multishot = 1;
  h->side = SIDE_MULTI;
  h->family = s->family;
  h->type = s->type;
}

/*
** Commits multishot handle h (on top) as failed with `err` before it
** started, its message naming `what`: like every op, a multishot op that
** cannot run is a handle that resolves to fail, msg, errno.
*/
static int multishot_failed(lua_State *L, lhandle *h, const char *what,
                            int err) {
  lua_pushfstring(L, "%s: %s", what, ioq_strerror(err));
  lua_insert(L, -2);
  luaL_argcheck(L, h->q->backend != NULL, 1, "queue is closed");  /* a
                                              finalizer may have closed it */
  h->op.cancel_requested = 1;  /* so that the engine ends it, re-arms nothing */
  return commit_failed(L, h, lua_gettop(L) - 1, err);
}

/*
** q:accept_multi(s): one multishot accept that stays armed and yields a
** socket per connection: h:take() (or h:next() in lua/ioq.lua) hands them
** over, until h:cancel(). Resolves to EOPNOTSUPP where the backend cannot.
*/
static int queue_accept_multi(lua_State *L) {
  lhandle *h = newop(L, IOQ_ACCEPT, 0, 0, 0);  /* each item: its own socket */
  lioq_file *s = opensocket(L, h);
  multishot(L, h, s);
  if (!(h->q->backend->caps & IOQ_CAP_MULTISHOT_ACCEPT))
    return multishot_failed(L, h, "accept_multi", EOPNOTSUPP);
  commit(L, h, NULL, 2);
  return 1;
}

/*
** q:recv_multi(s): one multishot receive into the queue's pool of provided
** buffers: each chunk that arrives is a buffer view for h:take(); closing
** (or collecting) the view gives its buffer back to the kernel. A socket
** costs no buffer while it is idle. Resolves to EOPNOTSUPP where the
** backend has no pool.
*/
/* The queue's pool, made on first use: 0 or -errno. */
static int getpool(lua_State *L, lqueue *q) {
  int r;
  if (q->pool != NULL)
    return 0;
  if (!(q->backend->caps & IOQ_CAP_POOL))
    return -EOPNOTSUPP;
  lioq_checkowner(L, q);
  if ((r = q->backend->cls->pool(q->backend, q->pool_count, q->pool_size,
                                 &q->pool)) < 0)
    return r;
  q->pool->refs++;  /* the queue's own, so q->pool outlives the backend */
  return 0;
}

static int queue_recv_multi(lua_State *L) {
  lhandle *h = newop(L, IOQ_RECV, 0, 0, 0);
  lioq_file *s = opensocket(L, h);
  lqueue *q = h->q;
  int r;
  multishot(L, h, s);
  if ((r = getpool(L, q)) < 0)
    return multishot_failed(L, h, "recv_multi", -r);
  h->op.use_pool = 1;
  h->pool = q->pool;
  commit(L, h, NULL, 2);
  return 1;
}

/*
** q:recv_pooled(s): one receive that takes a buffer from the queue's pool
** only once data has arrived, so a socket waiting for data holds no
** buffer. Resolves to n and a buffer of the n bytes (closing it, or
** letting it be collected, gives the pool buffer back); 0 alone when the
** peer has closed. The buffer is a view made here, closed, which the
** engine lends the pool buffer as the bytes arrive: the handle itself
** never holds a pool buffer, so it needs no finalizer. Where the backend
** has no pool, the op receives into a buffer of its own of the pool's
** buffer size.
*/
static void *pooled_data(lua_State *L, lqueue *q, int use_pool) {
  if (use_pool)
    return lioq_buffer_push_view(L);
  lua_pushcfunction(L, lioq_buffer_new);
  lua_pushinteger(L, (lua_Integer)q->pool_size);
  lua_call(L, 1, 1);
  return NULL;
}

static int queue_recv_pooled(lua_State *L) {
  lhandle *h = newop(L, IOQ_RECV, 0, 0, 0);  /* at 5 */
  lqueue *q = h->q;
  int use_pool = getpool(L, q) == 0;
  h->pooled = 1;
  /* Its buffer (objects first), under the handle; then the checks. */
  h->view = pooled_data(L, q, use_pool);
  h->side = SIDE_VIEW;
  lua_insert(L, 5);
  luaL_argcheck(L, q->backend != NULL, 1, "queue is closed");
  opensocket(L, h);
  keepdata(L, 5);
  if (use_pool) {
    h->op.use_pool = 1;
    h->pool = q->pool;
    commit(L, h, NULL, 2);
  } else {
    lioq_block *b = lioq_checkidle(L, 5);
    h->op.len = (uint32_t)b->size;
    h->op.buf = b->data;
    commit(L, h, b, 2);
  }
  return 1;
}

/*
** h:resubmit([offset]): starts a resolved read, write, recv, send, recvfrom,
** sendto, fsync, nop or sleep again with the same descriptor, buffer (or
** string), length and address, at `offset` if given (reads and writes).
** A loop of I/O then needs no new handle per op. A pooled receive gets a
** new buffer, unless the view of its last result is closed and free (the
** usual case: a loop that closes each buffer it got makes none).
*/
int lioq_handle_resubmit(lua_State *L) {
  lhandle *h = lioq_checkhandle(L);
  lqueue *q = h->q;
  lioq_block *b = NULL;
  void *view = h->side == SIDE_VIEW ? h->view : NULL;
  int code = h->op.code;
  int64_t off = h->at_position ? -1 : h->op.offset;
  ioq_fd fd = h->op.fd;
  luaL_argcheck(L, h->state == ST_DONE, 1, "handle is pending");
  luaL_argcheck(L, code != IOQ_OPEN && code != IOQ_ACCEPT &&
                   code != IOQ_CONNECT && code != IOQ_SHUTDOWN &&
                   code < IOQ_CALL && !h->op.multishot, 1,
                "only data transfers, fsync, nop and sleep can be resubmitted");
  /* One that failed before it started never had its op filled in. */
  luaL_argcheck(L, !h->has_msg, 1, "the op never started: make a new one");
  if (!lua_isnoneornil(L, 2)) {
    luaL_argcheck(L, code == IOQ_READ || code == IOQ_WRITE, 2,
                  "only reads and writes take an offset");
    off = lioq_checkoffset(L, 2);
  }
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, HVAL_QUEUE);              /* 2 */
  lua_getiuservalue(L, 1, HVAL_DATA);               /* 3 */
  lua_getiuservalue(L, 1, HVAL_FD);                 /* 4 */
  if (h->pooled && (!h->op.use_pool || !lioq_buffer_view_free(view))) {
    view = pooled_data(L, q, h->op.use_pool);  /* a new one, made first */
    lua_replace(L, 3);
  }
  luaL_argcheck(L, q->backend != NULL, 1, "queue is closed");
  if (lua_type(L, 4) == LUA_TUSERDATA) {  /* the file may have been closed */
    fd = lioq_tofd(L, 4);
    if (fd == IOQ_NOFD)
      return luaL_error(L, "the handle's file is closed");
  }
  if (lua_type(L, 3) == LUA_TUSERDATA && !h->op.use_pool) {
    b = lioq_toudata(L, 3, TAG_BUFFER) ? lioq_checkblock(L, 3) : NULL;
    if (b != NULL && b->busy)
      return luaL_error(L, LIOQ_BUSY);
  }
  lioq_reserve_slot(L, q);
  /* Making the view above may have run a finalizer that resubmitted this
  ** very handle: queueing it twice would corrupt the unsent list. */
  luaL_argcheck(L, h->state == ST_DONE, 1, "handle is pending");
  lua_pushvalue(L, 1);                            /* the handle on top */
  lua_pushvalue(L, 2);
  lua_replace(L, 1);                              /* the queue at 1 */
  lioq_anchor(L, h);  /* first: the handle keeps its old result if this fails */
  h->op.fd = fd;
  h->op.offset = off;
  h->op.res = 0;
  h->op.timeout_ns = 0;
  h->op.cancel_requested = 0;
  if (h->pooled) {  /* the buffer it has now */
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, -2, HVAL_DATA);
    h->view = view;
    if (b != NULL) {
      h->op.buf = b->data;
      h->op.len = (uint32_t)b->size;
    }
  }
  lioq_enqueue(h, b, lua_type(L, 4) == LUA_TUSERDATA ? fileobj(L, q, 4) : NULL);
  return 1;
}

/*
** The steps above for op constructors in other files (lioq_call.c...):
** lioq_newop leaves the queue's first `nargs` arguments and the new
** handle on top; lioq_commit and lioq_commit_failed as commit and
** commit_failed.
*/
lhandle *lioq_newop(lua_State *L, int code, int nargs, size_t extra) {
  return newop_at(L, code, nargs, extra, 0, 0);
}

void lioq_commit(lua_State *L, lhandle *h, lioq_block *block, int fidx) {
  commit(L, h, block, fidx);
}

int lioq_commit_failed(lua_State *L, lhandle *h, int msgidx, int err) {
  return commit_failed(L, h, msgidx, err);
}

const luaL_Reg lioq_op_methods[] = {
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
  {"poll", queue_poll},
  {"wait_process", queue_wait_process},
  {"accept_multi", queue_accept_multi},
  {"recv_multi", queue_recv_multi},
  {"recv_pooled", queue_recv_pooled},
  {NULL, NULL}
};
