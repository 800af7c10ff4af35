/*
** lioq_fs.c: the file-system ops of ioq.queue: q:stat, q:lstat, q:fstat,
** q:unlink, q:rmdir, q:mkdir, q:rename, q:link, q:symlink, q:readlink,
** q:truncate, q:allocate, q:datasync, q:close_file, q:readv, q:writev and
** q:copy. They are made by the steps of lioq_ops.c (lioq_newop, then the
** checks, then lioq_commit), and this file also says what their handles
** resolve to and what they let go of when they end (lioq_fs_settle, from
** the engine's settle). Touches the handle it makes and the objects its
** arguments name.
**
** Each path op keeps its path strings alive in the handle (HVAL_DATA, and
** HVAL_RESULT for a second path); an op that fills memory (stat, readlink)
** has it right after the handle, so it lives as long as the handle does.
*/
#include <errno.h>
#include <string.h>

#include "lioq_queue.h"

#ifndef _WIN32
#include <sys/sysmacros.h>
#endif

/* The most a readlink stores: Linux's PATH_MAX, which bounds a link. */
#define READLINK_ROOM 4096

/* A vectored op's limit on buffers (Linux's IOV_MAX). */
#define MAX_VEC 1024

/* A path argument: a string (a number converts) without a zero byte. */
static const char *checkpath(lua_State *L, int arg) {
  size_t len;
  const char *p = luaL_checklstring(L, arg, &len);
  luaL_argcheck(L, strlen(p) == len, arg, "path contains a zero byte");
  return p;
}

/* Keeps the value at `arg` alive in the handle on top, as user value i. */
static void keep(lua_State *L, int arg, int i) {
  lua_pushvalue(L, arg);
  lua_setiuservalue(L, -2, i);
}

/* The op's descriptor, from the argument at `arg`; the handle keeps a file
** object there alive. */
static void setfd(lua_State *L, lhandle *h, int arg) {
  h->op.fd = lioq_checkfd(L, arg);
  if (lua_type(L, arg) == LUA_TUSERDATA)
    keep(L, arg, HVAL_FD);
}

