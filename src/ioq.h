/*
** ioq.h: the one interface between the Lua binding and the backends.
**
** The binding fills an `ioq_op` (what to do, on which descriptor, with which
** memory), gives it to a backend with `start`, and later gets it back from
** `reap` with `res` set. From `start` until the op comes back from `reap`
** the backend (and the kernel behind it) owns the op and every byte it
** points to; the binding must neither free nor reuse them.
**
** Backends know nothing about Lua. The binding knows nothing about io_uring,
** epoll or IOCP.
*/
#ifndef IOQ_H
#define IOQ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ioq_heap.h"

#define IOQ_VERSION "0.1.0"

typedef enum ioq_opcode {
  IOQ_NOP,
  IOQ_READ,     /* fd, buf, len, offset (-1: current position) */
  IOQ_WRITE,    /* fd, buf, len, offset (-1: current position, or the end
                   of a file opened to append) */
  IOQ_FSYNC,    /* fd */
  IOQ_OPEN,     /* path, flags, mode; res is the new descriptor */
  IOQ_SLEEP,    /* ns; res is 0 when the time has passed */
  IOQ_ACCEPT,   /* fd; res is the new socket (non-blocking, close-on-exec) */
  IOQ_CONNECT,  /* fd, addr, addrlen */
  IOQ_RECV,     /* fd, buf, len */
  IOQ_SEND,     /* fd, buf, len (never raises SIGPIPE: EPIPE instead) */
  IOQ_RECVFROM, /* fd, buf, len; the sender's address lands in addr/addrlen */
  IOQ_SENDTO,   /* fd, buf, len, addr, addrlen */
  IOQ_SHUTDOWN, /* fd, flags (SHUT_RD, SHUT_WR, SHUT_RDWR) */
  IOQ_POLL,     /* fd, flags: IOQ_POLLIN or IOQ_POLLOUT (one); waits until
                   the descriptor is ready, res is the ready events (an
                   error or hang-up counts as ready). On IOCP, fd is a
                   waitable handle (a process...): res is IOQ_POLLIN once
                   it is signaled. */
  IOQ_CALL,     /* call, buf: res = call(buf), run on a worker thread (see
                   below); for blocking work no kernel op does */
  /* The file system (paths are NUL-terminated UTF-8 on Windows). */
  IOQ_STAT,     /* buf: path, or NULL for fd's own file; flags: IOQ_NOFOLLOW
                   (lstat); addr: the ioq_statx the op fills */
  IOQ_UNLINK,   /* buf: path (not a directory) */
  IOQ_RMDIR,    /* buf: path of an empty directory */
  IOQ_MKDIR,    /* buf: path, mode */
  IOQ_RENAME,   /* buf: old path, addr: new path; flags: IOQ_NOREPLACE */
  IOQ_LINK,     /* buf: existing path, addr: new path (a hard link) */
  IOQ_SYMLINK,  /* buf: target, addr: path of the new link */
  IOQ_READLINK, /* buf: path, addr: room for len bytes; res: bytes stored */
  IOQ_TRUNCATE, /* fd; offset: the new size */
  IOQ_ALLOCATE, /* fd, offset, ns: the length, mode: FALLOC_FL_* flags */
  IOQ_DATASYNC, /* fd: its data (not all metadata) to stable storage */
  IOQ_CLOSE,    /* fd: closed when the op ends, whatever it reports;
                   backends arm no timeout for it (see lioq_fs.c) */
  IOQ_READV,    /* fd, buf: an array of `flags` ioq_iov, len: their total
                   bytes (at most IOQ_MAX_RW), offset (-1: current) */
  IOQ_WRITEV,   /* the same, for a write */
  IOQ_COPY,     /* fd: the source; addr: an ioq_copyspec; res: bytes
                   copied (fewer at the end of the source) */
  IOQ_NOPCODES
} ioq_opcode;

/*
** A descriptor: a file descriptor on POSIX systems; on Windows a HANDLE
** (files) or a SOCKET, as an integer. IOQ_NOFD is none.
*/
#ifdef _WIN32
typedef intptr_t ioq_fd;
#else
typedef int ioq_fd;
#endif
#define IOQ_NOFD ((ioq_fd)-1)

/* IOQ_POLL's events: Linux's POLLIN and POLLOUT values, so that the Linux
** backends pass them through as they are. */
#define IOQ_POLLIN  0x001
#define IOQ_POLLOUT 0x004
/* IOQ_STAT, IOQ_RENAME flags. */
#define IOQ_NOFOLLOW  1   /* stat the link itself (lstat) */
#define IOQ_NOREPLACE 1   /* rename fails with EEXIST if the target exists */

