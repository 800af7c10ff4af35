/*
** lioq_socket.c: ioq.socket objects (non-blocking, close-on-exec sockets),
** their synchronous setup calls (bind, listen, options...), and the one
** place that turns a (host, port) or a path into a socket address.
**
** Only setup lives here; the I/O (accept, connect, recv, send...) is an op
** on a queue, in lioq_ops.c. Uses lioq_file.c (a socket is a file object
** with a family), lioq_util.c and ioq_os.h; knows nothing of queues.
*/
#include <errno.h>
#include <string.h>

#include "lioq.h"

#ifdef _WIN32
#include <afunix.h>
#endif

static const struct {
  const char *name;
  int family, type;
} kinds[] = {
  {"tcp", AF_INET, SOCK_STREAM},
  {"tcp6", AF_INET6, SOCK_STREAM},
  {"udp", AF_INET, SOCK_DGRAM},
  {"udp6", AF_INET6, SOCK_DGRAM},
  {"unix", AF_UNIX, SOCK_STREAM},
  {"unix-dgram", AF_UNIX, SOCK_DGRAM},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

static const char *kind_name(const lioq_file *s) {
  size_t i;
  for (i = 0; i < NKINDS; i++)
    if (kinds[i].family == s->family && kinds[i].type == s->type)
      return kinds[i].name;
  return "?";
}

static int checkkind(lua_State *L, int arg, const char *dflt) {
  const char *name = luaL_optstring(L, arg, dflt);
  size_t i;
  for (i = 0; i < NKINDS; i++)
    if (strcmp(kinds[i].name, name) == 0)
      return (int)i;
  return luaL_argerror(L, arg, lua_pushfstring(L,
    "unknown socket kind '%s' (tcp, tcp6, udp, udp6, unix, unix-dgram)", name));
}

/* Pushes a socket object in the closed state (see lioq_file_prepare). */
lioq_file *lioq_socket_prepare(lua_State *L, int family, int type) {
  lioq_file *s = lua_newuserdatauv(L, sizeof *s, 0);
  lioq_file_init(s, family, type);
  luaL_setmetatable(L, LIOQ_SOCKET);
  return s;
}

/*
** A new socket: non-blocking and close-on-exec on POSIX systems, where the
** queue's backends need readiness; overlapped and not inheritable on
** Windows, where IOCP needs overlapped handles. 0 or -errno.
*/
static int new_socket(int family, int type, ioq_fd *out) {
#ifdef _WIN32
  SOCKET fd;
  int err = ioq_win_startup();
  if (err != 0)
    return -err;
  fd = WSASocketW(family, type, 0, NULL, 0,
                  WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  if (fd == INVALID_SOCKET)
    return -ioq_sockerr();
  *out = (ioq_fd)fd;
#else
  int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  *out = fd;
#endif
  return 0;
}

/* ioq.socket(kind): a new socket, or fail, msg, errno (EMFILE...). */
int lioq_socket_new(lua_State *L) {
  int k = checkkind(L, 1, "tcp");
  lioq_file *s = lioq_socket_prepare(L, kinds[k].family, kinds[k].type);
  int err = new_socket(kinds[k].family, kinds[k].type, &s->fd);
  if (err != 0)
    return lioq_fail(L, "socket", -err);
  return 1;
}

#ifdef _WIN32
/*
** Windows has no socketpair: connect two loopback sockets of `type`
** instead (TCP through a listener that lives only for this; UDP by
** connecting each to the other's address). 0 or -errno; on failure
** nothing stays open.
*/
static int loopback_pair(int type, ioq_fd fds[2]) {
  struct sockaddr_in addr[2];
  IOQ_SOCKLEN len = sizeof addr[0];
  ioq_fd lst = IOQ_NOFD;
  int err, i;
  fds[0] = fds[1] = IOQ_NOFD;
  memset(addr, 0, sizeof addr);
  addr[0].sin_family = AF_INET;
  addr[0].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (type == SOCK_DGRAM) {
    for (i = 0; i < 2; i++) {
      len = sizeof addr[i];
      addr[i] = addr[0];
      addr[i].sin_port = 0;
      if ((err = new_socket(AF_INET, SOCK_DGRAM, &fds[i])) != 0)
        goto fail;
      if (bind((SOCKET)fds[i], (struct sockaddr *)&addr[i], len) != 0 ||
          getsockname((SOCKET)fds[i], (struct sockaddr *)&addr[i], &len) != 0)
        goto sockfail;
    }
    for (i = 0; i < 2; i++)
      if (connect((SOCKET)fds[i], (struct sockaddr *)&addr[1 - i],
                  sizeof addr[0]) != 0)
        goto sockfail;
    return 0;
  }
  if ((err = new_socket(AF_INET, SOCK_STREAM, &lst)) != 0 ||
      (err = new_socket(AF_INET, SOCK_STREAM, &fds[0])) != 0)
    goto fail;
  if (bind((SOCKET)lst, (struct sockaddr *)&addr[0], len) != 0 ||
      getsockname((SOCKET)lst, (struct sockaddr *)&addr[0], &len) != 0 ||
      listen((SOCKET)lst, 1) != 0 ||
      connect((SOCKET)fds[0], (struct sockaddr *)&addr[0], len) != 0)
    goto sockfail;
  /* The listener is ours alone, so the one connection is the right one. */
  fds[1] = (ioq_fd)accept((SOCKET)lst, NULL, NULL);
  if ((SOCKET)fds[1] == INVALID_SOCKET) {
    fds[1] = IOQ_NOFD;
    goto sockfail;
  }
  ioq_close(lst, 1);
  return 0;
sockfail:
  err = -ioq_sockerr();
fail:
  for (i = 0; i < 2; i++)
    if (fds[i] != IOQ_NOFD)
      ioq_close(fds[i], 1);
  if (lst != IOQ_NOFD)
    ioq_close(lst, 1);
  return err;
}
#endif

/*
** ioq.socketpair([kind]): two connected sockets, "unix" (the default) or
** "unix-dgram". Windows has no socketpair, so there the pair is two
** loopback sockets, TCP or UDP, connected to each other.
*/
int lioq_socketpair(lua_State *L) {
  int k = checkkind(L, 1, "unix");
  ioq_fd fds[2];
  int err, family = AF_UNIX;
  lioq_file *a, *b;
  luaL_argcheck(L, kinds[k].family == AF_UNIX, 1,
                "a socket pair is \"unix\" or \"unix-dgram\"");
#ifdef _WIN32
  family = AF_INET;
#endif
  a = lioq_socket_prepare(L, family, kinds[k].type);
  b = lioq_socket_prepare(L, family, kinds[k].type);
#ifdef _WIN32
  err = loopback_pair(kinds[k].type, fds);
#else
  {
    int sv[2];
    err = socketpair(AF_UNIX, kinds[k].type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                     sv) == 0 ? 0 : -errno;
    fds[0] = sv[0];
    fds[1] = sv[1];
  }
#endif
  if (err != 0)
    return lioq_fail(L, "socketpair", -err);
  a->fd = fds[0];
  b->fd = fds[1];
  return 2;
}

static lioq_file *checksocket(lua_State *L, int arg) {
  return lioq_checkopen(L, arg, TAG_SOCKET);
}

/*
** The errno a failed name lookup resolves to: lookups have codes of their
** own (EAI_*), which are not errno values, so each maps to the errno that
** says the same: no such name (EAI_NONAME, EAI_NODATA, EAI_FAIL) is
** ENOENT, a lookup to try again later is EAGAIN, no memory ENOMEM, an
** address family it cannot do EAFNOSUPPORT; a system error is its errno.
*/
int lioq_lookup_errno(int r) {
  switch (r) {
#ifdef EAI_SYSTEM
    case EAI_SYSTEM: return errno != 0 ? errno : EIO;
#endif
    case EAI_AGAIN: return EAGAIN;
    case EAI_MEMORY: return ENOMEM;
    case EAI_FAMILY: return EAFNOSUPPORT;
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY: return ENOENT;
#endif
#ifdef EAI_NODATA
#if EAI_NODATA != EAI_NONAME
    case EAI_NODATA: return ENOENT;
#endif
#endif
    case EAI_NONAME: case EAI_FAIL: return ENOENT;
    default: return EINVAL;
  }
}

/* toaddr's answer for a host name when it may not look it up. */
#define ADDR_NAME 1

/*
** The address of `host` for `family` without a lookup: "*" or "" (any),
** "localhost" (the loopback address), or a numeric address, an IPv6 one
** with a scope ("fe80::1%eth0") too: getaddrinfo with AI_NUMERICHOST
** parses it and never asks the network. 1 when it is one of those, 0 for a
** name (*ss then holds the family and port).
*/
static int numeric_addr(int family, const char *host, size_t hlen,
                        struct sockaddr_storage *ss, uint32_t *len) {
  struct addrinfo hints, *res = NULL;
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    *len = sizeof *in;
    if (hlen == 0 || strcmp(host, "*") == 0)
      in->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
      in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
      goto scoped;
    return 1;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    *len = sizeof *in6;
    if (hlen == 0 || strcmp(host, "*") == 0)
      ;  /* the any address, ::, is all zeros */
    else if (strcmp(host, "localhost") == 0)
      in6->sin6_addr.s6_addr[15] = 1;  /* ::1 */
    else if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
      goto scoped;
    return 1;
  }
scoped:
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  hints.ai_flags = AI_NUMERICHOST;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
    return 0;
  if (res->ai_addrlen <= sizeof *ss) {
    uint16_t port = ((struct sockaddr_in *)ss)->sin_port;  /* the same
                                                  place in sockaddr_in6 */
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = (uint32_t)res->ai_addrlen;
    ((struct sockaddr_in *)ss)->sin_port = port;
  }
  freeaddrinfo(res);
  return 1;
}

/*
** Fills *ss with the address for a socket of `family`: for AF_UNIX the path
** at hostarg (a leading '@' names an abstract socket); otherwise the host at
** hostarg (see numeric_addr, or a name) and the port at portarg. Bad
** arguments raise. A name is looked up when `lookup` is set, on this
** thread (getaddrinfo blocks): 0, or for a name that does not resolve,
** -errno with the message pushed (the caller turns it into fail, msg,
** errno). Without `lookup` a name gives ADDR_NAME.
*/
static int toaddr(lua_State *L, int family, int hostarg, int portarg,
                  struct sockaddr_storage *ss, uint32_t *len, int lookup) {
  size_t hlen;
  const char *host = luaL_checklstring(L, hostarg, &hlen);
  lua_Integer port;
  memset(ss, 0, sizeof *ss);
  /* A name is a C string below: "127.0.0.1\0junk" must not pass for
  ** 127.0.0.1. */
  luaL_argcheck(L, strlen(host) == hlen, hostarg,
                family == AF_UNIX ? "path contains a zero byte"
                                  : "host contains a zero byte");
  if (family == AF_UNIX) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    luaL_argcheck(L, hlen > 0 && hlen < sizeof un->sun_path, hostarg,
                  "socket path empty or too long");
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, host, hlen);
    if (host[0] == '@')
      un->sun_path[0] = '\0';
    *len = (uint32_t)(offsetof(struct sockaddr_un, sun_path) + hlen +
                      (host[0] == '@' ? 0 : 1));
    return 0;
  }
  port = luaL_checkinteger(L, portarg);
  luaL_argcheck(L, port >= 0 && port <= 65535, portarg,
                "port must be in 0..65535");
  /* sin_port and sin6_port lie at the same place. */
  ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  if (numeric_addr(family, host, hlen, ss, len))
    return 0;
  if (!lookup)
    return ADDR_NAME;
  {
    struct addrinfo hints, *res = NULL;
    int r;
    uint16_t nport = htons((uint16_t)port);
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_flags = AI_ADDRCONFIG;
    r = getaddrinfo(host, NULL, &hints, &res);
    if (r != 0 || res == NULL) {
      int err = lioq_lookup_errno(r);
#ifdef EAI_SYSTEM
      if (r == EAI_SYSTEM)
        lua_pushfstring(L, "cannot resolve '%s': %s", host, strerror(err));
      else
#endif
      lua_pushfstring(L, "cannot resolve '%s': %s", host, gai_strerror(r));
      return -err;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = (uint32_t)res->ai_addrlen;
    ((struct sockaddr_in *)ss)->sin_port = nport;
    freeaddrinfo(res);
    return 0;
  }
}