static int64_t checkoffset(lua_State *L, int arg, const char *what) {
  lua_Integer off;
  if (lua_isnoneornil(L, arg))
    return -1;
  off = luaL_checkinteger(L, arg);
  if (off < 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s must be non-negative", what));
  return off;
}

/*
** An op that failed before it could start (a descriptor could not be
** duplicated): committed, then straight to the ready list with `err`,
** so that it resolves through the queue like any other.
*/
static void fail_now(lua_State *L, lhandle *h, int fidx, int err) {
  lqueue *q = h->q;
  lioq_commit(L, h, NULL, fidx);
  list_remove(&q->unsent, &h->op);
  h->op.res = -err;
  h->state = ST_READY;
  list_push(&q->ready, &h->op);
}

/* ---------------------------------------------------------------- paths */

/*
** An op on one or two paths (args 2 and 3), with `nargs` arguments in
** all; extra bytes after the handle for what the op fills. Returns the
** handle, committed by the caller once it has set its fields.
*/
static lhandle *path_op(lua_State *L, int code, int nargs, int npaths,
                        size_t extra) {
  const char *a, *b = NULL;
  lhandle *h;
  lua_settop(L, nargs);
  a = checkpath(L, 2);
  if (npaths == 2)
    b = checkpath(L, 3);
  h = lioq_newop(L, code, nargs, extra);
  h->op.buf = (void *)a;
  keep(L, 2, HVAL_DATA);
  if (b != NULL) {
    h->op.addr = (void *)b;
    keep(L, 3, HVAL_RESULT);
  }
  return h;
}

static int stat_op(lua_State *L, int flags) {
  lhandle *h = path_op(L, IOQ_STAT, 2, 1, sizeof(ioq_statx));
  h->op.flags = flags;
  lioq_commit(L, h, NULL, 0);
  return 1;
}

/* q:stat(path): resolves to a table (see push_stat); q:lstat(path)
** describes a symbolic link itself. */
static int queue_stat(lua_State *L) {
  return stat_op(L, 0);
}

static int queue_lstat(lua_State *L) {
  return stat_op(L, IOQ_NOFOLLOW);
}

/* q:fstat(f): the same table for an open file. */
static int queue_fstat(lua_State *L) {
  lhandle *h;
  lua_settop(L, 2);
  h = lioq_newop(L, IOQ_STAT, 2, sizeof(ioq_statx));
  setfd(L, h, 2);
  h->op.buf = NULL;
  lioq_commit(L, h, NULL, 2);
  return 1;
}

/* q:unlink(path), q:rmdir(path): resolve to true. */
static int queue_unlink(lua_State *L) {
  lioq_commit(L, path_op(L, IOQ_UNLINK, 2, 1, 0), NULL, 0);
  return 1;
}

static int queue_rmdir(lua_State *L) {
  lioq_commit(L, path_op(L, IOQ_RMDIR, 2, 1, 0), NULL, 0);
  return 1;
}

/* q:mkdir(path [, perm]): perm defaults to 0777 (less the umask). */
static int queue_mkdir(lua_State *L) {
  lua_Integer perm = luaL_optinteger(L, 3, 0777);
  lhandle *h;
  luaL_argcheck(L, perm >= 0 && perm <= 07777, 3, "invalid permissions");
  h = path_op(L, IOQ_MKDIR, 3, 1, 0);
  h->op.mode = (int)perm;
  lioq_commit(L, h, NULL, 0);
  return 1;
}

/* q:rename(from, to [, opts]): opts.noreplace fails with EEXIST rather
** than replace `to` (EINVAL or EOPNOTSUPP where the file system cannot). */
static int queue_rename(lua_State *L) {
  int flags = 0;
  lhandle *h;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "noreplace");
    flags = lua_toboolean(L, -1) ? IOQ_NOREPLACE : 0;
    lua_pop(L, 1);
  }
  h = path_op(L, IOQ_RENAME, 4, 2, 0);
  h->op.flags = flags;
  lioq_commit(L, h, NULL, 0);
  return 1;
}

/* q:link(from, to): a hard link. q:symlink(target, path): a symbolic
** link at `path` whose content is `target` (not checked to exist). */
static int queue_link(lua_State *L) {
  lioq_commit(L, path_op(L, IOQ_LINK, 3, 2, 0), NULL, 0);
  return 1;
}

static int queue_symlink(lua_State *L) {
  lioq_commit(L, path_op(L, IOQ_SYMLINK, 3, 2, 0), NULL, 0);
  return 1;
}

/* q:readlink(path): resolves to the link's content, a string. */
static int queue_readlink(lua_State *L) {
  lhandle *h = path_op(L, IOQ_READLINK, 2, 1, READLINK_ROOM);
  h->op.len = READLINK_ROOM;
  lioq_commit(L, h, NULL, 0);
  return 1;
}

/* ---------------------------------------------------------------- descriptors */

/* q:truncate(f, size): resolves to true. */
static int queue_truncate(lua_State *L) {
  lhandle *h;
  lua_settop(L, 3);
  luaL_checkinteger(L, 3);
  h = lioq_newop(L, IOQ_TRUNCATE, 3, 0);
  setfd(L, h, 2);
  h->op.offset = checkoffset(L, 3, "size");
  lioq_commit(L, h, NULL, 2);
  return 1;
}

/* q:allocate(f, offset, length [, mode]): fallocate(2); mode 0 (the
** default) gives the file room for the range, growing it to reach its
** end; other modes are FALLOC_FL_* flags (see fallocate(2)). */
static int queue_allocate(lua_State *L) {
  lua_Integer len, mode;
  lhandle *h;
  lua_settop(L, 5);
  luaL_checkinteger(L, 3);
  len = luaL_checkinteger(L, 4);
  luaL_argcheck(L, len > 0, 4, "length must be positive");
  mode = luaL_optinteger(L, 5, 0);
  luaL_argcheck(L, mode >= 0 && mode <= 0x7fffffff, 5, "invalid mode");
  h = lioq_newop(L, IOQ_ALLOCATE, 5, 0);
  setfd(L, h, 2);
  h->op.offset = checkoffset(L, 3, "offset");
  h->op.ns = len;
  h->op.mode = (int)mode;
  lioq_commit(L, h, NULL, 2);
  return 1;
}

