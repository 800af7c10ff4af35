/*
** backend_uring.c: the io_uring backend (liburing).
**
** Each op's address is its SQE's user_data, so a CQE leads straight back to
** the op. SQEs that the backend adds on its own (cancel requests) carry
** INTERNAL_TAG, and their CQEs are dropped, as are those of any SQE that
** liburing adds on its own (LIBURING_UDATA_TIMEOUT).
**
** An op's timeout (timeout_ns) is kept here, in a heap of deadlines, not
** as a linked timeout in the kernel: since Linux 6.15 a linked timeout is
** armed only once its op's first attempt returns, so an op that blocks in
** an io-wq worker (an open of a FIFO with no peer, with O_CREAT) would
** never time out. When a deadline passes, reap asks the kernel to cancel
** the op, which also interrupts a worker, and the op ends with ETIMEDOUT.
** Every op then takes exactly one SQE, however small the ring.
**
** What the ring cannot do (IOQ_CALL, and any op whose kernel opcode the
** probe does not list) goes to a pool of worker threads (ioq_workers.c),
** started on first use. A poll on the pool's eventfd, with its own
** user_data, wakes the ring's wait when a worker finishes; reap then hands
** the finished ops out with the CQEs. A pool op's cancel or timeout goes
** to the pool, which ends it before it starts or interrupts its call.
**
** A forked child shares the ring (and its registrations) with its parent:
** the child must never submit, cancel, register or unregister anything,
** so every entry point refuses to run there (EPERM), and destroy only lets
** go of the child's own copy.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <liburing.h>

#include "ioq_heap.h"
#include "ioq_list.h"
#include "ioq_os.h"
#include "ioq_workers.h"

/* The pool: provided buffers in a ring the kernel takes them from. */
typedef struct uring_pool {
  ioq_pool base;
  struct io_uring_buf_ring *br;
  size_t br_bytes;
} uring_pool;

typedef struct uring_backend {
  ioq_backend base;
  struct io_uring ring;
  unsigned features;       /* IORING_FEAT_* the kernel reported */
  unsigned setup;          /* the IORING_SETUP_* flags the ring has */
  int registered;          /* the ring's fd is registered (see below) */
  uring_pool *pool;        /* NULL until asked for */
  pid_t pid;               /* the process that made the ring */
  unsigned long forks;     /* the fork count when pid was last checked */
  ioq_heap timed;          /* ops with a timeout, through op->be.timeout */
  unsigned char native[IOQ_NOPCODES];  /* the ring does it (else: the pool) */
  ioq_workers workers;     /* evfd -1 until the first pool op */
  int work_live;           /* ops on the pool, not yet reported */
  int work_polling;        /* the poll on the pool's eventfd is armed */
  ioq_list work_done;      /* back from the pool, to report */
} uring_backend;

/* IORING_OP_FTRUNCATE (Linux 6.9), newer than liburing 2.3's headers. */
#define OP_FTRUNCATE 55

/* The buffer group of the pool (a ring has at most one pool here). */
#define POOL_GROUP 0

/* user_data of SQEs whose completions nobody waits for. */
#define INTERNAL_TAG ((uint64_t)0)

/* user_data of the poll on the worker pool's eventfd (never an op's
** address: ops are aligned). */
#define WORK_TAG ((uint64_t)1)

/* A pool op keeps its ioq_job in its private space (which the ring's own
** ops use for timespecs and msghdrs, never the pool's). */
#define WORK_LINK offsetof(ioq_op, be.op)

/* The longest wait while ops are on the pool (see uring_reap). */
#define WORK_SLICE_NS 10000000
_Static_assert(sizeof(ioq_job) <= sizeof(((ioq_op *)0)->be.op),
               "an op's private space holds its ioq_job");

/* Largest batch of CQEs looked at in one go. */
#define CQE_BATCH 256

/* ---------------------------------------------------------------- forks */

/*
** Forks, counted by an atfork handler, so that noticing one costs a load
** rather than a getpid() system call on every start.
*/
static volatile unsigned long forks;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;

static void count_fork(void) {
  forks++;
}

static void watch_forks(void) {
  pthread_atfork(NULL, NULL, count_fork);
}

/* True in a forked child of the process that made the ring. */
static int forked(uring_backend *u) {
  if (u->forks == forks)
    return 0;
  if (getpid() != u->pid)
    return 1;
  u->forks = forks;  /* we are the parent: no need to ask again */
  return 0;
}

_Static_assert(sizeof(struct __kernel_timespec) == 2 * sizeof(int64_t),
               "ioq_op keeps kernel timespecs as two int64_t");

/* The op's own timespec (a sleep's). */
static struct __kernel_timespec *op_timespec(ioq_op *op) {
  return (struct __kernel_timespec *)(void *)op->be.op.ts;
}


/* sendmsg/recvmsg keep their msghdr and iovec in the op's private space. */
typedef struct msgspace {
  struct msghdr msg;
  struct iovec iov;
} msgspace;

_Static_assert(sizeof(msgspace) <= sizeof(((ioq_op *)0)->be.op),
               "ioq_op's private space holds a msghdr and an iovec");

