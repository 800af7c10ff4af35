/*
** backend_epoll.c: the same completions as io_uring, built on readiness,
** for machines where io_uring is switched off.
**
** An op on a socket (or a pipe, a tty...) is tried at once without
** blocking; if the descriptor is not ready it waits on that descriptor's
** watch until epoll says it is, and is tried again. Regular files cannot be
** waited on that way, so their reads, writes, fsyncs and opens run on a
** small pool of worker threads, which hand results back through an
** eventfd. Sleeps and timeouts come from a timer heap. Whatever way an op
** ends, it becomes an event in `done`, and reap hands those out in order,
** with the results and errno values io_uring would give.
**
** The loop's thread never makes a call that can block: socket calls carry
** MSG_DONTWAIT, pipe reads and writes RWF_NOWAIT, and what has no such
** per-call flag (a tty, or accept and connect on a socket another library
** left in blocking mode) waits for readiness and then goes to a worker.
** A worker blocked in a system call is ended by a cancel or a timeout with
** SIGURG, sent to that thread only (see ioq_workers.c).
**
** The pool of provided buffers (IOQ_CAP_POOL) is emulated the same way: a
** receive with use_pool waits for readiness holding no buffer, then takes
** a free buffer from the pool and receives into it; a multishot one does
** that for every chunk waiting.
**
** Each descriptor is registered once, edge-triggered, and stays in the
** set (see struct watch): a receive that waits costs no epoll_ctl, which
** with the failed try before it was most of what this backend paid per
** message above io_uring.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ioq_bufstack.h"
#include "ioq_os.h"
#include "ioq_heap.h"
#include "ioq_list.h"
#include "ioq_ring.h"
#include "ioq_blocking.h"
#include "ioq_workers.h"

/* Where an op is, inside this backend. Only the loop's thread uses it. */
enum {
  EOP_STAGED,     /* started, not yet issued (issued at submit or reap) */
  EOP_WAITING,    /* on a watch, waiting for its descriptor */
  EOP_TIMER,      /* a sleep, waiting in the heap only */
  EOP_WORKER,     /* on the jobs list, or a worker runs it (`taken`) */
  EOP_DONE        /* its event is in `done` (or reported) */
};

/* How a READ or WRITE on a descriptor epoll can wait on is tried. */
enum {
  IO_PLAIN,       /* read/write: the descriptor is in non-blocking mode */
  IO_SOCK,        /* recv/send with MSG_DONTWAIT */
  IO_NOWAIT       /* preadv2/pwritev2 with RWF_NOWAIT (pipes, FIFOs...) */
};

typedef struct watch watch;
typedef ioq_bufstack epoll_pool;

/* The per-op state, kept in the op's private space. */
typedef struct eop {
  ioq_job job;             /* first: its link is the op's in any list here
                              (the worker pool's too) */
  watch *w;                /* EOP_WAITING: its watch */
  ioq_heap_node timer;     /* in the heap until a sleep's end or a timeout */
  int state;
  int want;                /* EPOLLIN or EPOLLOUT */
  uint8_t io;              /* IO_*, for READ and WRITE */
  uint8_t blocking;        /* no call does it without blocking: once the
                              descriptor is ready, a worker does it */
  uint8_t from_watch;      /* EPOLLIN, EPOLLOUT: sent to a worker by its
                              watch, whose at_worker it holds (0: not) */
  int32_t buf;             /* use_pool: the pool buffer the next event
                              lends, or -1 */
  epoll_pool *pool;        /* use_pool: where that buffer comes from */
} eop;

_Static_assert(sizeof(eop) <= sizeof(((ioq_op *)0)->be.op),
               "the epoll backend keeps its op state in the op");

static eop *eop_of(ioq_op *op) {
  return (eop *)(void *)&op->be.op;
}

typedef ioq_list elist;

/* Where an op's eop, and so its link, lies in it. */
#define ELINK offsetof(ioq_op, be.op)

/*
** The ops waiting on one descriptor, each direction in order.
**
** Its epoll registration is edge-triggered and stays: it asks for both
** directions once, and is never changed, so that an op that waits costs
** no epoll_ctl MOD. `ready` remembers, per direction, whether an op may
** succeed now: set by reports, cleared when a try finds nothing (EAGAIN,
** or a stream socket's short read, which took all there was); while it
** is clear, an edge is sure to come when data does, so an op that comes
** behind one already waiting waits without trying. (An op on an idle
** watch is tried all the same: see issue.)
**
** What edges cannot tell is that the descriptor was closed and its number
** reused: the registration dies with the file (or stays with it in a
** duplicate elsewhere), and the new file is not in the set. So an op that
** starts waiting on a watch with no other op waiting (while one waits, the
** descriptor may not be closed: README) checks the registration with
** EPOLL_CTL_ADD, which fails with EEXIST when it is there. That is enough
** while only one file was ever registered under this number (`stale`
** clear): the registration found is that file's, and what `ready` says
** is about it. Once a second ADD succeeded, an older registration may live
** on in a duplicate and its file may come back to this number with `ready`
** saying what another file said; such a watch checks with EPOLL_CTL_MOD,
** which asks the file for its readiness again (a report if ready), and
** makes no guess from short reads.
**
** On a watch with one file ever registered the check is put off
** (check_later): the registration is most likely there, and once the op
** got its report and finished there is nothing left to check. It is made
** if an op still waits a few passes later, or before the loop sleeps, so
** an op on a new file under an old number is late by a few passes at
** most. An accept here marks its number `fresh`: a new file, checked at
** once.
*/
struct watch {
  int fd;
  unsigned ready;          /* EPOLLIN, EPOLLOUT: an op may succeed now */
  uint8_t ever;            /* a registration was made under this number */
  uint8_t stale;           /* more than one may have been (see above) */
  uint8_t stream;          /* a TCP socket: a short read drained it */
  uint8_t urgent;          /* a report said urgent data (EPOLLPRI): a TCP
                              read stops at its mark, so a short read no
                              longer says drained (for the file's life) */
  uint8_t ended;           /* a report said hang-up or error: that stays,
                              with no edge to come, so a short read does
                              not say it is drained */
  uint8_t rerun;           /* on `rerun`: run its ops again at the next reap */
  uint8_t unchecked;       /* on `checks`: its registration is to be checked */
  uint8_t fresh;           /* a new file under this number (accepted here):
                              check at once */
  uint8_t at_worker;       /* EPOLLIN, EPOLLOUT: a blocking call of that
                              direction is at a worker. One at a time: a
                              ready listener in blocking mode would
                              otherwise get every waiting accept sent to a
                              worker, each blocking one for good, until no
                              worker is left for anything else */
  unsigned since;          /* unchecked: the pass it was queued in */
  watch *next_rerun, *next_check;
  elist readers, writers;
};