/* q:datasync(f): fdatasync(2); resolves to true. */
static int queue_datasync(lua_State *L) {
  lhandle *h;
  lua_settop(L, 2);
  h = lioq_newop(L, IOQ_DATASYNC, 2, 0);
  setfd(L, h, 2);
  lioq_commit(L, h, NULL, 2);
  return 1;
}

/* ---------------------------------------------------------------- close */

/* What a close op keeps after its handle: the file it closes. */
typedef struct close_extra {
  lioq_file *f;
} close_extra;

static close_extra *close_of(lhandle *h) {
  return (close_extra *)(void *)(h + 1);
}

/* Whether every op pending on f is on queue q. */
static int all_on(lioq_file *f, lqueue *q) {
  lioq_oplink *l;
  for (l = f->ops; l != NULL; l = l->next)
    if (handle_of_link(l)->q != q)
      return 0;
  return 1;
}

/*
** q:close_file(f): closes an ioq.file through the queue (IORING_OP_CLOSE,
** a worker, a pool thread) and resolves to true, or fail, msg, errno as
** f:close() would return. The object is closed for Lua at once, and the
** ops pending on it end first, as with f:close(): the descriptor itself
** is closed only once none is left, so the op waits for them, parked on
** the queue's starved list (paused: nothing arms it but lioq_fs_unpark).
** Were some of them on another queue, the descriptor is closed when they
** end (as f:close() does) and the handle resolves at once.
**
** The descriptor is closed whatever the handle says: a close is never
** cut short once started (no cancel is asked, no timeout armed), and one
** canceled before it started is made here, in C, when the op settles.
*/
static int queue_close_file(lua_State *L) {
  lhandle *h;
  lioq_file *f;
  lqueue *q;
  ioq_fd fd;
  lua_settop(L, 2);
  h = lioq_newop(L, IOQ_CLOSE, 2, sizeof(close_extra));
  q = h->q;
  f = lioq_checkopen(L, 2, TAG_FILE);
  keep(L, 2, HVAL_FD);
  close_of(h)->f = f;
  h->op.cancel_requested = 1;  /* so nothing asks the kernel to stop it */
  lioq_commit(L, h, NULL, 0);  /* not on f's list: it is not "on" f */
  list_remove(&q->unsent, &h->op);  /* aside while f's ops end */
  fd = f->fd;
  f->fd = IOQ_NOFD;
  if (f->ops != NULL)
    lioq_end_ops(f);
  if (f->ops == NULL) {
    h->op.fd = fd;
    list_push(&q->unsent, &h->op);
  } else if (all_on(f, q)) {
    f->closing = fd;
    f->close_op = h;
    h->paused = 1;
    h->state = ST_STARVED;
    list_push(&q->starved, &h->op);
  } else {
    f->closing = fd;
    h->op.res = 0;
    h->state = ST_READY;
    list_push(&q->ready, &h->op);
  }
  return 1;
}

/*
** The last op on f has ended (lioq_file_release): the parked close takes
** the descriptor and goes to the kernel. One canceled meanwhile has not:
** f->closing is then closed by lioq_file_release, as after f:close().
*/
void lioq_fs_unpark(lioq_file *f) {
  lhandle *h = f->close_op;
  f->close_op = NULL;
  if (h->state != ST_STARVED)
    return;
  list_remove(&h->q->starved, &h->op);
  h->paused = 0;
  h->op.fd = f->closing;
  f->closing = IOQ_NOFD;
  h->state = ST_UNSENT;
  list_push(&h->q->unsent, &h->op);
}

/* ---------------------------------------------------------------- vectors */

/* After the iovecs of a vectored op: the buffers it holds (NULL: a
** string, which the copy of the list in HVAL_DATA keeps alive). */
static lioq_block **vec_blocks(lhandle *h) {
  return (lioq_block **)(void *)((ioq_iov *)(void *)(h + 1) + h->op.flags);
}