static msgspace *op_msgspace(ioq_op *op) {
  return (msgspace *)(void *)&op->be.op;
}

static struct msghdr *op_msghdr(ioq_op *op) {
  msgspace *m = op_msgspace(op);
  memset(m, 0, sizeof *m);
  m->iov.iov_base = op->buf;
  m->iov.iov_len = op->len;
  m->msg.msg_name = op->addr;
  m->msg.msg_namelen = op->addrlen;
  m->msg.msg_iov = &m->iov;
  m->msg.msg_iovlen = 1;
  return &m->msg;
}

static void set_timespec(struct __kernel_timespec *ts, int64_t ns) {
  ts->tv_sec = ns / 1000000000;
  ts->tv_nsec = ns % 1000000000;
}

/* ---------------------------------------------------------------- timeouts */

/*
** An op's timeout lives in op->be.timeout, a heap node, which is in
** u->timed (slot != 0) while the timeout is armed. Out of the heap, its
** deadline says why, as one of these (no real deadline is negative).
*/
#define TIMER_NONE  ((int64_t)0)   /* no timeout, or it was disarmed */
#define TIMER_FIRED ((int64_t)-1)  /* the deadline passed: cancel asked */

/* How soon a timeout whose cancel found no room is tried again. */
#define TIMER_RETRY_NS 1000000

/* The op whose timeout node is t. */
static ioq_op *timed_op(ioq_heap_node *t) {
  return (ioq_op *)(void *)((char *)t - offsetof(ioq_op, be.timeout));
}

static int timer_armed(const ioq_op *op) {
  return op->be.timeout.slot != 0;
}

static int timer_fired(const ioq_op *op) {
  return !timer_armed(op) && op->be.timeout.deadline == TIMER_FIRED;
}

/* Arms the op's timeout (it is TIMER_NONE). 0 or -ENOMEM. */
static int timer_add(uring_backend *u, ioq_op *op, int64_t deadline) {
  return ioq_heap_push(&u->timed, &op->be.timeout, deadline);
}

/* Takes the op out of the heap; its state becomes `state`. */
static void timer_remove(uring_backend *u, ioq_op *op, int64_t state) {
  ioq_heap_remove(&u->timed, &op->be.timeout);
  op->be.timeout.deadline = state;
}

/* A free SQE, submitting what is queued first if the ring is full. */
static struct io_uring_sqe *get_sqe(uring_backend *u) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (sqe == NULL) {
    io_uring_submit(&u->ring);  /* on failure the SQEs wait for the next */
    sqe = io_uring_get_sqe(&u->ring);
  }
  return sqe;
}

/* ---------------------------------------------------------------- workers */

/*
** Arms the poll that wakes the ring's wait when a worker finishes. With
** no room for it now, reap looks at the pool on each call until it is.
*/
static void work_arm(uring_backend *u) {
  struct io_uring_sqe *sqe;
  if (u->work_polling || u->work_live == 0)
    return;
  if ((sqe = get_sqe(u)) == NULL)
    return;
  io_uring_prep_poll_add(sqe, u->workers.evfd, POLLIN);
  io_uring_sqe_set_data64(sqe, WORK_TAG);
  u->work_polling = 1;
}

/* An op off the pool, to be reported by reap with `res`. */
static void work_back(uring_backend *u, ioq_op *op, int64_t res) {
  op->res = res;
  ioq_list_push(&u->work_done, op, WORK_LINK);
}

/* Gives the op to a worker, starting the pool on first use. */
static int work_start(uring_backend *u, ioq_op *op) {
  int r;
  if (u->workers.evfd < 0 &&
      (r = ioq_workers_init(&u->workers, WORK_LINK)) < 0)
    return r;
  op->be.timeout.slot = 0;
  op->be.timeout.deadline = TIMER_NONE;
  if (op->timeout_ns > 0 && op->code != IOQ_CLOSE &&
      timer_add(u, op, ioq_now_ns() + op->timeout_ns) < 0)
    return -ENOMEM;
  if ((r = ioq_workers_push(&u->workers, op)) < 0) {
    if (timer_armed(op))
      timer_remove(u, op, TIMER_NONE);
    return r;
  }
  u->work_live++;
  work_arm(u);
  return 0;
}

/* A cancel or a timeout of a pool op: it ends now if no worker had it,
** else its call is interrupted and it comes back from the worker. */
static void work_abort(uring_backend *u, ioq_op *op, int res) {
  if (ioq_workers_abort(&u->workers, op, res))
    work_back(u, op, res);
}

/* Takes what the workers have finished, and arms the poll again. */
static void work_collect(uring_backend *u) {
  ioq_workers_collect(&u->workers, &u->work_done);
  work_arm(u);
}

/* Reports up to `max` ops back from the pool. */
static int work_report(uring_backend *u, ioq_event *ev, int max) {
  ioq_op *op;
  int k = 0;
  while (k < max && (op = u->work_done.head) != NULL) {
    ioq_list_remove(&u->work_done, op, WORK_LINK);
    u->work_live--;
    if (timer_armed(op))
      timer_remove(u, op, TIMER_NONE);
    ev[k].op = op;
    ev[k].res = op->res;
    ev[k].buf = -1;
    ev[k].more = 0;
    k++;
  }
  return k;
}