/* The address (see toaddr), a name looked up on this thread: s:bind's. */
int lioq_toaddr(lua_State *L, int family, int hostarg, int portarg,
                struct sockaddr_storage *ss, uint32_t *len) {
  return toaddr(L, family, hostarg, portarg, ss, len, 1);
}

/*
** Whether the host at hostarg is a name a socket of `family` has to look
** up (q:connect and q:sendto then make an op that looks it up on a worker
** thread, lioq_call.c). Raises for a bad host or port as lioq_toaddr does;
** 0 for any other argument, which lioq_toaddr then names.
*/
int lioq_addr_is_name(lua_State *L, int family, int hostarg, int portarg) {
  struct sockaddr_storage ss;
  uint32_t len;
  if (family == AF_UNIX || lua_type(L, hostarg) != LUA_TSTRING)
    return 0;
  return toaddr(L, family, hostarg, portarg, &ss, &len, 0) == ADDR_NAME;
}

/* Pushes an address as host, port (2 values) or a Unix path (1 value). */
int lioq_pushaddr(lua_State *L, const struct sockaddr_storage *ss,
                  uint32_t len) {
  char text[INET6_ADDRSTRLEN];
  switch (ss->ss_family) {
    case AF_INET: {
      const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
      inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
      lua_pushstring(L, text);
      lua_pushinteger(L, ntohs(in->sin_port));
      return 2;
    }
    case AF_INET6: {
      const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
      inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
      lua_pushstring(L, text);
      lua_pushinteger(L, ntohs(in6->sin6_port));
      return 2;
    }
    case AF_UNIX: {
      const struct sockaddr_un *un = (const struct sockaddr_un *)ss;
      size_t n = len > offsetof(struct sockaddr_un, sun_path)
               ? len - offsetof(struct sockaddr_un, sun_path) : 0;
      if (n > 0 && un->sun_path[0] == '\0') {  /* abstract: '@name' */
        lua_pushliteral(L, "@");
        lua_pushlstring(L, un->sun_path + 1, n - 1);
        lua_concat(L, 2);
      } else {
        lua_pushstring(L, n > 0 ? un->sun_path : "");
      }
      return 1;
    }
    default:
      lua_pushnil(L);
      return 1;
  }
}