/*
** q:readv(f, bufs [, offset]) and q:writev(f, data [, offset]): one read
** into (or write from) a list of buffers (strings too, for writev), in
** order; resolves to the bytes moved. Each buffer is busy until then.
*/
static int vec_op(lua_State *L, int code) {
  lhandle *h;
  ioq_iov *iov;
  lioq_block **blocks;
  size_t total = 0;
  int n, i;
  lua_settop(L, 4);
  luaL_checktype(L, 3, LUA_TTABLE);
  n = (int)lua_rawlen(L, 3);
  luaL_argcheck(L, n >= 1, 3, "empty list of buffers");
  if (n > MAX_VEC)
    luaL_argerror(L, 3, lua_pushfstring(L, "more than %d buffers", MAX_VEC));
  h = lioq_newop(L, code, 4, (size_t)n * (sizeof *iov + sizeof *blocks));
  h->op.flags = n;
  lua_createtable(L, n, 0);  /* the list as it is now, kept by the handle */
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    lua_rawseti(L, -2, i);
  }
  lua_setiuservalue(L, -2, HVAL_DATA);
  /* Nothing below allocates or runs Lua code: check, take pointers. */
  setfd(L, h, 2);
  h->op.offset = checkoffset(L, 4, "offset");
  iov = (ioq_iov *)(void *)(h + 1);
  blocks = vec_blocks(h);
  lua_getiuservalue(L, -1, HVAL_DATA);
  for (i = 0; i < n; i++) {
    void *ud;
    lua_rawgeti(L, -1, i + 1);
    ud = lioq_toudata(L, -1, TAG_BUFFER);
    if (ud != NULL) {
      lioq_block *b = *(lioq_block **)ud;  /* an ioq.buffer's one field */
      if (b == NULL)
        luaL_argerror(L, 3, lua_pushfstring(L, "buffer #%d is closed", i + 1));
      if (b->busy)
        luaL_argerror(L, 3, lua_pushfstring(L, "buffer #%d: " LIOQ_BUSY, i + 1));
      blocks[i] = b;
      iov[i].iov_base = b->data;
      iov[i].iov_len = b->size;
    } else if (code == IOQ_WRITEV && lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      iov[i].iov_base = (void *)lua_tolstring(L, -1, &len);
      iov[i].iov_len = len;
      blocks[i] = NULL;
    } else {
      luaL_argerror(L, 3, lua_pushfstring(L, "item #%d is %s, not %s", i + 1,
                    luaL_typename(L, -1), code == IOQ_WRITEV
                    ? "an ioq.buffer or a string" : "an ioq.buffer"));
    }
    total += iov[i].iov_len;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  h->op.buf = iov;
  h->op.len = total > IOQ_MAX_RW ? IOQ_MAX_RW : (uint32_t)total;
  lioq_commit(L, h, NULL, 2);
  for (i = 0; i < n; i++)  /* as lioq_commit does for one buffer */
    if (blocks[i] != NULL) {
      blocks[i]->busy = 1;
      blocks[i]->refs++;
    }
  return 1;
}

static int queue_readv(lua_State *L) {
  return vec_op(L, IOQ_READV);
}

static int queue_writev(lua_State *L) {
  return vec_op(L, IOQ_WRITEV);
}

/* ---------------------------------------------------------------- copy */

typedef struct copy_extra {
  ioq_copyspec spec;
  lioq_file *src_pos, *dst_pos;  /* files whose kept position it uses */
  int64_t src_start, dst_start;  /* where it started in them */
} copy_extra;

static copy_extra *copy_of(lhandle *h) {
  return (copy_extra *)(void *)(h + 1);
}

/* A duplicate of fd that the op owns, so that closing the destination
** object while the copy runs cannot hand its number to another file. */
static int dup_fd(ioq_fd fd, ioq_fd *out) {
#ifdef _WIN32
  HANDLE h;
  if (!DuplicateHandle(GetCurrentProcess(), (HANDLE)fd, GetCurrentProcess(),
                       &h, 0, FALSE, DUPLICATE_SAME_ACCESS))
    return -ioq_oserr();
  *out = (ioq_fd)h;
  return 0;
#else
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0)
    return -errno;
  *out = d;
  return 0;
