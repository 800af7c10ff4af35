/*
** ioq_blocking.h: ops done by a blocking call, on a worker thread.
**
** ioq_blocking_run is what a worker of ioq_workers.c runs for each op (on
** POSIX systems; the IOCP backend has its own counterpart on the system
** thread pool): the read, write, fsync, open, accept or connect the epoll
** backend cannot do without blocking, and IOQ_CALL, a function the
** binding names in the op. Backends include this header; the binding only
** needs the contract of IOQ_CALL in ioq.h.
*/
#ifndef IOQ_BLOCKING_H
#define IOQ_BLOCKING_H

#include <errno.h>
#include <stdint.h>

#include "ioq.h"

/*
** Does `op` with blocking calls and returns its result (>= 0, or -errno).
** A call interrupted by the pool's signal (EINTR) after a cancel or a
** timeout ends with that -ECANCELED or -ETIMEDOUT; an EINTR nobody asked
** for makes the call again.
*/
int64_t ioq_blocking_run(ioq_op *op);

/*
** On the thread running an op's blocking call: the -ECANCELED or
** -ETIMEDOUT that a cancel or a timeout asked for since it started, or 0.
** An IOQ_CALL function may ask between steps of a long job (a directory
** read in batches) and stop early. 0 on any other thread.
*/
int ioq_blocking_aborted(void);

#ifndef _WIN32
/* Errors of accept that end one connection, not the listener: accept(2)
** says to take them as EAGAIN and accept again. */
static inline int ioq_accept_goes_on(int err) {
  switch (err) {
    case ECONNABORTED: case EPROTO: case EINTR: case ENETDOWN:
    case ENOPROTOOPT: case EHOSTDOWN: case ENONET: case EHOSTUNREACH:
    case ENETUNREACH:
      return 1;
    default:
      return 0;
  }
}
#endif

#endif
