/*
** backend_uring.c: the io_uring backend (liburing).
**
** Each op's address is its SQE's user_data, so a CQE leads straight back to
** the op. SQEs that the backend adds on its own (cancel requests, linked
** timeouts) carry INTERNAL_TAG and their CQEs are dropped.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/utsname.h>

#include <liburing.h>

#include "ioq.h"

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
  uring_pool *pool;        /* NULL until asked for */
  char describe[128];
} uring_backend;

/* The buffer group of the pool (a ring has at most one pool here). */
#define POOL_GROUP 0

/* user_data of SQEs whose completions nobody waits for. */
#define INTERNAL_TAG ((uint64_t)0)

/* Largest batch of CQEs looked at in one go. */
#define CQE_BATCH 256

_Static_assert(sizeof(struct __kernel_timespec) == 2 * sizeof(int64_t),
               "ioq_op keeps kernel timespecs as two int64_t");

/* The op's own timespec (sleep), and its linked timeout's. */
static struct __kernel_timespec *op_timespec(ioq_op *op) {
  return (struct __kernel_timespec *)(void *)op->be.op.ts;
}

static struct __kernel_timespec *timeout_timespec(ioq_op *op) {
  return (struct __kernel_timespec *)(void *)op->be.timeout;
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

/* The running kernel as major * 100 + minor (6.1 -> 601). */
static int kernel_version(void) {
  struct utsname un;
  int major = 0, minor = 0;
  if (uname(&un) == 0)
    sscanf(un.release, "%d.%d", &major, &minor);
  return major * 100 + minor;
}

static void describe(uring_backend *u) {
  static const struct { unsigned flag; const char *word; } words[] = {
    {IORING_SETUP_SINGLE_ISSUER, "single_issuer"},
    {IORING_SETUP_DEFER_TASKRUN, "defer_taskrun"},
    {IORING_SETUP_COOP_TASKRUN, "coop_taskrun"},
    {IORING_SETUP_SUBMIT_ALL, "submit_all"},
  };
  size_t i, n = 0;
  u->describe[0] = '\0';
  for (i = 0; i < sizeof words / sizeof words[0]; i++)
    if (u->setup & words[i].flag)
      n += (size_t)snprintf(u->describe + n, sizeof u->describe - n, "%s%s",
                            n ? " " : "", words[i].word);
  if (u->features & IORING_FEAT_NODROP)
    n += (size_t)snprintf(u->describe + n, sizeof u->describe - n, "%snodrop",
                          n ? " " : "");
  if (u->base.caps & IOQ_CAP_MULTISHOT_ACCEPT)
    n += (size_t)snprintf(u->describe + n, sizeof u->describe - n,
                          "%smultishot_accept", n ? " " : "");
  if (u->base.caps & IOQ_CAP_POOL)
    snprintf(u->describe + n, sizeof u->describe - n,
             "%sprovided_buffers", n ? " " : "");
}

static int uring_create(ioq_backend **out, unsigned entries) {
  uring_backend *u = calloc(1, sizeof *u);
  size_t i;
  int r = -EINVAL;
  if (u == NULL)
    return -ENOMEM;
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
  if (r < 0) {
    free(u);
    return r;
  }
  /* Multishot accept came in 5.19, buffer rings too, multishot recv in 6.0.
  ** IOQ_NO_MULTISHOT=1 turns both off, to test what runs without them. */
  if (getenv("IOQ_NO_MULTISHOT") == NULL) {
    if (kernel_version() >= 519)
      u->base.caps |= IOQ_CAP_MULTISHOT_ACCEPT;
    if (kernel_version() >= 600)
      u->base.caps |= IOQ_CAP_POOL;
  }
  describe(u);
  u->base.cls = &ioq_uring_backend;
  *out = &u->base;
  return 0;
}

static void uring_destroy(ioq_backend *b) {
  uring_backend *u = (uring_backend *)b;
  if (u->pool != NULL) {
    uring_pool *p = u->pool;
    io_uring_unregister_buf_ring(&u->ring, POOL_GROUP);
    munmap(p->br, p->br_bytes);
    p->base.recycle = NULL;
    ioq_pool_unref(&p->base);
  }
  io_uring_queue_exit(&u->ring);
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

static int uring_start(ioq_backend *b, ioq_op *op) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_sqe *sqe;
  unsigned need = op->timeout_ns > 0 ? 2 : 1;
  if (io_uring_sq_space_left(&u->ring) < need)
    return -EAGAIN;
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
        io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
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
    default:
      /* The SQE is already taken: turn it into a NOP nobody waits for. */
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, INTERNAL_TAG);
      return -EINVAL;
  }
  io_uring_sqe_set_data(sqe, op);
  if (op->timeout_ns > 0) {
    struct io_uring_sqe *tsqe = io_uring_get_sqe(&u->ring);
    sqe->flags |= IOSQE_IO_LINK;
    set_timespec(timeout_timespec(op), op->timeout_ns);
    io_uring_prep_link_timeout(tsqe, timeout_timespec(op), 0);
    io_uring_sqe_set_data64(tsqe, INTERNAL_TAG);
  }
  return 0;
}

static int uring_submit(ioq_backend *b) {
  uring_backend *u = (uring_backend *)b;
  return io_uring_submit(&u->ring);
}

static int uring_cancel(ioq_backend *b, ioq_op *op) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
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

/* The op's result as the binding wants it. */
static int64_t op_result(const ioq_op *op, int res) {
  if (op->code == IOQ_SLEEP && res == -ETIME)
    return 0;  /* the time passed: that is success for a sleep */
  if (res == -ECANCELED && op->timeout_ns > 0 && !op->cancel_requested)
    return -ETIMEDOUT;  /* its linked timeout fired */
  return res;
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
    if (tag == INTERNAL_TAG)
      continue;
    op = (ioq_op *)(uintptr_t)tag;
    ev[k].op = op;
    ev[k].res = op_result(op, cqes[i]->res);
    ev[k].more = (flags & IORING_CQE_F_MORE) != 0;
    ev[k].buf = -1;
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

static int uring_reap(ioq_backend *b, ioq_event *done, int max,
                      int64_t timeout_ns) {
  uring_backend *u = (uring_backend *)b;
  struct io_uring_cqe *cqe;
  int r;
  if (io_uring_cq_ready(&u->ring) > 0) {
    if (io_uring_sq_ready(&u->ring) > 0) {
      r = io_uring_submit(&u->ring);
      if (r < 0 && r != -EBUSY && r != -EAGAIN && r != -EINTR)
        return r;
    }
    return collect(u, done, max);
  }
  if (timeout_ns == 0) {
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
  return collect(u, done, max);
}

static const char *uring_features(ioq_backend *b) {
  return ((uring_backend *)b)->describe;
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
