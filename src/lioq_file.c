/*
** lioq_file.c: ioq.file objects (descriptors that ioq opened) and the one
** place that turns an argument into a descriptor. Closing an object ends
** the ops pending on it through lioq_end_ops (lioq_engine.c, the one call
** up into the queue's files); uses lioq_util.c and ioq_os.h.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#ifdef _WIN32
#include <io.h>
#endif

#include "lualib.h"

#include "lioq.h"

/*
** Pushes a file object in the closed state, so that the object exists
** before the descriptor does and a failed allocation cannot leak one.
*/
lioq_file *lioq_file_prepare(lua_State *L) {
  lioq_file *f = lua_newuserdatauv(L, sizeof *f, 0);
  lioq_file_init(f, 0, 0);
  luaL_setmetatable(L, LIOQ_FILE);
  return f;
}

/* A closed file (family 0) or socket object with nothing pending. */
void lioq_file_init(lioq_file *f, int family, int type) {
  f->fd = IOQ_NOFD;
  f->family = family;
  f->type = type;
  f->append = 0;
  f->pos = 0;
  f->ops = NULL;
  f->closing = IOQ_NOFD;
  f->close_op = NULL;
}

/*
** Called when the last op pending on f has ended: a close that waited for
** it happens now.
*/
void lioq_file_release(lioq_file *f) {
  if (f->ops == NULL && f->close_op != NULL)
    lioq_fs_unpark(f);  /* a close through the queue does it */
  if (f->ops == NULL && f->closing != IOQ_NOFD) {
    ioq_close(f->closing, lioq_is_socket(f));
    f->closing = IOQ_NOFD;
  }
}

/*
** The descriptor under a C stream (a Lua io file). On Windows that is the
** C runtime's handle, opened for synchronous I/O: the iocp backend serves
** it from a pool thread.
*/
static ioq_fd stream_fd(FILE *f) {
#ifdef _WIN32
  return (ioq_fd)_get_osfhandle(_fileno(f));
#else
  return fileno(f);
#endif
}

/*
** The descriptor of the file object (ioq or Lua io) at idx; IOQ_NOFD if it
** is closed or not a file object.
*/
ioq_fd lioq_tofd(lua_State *L, int idx) {
  void *ud;
  if ((ud = lioq_toudata(L, idx, TAG_FILE)) != NULL ||
      (ud = lioq_toudata(L, idx, TAG_SOCKET)) != NULL)
    return ((lioq_file *)ud)->fd;
  if ((ud = luaL_testudata(L, idx, LUA_FILEHANDLE)) != NULL) {
    luaL_Stream *s = ud;
    return s->closef != NULL ? stream_fd(s->f) : IOQ_NOFD;
  }
  return IOQ_NOFD;
}

/* The file or socket object f (of class tag) at arg, open. */
static lioq_file *checkopen(lua_State *L, int arg, lioq_file *f, int tag) {
  luaL_argcheck(L, f->fd != IOQ_NOFD, arg, tag == TAG_SOCKET
                ? "attempt to use a closed socket"
                : "attempt to use a closed file");
  return f;
}

/* The open file or socket object of class `tag` at arg. */
lioq_file *lioq_checkopen(lua_State *L, int arg, int tag) {
  return checkopen(L, arg, lioq_checkudata(L, arg, tag), tag);
}

/*
** The descriptor behind argument `arg`: an integer, a Lua io file, or an
** ioq file. Anything else, or a closed file, raises an error naming `arg`.
*/
ioq_fd lioq_checkfd(lua_State *L, int arg) {
  void *ud;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer fd = luaL_checkinteger(L, arg);
    luaL_argcheck(L, fd >= 0 && (sizeof(ioq_fd) > 4 || fd <= 0x7fffffff), arg,
                  "descriptor must be a non-negative integer");
    return (ioq_fd)fd;
  }
  if ((ud = lioq_toudata(L, arg, TAG_FILE)) != NULL)
    return checkopen(L, arg, ud, TAG_FILE)->fd;
  if ((ud = lioq_toudata(L, arg, TAG_SOCKET)) != NULL)
    return checkopen(L, arg, ud, TAG_SOCKET)->fd;
  if ((ud = luaL_testudata(L, arg, LUA_FILEHANDLE)) != NULL) {
    luaL_Stream *s = ud;
    luaL_argcheck(L, s->closef != NULL, arg, "attempt to use a closed file");
    return stream_fd(s->f);
  }
  return luaL_typeerror(L, arg, "descriptor (integer, file or socket)");
}

/*
** Closes the object for Lua at once. Ops pending on it end first (see
** lioq_end_ops); while any is still in the kernel the descriptor stays
** open, and lioq_file_release closes it when the last one is handed back.
** Returns 0 or -errno from a close made now.
*/
static int close_object(lioq_file *f) {
  ioq_fd fd = f->fd;
  f->fd = IOQ_NOFD;
  if (f->ops != NULL)
    lioq_end_ops(f);
  if (f->ops != NULL) {
    f->closing = fd;
    return 0;
  }
  return ioq_close(fd, lioq_is_socket(f));
}

/*
** Closes an open file or socket object: true, or fail, msg, errno. The
** object is closed either way (EINTR included: Linux has closed it).
*/
int lioq_closefd(lua_State *L, lioq_file *f) {
  int err = close_object(f);
  if (err != 0)
    return lioq_fail(L, "close", -err);
  lua_pushboolean(L, 1);
  return 1;
}

/* For __gc and __close: closes quietly, and only once. */
void lioq_dropfd(lioq_file *f) {
  if (f->fd != IOQ_NOFD)
    close_object(f);
}

/* f:close(): true, or fail, msg, errno. */
static int file_close(lua_State *L) {
  return lioq_closefd(L, lioq_checkopen(L, 1, TAG_FILE));
}

static int file_gc(lua_State *L) {
  lioq_dropfd(lioq_checkudata(L, 1, TAG_FILE));
  return 0;
}

static int file_fileno(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lioq_checkopen(L, 1, TAG_FILE)->fd);
  return 1;
}

static int file_repr(lua_State *L) {
  lioq_file *f = lioq_checkudata(L, 1, TAG_FILE);
  if (f->fd == IOQ_NOFD)
    lua_pushliteral(L, "ioq.file (closed)");
  else
    lua_pushfstring(L, "ioq.file (fd %I)", (lua_Integer)f->fd);
  return 1;
}

void lioq_open_file(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"close", file_close},
    {"fileno", file_fileno},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__tostring", file_repr},
    {"__close", file_gc},
    {"__gc", file_gc},
    {NULL, NULL}
  };
  lioq_newclass(L, TAG_FILE, methods, meta);
}
