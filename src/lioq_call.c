/*
** lioq_call.c: queue ops whose work is a blocking call on a worker thread
** (IOQ_CALL, see ioq.h): q:resolve, a name lookup (getaddrinfo; GetAddrInfoW
** on Windows); q:connect and q:sendto to a host name, which look it up
** and then connect or send on the worker (lioq_ops.c makes them through
** lioq_named_new and lioq_named_commit); and q:opendir / q:readdir, a
** directory's entries in batches (readdir; FindFirstFileExW and
** FindNextFileW on Windows).
**
** Each call is a lioq_call (lioq_queue.h) with its own fields after it: the
** inputs, copied, so the worker never reads Lua memory; the outputs, which
** only the worker writes while the op is pending and only Lua reads once
** it has ended. Touches the handle it makes and its own objects; calls the
** op constructors' steps (lioq_ops.c) and lioq_socket.c's errno mapping.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ioq_blocking.h"
#include "lioq_queue.h"

#ifndef _WIN32
#include <dirent.h>
#include <poll.h>
#include <sys/stat.h>
#endif

#define LIOQ_CALLBOX "ioq.call"
#define LIOQ_DIR "ioq.dir"

/* ---------------------------------------------------------------- calls */

/* The box's __gc: its reference to the call goes. */
static int callbox_gc(lua_State *L) {
  lioq_call **box = luaL_checkudata(L, 1, LIOQ_CALLBOX);
  if (*box != NULL) {
    lioq_call *c = *box;
    *box = NULL;
    lioq_call_unref(c);
  }
  return 0;
}

/*
** Makes the handle of a call named `name` that takes the queue's first
** `nargs` arguments, with `size` bytes of lioq_call and fields, zeroed:
** the handle, then its box, then the memory, so that a memory error leaves
** nothing behind but objects for the collector. The handle is on top.
*/
static void *newcall(lua_State *L, int nargs, size_t size, const char *name,
                     int64_t (*run)(void *)) {
  lhandle *h = lioq_newop(L, IOQ_CALL, nargs, 0);
  lioq_call **box = lua_newuserdatauv(L, sizeof *box, 0);
  lioq_call *c;
  *box = NULL;
  if (luaL_newmetatable(L, LIOQ_CALLBOX)) {
    lua_pushcfunction(L, callbox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, -2, HVAL_DATA);
  if ((c = calloc(1, size)) == NULL)
    luaL_error(L, "not enough memory");
  c->refs = 1;
  *box = c;
  h->op.call = run;
  h->op.buf = c;
  h->op.addr = (void *)name;
  return c;
}

/* Queues the call made by newcall (its handle on top), which uses `block`
** (or NULL) and is pending on the object at `fidx` (or 0): nothing fails
** now. A finalizer run by an allocation since newop may have closed the
** queue. */
static int commitcall_on(lua_State *L, lioq_call *c, lioq_block *block,
                         int fidx) {
  lhandle *h = lua_touserdata(L, -1);
  luaL_argcheck(L, h->q->backend != NULL, 1, "queue is closed");
  lioq_commit(L, h, block, fidx);
  c->refs++;  /* the op's, until settle */
  return 1;
}

static int commitcall(lua_State *L, lioq_call *c) {
  return commitcall_on(L, c, NULL, 0);
}

/* The call of the handle at 1, whose op has ended. */
static lioq_call *callof(lua_State *L, int idx) {
  lioq_call **box;
  lua_getiuservalue(L, idx, HVAL_DATA);
  box = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (box == NULL || *box == NULL)
    luaL_error(L, "the call's result is gone");
  return *box;
}

int lioq_call_result(lua_State *L, lhandle *h, int idx) {
  lioq_call *c = callof(L, idx);
  return c->push(L, c, h->op.res, idx);
}

/* A C string argument, checked for zero bytes, and its length. */
static const char *checkname(lua_State *L, int arg, const char *what,
                             size_t *len) {
  const char *s = luaL_checklstring(L, arg, len);
  if (strlen(s) != *len)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s contains a zero byte", what));
  if (*len == 0)
    luaL_argerror(L, arg, lua_pushfstring(L, "%s is empty", what));
  return s;
}

/* ---------------------------------------------------------------- resolve */

typedef struct resolve_call {
  lioq_call base;
  int family, socktype;    /* hints: 0 for any */
  int port;
  int gai;                 /* the lookup's own error code, 0 if none */
  int sys;                 /* errno behind EAI_SYSTEM */
  const char *opname;      /* in messages: "resolve", or the op it is for */
#ifdef _WIN32
  ADDRINFOW *res;
#else
  struct addrinfo *res;
#endif
  /* A connect or sendto to the name (0: a plain lookup): what the worker
  ** does with the addresses, on the socket fd (kept open while the op is
  ** pending: the handle holds the socket, and its close waits for the op). */
  int code;                /* IOQ_CONNECT, IOQ_SENDTO, or 0 */
  ioq_fd fd;
  const void *data;        /* sendto's bytes (the handle keeps them) */
  uint32_t len;
  char host[1];            /* the name, NUL-terminated (allocated longer) */
} resolve_call;

static void resolve_release(lioq_call *base);

/* On a worker: looks c->host up. The count of inet and inet6 addresses
** in c->res, or -errno (c->gai set when the lookup itself failed). */
static int64_t resolve_run(void *ctx) {
  resolve_call *c = ctx;
  int64_t n = 0, aborted;
#ifdef _WIN32
  ADDRINFOW hints, *ai;
  wchar_t *whost;
  int len = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, c->host, -1,
                                NULL, 0);
  if (len <= 0)
    return -EINVAL;
  if ((whost = malloc((size_t)len * sizeof *whost)) == NULL)
    return -ENOMEM;
  MultiByteToWideChar(CP_UTF8, 0, c->host, -1, whost, len);
  memset(&hints, 0, sizeof hints);
  hints.ai_family = c->family;
  hints.ai_socktype = c->socktype;
  hints.ai_flags = AI_ADDRCONFIG;
  c->gai = GetAddrInfoW(whost, NULL, &hints, &c->res);
  free(whost);
#else
  struct addrinfo hints, *ai;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = c->family;
  hints.ai_socktype = c->socktype;
  hints.ai_flags = AI_ADDRCONFIG;
  errno = 0;
  c->gai = getaddrinfo(c->host, NULL, &hints, &c->res);
  c->sys = errno;
#endif
  /* getaddrinfo cannot be interrupted: a cancel that came meanwhile wins
  ** now, so a lookup nobody wants gives no addresses. */
  if ((aborted = ioq_blocking_aborted()) != 0)
    return aborted;
  if (c->gai != 0) {
#ifdef EAI_SYSTEM
    if (c->gai == EAI_SYSTEM) {
      errno = c->sys;
      if (c->sys == EINTR)
        return -EINTR;  /* a stray signal: look up again */
    }
#endif
    return -lioq_lookup_errno(c->gai);
  }
  for (ai = c->res; ai != NULL; ai = ai->ai_next)
    if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
      n++;
  return n;
}