/* s:bind(host, port) or s:bind(path): true, or fail, msg, errno. */
static int socket_bind(lua_State *L) {
  lioq_file *s = checksocket(L, 1);
  struct sockaddr_storage ss;
  uint32_t len;
  int err = lioq_toaddr(L, s->family, 2, 3, &ss, &len);
  if (err != 0) {
    luaL_pushfail(L);
    lua_pushfstring(L, "bind: %s", lua_tostring(L, -2));
    lua_pushinteger(L, -err);
    return 3;
  }
  if (bind(s->fd, (struct sockaddr *)&ss, (IOQ_SOCKLEN)len) != 0)
    return lioq_fail(L, "bind", ioq_sockerr());
  lua_pushboolean(L, 1);
  return 1;
}

/* s:listen([backlog]) */
static int socket_listen(lua_State *L) {
  lioq_file *s = checksocket(L, 1);
  lua_Integer backlog = luaL_optinteger(L, 2, SOMAXCONN);
  luaL_argcheck(L, backlog >= 0 && backlog <= 0x7fffffff, 2,
                "backlog must be a non-negative integer");
  if (listen(s->fd, (int)backlog) != 0)
    return lioq_fail(L, "listen", ioq_sockerr());
  lua_pushboolean(L, 1);
  return 1;
}