/*
** Asks the kernel to cancel every op whose deadline has passed. A cancel
** that finds no room in the ring is tried again soon after.
*/
static void fire_timers(uring_backend *u) {
  int64_t now = ioq_now_ns();
  int asked = 0;
  ioq_heap_node *next;
  while ((next = ioq_heap_top(&u->timed)) != NULL && next->deadline <= now) {
    ioq_op *op = timed_op(next);
    struct io_uring_sqe *sqe;
    if (!u->native[op->code]) {
      timer_remove(u, op, TIMER_FIRED);
      work_abort(u, op, -ETIMEDOUT);
      continue;
    }
    sqe = get_sqe(u);
    if (sqe == NULL) {
      ioq_heap_update(&u->timed, next, now + TIMER_RETRY_NS);
      break;
    }
    timer_remove(u, op, TIMER_FIRED);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    io_uring_sqe_set_data64(sqe, INTERNAL_TAG);
    asked = 1;
  }
  if (asked)
    io_uring_submit(&u->ring);  /* on failure they go with the next wait */
}

/*
** The ring flags worth having, best first: one task submits and reaps
** (SINGLE_ISSUER), so completions can run when we ask for them
** (DEFER_TASKRUN) instead of interrupting us; failing that, without
** forced interrupts (COOP_TASKRUN). Older kernels reject newer flags with
** EINVAL, so creation walks down this list. IOQ_URING_SETUP=NAME starts
** lower, to test the fallbacks.
*/
static const struct { const char *name; unsigned flags; } setups[] = {
  {"defer", IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
              IORING_SETUP_DEFER_TASKRUN},
  {"coop", IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
             IORING_SETUP_TASKRUN_FLAG},
  {"submit_all", IORING_SETUP_SUBMIT_ALL},
  {"plain", 0},
};
#define NSETUPS (sizeof setups / sizeof setups[0])

static size_t first_setup(void) {
  const char *want = getenv("IOQ_URING_SETUP");
  size_t i;
  if (want != NULL)
    for (i = 0; i < NSETUPS; i++)
      if (strcmp(setups[i].name, want) == 0)
        return i;
  return 0;
}

/*
** What ioq needs from the kernel, asked of the ring itself rather than
** read from a version number (vendor kernels backport; containers lie).
** IORING_FEAT_EXT_ARG (Linux 5.11) lets a wait carry its own timeout;
** without it liburing queues a timeout SQE of its own for every timed
** wait, which takes room in the ring behind our back, and those kernels
** (5.6 to 5.10) also lack IORING_OP_SHUTDOWN and several fixes to
** cancellation that ioq relies on. Such a kernel gets -ENOSYS here, so
** "auto" takes the epoll backend instead, as libuv turns io_uring down
** on old kernels.
*/
static const unsigned char required_ops[] = {
  IORING_OP_NOP, IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FSYNC,
  IORING_OP_OPENAT, IORING_OP_TIMEOUT, IORING_OP_ACCEPT, IORING_OP_CONNECT,
  IORING_OP_RECV, IORING_OP_SEND, IORING_OP_RECVMSG, IORING_OP_SENDMSG,
  IORING_OP_SHUTDOWN, IORING_OP_ASYNC_CANCEL,
};

/*
** The kernel opcode of each ioq op, or -1 for none (the pool does it).
** An op whose opcode the probe does not list goes to the pool too.
*/
static int ring_opcode(int code) {
  switch (code) {
    case IOQ_NOP: return IORING_OP_NOP;
    case IOQ_READ: return IORING_OP_READ;
    case IOQ_WRITE: return IORING_OP_WRITE;
    case IOQ_FSYNC: return IORING_OP_FSYNC;
    case IOQ_OPEN: return IORING_OP_OPENAT;
    case IOQ_SLEEP: return IORING_OP_TIMEOUT;
    case IOQ_ACCEPT: return IORING_OP_ACCEPT;
    case IOQ_CONNECT: return IORING_OP_CONNECT;
    case IOQ_RECV: return IORING_OP_RECV;
    case IOQ_SEND: return IORING_OP_SEND;
    case IOQ_RECVFROM: return IORING_OP_RECVMSG;
    case IOQ_SENDTO: return IORING_OP_SENDMSG;
    case IOQ_SHUTDOWN: return IORING_OP_SHUTDOWN;
    case IOQ_POLL: return IORING_OP_POLL_ADD;
    case IOQ_STAT: return IORING_OP_STATX;
    case IOQ_UNLINK: return IORING_OP_UNLINKAT;
    case IOQ_RMDIR: return IORING_OP_UNLINKAT;
    case IOQ_MKDIR: return IORING_OP_MKDIRAT;
    case IOQ_RENAME: return IORING_OP_RENAMEAT;
    case IOQ_LINK: return IORING_OP_LINKAT;
    case IOQ_SYMLINK: return IORING_OP_SYMLINKAT;
    case IOQ_TRUNCATE: return OP_FTRUNCATE;
    case IOQ_ALLOCATE: return IORING_OP_FALLOCATE;
    case IOQ_DATASYNC: return IORING_OP_FSYNC;
    case IOQ_CLOSE: return IORING_OP_CLOSE;
    case IOQ_READV: return IORING_OP_READV;
    case IOQ_WRITEV: return IORING_OP_WRITEV;
    default: return -1;  /* IOQ_CALL, IOQ_READLINK, IOQ_COPY: no opcode */
  }
}