static void resolve_release(lioq_call *base) {
  resolve_call *c = (resolve_call *)base;
  if (c->res != NULL) {
#ifdef _WIN32
    FreeAddrInfoW(c->res);
#else
    freeaddrinfo(c->res);
#endif
    c->res = NULL;
  }
}

/* fail, msg, errno: the lookup's own text when it was the lookup that
** failed, else the errno's. */
static int push_failure(lua_State *L, resolve_call *c, int64_t res) {
  int err = (int)-res;
  luaL_pushfail(L);
  if (c->gai != 0)
#ifdef _WIN32
    lua_pushfstring(L, "%s: cannot resolve '%s': %s", c->opname, c->host,
                    ioq_strerror(err));
#else
    lua_pushfstring(L, "%s: cannot resolve '%s': %s", c->opname, c->host,
                    c->gai == EAI_SYSTEM ? strerror(c->sys)
                                         : gai_strerror(c->gai));
#endif
  else
    lua_pushfstring(L, "%s: %s", c->opname, ioq_strerror(err));
  lua_pushinteger(L, err);
  return 3;
}

static int resolve_push(lua_State *L, lioq_call *base, int64_t res,
                        int idx) {
  resolve_call *c = (resolve_call *)base;
  lua_Integer i = 0;
#ifdef _WIN32
  ADDRINFOW *ai;
#else
  struct addrinfo *ai;
#endif
  (void)idx;  /* nothing of the handle's is needed */
  if (res < 0)
    return push_failure(L, c, res);
  lua_createtable(L, (int)res, 0);
  for (ai = c->res; ai != NULL; ai = ai->ai_next) {
    struct sockaddr_storage ss;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    if (ai->ai_family == AF_INET)
      ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->port);
    else
      ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)c->port);
    lua_createtable(L, 0, 4);
    lioq_pushaddr(L, &ss, (uint32_t)ai->ai_addrlen);
    lua_setfield(L, -3, "port");
    lua_setfield(L, -2, "host");
    lua_pushstring(L, ai->ai_family == AF_INET ? "inet" : "inet6");
    lua_setfield(L, -2, "family");
    lua_pushstring(L, ai->ai_socktype == SOCK_DGRAM ? "dgram" : "stream");
    lua_setfield(L, -2, "socktype");
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* An option of the opts table at `arg`: one of `names` (index into
** `values`), or `dflt` when absent. */
static int checkopt(lua_State *L, int arg, const char *field,
                    const char *const names[], const int values[], int dflt) {
  const char *v;
  int i;
  if (lua_isnoneornil(L, arg))
    return dflt;
  lua_getfield(L, arg, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  v = lua_tostring(L, -1);
  for (i = 0; v != NULL && names[i] != NULL; i++)
    if (strcmp(names[i], v) == 0) {
      lua_pop(L, 1);
      return values[i];
    }
  return luaL_argerror(L, arg, lua_pushfstring(L, "bad %s '%s'", field,
                                               v ? v : luaL_typename(L, -1)));
}

/*
** q:resolve(host [, port [, opts]]): resolves to a list of addresses,
** {host =, port =, family = "inet"|"inet6", socktype = "stream"|"dgram"},
** in the order the system prefers. opts.family ("inet", "inet6", "any")
** and opts.socktype ("stream", the default, "dgram", "any") narrow it;
** opts.op ("connect", "sendto") names the op a lookup is made for.
*/
static int queue_resolve(lua_State *L) {
  static const char *const families[] = {"inet", "inet6", "any", NULL};
  static const int family_values[] = {AF_INET, AF_INET6, AF_UNSPEC};
  static const char *const types[] = {"stream", "dgram", "any", NULL};
  static const int type_values[] = {SOCK_STREAM, SOCK_DGRAM, 0};
  /* opts.op: the op a lookup is for, named in its messages and h.op (the
  ** Lua layer's s:connect and s:sendto resolve through here). */
  static const char *const ops[] = {"resolve", "connect", "sendto", NULL};
  static const int op_values[] = {0, 1, 2};
  int op;
  size_t len;
  const char *host = checkname(L, 2, "host", &len);
  lua_Integer port = luaL_optinteger(L, 3, 0);
  int family, socktype;
  resolve_call *c;
  luaL_argcheck(L, port >= 0 && port <= 65535, 3, "port must be in 0..65535");
  if (!lua_isnoneornil(L, 4))
    luaL_checktype(L, 4, LUA_TTABLE);
  family = checkopt(L, 4, "family", families, family_values, AF_UNSPEC);
  socktype = checkopt(L, 4, "socktype", types, type_values, SOCK_STREAM);
  op = checkopt(L, 4, "op", ops, op_values, 0);
  c = newcall(L, 4, sizeof *c + len, ops[op], resolve_run);
  c->opname = ops[op];
  c->base.push = resolve_push;
  c->base.release = resolve_release;
  c->family = family;
  c->socktype = socktype;
  c->port = (int)port;
  memcpy(c->host, host, len + 1);
  return commitcall(L, &c->base);
}

/* ---------------------------------------------------------------- names */

/*
** q:connect and q:sendto to a host name: one op, an IOQ_CALL named as the
** op, whose worker looks the name up, then connects (each address of the
** socket's family in turn, until one answers: the system's order, as
** getaddrinfo gives it) or sends to the first address. So neither the
** lookup nor the connect blocks the calling thread, and a cancel or a
** timeout ends the op at either step: the lookup when it returns (it
** cannot be interrupted), a wait for the connect at once (POSIX: the
** workers' signal interrupts poll; Windows: the pool's call cannot be
** interrupted, so it waits in short slices and asks between them).
**
** Why a call and not the engine's own connect after a q:resolve-like
** step: the handle would have to change its op while pending (a lookup,
** then a connect per address), which the engine, the backends' timeouts
** and h:cancel know nothing of; on the worker the whole op is one call,
** and its outcome is said exactly as the direct op says it.
*/

#ifdef _WIN32
/* How long a wait on the pool sleeps before it asks whether to stop. */
#define SLICE_US 20000
#endif

/* Waits until the socket fd is writable; *failed: a connect on it has
** failed (Windows says so apart). 0, or -errno (a cancel's, a timeout's). */
static int wait_writable(ioq_fd fd, int *failed) {
  for (;;) {
    int n, aborted;
#ifdef _WIN32
    fd_set w, e;
    struct timeval tv;
    FD_ZERO(&w);
    FD_ZERO(&e);
    FD_SET((SOCKET)fd, &w);
    FD_SET((SOCKET)fd, &e);
    tv.tv_sec = 0;
    tv.tv_usec = SLICE_US;
    n = select(0, NULL, &w, &e, &tv);
    if ((aborted = ioq_blocking_aborted()) != 0)
      return aborted;
    if (n < 0)
      return -ioq_sockerr();
    if (n > 0) {
      *failed = FD_ISSET((SOCKET)fd, &e) != 0;
      return 0;
    }
#else
    struct pollfd p;
    p.fd = fd;
    p.events = POLLOUT;
    p.revents = 0;
    n = poll(&p, 1, -1);  /* a cancel or a timeout interrupts it */
    if ((aborted = ioq_blocking_aborted()) != 0)
      return aborted;
    if (n < 0 && errno != EINTR)
      return -errno;
    if (n > 0) {
      *failed = 0;
      return 0;
    }
#endif
  }
}

/* Connects the socket to one address: 0, or -errno. */
static int connect_one(ioq_fd fd, const struct sockaddr *sa, uint32_t len) {
  int r, failed;
#ifdef _WIN32
  SOCKET s = (SOCKET)fd;
  u_long on = 1, off = 0;
  int err = 0, elen = sizeof err;
  if (ioctlsocket(s, FIONBIO, &on) != 0)
    return -ioq_sockerr();
  r = 0;
  if (connect(s, sa, (int)len) != 0) {
    if (WSAGetLastError() != WSAEWOULDBLOCK)
      r = -ioq_sockerr();
    else if ((r = wait_writable(fd, &failed)) == 0 && failed)
      r = getsockopt(s, SOL_SOCKET, SO_ERROR, (char *)&err, &elen) != 0
        ? -ioq_sockerr()
        : -ioq_win_errno((unsigned long)(err != 0 ? err : WSAECONNREFUSED));
  }
  /* Blocking again, as a new socket is: the backend's own calls that
  ** are not overlapped expect it. */
  ioctlsocket(s, FIONBIO, &off);
  return r;
#else
  if (connect(fd, sa, len) == 0)
    return 0;
  if (errno != EINPROGRESS && errno != EINTR)
    return -errno;
  for (;;) {
    if ((r = wait_writable(fd, &failed)) != 0)
      return r;
    /* Connecting again says how it went, and after a failure leaves the
    ** socket free for the next address (after SO_ERROR, Linux's next
    ** connect would fail with ECONNABORTED). */
    if (connect(fd, sa, len) == 0 || errno == EISCONN)
      return 0;
    if (errno != EALREADY && errno != EINPROGRESS && errno != EINTR)
      return -errno;
  }
#endif
}

/* Sends the datagram to one address: the byte count, or -errno. */
static int64_t send_one(resolve_call *c, const struct sockaddr *sa,
                        uint32_t len) {
  for (;;) {
    int r, failed, aborted;
#ifdef _WIN32
    int n = sendto((SOCKET)c->fd, c->data, (int)c->len, 0, sa, (int)len);
    if (n >= 0)
      return n;
    if (WSAGetLastError() != WSAEWOULDBLOCK)
      return -ioq_sockerr();
#else
    ssize_t n = sendto(c->fd, c->data, c->len, MSG_NOSIGNAL, sa, len);
    if (n >= 0)
      return n;
    if (errno == EINTR) {
      if ((aborted = ioq_blocking_aborted()) != 0)
        return aborted;
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return -errno;
#endif
    (void)aborted;
    if ((r = wait_writable(c->fd, &failed)) != 0)
      return r;
  }
}

/* On a worker: the lookup, then the connect or the sendto. */
static int64_t named_run(void *ctx) {
  resolve_call *c = ctx;
  int64_t r, last = 0;
  int aborted;
#ifdef _WIN32
  ADDRINFOW *ai;
#else
  struct addrinfo *ai;
#endif
  resolve_release(&c->base);  /* a run again after EINTR starts afresh */
  c->gai = 0;
  if ((r = resolve_run(c)) < 0)
    return r;
  for (ai = c->res; ai != NULL; ai = ai->ai_next) {
    struct sockaddr_storage ss;
    uint32_t len = (uint32_t)ai->ai_addrlen;
    if (ai->ai_family != c->family || len > sizeof ss)
      continue;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, len);
    /* sin_port and sin6_port lie at the same place. */
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)c->port);
    if (c->code == IOQ_SENDTO)
      return send_one(c, (struct sockaddr *)&ss, len);
    if ((r = connect_one(c->fd, (struct sockaddr *)&ss, len)) == 0)
      return 0;
    if ((aborted = ioq_blocking_aborted()) != 0)
      return aborted;
    last = r;  /* the last address's error is the op's */
  }
  if (last == 0) {  /* no address of the socket's family */
#ifdef _WIN32
    c->gai = WSAHOST_NOT_FOUND;
#else
    c->gai = EAI_NONAME;
#endif
    last = -ENOENT;
  }
  return last;
}