static int getname(lua_State *L, int peer) {
  lioq_file *s = checksocket(L, 1);
  struct sockaddr_storage ss;
  IOQ_SOCKLEN len = sizeof ss;
  int r = peer ? getpeername(s->fd, (struct sockaddr *)&ss, &len)
               : getsockname(s->fd, (struct sockaddr *)&ss, &len);
  if (r != 0)
    return lioq_fail(L, peer ? "getpeername" : "getsockname", ioq_sockerr());
  return lioq_pushaddr(L, &ss, (uint32_t)len);
}

/* s:getsockname(): host, port (or the Unix path). */
static int socket_getsockname(lua_State *L) {
  return getname(L, 0);
}

/* s:getpeername(): host, port (or the Unix path) of the peer. */
static int socket_getpeername(lua_State *L) {
  return getname(L, 1);
}

/*
** Level NO_OPTION: a name ioq knows everywhere, for an option this system
** lacks; setting it fails with EOPNOTSUPP (a script can test for that; it
** cannot know in advance, so it is not a misuse to raise for). Windows has
** no SO_REUSEPORT, and its SO_REUSEADDR is not a stand-in: it lets any
** socket take over a port already bound, with no sharing of the load.
*/
#define NO_OPTION (-1)

static const struct {
  const char *name;
  int level, opt;
  int is_bool;
} options[] = {
  {"reuseaddr", SOL_SOCKET, SO_REUSEADDR, 1},
#ifdef SO_REUSEPORT
  {"reuseport", SOL_SOCKET, SO_REUSEPORT, 1},
#else
  {"reuseport", NO_OPTION, 0, 1},
#endif
  {"keepalive", SOL_SOCKET, SO_KEEPALIVE, 1},
  {"broadcast", SOL_SOCKET, SO_BROADCAST, 1},
  {"rcvbuf", SOL_SOCKET, SO_RCVBUF, 0},
  {"sndbuf", SOL_SOCKET, SO_SNDBUF, 0},
  {"nodelay", IPPROTO_TCP, TCP_NODELAY, 1},
  {"ipv6only", IPPROTO_IPV6, IPV6_V6ONLY, 1},
};