typedef struct epoll_backend {
  ioq_backend base;
  int epfd;
  elist staged;
  watch **watches;         /* by descriptor */
  int nwatches;
  ioq_heap timers;         /* sleeps and timeouts, through eop_of(op)->timer */
  ioq_ring done;           /* ioq_events finished, in order */
  int live;                /* ops taken whose final event is not posted */
  ioq_workers pool;        /* threads started on first use; its eventfd
                              is in the epoll set from the start */
  watch *rerun;            /* watches whose ops may go on without an edge */
  watch *checks;           /* watches whose registration is to be checked */
  unsigned pass;           /* reaps that asked epoll (check_later's clock) */
  int64_t looked_at;       /* when a reap last asked epoll (see reap) */
  epoll_pool *bufs;        /* provided buffers: NULL until asked for */
} epoll_backend;

#define MAX_EVENTS 256

_Static_assert(IOQ_POLLIN == POLLIN && IOQ_POLLOUT == POLLOUT,
               "IOQ_POLL's events are poll(2)'s");

/* try_op's answer when the descriptor is not ready: wait for it. Not an
** errno value, so that an EAGAIN which is an op's real result (a Unix
** connect to a listener whose backlog is full) stays a result. */
#define NOT_READY INT64_MIN
/* A multishot op's answer when it stopped while data may still wait (its
** turn's limit): it waits, and its watch is run again at the next reap,
** since no new edge may come for what is already there. */
#define MORE_LATER (INT64_MIN + 1)

/* Set once epoll_pwait2 (Linux 5.11) turned out to be missing. */
static _Atomic int no_pwait2;

/* ---------------------------------------------------------------- lists */

static void push(elist *l, ioq_op *op) {
  ioq_list_push(l, op, ELINK);
}

static void unlink_op(elist *l, ioq_op *op) {
  ioq_list_remove(l, op, ELINK);
}

/* ---------------------------------------------------------------- timers */

/* The op whose eop holds the timer node t. */
static ioq_op *timer_op(ioq_heap_node *t) {
  return (ioq_op *)(void *)((char *)t - offsetof(eop, timer) - ELINK);
}

static int timer_add(epoll_backend *b, ioq_op *op, int64_t deadline) {
  return ioq_heap_push(&b->timers, &eop_of(op)->timer, deadline);
}

static void timer_remove(epoll_backend *b, ioq_op *op) {
  ioq_heap_remove(&b->timers, &eop_of(op)->timer);
}

/* ---------------------------------------------------------------- done */

/* Makes room in the done ring for `room` more events; 0 if out of memory. */
static int reserve(epoll_backend *b, int room) {
  return ioq_ring_reserve(&b->done, sizeof(ioq_event), (unsigned)room, 256);
}

/*
** Queues an event for reap. The ring always keeps room for the final
** event of every live op (epoll_start reserves it), so only the extra
** events of multishot ops can fail here, and then post returns 0.
*/
static int post(epoll_backend *b, ioq_op *op, int64_t res, int more) {
  ioq_event *ev;
  if (more && !reserve(b, b->live + 1))
    return 0;
  ev = ioq_ring_push(&b->done, sizeof *ev);
  ev->op = op;
  ev->res = res;
  ev->buf = -1;
  if (op->use_pool) {  /* the buffer it received into, if any */
    ev->buf = eop_of(op)->buf;
    eop_of(op)->buf = -1;
  }
  ev->more = (uint8_t)more;
  return 1;
}

/* The watch of descriptor number fd, if it has one (watch_of makes it). */
static watch *watch_at(epoll_backend *b, int64_t fd) {
  return fd >= 0 && fd < b->nwatches ? b->watches[fd] : NULL;
}

/* A descriptor accepted here is a new file: if its number had a watch,
** the next op to wait on it checks the registration at once. */
static void accepted(epoll_backend *b, int64_t fd) {
  watch *w = watch_at(b, fd);
  if (w != NULL) {
    w->fresh = 1;
    w->ready = EPOLLIN | EPOLLOUT;
  }
}

/* Ends an op with `res` (its room in the ring was reserved at start). */
static void finish(epoll_backend *b, ioq_op *op, int64_t res) {
  if (op->code == IOQ_ACCEPT)
    accepted(b, res);
  timer_remove(b, op);
  eop_of(op)->state = EOP_DONE;
  post(b, op, res, 0);
  b->live--;
}