static int named_push(lua_State *L, lioq_call *base, int64_t res, int idx) {
  resolve_call *c = (resolve_call *)base;
  (void)idx;
  if (res < 0)
    return push_failure(L, c, res);
  if (c->code == IOQ_CONNECT)
    lua_pushboolean(L, 1);
  else
    lua_pushinteger(L, (lua_Integer)res);
  return 1;
}

void *lioq_named_new(lua_State *L, int code, int nargs, int hostarg) {
  size_t len;
  const char *host = lua_tolstring(L, hostarg, &len);
  lua_Integer port = lua_tointeger(L, hostarg + 1);
  const char *name = lioq_op_names[code];
  resolve_call *c = newcall(L, nargs, sizeof *c + len, name, named_run);
  c->opname = name;
  c->base.push = named_push;
  c->base.release = resolve_release;
  c->code = code;
  c->port = (int)port;
  c->fd = IOQ_NOFD;
  memcpy(c->host, host, len + 1);
  return c;
}

int lioq_named_commit(lua_State *L, void *call, const void *data,
                      uint32_t len, lioq_block *block) {
  resolve_call *c = call;
  lhandle *h = lua_touserdata(L, -1);
  lioq_file *s;
  luaL_argcheck(L, h->q->backend != NULL, 1, "queue is closed");
  s = lioq_checkopen(L, 2, TAG_SOCKET);
  lua_pushvalue(L, 2);  /* the handle keeps the socket */
  lua_setiuservalue(L, -2, HVAL_FD);
  h->op.fd = s->fd;
  c->fd = s->fd;
  c->family = s->family;
  c->socktype = s->type;
  c->data = data;
  c->len = len;
  return commitcall_on(L, &c->base, block, 2);
}