#endif
}

/* Where descriptors have no position (IOCP), an ioq.file keeps one: the
** copy starts there and moves it (in lioq_fs_settle). */
static lioq_file *kept_position(lua_State *L, lqueue *q, int arg,
                                int64_t *off) {
  lioq_file *f;
  if (*off >= 0 || !(q->backend->caps & IOQ_CAP_NO_POSITION))
    return NULL;
  f = lioq_toudata(L, arg, TAG_FILE);
  *off = f != NULL ? f->pos : 0;
  return f;
}

/*
** q:copy(src, dst, length [, src_offset [, dst_offset]]): copies up to
** `length` bytes from src to dst inside the kernel (copy_file_range, or
** a loop in the worker where that cannot), without a buffer in Lua.
** Resolves to the bytes copied: fewer at the end of the source, 0 there.
** A nil offset is the descriptor's position, which moves.
*/
static int queue_copy(lua_State *L) {
  lhandle *h;
  copy_extra *c;
  lua_Integer len;
  int err;
  lua_settop(L, 6);
  len = luaL_checkinteger(L, 4);
  luaL_argcheck(L, len >= 0, 4, "length must be non-negative");
  h = lioq_newop(L, IOQ_COPY, 6, sizeof(copy_extra));
  keep(L, 3, HVAL_RESULT);
  c = copy_of(h);
  setfd(L, h, 2);
  c->spec.dst = lioq_checkfd(L, 3);
  c->spec.len = len;
  c->spec.src_off = checkoffset(L, 5, "offset");
  c->spec.dst_off = checkoffset(L, 6, "offset");
  c->src_pos = kept_position(L, h->q, 2, &c->spec.src_off);
  c->dst_pos = kept_position(L, h->q, 3, &c->spec.dst_off);
  c->src_start = c->spec.src_off;
  c->dst_start = c->spec.dst_off;
  h->op.addr = &c->spec;
  /* Last, as nothing after it can fail: the duplicate the op owns. */
  if ((err = dup_fd(c->spec.dst, &c->spec.dst)) != 0) {
    c->spec.dst = IOQ_NOFD;
    c->src_pos = c->dst_pos = NULL;
    fail_now(L, h, 2, -err);
    return 1;
  }
  lioq_commit(L, h, NULL, 2);
  return 1;
}

/* ---------------------------------------------------------------- settle */

/* Moves a kept position past the bytes an op moved, if nothing else
** moved it since the op started at `from`. */
static void advance(lioq_file *f, int64_t from, int64_t moved) {
  if (f != NULL && moved > 0 && f->pos == from)
    f->pos = from + moved;
}

/*
** The end of a file-system op, in C (the engine's settle, which may run in
** __gc: no Lua here). `started`: the backend took the op.
*/
void lioq_fs_settle(lhandle *h, int started, int from_gc) {
  switch (h->op.code) {
    case IOQ_READV:
    case IOQ_WRITEV: {
      lioq_block **blocks = vec_blocks(h);
      int i;
      for (i = 0; i < h->op.flags; i++)
        if (blocks[i] != NULL) {
          blocks[i]->busy = 0;
          lioq_block_unref(blocks[i]);
          blocks[i] = NULL;
        }
      break;
    }
    case IOQ_COPY: {
      copy_extra *c = copy_of(h);
      if (c->spec.dst != IOQ_NOFD)
        ioq_close(c->spec.dst, 0);
      c->spec.dst = IOQ_NOFD;
      if (!from_gc) {
        advance(c->src_pos, c->src_start, h->op.res);
        advance(c->dst_pos, c->dst_start, h->op.res);
      }
      c->src_pos = c->dst_pos = NULL;
      break;
    }
    case IOQ_CLOSE: {
      lioq_file *f = close_of(h)->f;
      if (f != NULL && f->close_op == h)
        f->close_op = NULL;  /* canceled while parked */
      close_of(h)->f = NULL;
      if (!started && h->op.fd != IOQ_NOFD)  /* the kernel never had it */
        ioq_close(h->op.fd, 0);
      h->op.fd = IOQ_NOFD;
      break;
    }
    default:
      break;
  }
}

