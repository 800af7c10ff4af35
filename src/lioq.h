/*
** lioq.h: what the binding's files share. The binding turns Lua calls into
** ioq_ops for a backend (see ioq.h) and turns completed ops back into Lua
** values; it checks every argument before any state changes.
**
** One error contract, for every file of the binding:
**   - C helpers return 0 or -errno (never +errno, 1/0 or a message); the
**     errno is saved before any call that could change it.
**   - A failed op resolves, through its handle, to nil, "<op>: <text>",
**     errno: a real errno with a name in ioq.errno, ECANCELED and
**     ETIMEDOUT included ("read: canceled", "sleep: timed out"); an op
**     that cannot even start (an address that does not resolve, a
**     multishot op the backend lacks) is a handle that resolves so too.
**   - The end of a stream: 0 from a read or receive; nil alone from
**     h:take (as io.read at the end of a file).
**   - Misuse raises through luaL_argerror and friends (lioq_checkudata,
**     lioq_checkopen, lioq_checkidle...), naming the argument of the call
**     the script made; a synchronous call that fails returns lioq_fail's
**     nil, "<what>: <strerror>", errno.
*/
#ifndef LIOQ_H
#define LIOQ_H

#include <stddef.h>
#include <stdint.h>
#include "lua.h"
#include "lauxlib.h"

#include "ioq_os.h"

#define LIOQ_QUEUE  "ioq.queue"
#define LIOQ_HANDLE "ioq.handle"
#define LIOQ_BUFFER "ioq.buffer"
#define LIOQ_FILE   "ioq.file"
#define LIOQ_SOCKET "ioq.socket"
#define LIOQ_PROCESS "ioq.process"

/* Registry key of the classes' tables that core.classes lists. */
#define LIOQ_CLASSES "ioq.classes"

/*
** The classes. Each class's metatable holds, at index 1, the address of
** its entry in lioq_tags: checking a userdata's class is then two array
** reads, where luaL_checkudata hashes the class name in the registry (a
** cost every op would pay several times).
*/
enum { TAG_QUEUE, TAG_HANDLE, TAG_BUFFER, TAG_FILE, TAG_SOCKET, TAG_PROCESS,
       LIOQ_NTAGS };
extern const char lioq_tags[LIOQ_NTAGS];
extern const char *const lioq_class_names[LIOQ_NTAGS];

/* lioq_util.c: the helpers at the bottom, which every other file may use. */
int lioq_fail(lua_State *L, const char *what, int err);
void *lioq_toudata(lua_State *L, int idx, int tag);
void *lioq_checkudata(lua_State *L, int idx, int tag);
void lioq_newmetatable(lua_State *L, int tag, const luaL_Reg *metamethods);
void lioq_newclass(lua_State *L, int tag, const luaL_Reg *methods,
                   const luaL_Reg *metamethods);
void lioq_setclass(lua_State *L, int tag);
int64_t lioq_checkseconds(lua_State *L, int arg, int64_t dflt);

/*
** A buffer's bytes live outside the Lua heap in a block with a reference
** count: the buffer userdata holds one reference and each op that uses the
** block holds one, so the bytes outlive a collected buffer until the kernel
** is done with them.
*/
typedef struct lioq_block {
  size_t refs;
  size_t size;
  int busy;              /* an op owns the bytes: Lua may not touch them */
  unsigned char *data;
  ioq_pool *pool;        /* a view of pool buffer `buf`, which goes back to */
  int buf;               /* the pool when the last reference does */
  int embedded;          /* inside its view's userdata: never freed alone */
} lioq_block;

/* An ioq.buffer userdata (here for the op constructors' fast checks). */
typedef struct lbuffer {
  lioq_block *block;     /* NULL once closed (or before it was allocated) */
} lbuffer;

/* lioq_buffer.c */
void lioq_open_buffer(lua_State *L);
int lioq_buffer_new(lua_State *L);
lioq_block *lioq_checkblock(lua_State *L, int arg);
lioq_block *lioq_testblock(lua_State *L, int arg);
void lioq_block_unref(lioq_block *b);
void *lioq_buffer_push_view(lua_State *L);
lioq_block *lioq_checkidle(lua_State *L, int arg);

/* The one check that a buffer's bytes are Lua's: no op owns them. */
#define LIOQ_BUSY "buffer in use by a pending operation"