/* ---------------------------------------------------------------- directories */

/*
** An open directory: an ioq.dir holds one reference, and each op on it
** one while it is pending (one at a time: `busy`). It is closed when the
** last goes, so never under a worker reading it.
*/
typedef struct dirstream {
  size_t refs;
  int busy;                /* an op reads it */
  int closed;              /* the ioq.dir let go of it */
  int eof;
#ifdef _WIN32
  HANDLE find;             /* INVALID_HANDLE_VALUE: none */
  WIN32_FIND_DATAW next;   /* the entry found but not yet given */
  int has_next;
#else
  DIR *d;
#endif
} dirstream;

static void dir_unref(dirstream *ds) {
  if (--ds->refs > 0)
    return;
#ifdef _WIN32
  if (ds->find != INVALID_HANDLE_VALUE)
    FindClose(ds->find);
#else
  if (ds->d != NULL)
    closedir(ds->d);
#endif
  free(ds);
}

/* Kinds of entry, as the byte before each name in a batch. */
static const char *const kinds[] = {
  "unknown", "file", "directory", "link", "fifo", "socket", "char", "block"
};
enum { K_UNKNOWN, K_FILE, K_DIR, K_LINK, K_FIFO, K_SOCKET, K_CHAR, K_BLOCK };

typedef struct dir_call {
  lioq_call base;
  dirstream *ds;           /* the stream read (and held), or NULL */
  int open_only;           /* q:opendir: open it, read nothing */
  int own;                 /* ds is the call's own (a path): closed as
                              soon as the op ends */
  size_t max;              /* entries wanted at most (0: every one) */
  char *out;               /* entries: kind byte, name, NUL; each after
                              the last */
  size_t outlen, outcap;
  char path[1];
} dir_call;