static int has_required(uring_backend *u) {
  struct io_uring_probe *probe;
  size_t i;
  int ok = 1, code;
  if (!(u->features & IORING_FEAT_EXT_ARG) ||
      !(u->features & IORING_FEAT_NODROP))
    return 0;
  probe = io_uring_get_probe_ring(&u->ring);
  if (probe == NULL)
    return 0;
  for (i = 0; i < sizeof required_ops; i++)
    if (!io_uring_opcode_supported(probe, required_ops[i]))
      ok = 0;
  for (code = 0; code < IOQ_NOPCODES; code++)
    u->native[code] = ring_opcode(code) >= 0 &&
                      io_uring_opcode_supported(probe, ring_opcode(code));
  io_uring_free_probe(probe);
  return ok;
}

/* Waits a second or so for a CQE with `tag`; its result, or -ETIME. */
static int probe_wait(struct io_uring *ring, uint64_t tag, unsigned *flags) {
  struct __kernel_timespec ts = {0, 250000000};
  struct io_uring_cqe *cqe;
  int round;
  for (round = 0; round < 4; round++) {
    io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
    while (io_uring_peek_cqe(ring, &cqe) == 0) {
      int res = cqe->res;
      int match = io_uring_cqe_get_data64(cqe) == tag;
      *flags = cqe->flags;
      io_uring_cqe_seen(ring, cqe);
      if (match)
        return res;
    }
  }
  return -ETIME;
}

/* A multishot accept of a connection that is already waiting. */
static int try_multishot_accept(struct io_uring *ring) {
  struct sockaddr_un a;
  socklen_t len = sizeof a;
  unsigned flags = 0;
  int ok = 0, res;
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  /* An address of just the family: the kernel picks an abstract name. */
  if (l >= 0 && c >= 0 &&
      bind(l, (struct sockaddr *)&a, sizeof(sa_family_t)) == 0 &&
      listen(l, 1) == 0 && getsockname(l, (struct sockaddr *)&a, &len) == 0 &&
      connect(c, (struct sockaddr *)&a, len) == 0) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_multishot_accept(sqe, l, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, 1);
    res = probe_wait(ring, 1, &flags);
    ok = res >= 0 && (flags & IORING_CQE_F_MORE);
    if (res >= 0)
      close(res);
  }
  if (c >= 0) close(c);
  if (l >= 0) close(l);
  return ok;
}

/* A multishot receive of a byte waiting, into a buffer ring at `br`. */
static int try_multishot_recv(struct io_uring *ring,
                              struct io_uring_buf_ring *br) {
  static char byte;
  struct io_uring_buf_reg reg;
  unsigned flags = 0;
  int ok = 0, s[2];
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (uint64_t)(uintptr_t)br;
  reg.ring_entries = 1;
  reg.bgid = POOL_GROUP;
  if (io_uring_register_buf_ring(ring, &reg, 0) != 0)
    return 0;
  io_uring_buf_ring_init(br);
  io_uring_buf_ring_add(br, &byte, 1, 0, io_uring_buf_ring_mask(1), 0);
  io_uring_buf_ring_advance(br, 1);
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) == 0) {
    if (write(s[1], "x", 1) == 1) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
      io_uring_prep_recv_multishot(sqe, s[0], NULL, 0, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = POOL_GROUP;
      io_uring_sqe_set_data64(sqe, 2);
      ok = probe_wait(ring, 2, &flags) == 1 &&
           (flags & IORING_CQE_F_BUFFER) && (flags & IORING_CQE_F_MORE);
    }
    close(s[0]);
    close(s[1]);
  }
  return ok;
}

/*
** Multishot accept (Linux 5.19) and multishot receive into provided
** buffers (6.0) are flags on old opcodes, so a probe cannot show them:
** they are tried once per process on a scratch ring. An older kernel
** rejects the flags with EINVAL.
*/
static unsigned probed_caps;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe_caps(void) {
  struct io_uring ring;
  struct io_uring_buf_ring *br;
  unsigned caps = 0;
  if (io_uring_queue_init(4, &ring, 0) != 0)
    return;
  br = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
            -1, 0);
  if (try_multishot_accept(&ring))
    caps |= IOQ_CAP_MULTISHOT_ACCEPT;
  if (br != MAP_FAILED && try_multishot_recv(&ring, br))
    caps |= IOQ_CAP_POOL;
  /* The ring goes first: it ends the ops still armed, and the kernel keeps
  ** the buffer ring's pages for as long as it needs them. */
  io_uring_queue_exit(&ring);
  if (br != MAP_FAILED)
    munmap(br, 4096);
  probed_caps = caps;
}

