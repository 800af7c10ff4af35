/*
** ioq_blocking.c: ops done by blocking calls, on a worker thread of
** ioq_workers.c (POSIX systems). See ioq_blocking.h. Touches only the op
** it is given and the memory the op names, which its backend owns until
** the op is reaped.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioq_blocking.h"
#include "ioq_fs_posix.h"
#include "ioq_os.h"

/* A connect on a socket in blocking mode. */
static int64_t connect_blocking(ioq_op *op) {
  if (connect(op->fd, op->addr, op->addrlen) == 0)
    return 0;
  for (;;) {
    struct pollfd p;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int err = 0, res;
    if (errno != EINTR)
      return -errno;
    if ((res = ioq_blocking_aborted()) != 0)
      return res;
    /* A TCP connect goes on after the signal: wait for its outcome. */
    p.fd = op->fd;
    p.events = POLLOUT;
    p.revents = 0;
    if (poll(&p, 1, -1) < 0)
      continue;
    len = sizeof err;
    if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
      return -errno;
    if (err != 0)
      return -err;
    len = sizeof ss;
    if (getpeername(op->fd, (struct sockaddr *)&ss, &len) == 0)
      return 0;
    /* Neither connected nor failed (a Unix connect stops at a signal):
    ** ask again. */
    if (connect(op->fd, op->addr, op->addrlen) == 0 || errno == EISCONN)
      return 0;
  }
}

int64_t ioq_blocking_run(ioq_op *op) {
  for (;;) {
    int64_t r;
    int res;
    switch (op->code) {
      case IOQ_READ:
        r = op->offset < 0 ? read(op->fd, op->buf, op->len)
                           : pread(op->fd, op->buf, op->len, op->offset);
        break;
      case IOQ_WRITE:
        r = op->offset < 0 ? write(op->fd, op->buf, op->len)
                           : pwrite(op->fd, op->buf, op->len, op->offset);
        break;
      case IOQ_FSYNC:
        r = fsync(op->fd);
        break;
      case IOQ_OPEN:
        r = openat(AT_FDCWD, op->buf, op->flags, (mode_t)op->mode);
        break;
      case IOQ_ACCEPT:
        r = accept4(op->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (r < 0 && op->multishot && ioq_accept_goes_on(errno))
          errno = EINTR;  /* that connection died: wait for the next */
        break;
      case IOQ_CONNECT:
        return connect_blocking(op);
      case IOQ_CALL:
        /* The function gives -errno itself: turn it into errno for the
        ** one retry rule below. */
        r = op->call(op->buf);
        if (r >= 0)
          return r;
        errno = (int)-r;
        r = -1;
        break;
      default:
        if (op->code < IOQ_STAT)
          return -EINVAL;
        r = ioq_fs_run(op);  /* the file system's (ioq_fs_posix.c) */
        if (r >= 0)
          return r;
        errno = (int)-r;
        r = -1;
        break;
    }
    if (r >= 0)
      return r;
    if (errno != EINTR)
      return -errno;
    if ((res = ioq_blocking_aborted()) != 0)
      return res;
  }
}
