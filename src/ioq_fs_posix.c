/*
** ioq_fs_posix.c: the file-system ops (IOQ_STAT and after, see ioq.h) as
** blocking POSIX calls, for ioq_blocking_run on the worker threads of
** ioq_workers.c: every one on epoll, and on io_uring those its ring lacks
** (readlink, copy, and whatever an older kernel has no opcode for).
** Touches only the op it is given and the memory it names.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ioq_blocking.h"
#include "ioq_fs_posix.h"

/* How much one step of a copy moves, so that a cancel is seen between
** steps (a copy_file_range of gigabytes is one long call otherwise). */
#define COPY_STEP ((size_t)16 << 20)

/* The bounce buffer of the copy that cannot stay in the kernel. */
#define COPY_BOUNCE ((size_t)256 << 10)

enum { COPY_RANGE, COPY_SENDFILE, COPY_RW };

/* Errors that say copy_file_range (or sendfile) cannot copy between
** these two descriptors, where a plainer way can. */
static int try_another_way(int err) {
  return err == EXDEV || err == EINVAL || err == EOPNOTSUPP ||
         err == ENOSYS || err == EBADF || err == ENOTSUP;
}

/* Writes all of p[0..n) to fd at *off (-1: its position). */
static ssize_t write_all(int fd, const char *p, size_t n, int64_t *off) {
  size_t put = 0;
  while (put < n) {
    ssize_t w = *off >= 0 ? pwrite(fd, p + put, n - put, *off)
                          : write(fd, p + put, n - put);
    if (w < 0)
      return -1;
    put += (size_t)w;
    if (*off >= 0)
      *off += w;
  }
  return (ssize_t)put;
}

/* One step of a copy through memory: the way that works everywhere. */
static ssize_t copy_rw(int src, int dst, ioq_copyspec *c, size_t want) {
  char *buf;
  ssize_t r;
  if (want > COPY_BOUNCE)
    want = COPY_BOUNCE;
  if ((buf = malloc(want)) == NULL) {
    errno = ENOMEM;
    return -1;
  }
  r = c->src_off >= 0 ? pread(src, buf, want, c->src_off)
                      : read(src, buf, want);
  if (r > 0) {
    int64_t at = c->dst_off;
    if (write_all(dst, buf, (size_t)r, &at) < 0)
      r = -1;
  }
  free(buf);
  return r;
}

/*
** IOQ_COPY: copy_file_range, which stays in the kernel (and may share
** the blocks, on file systems that can); sendfile where it refuses (two
** file systems, a destination that is not a regular file); a bounce
** buffer as the last way. Goes on from c->done, so a call interrupted
** by a signal can be made again.
*/
static int64_t copy_run(ioq_op *op) {
  ioq_copyspec *c = op->addr;
  while (c->done < c->len) {
    size_t want = (size_t)(c->len - c->done);
    ssize_t r;
    if (want > COPY_STEP)
      want = COPY_STEP;
    if (c->done > 0 && ioq_blocking_aborted() != 0)
      return -EINTR;
    if (c->how == COPY_RANGE) {
      loff_t so = c->src_off, dof = c->dst_off;
      r = copy_file_range(op->fd, so >= 0 ? &so : NULL, c->dst,
                          dof >= 0 ? &dof : NULL, want, 0);
      if (r < 0 && try_another_way(errno)) {
        c->how = c->dst_off < 0 ? COPY_SENDFILE : COPY_RW;
        continue;
      }
    } else if (c->how == COPY_SENDFILE) {
      off_t so = c->src_off;
      r = sendfile(c->dst, op->fd, so >= 0 ? &so : NULL, want);
      if (r < 0 && try_another_way(errno)) {
        c->how = COPY_RW;
        continue;
      }
    } else {
      r = copy_rw(op->fd, c->dst, c, want);
    }
    if (r < 0)
      return c->done > 0 && errno != EINTR ? c->done : -errno;
    if (r == 0)
      break;  /* the end of the source */
    c->done += r;
    if (c->src_off >= 0) c->src_off += r;
    if (c->dst_off >= 0) c->dst_off += r;
  }
  return c->done;
}

int64_t ioq_fs_run(ioq_op *op) {
  const char *path = op->buf;
  ssize_t r;
  switch (op->code) {
    case IOQ_STAT:
      r = statx(op->fd == IOQ_NOFD ? AT_FDCWD : op->fd, path ? path : "",
                ((op->flags & IOQ_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0) |
                (path ? 0 : AT_EMPTY_PATH), STATX_BASIC_STATS | STATX_BTIME,
                op->addr);
      break;
    case IOQ_UNLINK:
      r = unlinkat(AT_FDCWD, path, 0);
      break;
    case IOQ_RMDIR:
      r = unlinkat(AT_FDCWD, path, AT_REMOVEDIR);
      break;
    case IOQ_MKDIR:
      r = mkdirat(AT_FDCWD, path, (mode_t)op->mode);
      break;
    case IOQ_RENAME:
      r = op->flags & IOQ_NOREPLACE
        ? renameat2(AT_FDCWD, path, AT_FDCWD, op->addr, RENAME_NOREPLACE)
        : renameat(AT_FDCWD, path, AT_FDCWD, op->addr);
      break;
    case IOQ_LINK:
      r = linkat(AT_FDCWD, path, AT_FDCWD, op->addr, 0);
      break;
    case IOQ_SYMLINK:
      r = symlinkat(path, AT_FDCWD, op->addr);
      break;
    case IOQ_READLINK:
      r = readlinkat(AT_FDCWD, path, op->addr, op->len);
      break;
    case IOQ_TRUNCATE:
      r = ftruncate(op->fd, op->offset);
      break;
    case IOQ_ALLOCATE:
      r = fallocate(op->fd, op->mode, op->offset, op->ns);
      break;
    case IOQ_DATASYNC:
      r = fdatasync(op->fd);
      break;
    case IOQ_CLOSE:
      /* Linux has closed the descriptor even when close says EINTR: it
      ** must never be closed again (the number may be another's). */
      r = close(op->fd);
      if (r < 0 && errno == EINTR)
        r = 0;
      break;
    case IOQ_READV:
      r = op->offset < 0 ? readv(op->fd, op->buf, op->flags)
                         : preadv(op->fd, op->buf, op->flags, op->offset);
      break;
    case IOQ_WRITEV:
      r = op->offset < 0 ? writev(op->fd, op->buf, op->flags)
                         : pwritev(op->fd, op->buf, op->flags, op->offset);
      break;
    case IOQ_COPY:
      return copy_run(op);
    default:
      return -EINVAL;
  }
  return r < 0 ? -errno : r;
}