static int uring_create(ioq_backend **out, unsigned entries) {
  uring_backend *u = calloc(1, sizeof *u);
  size_t i;
  int r = -EINVAL;
  if (u == NULL)
    return -ENOMEM;
  pthread_once(&forks_once, watch_forks);
  for (i = first_setup(); i < NSETUPS; i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = setups[i].flags;
    r = io_uring_queue_init_params(entries, &u->ring, &p);
    if (r == 0) {
      u->features = p.features;
      u->setup = setups[i].flags;
      break;
    }
    if (r != -EINVAL)
      break;
  }
  if (r == 0 && !has_required(u)) {
    io_uring_queue_exit(&u->ring);
    r = -ENOSYS;
  }
  if (r < 0) {
    free(u);
    return r;
  }
  u->pid = getpid();
  u->forks = forks;
  u->workers.evfd = -1;
  /*
  ** A registered ring fd (Linux 5.18) spares every io_uring_enter the
  ** lookup of the ring's descriptor; liburing then enters through it.
  ** The registration belongs to this thread, the only one that may drive
  ** the ring (lioq_checkowner). A thread has room for 16: a queue past
  ** them, or an older kernel (EINVAL), enters through the descriptor.
  ** IOQ_URING_NO_RINGFD=1 turns it off, to test what runs without it.
  */
  if (getenv("IOQ_URING_NO_RINGFD") == NULL)
    u->registered = io_uring_register_ring_fd(&u->ring) == 1;
  /* IOQ_NO_MULTISHOT=1 turns both off, to test what runs without them. */
  if (getenv("IOQ_NO_MULTISHOT") == NULL) {
    pthread_once(&probe_once, probe_caps);
    u->base.caps |= probed_caps;
  }
  u->base.cls = &ioq_uring_backend;
  *out = &u->base;
  return 0;
}

/*
** Every op has been reaped. In a forked child the ring, the pool's
** registration and the kernel's work all belong to the parent: the child
** only lets go of its own copy (its mappings and its descriptor), which
** the kernel does not count as the ring's end while the parent has it.
*/
static void uring_destroy(ioq_backend *b) {
  uring_backend *u = (uring_backend *)b;
  int child = forked(u);
  if (u->pool != NULL) {
    uring_pool *p = u->pool;
    if (!child)
      io_uring_unregister_buf_ring(&u->ring, POOL_GROUP);
    munmap(p->br, p->br_bytes);
    p->base.recycle = NULL;
    ioq_pool_unref(&p->base);
  }
  io_uring_queue_exit(&u->ring);
  ioq_workers_free(&u->workers);  /* every op on it has been reaped */
  ioq_heap_free(&u->timed);
  free(u);
}

static void pool_recycle(ioq_pool *base, int buf) {
  uring_pool *p = (uring_pool *)base;
  io_uring_buf_ring_add(p->br, base->mem + (size_t)buf * base->size,
                        base->size, (unsigned short)buf,
                        io_uring_buf_ring_mask(base->count), 0);
  io_uring_buf_ring_advance(p->br, 1);
  base->nfree++;
}

/*
** The pool: `count` buffers handed to the kernel through a buffer ring
** (IORING_REGISTER_PBUF_RING, written here on liburing 2.3's calls).
*/
static int uring_pool_create(ioq_backend *b, unsigned count, unsigned size,
                             ioq_pool **out) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_buf_reg reg;
  uring_pool *p;
  void *mem = NULL;
  unsigned i;
  int r;
  if (forked(u))
    return -EPERM;
  if (u->pool != NULL) {
    *out = &u->pool->base;
    return 0;
  }
  if (!(b->caps & IOQ_CAP_POOL))
    return -EOPNOTSUPP;
  p = calloc(1, sizeof *p);
  if (p == NULL)
    return -ENOMEM;
  p->br_bytes = (size_t)count * sizeof(struct io_uring_buf);
  p->br = mmap(NULL, p->br_bytes, PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (p->br == MAP_FAILED) {
    free(p);
    return -ENOMEM;
  }
  if (posix_memalign(&mem, 4096, (size_t)count * size) != 0) {
    munmap(p->br, p->br_bytes);
    free(p);
    return -ENOMEM;
  }
  /* Zeroed, though the kernel overwrites it: valgrind cannot see the
  ** kernel's writes through io_uring and would call the bytes undefined. */
  memset(mem, 0, (size_t)count * size);
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (uint64_t)(uintptr_t)p->br;
  reg.ring_entries = count;
  reg.bgid = POOL_GROUP;
  r = io_uring_register_buf_ring(&u->ring, &reg, 0);
  if (r != 0) {
    free(mem);
    munmap(p->br, p->br_bytes);
    free(p);
    return r < 0 ? r : -EINVAL;
  }
  io_uring_buf_ring_init(p->br);
  p->base.refs = 1;
  p->base.count = count;
  p->base.size = size;
  p->base.mem = mem;
  p->base.recycle = pool_recycle;
  for (i = 0; i < count; i++)
    io_uring_buf_ring_add(p->br, p->base.mem + (size_t)i * size, size,
                          (unsigned short)i, io_uring_buf_ring_mask(count),
                          (int)i);
  io_uring_buf_ring_advance(p->br, (int)count);
  p->base.nfree = count;
  u->pool = p;
  *out = &p->base;
  return 0;
}