/* ---------------------------------------------------------------- watches */

static watch *watch_of(epoll_backend *b, int fd) {
  if (fd >= b->nwatches) {
    int n = b->nwatches ? b->nwatches : 64, k;
    watch **w;
    while (n <= fd) n *= 2;
    w = realloc(b->watches, (size_t)n * sizeof *w);
    if (w == NULL) return NULL;
    for (k = b->nwatches; k < n; k++) w[k] = NULL;
    b->watches = w;
    b->nwatches = n;
  }
  if (b->watches[fd] == NULL) {
    watch *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    w->fd = fd;
    w->ready = EPOLLIN | EPOLLOUT;  /* unknown: try first */
    b->watches[fd] = w;
  }
  return b->watches[fd];
}

#define WATCH_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET)

/*
** Makes sure the descriptor now under the watch's number is in the set
** (see struct watch): called when an op starts waiting on a watch where no
** other op waits. A new registration reports at once what is ready.
*/
static int validate(epoll_backend *b, watch *w) {
  struct epoll_event ev;
  int how = w->stale ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, r;
  memset(&ev, 0, sizeof ev);
  ev.events = WATCH_EVENTS;
  ev.data.ptr = w;
  w->fresh = 0;
  r = epoll_ctl(b->epfd, how, w->fd, &ev);
  if (r == 0 && how == EPOLL_CTL_MOD)
    return 0;
  if (r != 0 && errno == (how == EPOLL_CTL_ADD ? EEXIST : ENOENT)) {
    if (how == EPOLL_CTL_ADD)
      return 0;  /* the one file ever registered here: still there */
    r = epoll_ctl(b->epfd, EPOLL_CTL_ADD, w->fd, &ev);
  }
  if (r != 0)
    return -errno;
  /* A new registration. */
  if (w->ever)
    w->stale = 1;
  w->ever = 1;
  w->stream = 0;
  w->urgent = 0;
  w->ended = 0;
  if (!w->stale) {
    /* Only TCP: other stream sockets may stop a read short with bytes
    ** left (a Unix socket at a message that carries descriptors or other
    ** credentials; SCTP at a message's end), and no edge would come for
    ** those bytes. */
    int type = 0, proto = 0;
    socklen_t len = sizeof type, plen = sizeof proto;
    w->stream = getsockopt(w->fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
                type == SOCK_STREAM &&
                getsockopt(w->fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 &&
                proto == IPPROTO_TCP;
  }
  return 0;
}

/* Takes the watch's registration out of the set, before its descriptor is
** closed by an op here; a later op's ADD then starts afresh. */
static void forget(epoll_backend *b, int fd) {
  struct epoll_event ev;
  watch *w = watch_at(b, fd);
  if (w == NULL || !w->ever || w->readers.head || w->writers.head)
    return;
  memset(&ev, 0, sizeof ev);
  if (epoll_ctl(b->epfd, EPOLL_CTL_DEL, fd, &ev) == 0 && !w->stale)
    w->ever = 0;  /* none of ours is left */
  w->ready = EPOLLIN | EPOLLOUT;
}

/* Runs the watch's ops again at the next reap (see MORE_LATER). */
static void rerun_later(epoll_backend *b, watch *w) {
  if (w->rerun) return;
  w->rerun = 1;
  w->next_rerun = b->rerun;
  b->rerun = w;
}

/* True when a receive of `res` bytes took all the stream had: fewer than
** asked for. Edges come for any byte that arrives after it. */
static int drained(watch *w, ioq_op *op, int64_t res) {
  uint32_t asked;
  if (!w->stream || w->ended || w->urgent || res <= 0 || op->multishot)
    return 0;
  if (op->code == IOQ_RECV)
    asked = op->use_pool ? eop_of(op)->pool->base.size : op->len;
  else if (op->code == IOQ_READ && eop_of(op)->io == IO_SOCK)
    asked = op->len;
  else
    return 0;
  return res < (int64_t)asked;
}

/* True when the descriptor is ready for `want` now (for ops that only a
** blocking call does: they go to a worker once it is). */
static int ready_now(int fd, int want) {
  struct pollfd p;
  p.fd = fd;
  p.events = want == EPOLLIN ? POLLIN : POLLOUT;
  p.revents = 0;
  return poll(&p, 1, 0) != 0;  /* an error: let the worker's call say it */
}

/* ---------------------------------------------------------------- doing */

/* A READ or WRITE, tried without blocking (see try_op). */
static int64_t try_rw(ioq_op *op) {
  eop *e = eop_of(op);
  int reading = op->code == IOQ_READ;
  ssize_t r;
  /* read(2) and write(2) of 0 bytes never wait (io_uring and IOCP give 0
  ** at once too); only a socket's recv of 0 bytes waits for data. */
  if (op->len == 0 && e->io != IO_SOCK)
    return 0;
  if (e->io == IO_NOWAIT) {
    struct iovec iov;
    int fl;
    iov.iov_base = op->buf;
    iov.iov_len = op->len;
    r = reading ? preadv2(op->fd, &iov, 1, op->offset < 0 ? -1 : op->offset,
                          RWF_NOWAIT)
                : pwritev2(op->fd, &iov, 1, op->offset < 0 ? -1 : op->offset,
                           RWF_NOWAIT);
    if (r >= 0)
      return r;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
      return errno == EAGAIN || errno == EWOULDBLOCK ? NOT_READY : -errno;
    /* No such flag for this kind of descriptor (a tty, an old kernel):
    ** non-blocking mode does as well; in blocking mode a worker does the
    ** call once epoll says the descriptor is ready. */
    fl = fcntl(op->fd, F_GETFL);
    if (fl < 0 || !(fl & O_NONBLOCK)) {
      e->blocking = 1;
      return NOT_READY;
    }
    e->io = IO_PLAIN;
  }
  if (e->io == IO_SOCK)  /* the offset means nothing here, as on io_uring */
    r = reading ? recv(op->fd, op->buf, op->len, MSG_DONTWAIT)
                : send(op->fd, op->buf, op->len, MSG_DONTWAIT | MSG_NOSIGNAL);
  else if (reading)
    r = op->offset < 0 ? read(op->fd, op->buf, op->len)
                       : pread(op->fd, op->buf, op->len, op->offset);
  else
    r = op->offset < 0 ? write(op->fd, op->buf, op->len)
                       : pwrite(op->fd, op->buf, op->len, op->offset);
  if (r < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? NOT_READY : -errno;
  return r;
}

/*
** A receive into a pool buffer, tried without blocking: the buffer is
** taken only for a recv that can have data, and given back when none
** came. With the pool empty, a peek tells data (ENOBUFS, as io_uring
** says it) from the end of the stream and from nothing yet.
*/
static int64_t recv_pooled(ioq_op *op) {
  eop *e = eop_of(op);
  int i = ioq_bufstack_next(e->pool);
  ssize_t r;
  if (i < 0) {
    char c;
    r = recv(op->fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    if (r > 0)
      return -ENOBUFS;
    if (r == 0)
      return 0;
    return errno == EAGAIN || errno == EWOULDBLOCK ? NOT_READY : -errno;
  }
  r = recv(op->fd, ioq_bufstack_mem(e->pool, i), e->pool->base.size,
           MSG_DONTWAIT);
  if (r <= 0)
    return r == 0 ? 0 : errno == EAGAIN || errno == EWOULDBLOCK ? NOT_READY
                                                                 : -errno;
  ioq_bufstack_lend(e->pool);  /* to the binding, with the event */
  e->buf = (int32_t)i;
  return r;
}

/*
** Tries an op that needs a ready descriptor, without blocking. Returns the
** result (>= 0 or -errno), or NOT_READY to wait for readiness.
*/
static int64_t try_op(ioq_op *op) {
  ssize_t r;
  switch (op->code) {
    case IOQ_ACCEPT:
      r = accept4(op->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case IOQ_CONNECT: {
      /* Called again once writable: the outcome is in SO_ERROR. */
      int err = 0;
      socklen_t len = sizeof err;
      if (eop_of(op)->want == 0) {
        if (connect(op->fd, op->addr, op->addrlen) == 0)
          return 0;
        /* Only EINPROGRESS means "later": EAGAIN is a Unix listener's
        ** full backlog, an error the caller must see (io_uring's too). */
        return errno == EINPROGRESS ? NOT_READY : -errno;
      }
      if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return -errno;
      return err ? -err : 0;
    }
    case IOQ_RECV:
      if (op->use_pool)
        return recv_pooled(op);
      r = recv(op->fd, op->buf, op->len, MSG_DONTWAIT);
      break;
    case IOQ_SEND:
      r = send(op->fd, op->buf, op->len, MSG_DONTWAIT | MSG_NOSIGNAL);
      break;
    case IOQ_RECVFROM:
    case IOQ_SENDTO: {
      struct iovec iov;
      struct msghdr msg;
      iov.iov_base = op->buf;
      iov.iov_len = op->len;
      memset(&msg, 0, sizeof msg);
      msg.msg_name = op->addr;
      msg.msg_namelen = op->code == IOQ_RECVFROM
                      ? sizeof(struct sockaddr_storage) : op->addrlen;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      if (op->code == IOQ_RECVFROM) {
        r = recvmsg(op->fd, &msg, MSG_DONTWAIT);
        if (r >= 0) op->addrlen = msg.msg_namelen;
      } else {
        r = sendmsg(op->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      break;
    }
    case IOQ_READ:
    case IOQ_WRITE:
      return try_rw(op);
    case IOQ_POLL: {
      /* Asked directly, as io_uring's poll does first: a descriptor
      ** already ready (a regular file always is) needs no wait. */
      struct pollfd p;
      p.fd = op->fd;
      p.events = (short)op->flags;
      p.revents = 0;
      if (poll(&p, 1, 0) < 0)
        return -errno;
      if (p.revents & POLLNVAL)
        return -EBADF;
      return p.revents ? p.revents : NOT_READY;
    }
    default:
      return -EINVAL;
  }
  if (r < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK ? NOT_READY : -errno;
  return r;
}

/* ---------------------------------------------------------------- workers */

/* Hands an op to the worker pool (ioq_workers.c); it fails at once if no
** worker thread could be started. */
static int to_worker(epoll_backend *b, ioq_op *op) {
  int r;
  eop_of(op)->state = EOP_WORKER;
  r = ioq_workers_push(&b->pool, op);
  if (r < 0) finish(b, op, r);
  return r;
}

/* ---------------------------------------------------------------- issuing */

/*
** Puts an op on its watch, in the direction it needs. Where no other op
** waits on the watch, the descriptor may have been closed and its number
** reused since the last: validate() makes sure it is in the set.
*/
static int wait_ready(epoll_backend *b, watch *w, ioq_op *op, int want) {
  int idle = w->readers.head == NULL && w->writers.head == NULL, r;
  eop_of(op)->state = EOP_WAITING;
  eop_of(op)->w = w;
  eop_of(op)->want = want;
  push(want == EPOLLIN ? &w->readers : &w->writers, op);
  if (!idle)
    return 0;
  if (w->ever && !w->stale && !w->fresh && op->code != IOQ_CONNECT) {
    /* Most likely still there: checked later, if no report came first
    ** (see check_later). */
    if (!w->unchecked) {
      w->unchecked = 1;
      w->since = b->pass;
      w->next_check = b->checks;
      b->checks = w;
    }
    return 0;
  }
  r = validate(b, w);
  if (r < 0) {
    unlink_op(want == EPOLLIN ? &w->readers : &w->writers, op);
    eop_of(op)->state = EOP_STAGED;
    eop_of(op)->w = NULL;
  }
  return r;
}

/* True for a descriptor in blocking mode (made so by another library). */
static int in_blocking_mode(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && !(fl & O_NONBLOCK);
}

/*
** After one receive of a multishot op gave `res` bytes: posts each chunk
** and takes the next, until none is waiting (NOT_READY), the stream ends
** (0) or an error ends the op (returned: ENOBUFS too, which the binding
** arms again once buffers come back). At most 16 chunks a turn, so that
** one busy socket lets the loop run: then MORE_LATER.
*/
static int64_t recv_all(epoll_backend *b, ioq_op *op, int64_t res) {
  int chunks = 0;
  for (;;) {
    if (res <= 0)  /* NOT_READY included */
      return res;
    if (!post(b, op, res, 1)) {  /* out of memory: drop this chunk */
      ioq_pool_release(&eop_of(op)->pool->base, eop_of(op)->buf);
      eop_of(op)->buf = -1;
    }
    if (++chunks == 16)
      return MORE_LATER;
    res = try_op(op);
  }
}

/*
** After one accept of a multishot op gave `res`: posts each connection and
** takes the next, until none is waiting (NOT_READY) or an error ends the
** op (returned). An error that only ends one connection is skipped, a
** bounded number of times per turn so that a listener failing each time
** still lets the loop run.
*/
static int64_t accept_all(epoll_backend *b, ioq_op *op, int64_t res) {
  int skipped = 0;
  if (op->code == IOQ_RECV)
    return recv_all(b, op, res);
  for (;;) {
    if (res >= 0) {
      accepted(b, res);
      if (!post(b, op, res, 1)) close((int)res);  /* out of memory: drop it */
    } else if (res == NOT_READY || !ioq_accept_goes_on((int)-res)) {
      return res;
    } else if (++skipped > 64) {
      return MORE_LATER;
    }
    res = try_op(op);
  }
}

/* Issues a staged op: it finishes now, or waits somewhere. */
static void issue(epoll_backend *b, ioq_op *op) {
  eop *e = eop_of(op);
  watch *w;
  int64_t res;
  int want, r, skip;
  eop_of(op)->timer.slot = 0;
  eop_of(op)->want = 0;
  eop_of(op)->blocking = 0;
  eop_of(op)->from_watch = 0;
  eop_of(op)->io = IO_PLAIN;
  if (op->timeout_ns > 0 && op->code != IOQ_SLEEP && op->code != IOQ_CLOSE &&
      timer_add(b, op, ioq_now_ns() + op->timeout_ns) < 0) {
    finish(b, op, -ENOMEM);
    return;
  }
  switch (op->code) {
    case IOQ_NOP:
      finish(b, op, 0);
      return;
    case IOQ_SLEEP: {
      int64_t ns = op->timeout_ns > 0 && op->timeout_ns < op->ns
                 ? op->timeout_ns : op->ns;
      eop_of(op)->state = EOP_TIMER;
      if (timer_add(b, op, ioq_now_ns() + ns) < 0)
        finish(b, op, -ENOMEM);
      return;
    }
    case IOQ_SHUTDOWN:
      finish(b, op, shutdown(op->fd, op->flags) == 0 ? 0 : -errno);
      return;
    case IOQ_FSYNC:
    case IOQ_OPEN:
    case IOQ_CALL:
      to_worker(b, op);
      return;
    case IOQ_CLOSE:
      forget(b, op->fd);
      to_worker(b, op);
      return;
    case IOQ_STAT: case IOQ_UNLINK: case IOQ_RMDIR: case IOQ_MKDIR:
    case IOQ_RENAME:
    case IOQ_LINK: case IOQ_SYMLINK: case IOQ_READLINK: case IOQ_TRUNCATE:
    case IOQ_ALLOCATE: case IOQ_DATASYNC: case IOQ_READV:
    case IOQ_WRITEV: case IOQ_COPY:
      /* The file system has no readiness to wait for: a worker does it
      ** (vectored I/O on a pipe or socket too, which may then block it). */
      to_worker(b, op);
      return;
    case IOQ_READ:
    case IOQ_WRITE: {
      /* Regular files, and what epoll cannot wait on, go to a worker. */
      struct stat st;
      if (fstat(op->fd, &st) != 0)
        break;  /* the I/O itself will report EBADF */
      if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode) || S_ISDIR(st.st_mode)) {
        to_worker(b, op);
        return;
      }
      eop_of(op)->io = S_ISSOCK(st.st_mode) ? IO_SOCK : IO_NOWAIT;
      break;
    }
    case IOQ_ACCEPT:
    case IOQ_CONNECT:
      /* No flag makes one call non-blocking: a socket in blocking mode
      ** is left to a worker (an accept once a connection is waiting). */
      if (in_blocking_mode(op->fd)) {
        if (op->code == IOQ_CONNECT) {
          to_worker(b, op);
          return;
        }
        eop_of(op)->blocking = 1;
      }
      break;
    default:
      break;
  }
  want = (op->code == IOQ_SEND || op->code == IOQ_SENDTO ||
          op->code == IOQ_CONNECT || op->code == IOQ_WRITE ||
          (op->code == IOQ_POLL && !(op->flags & IOQ_POLLIN)))
       ? EPOLLOUT : EPOLLIN;
  if (op->fd < 0) {
    finish(b, op, -EBADF);
    return;
  }
  w = watch_at(b, op->fd);
  /* Known not ready while another op waits on the watch (see struct
  ** watch): no try. On an idle watch the op is tried all the same: the
  ** bytes of a busy connection's next message are usually there by the
  ** time it starts, and a try that finds them costs less than a report;
  ** a try that finds nothing costs a recv, but no epoll_ctl. A connect's
  ** first call starts it, so it is always made. */
  skip = w != NULL && !(w->ready & want) && op->code != IOQ_CONNECT &&
         (w->readers.head || w->writers.head);
  res = NOT_READY;
  if (!e->blocking && !skip) {
    res = try_op(op);
    if (op->code == IOQ_CONNECT)
      e->want = want;  /* from now on, look at SO_ERROR */
    if (op->multishot)
      res = accept_all(b, op, res);
  }
  if (e->blocking) {  /* known before, or found by the try */
    if (ready_now(op->fd, want)) {
      to_worker(b, op);
      return;
    }
    res = NOT_READY;
  }
  if (res == NOT_READY || res == MORE_LATER) {
    if (w == NULL && (w = watch_of(b, op->fd)) == NULL) {
      finish(b, op, -ENOMEM);
      return;
    }
    if (res == NOT_READY)
      w->ready &= ~(unsigned)want;
    r = wait_ready(b, w, op, want);
    if (r == -EPERM)  /* epoll cannot wait on it: a worker does it */
      to_worker(b, op);
    else if (r < 0)
      finish(b, op, r);
    else if (res == MORE_LATER)
      rerun_later(b, w);
    return;
  }
  /* With an op waiting, the registration is this file's (see struct
  ** watch), so a short read may say it is drained. */
  if (w != NULL && (w->readers.head || w->writers.head) && drained(w, op, res))
    w->ready &= ~(unsigned)EPOLLIN;
  finish(b, op, res);
}

/*
** Runs the ops waiting in one direction of a watch, oldest first, while
** the descriptor may be ready that way: until one finds it is not, or
** stops with more to do later.
*/
static void run_waiters(epoll_backend *b, watch *w, int want) {
  elist *l = want == EPOLLIN ? &w->readers : &w->writers;
  ioq_op *op;
  while ((op = l->head) != NULL && (w->ready & (unsigned)want)) {
    eop *e = eop_of(op);
    int64_t res = NOT_READY;
    if (!e->blocking) {
      res = try_op(op);
      if (op->multishot)
        res = accept_all(b, op, res);
      if (res == MORE_LATER) {
        rerun_later(b, w);
        return;
      }
    }
    if (res == NOT_READY) {
      /* Ready, and only a blocking call does it: a worker, and the ops
      ** behind it go on at the next reap if it is still ready then. */
      if (e->blocking && (w->at_worker & (unsigned)want))
        return;  /* after the one at a worker (collect_workers) */
      if (!e->blocking || !ready_now(w->fd, want)) {
        w->ready &= ~(unsigned)want;
        return;
      }
      unlink_op(l, op);
      e->w = NULL;
      if (to_worker(b, op) == 0) {
        e->from_watch = (uint8_t)want;
        w->at_worker |= (uint8_t)want;
      } else if (l->head) {
        rerun_later(b, w);
      }
      return;
    }
    unlink_op(l, op);
    e->w = NULL;
    if (drained(w, op, res))
      w->ready &= ~(unsigned)EPOLLIN;
    finish(b, op, res);
  }
}

/* How often a reap that has results already still asks epoll. */
#define LOOK_EVERY_NS 1000000

/* ---------------------------------------------------------------- class */

static int epoll_create_backend(ioq_backend **out, unsigned entries) {
  epoll_backend *b = calloc(1, sizeof *b);
  struct epoll_event ev;
  int r;
  (void)entries;  /* no ring to size: ops wait in lists */
  if (b == NULL) return -ENOMEM;
  b->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (b->epfd < 0) {
    int err = errno;
    free(b);
    return -err;
  }
  r = ioq_workers_init(&b->pool, ELINK);
  if (r < 0) {
    close(b->epfd);
    free(b);
    return r;
  }
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;  /* NULL: the workers' eventfd */
  if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->pool.evfd, &ev) != 0) {
    int err = errno;
    ioq_workers_free(&b->pool);
    close(b->epfd);
    free(b);
    return -err;
  }
  b->base.cls = &ioq_epoll_backend;
  /* Multishot accept is cheap to emulate here: take every connection
  ** that is there at each readiness. (IOQ_NO_MULTISHOT=1 turns it off,
  ** as on io_uring, to test the Lua fallback.) */
  b->base.caps = getenv("IOQ_NO_MULTISHOT") ? 0
               : IOQ_CAP_MULTISHOT_ACCEPT | IOQ_CAP_POOL;
  *out = &b->base;
  return 0;
}

static void epoll_destroy(ioq_backend *base) {
  epoll_backend *b = (epoll_backend *)base;
  int i;
  ioq_workers_free(&b->pool);
  ioq_bufstack_drop(b->bufs);
  for (i = 0; i < b->nwatches; i++)
    free(b->watches[i]);
  free(b->watches);
  ioq_heap_free(&b->timers);
  ioq_ring_free(&b->done);
  close(b->epfd);
  free(b);
}

/*
** Takes the op. The done ring must be able to hold one event per op that
** may finish, so it grows here, where failing is still allowed.
*/
static int epoll_start(ioq_backend *base, ioq_op *op) {
  epoll_backend *b = (epoll_backend *)base;
  if (!reserve(b, b->live + 1))
    return -ENOMEM;
  b->live++;
  eop_of(op)->state = EOP_STAGED;
  eop_of(op)->buf = -1;
  eop_of(op)->pool = b->bufs;
  eop_of(op)->timer.slot = 0;
  push(&b->staged, op);
  return 0;
}

static int epoll_submit(ioq_backend *base) {
  epoll_backend *b = (epoll_backend *)base;
  int n = 0;
  ioq_op *op;
  while ((op = b->staged.head) != NULL) {
    unlink_op(&b->staged, op);
    issue(b, op);
    n++;
  }
  return n;
}

/*
** Ends an op early with `res` (-ECANCELED, or -ETIMEDOUT), wherever it
** waits. One that a worker runs is interrupted (ioq_workers_abort) and comes back
** from the worker with `res`, or with its result if the call ended first;
** one that is done keeps its result.
*/
static void abort_op(epoll_backend *b, ioq_op *op, int res) {
  eop *e = eop_of(op);
  switch (e->state) {
    case EOP_STAGED:
      unlink_op(&b->staged, op);
      finish(b, op, res);
      break;
    case EOP_WAITING:
      /* Its registration stays: see struct watch. */
      unlink_op(e->want == EPOLLIN ? &e->w->readers : &e->w->writers, op);
      e->w = NULL;
      finish(b, op, res);
      break;
    case EOP_TIMER:
      finish(b, op, res);
      break;
    case EOP_WORKER:
      if (ioq_workers_abort(&b->pool, op, res))
        finish(b, op, res);  /* no worker had taken it */
      break;
    default:
      break;
  }
}

static int epoll_cancel(ioq_backend *base, ioq_op *op) {
  abort_op((epoll_backend *)base, op, -ECANCELED);
  return 0;
}

/* Fires the timers that are due: sleeps end, timeouts cancel their op. */
static void expire(epoll_backend *b) {
  int64_t t = ioq_now_ns();
  ioq_heap_node *next;
  while ((next = ioq_heap_top(&b->timers)) != NULL && next->deadline <= t) {
    ioq_op *op = timer_op(next);
    eop *e = eop_of(op);
    timer_remove(b, op);
    if (e->state == EOP_TIMER)  /* a sleep ends, or its timeout fires */
      finish(b, op, op->timeout_ns > 0 && op->timeout_ns < op->ns
                    ? -ETIMEDOUT : 0);
    else
      abort_op(b, op, -ETIMEDOUT);
  }
}

/* Moves what the workers finished into `done`. */
static void collect_workers(epoll_backend *b) {
  ioq_list back = {NULL, NULL, 0};
  ioq_op *op;
  ioq_workers_collect(&b->pool, &back);
  while ((op = back.head) != NULL) {
    eop *e = eop_of(op);
    unlink_op(&back, op);
    if (e->from_watch) {  /* the next blocking call of its watch may go */
      watch *w = watch_at(b, op->fd);
      if (w != NULL) {
        w->at_worker &= (uint8_t)~e->from_watch;
        if (w->readers.head || w->writers.head)
          rerun_later(b, w);
      }
      e->from_watch = 0;
    }
    finish(b, op, op->res);
  }
}

/* Ends the ops waiting on a watch whose registration failed. */
static void fail_watch(epoll_backend *b, watch *w, int err) {
  ioq_op *op;
  while ((op = w->readers.head) != NULL || (op = w->writers.head) != NULL) {
    unlink_op(op == w->readers.head ? &w->readers : &w->writers, op);
    eop_of(op)->w = NULL;
    if (err == -EPERM)  /* epoll cannot wait on it: a worker does it */
      to_worker(b, op);
    else
      finish(b, op, err);
  }
}

/*
** Checks the registrations that wait_ready queued. Where one file only
** was ever registered under a number, its registration is most likely
** still there, and the report an op waits for usually comes within a
** pass or two, after which there is nothing to check: so the check is
** made only once an op has waited GRACE passes, or before the loop would
** sleep (`all`), so that an op on a new file under an old number never
** waits for a report that cannot come.
*/
#define GRACE 4

static void check_later(epoll_backend *b, int all) {
  watch **p = &b->checks, *w;
  while ((w = *p) != NULL) {
    int r;
    if (w->readers.head == NULL && w->writers.head == NULL) {
      *p = w->next_check;  /* nothing waits: the next wait queues it */
      w->unchecked = 0;
      continue;
    }
    if (!all && b->pass - w->since < GRACE) {
      p = &w->next_check;
      continue;
    }
    *p = w->next_check;
    w->unchecked = 0;
    r = validate(b, w);
    if (r < 0)
      fail_watch(b, w, r);
  }
}

static int wait_ms(int64_t ns);

/* epoll_pwait2, or epoll_wait before Linux 5.11 (milliseconds). */
static int wait_events(epoll_backend *b, struct epoll_event *evs,
                       int64_t wait) {
  struct timespec ts, *tsp = NULL;
  int n = -1;
  if (wait >= 0) {
    ts.tv_sec = wait / 1000000000;
    ts.tv_nsec = wait % 1000000000;
    tsp = &ts;
  }
  errno = ENOSYS;
  if (!no_pwait2)
    n = epoll_pwait2(b->epfd, evs, MAX_EVENTS, tsp, NULL);
  if (n < 0 && errno == ENOSYS) {
    no_pwait2 = 1;
    n = epoll_wait(b->epfd, evs, MAX_EVENTS, tsp ? wait_ms(wait) : -1);
  }
  return n;
}

/* Runs again the watches that stopped with more to do (MORE_LATER, or
** ops behind one a worker took), after the reports of this reap, so that
** one busy descriptor does not keep the others waiting. */
static void rerun(epoll_backend *b) {
  watch *w = b->rerun;
  b->rerun = NULL;
  while (w != NULL) {
    watch *next = w->next_rerun;
    w->rerun = 0;
    w->next_rerun = NULL;
    run_waiters(b, w, EPOLLIN);
    run_waiters(b, w, EPOLLOUT);
    w = next;
  }
}

/*
** epoll_wait's timeout: milliseconds, in an int. Rounded up, so that a
** wait of less than a millisecond sleeps rather than spinning at 0 until
** a timer is due; and at most a day (the caller waits again), where the
** int would overflow after 24 days.
*/
static int wait_ms(int64_t ns) {
  if (ns > (int64_t)86400 * 1000000000)
    return 86400 * 1000;
  return (int)((ns + 999999) / 1000000);
}

static int epoll_reap(ioq_backend *base, ioq_event *out, int max,
                      int64_t timeout_ns) {
  epoll_backend *b = (epoll_backend *)base;
  struct epoll_event evs[MAX_EVENTS];
  int64_t kick_at;
  int i, n, k;
  int64_t now;
  epoll_submit(base);
  now = ioq_now_ns();
  kick_at = ioq_workers_tick(&b->pool, now);
  /* With results in hand already (ops that finished as they were
  ** submitted), the loop is not kept waiting; but epoll is still asked,
  ** without a wait, once every LOOK_EVERY_NS: a task whose ops always
  ** finish at once would starve every op that waits for a report, and the
  ** workers' results. */
  if (b->done.n == 0 || now - b->looked_at >= LOOK_EVERY_NS) {
    int64_t wait = b->done.n == 0 ? timeout_ns : 0;
    b->looked_at = now;
    if (b->timers.n > 0) {
      int64_t until = ioq_heap_top(&b->timers)->deadline - ioq_now_ns();
      if (until < 0) until = 0;
      if (wait < 0 || until < wait) wait = until;
    }
    if (b->rerun != NULL)  /* ops that can go on now: only look */
      wait = 0;
    if (kick_at >= 0) {  /* interrupt the workers' calls again then */
      int64_t until = kick_at - ioq_now_ns();
      if (until < 0) until = 0;
      if (wait < 0 || until < wait) wait = until;
    }
    n = 0;
    if (b->checks != NULL && wait != 0) {
      /* Only look first: the checks are due before the loop sleeps. */
      n = wait_events(b, evs, 0);
      if (n == 0)
        check_later(b, 1);
    }
    if (n == 0)
      n = wait_events(b, evs, wait);
    if (n < 0)
      return -errno;  /* -EINTR included */
    for (i = 0; i < n; i++) {
      watch *w = evs[i].data.ptr;
      unsigned e = evs[i].events;
      if (w == NULL) {
        collect_workers(b);
        continue;
      }
      if (e & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        w->ended = 1;
      if (e & EPOLLPRI)
        w->urgent = 1;
      /* A report gives the readiness at the time it is read, and an edge
      ** may be older than the bytes a try took since: only a direction
      ** it names is tried (a report with EPOLLOUT alone is such a stale
      ** edge for the readers). */
      if (e & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        w->ready |= EPOLLIN;
        run_waiters(b, w, EPOLLIN);
      }
      if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        w->ready |= EPOLLOUT;
        run_waiters(b, w, EPOLLOUT);
      }
    }
    b->pass++;  /* a loop polling with no timeout ages the checks too */
    rerun(b);
    if (b->checks != NULL)
      check_later(b, 0);
  }
  expire(b);  /* also when events were waiting: timers must not starve */
  for (k = 0; k < max && b->done.n > 0; k++) {
    out[k] = *(ioq_event *)ioq_ring_shift(&b->done, sizeof *out);
  }
  return k;
}

static int epoll_features(ioq_backend *b, const char **names, int max) {
  int n = 0;
  if (n < max) names[n++] = "workers";
  if (n < max && (b->caps & IOQ_CAP_MULTISHOT_ACCEPT))
    names[n++] = "multishot_accept";
  if (n < max && (b->caps & IOQ_CAP_POOL))
    names[n++] = "provided_buffers";
  return n;
}

/* The pool (see ioq_bufstack.h). Its memory is not touched here: a
** buffer costs resident memory only once a receive has used it. */
static int epoll_pool_create(ioq_backend *base, unsigned count,
                             unsigned size, ioq_pool **out) {
  epoll_backend *b = (epoll_backend *)base;
  int r;
  if (b->bufs == NULL) {
    if (!(base->caps & IOQ_CAP_POOL))
      return -EOPNOTSUPP;
    if ((r = ioq_bufstack_new(count, size, &b->bufs)) < 0)
      return r;
  }
  *out = &b->bufs->base;
  return 0;
}

const ioq_backend_class ioq_epoll_backend = {
  "epoll",
  epoll_create_backend,
  epoll_destroy,
  epoll_start,
  epoll_cancel,
  epoll_submit,
  epoll_reap,
  epoll_features,
  epoll_pool_create,
};