/* Adds an entry to the batch; 0 if out of memory. */
static int add_entry(dir_call *c, int kind, const char *name, size_t len) {
  if (c->outlen + len + 2 > c->outcap) {
    size_t cap = c->outcap ? c->outcap * 2 : 4096;
    char *p;
    while (cap < c->outlen + len + 2) cap *= 2;
    if ((p = realloc(c->out, cap)) == NULL)
      return 0;
    c->out = p;
    c->outcap = cap;
  }
  c->out[c->outlen++] = (char)kind;
  memcpy(c->out + c->outlen, name, len + 1);
  c->outlen += len + 1;
  return 1;
}

static int is_dots(const char *name) {
  return name[0] == '.' && (name[1] == '\0' ||
                            (name[1] == '.' && name[2] == '\0'));
}

#ifdef _WIN32

/* A name from Windows, as UTF-8, added to the batch. */
static int add_wide(dir_call *c, const WIN32_FIND_DATAW *fd) {
  char name[MAX_PATH * 4];
  int kind = (fd->dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) ? K_LINK
           : (fd->dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) ? K_DIR
           : K_FILE;
  int n = WideCharToMultiByte(CP_UTF8, 0, fd->cFileName, -1, name,
                              sizeof name, NULL, NULL);
  if (n <= 0 || is_dots(name))
    return 1;
  return add_entry(c, kind, name, (size_t)n - 1);
}