/* s:setoption(name, value): true, or fail, msg, errno. */
static int socket_setoption(lua_State *L) {
  lioq_file *s = checksocket(L, 1);
  const char *name = luaL_checkstring(L, 2);
  size_t i;
  int value;
  for (i = 0; i < sizeof options / sizeof options[0]; i++)
    if (strcmp(options[i].name, name) == 0)
      break;
  if (i == sizeof options / sizeof options[0]) {
    if (strcmp(name, "linger") == 0) {  /* seconds, or false for off */
      struct linger lg;
      lua_Integer secs = lua_toboolean(L, 3) ? luaL_checkinteger(L, 3) : 0;
      luaL_argcheck(L, secs >= 0 && secs <= 65535, 3,
                    "seconds must be in 0..65535");
      lg.l_onoff = lua_toboolean(L, 3);
      lg.l_linger = (int)secs;
      if (setsockopt(s->fd, SOL_SOCKET, SO_LINGER, (const char *)&lg,
                     sizeof lg) != 0)
        return lioq_fail(L, "setoption", ioq_sockerr());
      lua_pushboolean(L, 1);
      return 1;
    }
    return luaL_argerror(L, 2, lua_pushfstring(L, "unknown option '%s'", name));
  }
  if (options[i].is_bool) {
    luaL_checktype(L, 3, LUA_TBOOLEAN);
    value = lua_toboolean(L, 3);
  } else {
    lua_Integer n = luaL_checkinteger(L, 3);
    luaL_argcheck(L, n >= 0 && n <= 0x7fffffff, 3,
                  "value must be a non-negative integer");
    value = (int)n;
  }
  if (options[i].level == NO_OPTION)
    return lioq_fail(L, "setoption", EOPNOTSUPP);
  if (setsockopt(s->fd, options[i].level, options[i].opt,
                 (const char *)&value, sizeof value) != 0)
    return lioq_fail(L, "setoption", ioq_sockerr());
  lua_pushboolean(L, 1);
  return 1;
}

/* "r", "w" or "rw" (also "read", "write", "both") as SHUT_*. */
int lioq_checkhow(lua_State *L, int arg) {
  static const char *const names[] = {"r", "w", "rw", "read", "write",
                                      "both", NULL};
  static const int how[] = {SHUT_RD, SHUT_WR, SHUT_RDWR, SHUT_RD, SHUT_WR,
                            SHUT_RDWR};
  return how[luaL_checkoption(L, arg, "rw", names)];
}

/* s:shutdown([how]) */
static int socket_shutdown(lua_State *L) {
  lioq_file *s = checksocket(L, 1);
  if (shutdown(s->fd, lioq_checkhow(L, 2)) != 0)
    return lioq_fail(L, "shutdown", ioq_sockerr());
  lua_pushboolean(L, 1);
  return 1;
}

/* s:close(): true, or fail, msg, errno. */
static int socket_close(lua_State *L) {
  return lioq_closefd(L, checksocket(L, 1));
}

/* __gc and __close: close quietly, and only once. */
static int socket_gc(lua_State *L) {
  lioq_dropfd(lioq_checkudata(L, 1, TAG_SOCKET));
  return 0;
}

static int socket_fileno(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checksocket(L, 1)->fd);
  return 1;
}

/* s:kind(): "tcp", "udp6", "unix"... as ioq.socket() took it. */
static int socket_kind(lua_State *L) {
  lua_pushstring(L, kind_name(lioq_checkudata(L, 1, TAG_SOCKET)));
  return 1;
}

static int socket_repr(lua_State *L) {
  lioq_file *s = lioq_checkudata(L, 1, TAG_SOCKET);
  if (s->fd == IOQ_NOFD)
    lua_pushfstring(L, "ioq.socket (%s, closed)", kind_name(s));
  else
    lua_pushfstring(L, "ioq.socket (%s, fd %I)", kind_name(s),
                    (lua_Integer)s->fd);
  return 1;
}

void lioq_open_socket(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"bind", socket_bind},
    {"listen", socket_listen},
    {"getsockname", socket_getsockname},
    {"getpeername", socket_getpeername},
    {"setoption", socket_setoption},
    {"shutdown", socket_shutdown},
    {"close", socket_close},
    {"fileno", socket_fileno},
    {"kind", socket_kind},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__tostring", socket_repr},
    {"__close", socket_gc},
    {"__gc", socket_gc},
    {NULL, NULL}
  };
  lioq_newclass(L, TAG_SOCKET, methods, meta);
}
