/*
** lioq_stream.c: what ioq.stream (lua/ioq/stream.lua) needs in C besides
** the queue's ops. POSIX only: on Windows core.try_send is absent and a
** stream queues every write.
**
** Why: a request-response server's answer almost always fits in the
** socket's send buffer at once. Queued, it costs a handle, an op, a timer,
** a suspension of the task and a resume, several times the send itself;
** sent at once with a non-blocking send(2) it costs one system call, what
** the op would have cost in the kernel anyway. Only what the socket does
** not take at once is left to a queued send.
*/
#include "lioq.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0  /* (where there is none, SIGPIPE is ignored) */
#endif

/*
** try_send(sock, data, i): sends data's bytes from position i on (i >= 1)
** to the open ioq.socket sock, without waiting: the number of bytes the
** socket took, 0 if it would have to wait (or a signal came first); or
** fail, "send: <strerror>", errno, as the queued send fails. Touches
** nothing but the socket; a send pending on the socket meanwhile is the
** caller's to order with (a stream awaits each of its own).
*/
int lioq_try_send(lua_State *L) {
  lioq_file *s = lioq_checkopen(L, 1, TAG_SOCKET);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  lua_Integer i = luaL_checkinteger(L, 3);
  ssize_t n;
  luaL_argcheck(L, i >= 1 && (lua_Unsigned)(i - 1) <= len, 3,
                "position out of range");
  len -= (size_t)(i - 1);
  if (len == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  n = send(s->fd, data + (i - 1), len, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0) {
    int err = errno;
    if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)
      return lioq_fail(L, "send", err);
    n = 0;
  }
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}