static int dir_open(dir_call *c) {
  dirstream *ds = c->ds;
  size_t len = strlen(c->path);
  int n;
  wchar_t *w;
  DWORD attrs;
  char *pattern = malloc(len + 3);
  if (pattern == NULL)
    return -ENOMEM;
  memcpy(pattern, c->path, len);
  if (len > 0 && c->path[len - 1] != '/' && c->path[len - 1] != '\\')
    pattern[len++] = '\\';
  pattern[len++] = '*';
  pattern[len] = '\0';
  n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, pattern, -1, NULL, 0);
  w = n > 0 ? malloc((size_t)n * sizeof *w) : NULL;
  if (w == NULL) {
    free(pattern);
    return n > 0 ? -ENOMEM : -EINVAL;
  }
  MultiByteToWideChar(CP_UTF8, 0, pattern, -1, w, n);
  free(pattern);
  ds->find = FindFirstFileExW(w, FindExInfoBasic, &ds->next,
                              FindExSearchNameMatch, NULL, 0);
  free(w);
  if (ds->find == INVALID_HANDLE_VALUE) {
    DWORD err = GetLastError();
    if (err == ERROR_FILE_NOT_FOUND) {  /* no entry: a file, or empty */
      ds->eof = 1;
      return 0;
    }
    /* A path to a file is "not a directory", as on POSIX systems. */
    n = MultiByteToWideChar(CP_UTF8, 0, c->path, -1, NULL, 0);
    if (err == ERROR_DIRECTORY || err == ERROR_INVALID_NAME ||
        err == ERROR_PATH_NOT_FOUND) {
      w = n > 0 ? malloc((size_t)n * sizeof *w) : NULL;
      if (w != NULL) {
        MultiByteToWideChar(CP_UTF8, 0, c->path, -1, w, n);
        attrs = GetFileAttributesW(w);
        free(w);
        if (attrs != INVALID_FILE_ATTRIBUTES &&
            !(attrs & FILE_ATTRIBUTE_DIRECTORY))
          return -ENOTDIR;
      }
    }
    return -ioq_win_errno(err);
  }
  ds->has_next = 1;
  return 0;
}

static int dir_read(dir_call *c) {
  dirstream *ds = c->ds;
  size_t count = 0;
  while (!ds->eof && (c->max == 0 || count < c->max)) {
    if (!ds->has_next) {
      if (!FindNextFileW(ds->find, &ds->next)) {
        DWORD err = GetLastError();
        if (err != ERROR_NO_MORE_FILES)
          return -ioq_win_errno(err);
        ds->eof = 1;
        break;
      }
    }
    ds->has_next = 0;
    if (!add_wide(c, &ds->next))
      return -ENOMEM;
    count++;
    if (count % 256 == 0 && ioq_blocking_aborted())
      return ioq_blocking_aborted();
  }
  return 0;
}

#else