/*
** One SQE per op, whatever the op and its timeout, so a ring of any size
** (entries = 1 included) can always take the next op once it has been
** submitted. The timeout goes into the heap before the SQE is taken, so a
** failure there leaves the ring as it was.
*/
_Static_assert(IOQ_POLLIN == POLLIN && IOQ_POLLOUT == POLLOUT,
               "IOQ_POLL's events are poll(2)'s");

static int uring_start(ioq_backend *b, ioq_op *op) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_sqe *sqe;
  if (forked(u))
    return -EPERM;
  if (op->code >= IOQ_NOPCODES)
    return -EINVAL;
  if (!u->native[op->code])
    return work_start(u, op);
  if (io_uring_sq_space_left(&u->ring) < 1)
    return -EAGAIN;
  op->be.timeout.slot = 0;
  op->be.timeout.deadline = TIMER_NONE;
  if (op->timeout_ns > 0 && op->code != IOQ_CLOSE &&
      timer_add(u, op, ioq_now_ns() + op->timeout_ns) < 0)
    return -ENOMEM;
  sqe = io_uring_get_sqe(&u->ring);
  switch (op->code) {
    case IOQ_NOP:
      io_uring_prep_nop(sqe);
      break;
    case IOQ_READ:
      io_uring_prep_read(sqe, op->fd, op->buf, op->len, (uint64_t)op->offset);
      break;
    case IOQ_WRITE:
      io_uring_prep_write(sqe, op->fd, op->buf, op->len, (uint64_t)op->offset);
      break;
    case IOQ_FSYNC:
      io_uring_prep_fsync(sqe, op->fd, 0);
      break;
    case IOQ_OPEN:
      io_uring_prep_openat(sqe, AT_FDCWD, op->buf, op->flags,
                           (mode_t)op->mode);
      break;
    case IOQ_SLEEP:
      set_timespec(op_timespec(op), op->ns);
      io_uring_prep_timeout(sqe, op_timespec(op), 0, 0);
      break;
    case IOQ_ACCEPT:
      if (op->multishot)
        io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL,
                                       SOCK_NONBLOCK | SOCK_CLOEXEC);
      else
        io_uring_prep_accept(sqe, op->fd, NULL, NULL,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case IOQ_CONNECT:
      io_uring_prep_connect(sqe, op->fd, op->addr, op->addrlen);
      break;
    case IOQ_RECV:
      if (op->use_pool) {
        /* The kernel picks a pool buffer once data is there (length 0:
        ** the buffer's size): an idle socket holds none. */
        if (op->multishot)
          io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
        else
          io_uring_prep_recv(sqe, op->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = POOL_GROUP;
      } else {
        io_uring_prep_recv(sqe, op->fd, op->buf, op->len, 0);
      }
      break;
    case IOQ_SEND:
      io_uring_prep_send(sqe, op->fd, op->buf, op->len, MSG_NOSIGNAL);
      break;
    case IOQ_RECVFROM:
      op->addrlen = sizeof(struct sockaddr_storage);
      io_uring_prep_recvmsg(sqe, op->fd, op_msghdr(op), 0);
      break;
    case IOQ_SENDTO:
      io_uring_prep_sendmsg(sqe, op->fd, op_msghdr(op), MSG_NOSIGNAL);
      break;
    case IOQ_SHUTDOWN:
      io_uring_prep_shutdown(sqe, op->fd, op->flags);
      break;
    case IOQ_POLL:  /* one-shot: the ready events are the result */
      io_uring_prep_poll_add(sqe, op->fd, (unsigned)op->flags);
      break;
    case IOQ_STAT:
      io_uring_prep_statx(sqe, op->buf ? AT_FDCWD : op->fd,
                          op->buf ? op->buf : "",
                          ((op->flags & IOQ_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW
                                                      : 0) |
                          (op->buf ? 0 : AT_EMPTY_PATH),
                          STATX_BASIC_STATS | STATX_BTIME, op->addr);
      break;
    case IOQ_UNLINK:
      io_uring_prep_unlinkat(sqe, AT_FDCWD, op->buf, 0);
      break;
    case IOQ_RMDIR:
      io_uring_prep_unlinkat(sqe, AT_FDCWD, op->buf, AT_REMOVEDIR);
      break;
    case IOQ_MKDIR:
      io_uring_prep_mkdirat(sqe, AT_FDCWD, op->buf, (mode_t)op->mode);
      break;
    case IOQ_RENAME:
      io_uring_prep_renameat(sqe, AT_FDCWD, op->buf, AT_FDCWD, op->addr,
                             op->flags & IOQ_NOREPLACE ? RENAME_NOREPLACE : 0);
      break;
    case IOQ_LINK:
      io_uring_prep_linkat(sqe, AT_FDCWD, op->buf, AT_FDCWD, op->addr, 0);
      break;
    case IOQ_SYMLINK:
      io_uring_prep_symlinkat(sqe, op->buf, AT_FDCWD, op->addr);
      break;
    case IOQ_TRUNCATE:
      /* liburing 2.3 has no helper: as io_uring_prep_ftruncate fills it,
      ** the new size in `off`, and everything else zero. */
      io_uring_prep_rw(OP_FTRUNCATE, sqe, op->fd, NULL, 0,
                       (uint64_t)op->offset);
      break;
    case IOQ_ALLOCATE:
      io_uring_prep_fallocate(sqe, op->fd, op->mode, op->offset, op->ns);
      break;
    case IOQ_DATASYNC:
      io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
      break;
    case IOQ_CLOSE:
      io_uring_prep_close(sqe, op->fd);
      break;
    case IOQ_READV:
      io_uring_prep_readv(sqe, op->fd, op->buf, (unsigned)op->flags,
                          (uint64_t)op->offset);
      break;
    case IOQ_WRITEV:
      io_uring_prep_writev(sqe, op->fd, op->buf, (unsigned)op->flags,
                           (uint64_t)op->offset);
      break;
    default:  /* not reached: checked above */
      io_uring_prep_nop(sqe);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
  return 0;
}

/*
** submit, reap and cancel enter the kernel; under IORING_SETUP_SINGLE_ISSUER
** (the "defer" setup) the kernel refuses every thread but the one that
** made the ring with -EEXIST. They then return that -EEXIST before they
** change anything here: SQEs already queued stay queued for the owner, and
** CQEs stay in the ring.
*/
static int uring_submit(ioq_backend *b) {
  uring_backend *u = (uring_backend *)b;
  if (forked(u))
    return -EPERM;
  return io_uring_submit(&u->ring);
}

static int uring_cancel(ioq_backend *b, ioq_op *op) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_sqe *sqe;
  if (forked(u))
    return -EPERM;
  if (!u->native[op->code]) {
    work_abort(u, op, -ECANCELED);
    return 0;
  }
  sqe = io_uring_get_sqe(&u->ring);
  if (sqe == NULL) {
    int r = io_uring_submit(&u->ring);
    if (r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR)
      return r;
    sqe = io_uring_get_sqe(&u->ring);
    if (sqe == NULL)
      return -EAGAIN;
  }
  io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
  io_uring_sqe_set_data64(sqe, INTERNAL_TAG);
  return 0;
}

/*
** errno values from 512 up are the kernel's own (include/linux/errno.h),
** never meant for user space; a system call turns them into these before
** it returns, but a CQE carries them as they are. An op that a worker was
** running when it was canceled ends with one of the restart codes: the
** worker took the cancel as a signal.
*/
#define KERNEL_ERRNO_BASE     512
#define KERNEL_ERESTARTNOHAND 514
#define KERNEL_ENOIOCTLCMD    515
#define KERNEL_ERESTARTBLOCK  516
#define KERNEL_ENOTSUPP       524

/*
** The op's result as the binding wants it: a cancel that the script asked
** for is ECANCELED and one that its timeout asked for is ETIMEDOUT,
** whatever way the kernel put it, and no kernel-internal errno gets out
** (an interruption nobody asked for is EINTR).
*/
static int64_t op_result(ioq_op *op, int res) {
  int interrupted = res == -EINTR;
  if (op->code == IOQ_SLEEP && res == -ETIME)
    return 0;  /* the time passed: that is success for a sleep */
  if (res <= -KERNEL_ERRNO_BASE) {
    if (res == -KERNEL_ENOIOCTLCMD)
      return -ENOTTY;
    if (res == -KERNEL_ENOTSUPP)
      return -EOPNOTSUPP;
    if (res < -KERNEL_ERESTARTNOHAND && res != -KERNEL_ERESTARTBLOCK)
      return -EIO;  /* ERESTARTSYS up to ERESTARTNOHAND are restarts */
    interrupted = 1;
  }
  if (!interrupted && res != -ECANCELED)
    return res;
  if (op->cancel_requested)
    return -ECANCELED;
  if (timer_fired(op))
    return -ETIMEDOUT;
  return interrupted ? -EINTR : res;
}

static int collect(uring_backend *u, ioq_event *ev, int max) {
  struct io_uring_cqe *cqes[CQE_BATCH];
  unsigned want = max < CQE_BATCH ? (unsigned)max : CQE_BATCH;
  unsigned n = io_uring_peek_batch_cqe(&u->ring, cqes, want);
  unsigned i;
  int k = 0;
  for (i = 0; i < n; i++) {
    uint64_t tag = io_uring_cqe_get_data64(cqes[i]);
    unsigned flags = cqes[i]->flags;
    ioq_op *op;
    if (tag == INTERNAL_TAG || tag == LIBURING_UDATA_TIMEOUT)
      continue;
    if (tag == WORK_TAG) {  /* a worker finished: reap collects */
      u->work_polling = 0;
      continue;
    }
    op = (ioq_op *)(uintptr_t)tag;
    ev[k].op = op;
    ev[k].res = op_result(op, cqes[i]->res);
    ev[k].more = (flags & IORING_CQE_F_MORE) != 0;
    ev[k].buf = -1;
    if (!ev[k].more && timer_armed(op))
      timer_remove(u, op, TIMER_NONE);
    if ((flags & IORING_CQE_F_BUFFER) && u->pool != NULL) {
      ev[k].buf = (int32_t)(flags >> IORING_CQE_BUFFER_SHIFT);
      u->pool->base.nfree--;
      u->pool->base.refs++;  /* lent to the binding */
    }
    if (op->code == IOQ_RECVFROM)
      op->addrlen = op_msgspace(op)->msg.msg_namelen;
    k++;
  }
  io_uring_cq_advance(&u->ring, n);
  return k;
}

/*
** Submits, waits (no longer than the next op deadline), collects, then
** asks for the ops whose deadline passed to be canceled. An error from the
** kernel (-EEXIST from a thread that is not the ring's issuer, -EINTR)
** returns before anything here has changed.
*/
static int uring_reap(ioq_backend *b, ioq_event *done, int max,
                      int64_t timeout_ns) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_cqe *cqe;
  int r = 0;
  if (forked(u))
    return -EPERM;
  if (u->timed.n > 0) {
    int64_t until = ioq_heap_top(&u->timed)->deadline - ioq_now_ns();
    if (until < 0)
      until = 0;
    if (timeout_ns < 0 || until < timeout_ns)
      timeout_ns = until;
  }
  if (u->work_live > 0) {
    int64_t now = ioq_now_ns(), kick_at = ioq_workers_tick(&u->workers, now);
    if (kick_at >= 0 && (timeout_ns < 0 || kick_at - now < timeout_ns))
      timeout_ns = kick_at > now ? kick_at - now : 0;
    if (!u->work_polling)
      work_collect(u);
    if (u->work_done.head != NULL)
      timeout_ns = 0;
  }
  if (u->work_live > 0 && timeout_ns != 0 &&
      io_uring_cq_ready(&u->ring) == 0) {
    /* While workers run, the wait is a ppoll on the ring and the pool's
    ** eventfd, then a look at the ring without waiting: valgrind's
    ** scheduler takes io_uring_enter for a call that never blocks, and
    ** would run no other thread (a worker) until it returned. The wait
    ** comes back now and then, should the ring's descriptor not report
    ** work the kernel defers to us. */
    struct pollfd p[2];
    struct timespec ts;
    int64_t wait = timeout_ns < 0 || timeout_ns > WORK_SLICE_NS
                 ? WORK_SLICE_NS : timeout_ns;
    r = io_uring_submit(&u->ring);
    if (r < 0 && r != -EBUSY && r != -EAGAIN)
      return r;
    p[0].fd = u->ring.ring_fd;
    p[1].fd = u->workers.evfd;
    p[0].events = p[1].events = POLLIN;
    p[0].revents = p[1].revents = 0;
    ts.tv_sec = wait / 1000000000;
    ts.tv_nsec = wait % 1000000000;
    if (ppoll(p, 2, &ts, NULL) < 0 && errno == EINTR)
      return -EINTR;
    timeout_ns = 0;
    if (p[1].revents != 0)
      work_collect(u);
  }
  if (io_uring_cq_ready(&u->ring) > 0) {
    if (io_uring_sq_ready(&u->ring) > 0) {
      r = io_uring_submit(&u->ring);
      if (r == -EINTR)
        r = 0;  /* the completions are here already */
    }
  } else if (timeout_ns == 0) {
    r = io_uring_submit_and_get_events(&u->ring);
  } else if (timeout_ns < 0) {
    r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, NULL, NULL);
  } else {
    struct __kernel_timespec ts;
    set_timespec(&ts, timeout_ns);
    r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
  }
  if (r < 0 && r != -ETIME && r != -EBUSY && r != -EAGAIN)
    return r;  /* -EINTR included: the caller decides whether to go on */
  /* Collected first, so that an op that did finish leaves the heap
  ** before its deadline could fire. */
  r = collect(u, done, max);
  if (u->timed.n > 0)
    fire_timers(u);
  if (u->work_live > 0) {
    if (!u->work_polling)
      work_collect(u);
    r += work_report(u, done + r, max - r);
  }
  return r;
}