/*
** What IOQ_STAT fills: Linux's struct statx, so that io_uring's statx
** writes it directly; on Windows the same fields, which the iocp backend
** fills from GetFileInformationByHandle (mode holds the type bits below).
*/
#ifdef _WIN32
struct ioq_statx_time { int64_t tv_sec; uint32_t tv_nsec; int32_t pad; };
typedef struct ioq_statx {
  uint32_t stx_mask, stx_blksize;
  uint64_t stx_attributes;
  uint32_t stx_nlink, stx_uid, stx_gid;
  uint16_t stx_mode;
  uint64_t stx_ino, stx_size, stx_blocks;
  struct ioq_statx_time stx_atime, stx_btime, stx_ctime, stx_mtime;
  uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
} ioq_statx;
#define IOQ_S_IFMT  0170000
#define IOQ_S_IFDIR 0040000
#define IOQ_S_IFREG 0100000
#define IOQ_S_IFLNK 0120000
#define STATX_BTIME 0x800u
/* A vector entry, laid out as POSIX's struct iovec. */
typedef struct ioq_iov { void *iov_base; size_t iov_len; } ioq_iov;
#else
#include <sys/stat.h>
#include <sys/uio.h>
typedef struct statx ioq_statx;
typedef struct iovec ioq_iov;
#endif

/* IOQ_COPY's other half: the copy moves len bytes from the op's fd at
** src_off to dst at dst_off (-1: the descriptor's position). */
typedef struct ioq_copyspec {
  ioq_fd dst;              /* owned by the op: a duplicate it closes */
  int64_t src_off, dst_off;
  int64_t len;
  int64_t done;            /* the runner's: bytes copied so far (it may
                              be interrupted, and go on where it was) */
  int how;                 /* the runner's: which way it copies */
} ioq_copyspec;

/* Largest byte count one read or write asks for (Linux's MAX_RW_COUNT). */
#define IOQ_MAX_RW 0x7ffff000u

typedef struct ioq_op ioq_op;

/* Two links of a list of ops (see ioq_list.h). */
typedef struct ioq_link {
  ioq_op *next, *prev;
} ioq_link;

struct ioq_op {
  /* What to do: set by the binding before `start`. */
  uint8_t code;             /* an ioq_opcode */
  uint8_t cancel_requested; /* set by the binding before calling `cancel` */
  uint8_t multishot;        /* IOQ_ACCEPT, IOQ_RECV: stay armed, one event
                               per connection or per chunk received */
  uint8_t use_pool;         /* IOQ_RECV (multishot): the kernel picks each
                               chunk's buffer from the backend's pool */
  ioq_fd fd;
  int flags;                /* IOQ_OPEN: O_* flags; IOQ_SHUTDOWN: how;
                               IOQ_POLL: the events wanted */
  int mode;                 /* IOQ_OPEN: permission bits */
  void *buf;                /* IOQ_READ/IOQ_WRITE: the bytes; IOQ_OPEN: path */
  uint32_t len;
  int64_t offset;           /* -1: the descriptor's current position */
  int64_t ns;               /* IOQ_SLEEP: how long */
  int64_t timeout_ns;       /* > 0: fail the op with -ETIMEDOUT after this long
                               (the backend arms it at `start`) */
  void *addr;               /* a struct sockaddr_storage, for socket ops */
  uint32_t addrlen;         /* its length in use (in and out) */
  /* IOQ_CALL: the blocking work, called with op->buf on a worker thread
  ** (the epoll and io_uring backends' pool, IOCP's system thread pool).
  ** Returns >= 0 or -errno, and must touch nothing another thread uses
  ** (no Lua). A cancel or a timeout interrupts a system call it is in
  ** (EINTR) or, before it starts, ends the op without it; a function may
  ** also ask ioq_blocking_aborted() (ioq_blocking.h) between steps. When
  ** it returns -EINTR and no cancel or timeout asked for that, it is
  ** called again, as a system call restarts. */
  int64_t (*call)(void *ctx);

  /* The outcome: set by the backend before `reap` returns the op. */
  int64_t res;              /* >= 0 on success, else -errno */

  /* Private to the binding: the list the op sits on. */
  ioq_link link;

  /* Private to the backend: a node for a heap of deadlines, for a timeout
  ** armed by timeout_ns, and, apart from it, room for what the op itself
  ** needs (its own timespec, a msghdr, list links...). */
  struct {
    ioq_heap_node timeout;
    union {
      int64_t ts[2];
      void *ptr[10];
    } op;
  } be;
};