/* The kind of an entry whose d_type says nothing (some file systems). */
static int kind_of_stat(DIR *d, const char *name) {
  struct stat st;
  if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return K_UNKNOWN;
  switch (st.st_mode & S_IFMT) {
    case S_IFREG: return K_FILE;
    case S_IFDIR: return K_DIR;
    case S_IFLNK: return K_LINK;
    case S_IFIFO: return K_FIFO;
    case S_IFSOCK: return K_SOCKET;
    case S_IFCHR: return K_CHAR;
    case S_IFBLK: return K_BLOCK;
    default: return K_UNKNOWN;
  }
}

static int kind_of(DIR *d, const struct dirent *e) {
  switch (e->d_type) {
    case DT_REG: return K_FILE;
    case DT_DIR: return K_DIR;
    case DT_LNK: return K_LINK;
    case DT_FIFO: return K_FIFO;
    case DT_SOCK: return K_SOCKET;
    case DT_CHR: return K_CHAR;
    case DT_BLK: return K_BLOCK;
    default: return kind_of_stat(d, e->d_name);
  }
}

static int dir_open(dir_call *c) {
  if (c->ds->d != NULL)  /* a call made again after EINTR: opened already */
    return 0;
  /* O_CLOEXEC through opendir's own open (glibc and musl set it). */
  if ((c->ds->d = opendir(c->path)) == NULL)
    return -errno;
  return 0;
}

static int dir_read(dir_call *c) {
  dirstream *ds = c->ds;
  size_t count = 0;
  while (c->max == 0 || count < c->max) {
    struct dirent *e;
    errno = 0;
    if ((e = readdir(ds->d)) == NULL) {
      if (errno != 0)
        return -errno;
      ds->eof = 1;
      break;
    }
    if (is_dots(e->d_name))
      continue;
    if (!add_entry(c, kind_of(ds->d, e), e->d_name, strlen(e->d_name)))
      return -ENOMEM;
    /* A long listing stops early when a cancel or a timeout asks. */
    if (++count % 256 == 0 && ioq_blocking_aborted())
      return ioq_blocking_aborted();
  }
  return 0;
}

#endif

/* On a worker: opens the directory if the call has to, then reads the
** batch. The entry count, or -errno. */
static int64_t dir_run(void *ctx) {
  dir_call *c = ctx;
  int r, aborted;
  size_t n = 0, i;
  if (c->path[0] != '\0' && (r = dir_open(c)) != 0)  /* not an ioq.dir's */
    return r;
  if (!c->open_only && (r = dir_read(c)) != 0)
    return r;
  if ((aborted = ioq_blocking_aborted()) != 0)
    return aborted;
  for (i = 0; i < c->outlen; i += strlen(c->out + i + 1) + 2)
    n++;
  return (int64_t)n;
}

/* The op has ended: the stream may take the next op. */
static void dir_settle(lioq_call *base) {
  dir_call *c = (dir_call *)base;
  if (c->ds == NULL)
    return;
  c->ds->busy = 0;
  if (c->own) {  /* not when the handle goes: its descriptor is needed no more */
    dir_unref(c->ds);
    c->ds = NULL;
  }
}

static void dir_release(lioq_call *base) {
  dir_call *c = (dir_call *)base;
  free(c->out);
  c->out = NULL;
  if (c->ds != NULL)
    dir_unref(c->ds);
  c->ds = NULL;
}

static int dir_push(lua_State *L, lioq_call *base, int64_t res, int idx) {
  dir_call *c = (dir_call *)base;
  size_t i;
  lua_Integer k = 0;
  if (res < 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s%s%s", c->open_only ? "opendir" : "readdir",
                    c->path, c->path[0] ? ": " : "", ioq_strerror((int)-res));
    lua_pushinteger(L, -res);
    return 3;
  }
  if (c->open_only) {
    lua_getiuservalue(L, idx, HVAL_RESULT);  /* the ioq.dir */
    return 1;
  }
  lua_createtable(L, (int)res, 0);
  for (i = 0; i < c->outlen; ) {
    size_t len = strlen(c->out + i + 1);
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, c->out + i + 1, len);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, kinds[(unsigned char)c->out[i]]);
    lua_setfield(L, -2, "type");
    lua_rawseti(L, -2, ++k);
    i += len + 2;
  }
  return 1;
}

/* The ioq.dir at `arg`: its stream, open and idle. */
static dirstream **checkdir(lua_State *L, int arg) {
  dirstream **dp = luaL_checkudata(L, arg, LIOQ_DIR);
  luaL_argcheck(L, *dp != NULL, arg, "directory is closed");
  luaL_argcheck(L, !(*dp)->busy, arg,
                "directory in use by a pending operation");
  return dp;
}