static int uring_features(ioq_backend *b, const char **names, int max) {
  static const struct { unsigned flag; const char *name; } flags[] = {
    {IORING_SETUP_SINGLE_ISSUER, "single_issuer"},
    {IORING_SETUP_DEFER_TASKRUN, "defer_taskrun"},
    {IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
    {IORING_SETUP_SUBMIT_ALL, "submit_all"},
  };
  uring_backend *u = (uring_backend *)b;
  size_t i;
  int n = 0;
  for (i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if ((u->setup & flags[i].flag) && n < max)
      names[n++] = flags[i].name;
  if ((u->features & IORING_FEAT_NODROP) && n < max)
    names[n++] = "nodrop";
  if (u->registered && n < max)
    names[n++] = "registered_ring";
  if ((b->caps & IOQ_CAP_MULTISHOT_ACCEPT) && n < max)
    names[n++] = "multishot_accept";
  if ((b->caps & IOQ_CAP_POOL) && n < max)
    names[n++] = "provided_buffers";
  if (n < max)
    names[n++] = "workers";
  return n;
}

const ioq_backend_class ioq_uring_backend = {
  "io_uring",
  uring_create,
  uring_destroy,
  uring_start,
  uring_cancel,
  uring_submit,
  uring_reap,
  uring_features,
  uring_pool_create,
};