/* ---------------------------------------------------------------- results */

static const char *type_name(unsigned mode) {
#ifdef _WIN32
  switch (mode & IOQ_S_IFMT) {
    case IOQ_S_IFREG: return "file";
    case IOQ_S_IFDIR: return "directory";
    case IOQ_S_IFLNK: return "link";
    default: return "unknown";
  }
#else
  switch (mode & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "link";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "char";
    case S_IFBLK: return "block";
    default: return "unknown";
  }
#endif
}

static void set_number(lua_State *L, const char *k, lua_Number v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void set_integer(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

#define SECONDS(t) ((lua_Number)(t).tv_sec + (lua_Number)(t).tv_nsec / 1e9)

/*
** The stat table: size, type ("file", "directory", "link", "fifo",
** "socket", "char", "block"), mode (the permission bits), atime, mtime,
** ctime and birthtime (where the file system knows it) in seconds with
** fractions, ino, dev, rdev, nlink, uid, gid, blksize, blocks.
*/
static int push_stat(lua_State *L, const ioq_statx *st) {
  lua_createtable(L, 0, 16);
  set_integer(L, "size", (lua_Integer)st->stx_size);
  lua_pushstring(L, type_name(st->stx_mode));
  lua_setfield(L, -2, "type");
  set_integer(L, "mode", st->stx_mode & 07777);
  set_number(L, "atime", SECONDS(st->stx_atime));
  set_number(L, "mtime", SECONDS(st->stx_mtime));
  set_number(L, "ctime", SECONDS(st->stx_ctime));
  if (st->stx_mask & STATX_BTIME)
    set_number(L, "birthtime", SECONDS(st->stx_btime));
  set_integer(L, "ino", (lua_Integer)st->stx_ino);
#ifdef _WIN32
  set_integer(L, "dev", (lua_Integer)st->stx_dev_minor);
  set_integer(L, "rdev", 0);
#else
  set_integer(L, "dev", (lua_Integer)makedev(st->stx_dev_major,
                                             st->stx_dev_minor));
  set_integer(L, "rdev", (lua_Integer)makedev(st->stx_rdev_major,
                                              st->stx_rdev_minor));
#endif
  set_integer(L, "nlink", st->stx_nlink);
  set_integer(L, "uid", st->stx_uid);
  set_integer(L, "gid", st->stx_gid);
  set_integer(L, "blksize", st->stx_blksize);
  set_integer(L, "blocks", (lua_Integer)st->stx_blocks);
  return 1;
}

/* What a file-system op's handle resolves to, once it succeeded. */
int lioq_fs_push_result(lua_State *L, lhandle *h) {
  switch (h->op.code) {
    case IOQ_STAT:
      return push_stat(L, (const ioq_statx *)(void *)(h + 1));
    case IOQ_READLINK:
      lua_pushlstring(L, (const char *)(h + 1), (size_t)h->op.res);
      return 1;
    case IOQ_READV:
    case IOQ_WRITEV:
    case IOQ_COPY:
      lua_pushinteger(L, (lua_Integer)h->op.res);
      return 1;
    default:
      lua_pushboolean(L, 1);
      return 1;
  }
}

const luaL_Reg lioq_fs_methods[] = {
  {"stat", queue_stat},
  {"lstat", queue_lstat},
  {"fstat", queue_fstat},
  {"unlink", queue_unlink},
  {"rmdir", queue_rmdir},
  {"mkdir", queue_mkdir},
  {"rename", queue_rename},
  {"link", queue_link},
  {"symlink", queue_symlink},
  {"readlink", queue_readlink},
  {"truncate", queue_truncate},
  {"allocate", queue_allocate},
  {"datasync", queue_datasync},
  {"close_file", queue_close_file},
  {"readv", queue_readv},
  {"writev", queue_writev},
  {"copy", queue_copy},
  {NULL, NULL}
};