/* d:close(), __close, __gc: lets go of the stream (closed once no op
** reads it). */
static int dir_close(lua_State *L) {
  dirstream **dp = luaL_checkudata(L, 1, LIOQ_DIR);
  if (*dp != NULL) {
    dirstream *ds = *dp;
    *dp = NULL;
    ds->closed = 1;
    dir_unref(ds);
  }
  return 0;
}

static int dir_repr(lua_State *L) {
  dirstream **dp = luaL_checkudata(L, 1, LIOQ_DIR);
  lua_pushfstring(L, "ioq.dir (%s): %p", *dp ? "open" : "closed", (void *)dp);
  return 1;
}

/* A new ioq.dir with its stream, not yet open, on top; the stream. */
static dirstream *newdir(lua_State *L) {
  dirstream **dp = lua_newuserdatauv(L, sizeof *dp, 0);
  *dp = NULL;
  if (luaL_newmetatable(L, LIOQ_DIR)) {
    static const luaL_Reg meta[] = {
      {"__gc", dir_close}, {"__close", dir_close}, {"__tostring", dir_repr},
      {NULL, NULL}
    };
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    lua_pushcfunction(L, dir_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  if ((*dp = calloc(1, sizeof **dp)) == NULL)
    luaL_error(L, "not enough memory");
  (*dp)->refs = 1;
#ifdef _WIN32
  (*dp)->find = INVALID_HANDLE_VALUE;
#endif
  return *dp;
}

/*
** q:opendir(path): resolves to an ioq.dir, which q:readdir reads in
** batches; d:close() (or the collector) closes it.
*/
static int queue_opendir(lua_State *L) {
  size_t len;
  const char *path = checkname(L, 2, "path", &len);
  dir_call *c;
  dirstream *ds;
  c = newcall(L, 2, sizeof *c + len, "opendir", dir_run);
  ds = newdir(L);
  lua_setiuservalue(L, -2, HVAL_RESULT);
  c->base.push = dir_push;
  c->base.settle = dir_settle;
  c->base.release = dir_release;
  c->open_only = 1;
  memcpy(c->path, path, len + 1);
  ds->refs++;  /* the call's */
  c->ds = ds;
  commitcall(L, &c->base);
  ds->busy = 1;
  return 1;
}

/*
** q:readdir(path or dir [, max]): resolves to an array of entries, {name =,
** type = "file"|"directory"|"link"|"fifo"|"socket"|"char"|"block"|
** "unknown"}, without "." and "..", in the order the system lists them.
** With a path, the whole directory (max entries at most); with an ioq.dir
** from q:opendir, the next batch of up to max (default 256) entries, and
** an empty array at the end.
*/
static int queue_readdir(lua_State *L) {
  dirstream **dp = NULL;
  size_t len = 0;
  const char *path = NULL;
  lua_Integer max;
  dir_call *c;
  if (lua_type(L, 2) == LUA_TUSERDATA)
    checkdir(L, 2);
  else
    path = checkname(L, 2, "path", &len);
  max = luaL_optinteger(L, 3, path != NULL ? 0 : 256);
  luaL_argcheck(L, max >= 0, 3, "max must be non-negative");
  luaL_argcheck(L, max > 0 || path != NULL, 3, "max must be positive");
  c = newcall(L, 3, sizeof *c + len, "readdir", dir_run);
  c->base.push = dir_push;
  c->base.settle = dir_settle;
  c->base.release = dir_release;
  c->max = (size_t)max;
  if (path != NULL) {
    memcpy(c->path, path, len + 1);
    /* A private stream, closed with the call. */
    if ((c->ds = calloc(1, sizeof *c->ds)) == NULL)
      return luaL_error(L, "not enough memory");
    c->ds->refs = 1;
    c->own = 1;
#ifdef _WIN32
    c->ds->find = INVALID_HANDLE_VALUE;
#endif
  } else {
    dp = checkdir(L, 2);  /* again: an allocation may have run a finalizer */
    lua_pushvalue(L, 2);  /* the handle keeps the ioq.dir */
    lua_setiuservalue(L, -2, HVAL_RESULT);
    c->ds = *dp;
    c->ds->refs++;
  }
  commitcall(L, &c->base);
  c->ds->busy = 1;
  return 1;
}

const luaL_Reg lioq_call_methods[] = {
  {"resolve", queue_resolve},
  {"opendir", queue_opendir},
  {"readdir", queue_readdir},
  {NULL, NULL}
};