/*
** One completion, as reap reports it. A multishot op reports many, all but
** the last with `more` set; every other op reports exactly one.
*/
typedef struct ioq_event {
  ioq_op *op;
  int64_t res;              /* >= 0 on success, else -errno */
  int32_t buf;              /* the pool buffer holding the data, or -1 */
  uint8_t more;             /* the op stays armed: more events follow */
} ioq_event;

/*
** Provided buffers: `count` buffers of `size` bytes that the kernel fills
** as data arrives (so an idle connection holds no buffer). A buffer named
** by an event is lent to the binding, with one reference, until it calls
** ioq_pool_release; the pool (and its memory) lives while any reference
** does, also after its backend is gone (recycle is then NULL).
*/
typedef struct ioq_pool ioq_pool;
struct ioq_pool {
  size_t refs;              /* the backend's, plus one per lent buffer */
  unsigned count, size;
  unsigned char *mem;       /* buffer i is at mem + i * size */
  unsigned nfree;           /* buffers the kernel may fill now */
  void (*recycle)(ioq_pool *p, int buf);  /* give a buffer back */
};

static inline void ioq_pool_unref(ioq_pool *p) {
  if (--p->refs == 0) {
    free(p->mem);
    free(p);
  }
}

/* Hands a lent buffer back: to the kernel if its backend still runs. */
static inline void ioq_pool_release(ioq_pool *p, int buf) {
  if (p->recycle != NULL)
    p->recycle(p, buf);
  ioq_pool_unref(p);
}

typedef struct ioq_backend ioq_backend;

/* Optional abilities, in ioq_backend.caps. */
#define IOQ_CAP_MULTISHOT_ACCEPT 1u  /* IOQ_ACCEPT with multishot */
#define IOQ_CAP_POOL             2u  /* `pool`, and multishot IOQ_RECV */
#define IOQ_CAP_NO_POSITION      4u  /* descriptors have no current position
                                        (IOCP): the binding keeps one per
                                        file object and passes offsets */

typedef struct ioq_backend_class {
  const char *name;
  /* Creates a backend with room for about `entries` ops in one batch.
  ** Returns 0, or -errno (the caller may then try another backend). */
  int (*create)(ioq_backend **out, unsigned entries);
  /* Frees the backend. Every started op must have been reaped. */
  void (*destroy)(ioq_backend *b);
  /* Takes ownership of `op`. Returns 0; -EAGAIN when there is no room now
  ** (call `submit` or `reap`, then try again); or another -errno, in which
  ** case the op was not taken and fails with that error. */
  int (*start)(ioq_backend *b, ioq_op *op);
  /* Asks the kernel to cancel a started op. The op is still returned by
  ** `reap`, with -ECANCELED or with its real result if the cancel lost the
  ** race. Returns 0 or -errno (-EAGAIN: no room, try after `reap`). */
  int (*cancel)(ioq_backend *b, ioq_op *op);
  /* Hands started ops to the kernel; returns how many, or -errno. */
  int (*submit)(ioq_backend *b);
  /* Submits, then waits up to timeout_ns (0: do not wait, < 0: forever) for
  ** completions and stores up to `max` of them in `ev`. Returns the count
  ** (0 on timeout or when only internal events arrived), -EINTR when a
  ** signal interrupted the wait, or another -errno. */
  int (*reap)(ioq_backend *b, ioq_event *ev, int max, int64_t timeout_ns);
  /* The optional features in use: stores the names (static strings) of
  ** up to `max` of them in `names`, returns how many. */
  int (*features)(ioq_backend *b, const char **names, int max);
  /* With IOQ_CAP_POOL: makes the backend's one pool of `count` (a power of
  ** two) buffers of `size` bytes. Returns 0 or -errno. */
  int (*pool)(ioq_backend *b, unsigned count, unsigned size, ioq_pool **out);
} ioq_backend_class;

/* Every backend struct starts with this. */
struct ioq_backend {
  const ioq_backend_class *cls;
  unsigned caps;            /* IOQ_CAP_* */
};

#ifdef IOQ_HAVE_URING
extern const ioq_backend_class ioq_uring_backend;
#endif
#ifdef IOQ_HAVE_EPOLL
extern const ioq_backend_class ioq_epoll_backend;
#endif
#ifdef IOQ_HAVE_IOCP
extern const ioq_backend_class ioq_iocp_backend;
#endif

#endif