static inline lioq_block *lioq_idleblock(lua_State *L, int arg,
                                         lioq_block *b) {
  luaL_argcheck(L, !b->busy, arg, LIOQ_BUSY);
  return b;
}
int lioq_buffer_set_view(void *view, ioq_pool *pool, int buf, size_t len);
int lioq_buffer_view_free(const void *view);

/* The link of a pending op in the list of its file object. */
typedef struct lioq_oplink {
  struct lioq_oplink *next, *prev;
} lioq_oplink;

/*
** An ioq.file or ioq.socket: a descriptor ioq opened. fd is IOQ_NOFD while
** closed; family and type are 0 for files. Where descriptors have no
** position of their own (IOQ_CAP_NO_POSITION), a file object keeps it.
**
** Every op pending on the object is on its `ops` list, so that closing the
** object can end them first. The descriptor itself is closed only once
** none is pending (`closing` holds it meanwhile): an op never acts on a
** descriptor number that the system has given to something else.
*/
typedef struct lioq_file {
  ioq_fd fd;
  int family, type;
  int append;            /* opened to append: writes go to the end */
  int64_t pos;           /* the position, where the object keeps it */
  lioq_oplink *ops;      /* the ops pending on it */
  ioq_fd closing;        /* closed by Lua, to be closed when ops is empty */
  void *close_op;        /* a q:close_file handle waiting for ops to end,
                            which then closes `closing` (lioq_fs.c) */
} lioq_file;

/* Sockets are the lioq_files with an address family. */
static inline int lioq_is_socket(const lioq_file *f) {
  return f->family != 0;
}

/* lioq_file.c */
void lioq_open_file(lua_State *L);
lioq_file *lioq_file_prepare(lua_State *L);
void lioq_file_init(lioq_file *f, int family, int type);
void lioq_file_release(lioq_file *f);
ioq_fd lioq_checkfd(lua_State *L, int arg);
lioq_file *lioq_checkopen(lua_State *L, int arg, int tag);
ioq_fd lioq_tofd(lua_State *L, int idx);
int lioq_closefd(lua_State *L, lioq_file *f);
void lioq_dropfd(lioq_file *f);

/* lioq_fs.c */
void lioq_fs_unpark(lioq_file *f);

/* lioq_signal.c */
int lioq_signalfd(lua_State *L);
int lioq_signame(lua_State *L);

/* lioq_process.c */
void lioq_open_process(lua_State *L);
int lioq_spawn(lua_State *L);
int lioq_process_result(lua_State *L, int idx);
void lioq_process_waitable(lua_State *L, int arg);

/* lioq_socket.c */
void lioq_open_socket(lua_State *L);
int lioq_socket_new(lua_State *L);
int lioq_socketpair(lua_State *L);
lioq_file *lioq_socket_prepare(lua_State *L, int family, int type);
int lioq_toaddr(lua_State *L, int family, int hostarg, int portarg,
                struct sockaddr_storage *ss, uint32_t *len);
int lioq_addr_is_name(lua_State *L, int family, int hostarg, int portarg);
int lioq_pushaddr(lua_State *L, const struct sockaddr_storage *ss,
                  uint32_t len);
int lioq_checkhow(lua_State *L, int arg);
int lioq_lookup_errno(int r);

/* lioq_queue.c, lioq_handle.c, lioq_engine.c (see lioq_queue.h) */
void lioq_open_queue(lua_State *L);
void lioq_open_handle(lua_State *L);
int lioq_queue_new(lua_State *L);
int lioq_backends(lua_State *L);
int lioq_queue_of(lua_State *L);
int lioq_note_handle(lua_State *L);
int lioq_set_claim(lua_State *L);
void lioq_end_ops(lioq_file *f);

/* lioq_loop.c: the coroutine loop's hot path (see lua/ioq/loop.lua). */
int lioq_loop_new(lua_State *L);

/* lua_resume, whose signature differs between Lua versions: resumes co
** with the narg values on top of its stack; *nres gets how many it
** yielded or returned. */
static inline int lioq_resume(lua_State *co, lua_State *from, int narg,
                              int *nres) {
#if LUA_VERSION_NUM >= 504
  return lua_resume(co, from, narg, nres);
#elif LUA_VERSION_NUM >= 502
  int r = lua_resume(co, from, narg);
  *nres = lua_gettop(co);
  return r;
#else
  int r = lua_resume(co, narg);
  (void)from;
  *nres = lua_gettop(co);
  return r;
#endif
}

#endif
