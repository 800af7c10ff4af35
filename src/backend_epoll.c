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
*/
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ioq_os.h"

/* Where an op is, inside this backend. */
enum {
  EOP_STAGED,     /* started, not yet issued (issued at submit or reap) */
  EOP_WAITING,    /* on a watch, waiting for its descriptor */
  EOP_TIMER,      /* a sleep, waiting in the heap only */
  EOP_QUEUED,     /* waiting for a worker */
  EOP_RUNNING,    /* a worker has it: it can no longer be cancelled */
  EOP_DONE        /* its event is in `done` (or reported) */
};

typedef struct watch watch;

/* The per-op state, kept in the op's private space. */
typedef struct eop {
  ioq_op *next, *prev;     /* the list the op is on */
  watch *w;                /* EOP_WAITING: its watch */
  int64_t deadline;        /* the heap's key: a sleep's end or a timeout */
  int heap_index;          /* -1 when not in the heap */
  int state;
  int want;                /* EPOLLIN or EPOLLOUT */
  int blocking;            /* a blocking non-socket descriptor: wait first */
} eop;

_Static_assert(sizeof(eop) <= sizeof(((ioq_op *)0)->be.op),
               "the epoll backend keeps its op state in the op");

static eop *E(ioq_op *op) {
  return (eop *)(void *)&op->be.op;
}

typedef struct elist {
  ioq_op *head, *tail;
} elist;

/* The ops waiting on one descriptor, each direction in order. */
struct watch {
  int fd;
  unsigned registered;     /* the events epoll has for it now */
  elist readers, writers;
};

typedef struct epoll_backend {
  ioq_backend base;
  int epfd;
  int evfd;                /* workers post here when they finish */
  elist staged;
  watch **watches;         /* by descriptor */
  int nwatches;
  ioq_op **heap;           /* min-heap on E(op)->deadline */
  int heap_n, heap_cap;
  ioq_event *done;         /* finished, in order; a ring */
  int done_head, done_n, done_cap;
  int live;                /* ops taken whose final event is not posted */
  pid_t owner;             /* the process whose threads these are */
  /* The worker pool, started on first use. */
  pthread_mutex_t lock;
  pthread_cond_t wake;
  elist jobs;              /* EOP_QUEUED, under lock */
  elist finished;          /* back from workers, under lock */
  pthread_t *threads;
  int nthreads;
  int stopping;
} epoll_backend;

#define WORKERS 4
#define MAX_EVENTS 256

/* Set once epoll_pwait2 (Linux 5.11) turned out to be missing. */
static _Atomic int no_pwait2;


/* ---------------------------------------------------------------- lists */

static void push(elist *l, ioq_op *op) {
  E(op)->next = NULL;
  E(op)->prev = l->tail;
  if (l->tail) E(l->tail)->next = op;
  else l->head = op;
  l->tail = op;
}

static void unlink_op(elist *l, ioq_op *op) {
  eop *e = E(op);
  if (e->prev) E(e->prev)->next = e->next;
  else l->head = e->next;
  if (e->next) E(e->next)->prev = e->prev;
  else l->tail = e->prev;
  e->next = e->prev = NULL;
}

/* ---------------------------------------------------------------- heap */

static void heap_set(epoll_backend *b, int i, ioq_op *op) {
  b->heap[i] = op;
  E(op)->heap_index = i;
}

static void heap_up(epoll_backend *b, int i) {
  ioq_op *op = b->heap[i];
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (E(b->heap[parent])->deadline <= E(op)->deadline) break;
    heap_set(b, i, b->heap[parent]);
    i = parent;
  }
  heap_set(b, i, op);
}

static void heap_down(epoll_backend *b, int i) {
  ioq_op *op = b->heap[i];
  for (;;) {
    int l = 2 * i + 1, small = l;
    if (l >= b->heap_n) break;
    if (l + 1 < b->heap_n &&
        E(b->heap[l + 1])->deadline < E(b->heap[l])->deadline)
      small = l + 1;
    if (E(b->heap[small])->deadline >= E(op)->deadline) break;
    heap_set(b, i, b->heap[small]);
    i = small;
  }
  heap_set(b, i, op);
}

static int heap_add(epoll_backend *b, ioq_op *op, int64_t deadline) {
  if (b->heap_n == b->heap_cap) {
    int cap = b->heap_cap ? b->heap_cap * 2 : 64;
    ioq_op **h = realloc(b->heap, (size_t)cap * sizeof *h);
    if (h == NULL) return -ENOMEM;
    b->heap = h;
    b->heap_cap = cap;
  }
  E(op)->deadline = deadline;
  b->heap[b->heap_n] = op;
  heap_up(b, b->heap_n++);
  return 0;
}

static void heap_remove(epoll_backend *b, ioq_op *op) {
  int i = E(op)->heap_index;
  if (i < 0) return;
  E(op)->heap_index = -1;
  if (--b->heap_n > i) {
    heap_set(b, i, b->heap[b->heap_n]);
    heap_down(b, i);
    heap_up(b, E(b->heap[i])->heap_index);
  }
}

/* ---------------------------------------------------------------- done */

/* Makes room in the done ring for `room` more events; 0 if out of memory. */
static int reserve(epoll_backend *b, int room) {
  if (b->done_cap - b->done_n < room) {
    int cap = b->done_cap ? b->done_cap : 256, k;
    ioq_event *d;
    while (cap - b->done_n < room) cap *= 2;
    d = malloc((size_t)cap * sizeof *d);
    if (d == NULL) return 0;
    for (k = 0; k < b->done_n; k++)
      d[k] = b->done[(b->done_head + k) % b->done_cap];
    free(b->done);
    b->done = d;
    b->done_cap = cap;
    b->done_head = 0;
  }
  return 1;
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
  ev = &b->done[(b->done_head + b->done_n++) % b->done_cap];
  ev->op = op;
  ev->res = res;
  ev->buf = -1;
  ev->more = (uint8_t)more;
  return 1;
}

/* Ends an op with `res` (its room in the ring was reserved at start). */
static void finish(epoll_backend *b, ioq_op *op, int64_t res) {
  heap_remove(b, op);
  E(op)->state = EOP_DONE;
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
    b->watches[fd] = w;
  }
  return b->watches[fd];
}

/*
** Tells epoll what the watch's ops wait for. MOD first: the descriptor may
** have been closed (and its number reused) since it was added, which
** removes it from epoll; then ENOENT says to add it again.
*/
static int arm(epoll_backend *b, watch *w) {
  unsigned want = (w->readers.head ? EPOLLIN | EPOLLRDHUP : 0) |
                  (w->writers.head ? EPOLLOUT : 0);
  struct epoll_event ev;
  if (want == w->registered)
    return 0;
  memset(&ev, 0, sizeof ev);
  ev.events = want;
  ev.data.ptr = w;
  if (epoll_ctl(b->epfd, EPOLL_CTL_MOD, w->fd, &ev) != 0) {
    if (errno != ENOENT) return -errno;
    if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, w->fd, &ev) != 0) return -errno;
  }
  w->registered = want;
  return 0;
}

/* ---------------------------------------------------------------- doing */

/*
** Tries an op that needs a ready descriptor, without blocking. Returns the
** result (>= 0 or -errno), or -EAGAIN to wait for readiness.
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
      if (E(op)->want == 0) {
        r = connect(op->fd, op->addr, op->addrlen);
        if (r != 0 && errno == EINPROGRESS) return -EAGAIN;
        break;
      }
      if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return -errno;
      return err ? -err : 0;
    }
    case IOQ_RECV:
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
      r = op->offset < 0 ? read(op->fd, op->buf, op->len)
                         : pread(op->fd, op->buf, op->len, op->offset);
      break;
    case IOQ_WRITE: {
      /* A blocking pipe that epoll calls writable has room for a page;
      ** more could block the whole loop. */
      size_t len = E(op)->blocking && op->len > 4096 ? 4096 : op->len;
      r = op->offset < 0 ? write(op->fd, op->buf, len)
                         : pwrite(op->fd, op->buf, len, op->offset);
      break;
    }
    default:
      return -EINVAL;
  }
  if (r < 0)
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  return r;
}

/* The work of an op on a regular file: blocking, run by a worker. */
static int64_t do_blocking(ioq_op *op) {
  ssize_t r;
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
    default:
      return -EINVAL;
  }
  return r < 0 ? -errno : r;
}

static void *worker_main(void *arg) {
  epoll_backend *b = arg;
  pthread_mutex_lock(&b->lock);
  for (;;) {
    ioq_op *op;
    while (b->jobs.head == NULL && !b->stopping)
      pthread_cond_wait(&b->wake, &b->lock);
    if (b->jobs.head == NULL)
      break;
    op = b->jobs.head;
    unlink_op(&b->jobs, op);
    E(op)->state = EOP_RUNNING;
    pthread_mutex_unlock(&b->lock);
    op->res = do_blocking(op);
    pthread_mutex_lock(&b->lock);
    /* Only the first finished op since the loop last looked needs to wake
    ** it: the loop reads the eventfd, then takes the whole list. */
    if (b->finished.head == NULL) {
      uint64_t one = 1;
      ssize_t w = write(b->evfd, &one, sizeof one);
      (void)w;  /* a full counter still wakes the loop */
    }
    push(&b->finished, op);
  }
  pthread_mutex_unlock(&b->lock);
  return NULL;
}

/* Hands an op to the worker pool, starting the workers on first use. */
static int queue_job(epoll_backend *b, ioq_op *op) {
  if (b->threads == NULL) {
    int i;
    b->threads = calloc(WORKERS, sizeof *b->threads);
    if (b->threads == NULL) return -ENOMEM;
    for (i = 0; i < WORKERS; i++) {
      if (pthread_create(&b->threads[i], NULL, worker_main, b) != 0)
        break;
      b->nthreads++;
    }
    if (b->nthreads == 0) {
      free(b->threads);
      b->threads = NULL;
      return -EAGAIN;
    }
  }
  pthread_mutex_lock(&b->lock);
  E(op)->state = EOP_QUEUED;
  push(&b->jobs, op);
  pthread_cond_signal(&b->wake);
  pthread_mutex_unlock(&b->lock);
  return 0;
}

/*
** Puts an op on its descriptor's watch, in the direction it needs. The
** first op to wait in a direction always tells epoll again: since the last
** wait the descriptor may have been closed (epoll then forgets it) and its
** number reused, so what `registered` remembers may be stale.
*/
static int wait_ready(epoll_backend *b, ioq_op *op, int want) {
  watch *w = watch_of(b, op->fd);
  int r;
  if (w == NULL) return -ENOMEM;
  if ((want == EPOLLIN ? w->readers.head : w->writers.head) == NULL)
    w->registered = ~0u;  /* unknown: arm() must ask epoll */
  E(op)->state = EOP_WAITING;
  E(op)->w = w;
  E(op)->want = want;
  push(want == EPOLLIN ? &w->readers : &w->writers, op);
  r = arm(b, w);
  if (r < 0) {
    unlink_op(want == EPOLLIN ? &w->readers : &w->writers, op);
    E(op)->state = EOP_STAGED;
  }
  return r;
}

/* What a READ or WRITE on this descriptor needs: a worker (regular files,
** and what epoll cannot wait on), or readiness (pipes, ttys, sockets). */
static int needs_worker(ioq_op *op, int *blocking) {
  struct stat st;
  int fl;
  if (fstat(op->fd, &st) != 0)
    return 0;  /* the I/O itself will report EBADF */
  if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode) || S_ISDIR(st.st_mode))
    return 1;
  fl = fcntl(op->fd, F_GETFL);
  *blocking = !S_ISSOCK(st.st_mode) && fl >= 0 && !(fl & O_NONBLOCK);
  return 0;
}

/* Issues a staged op: it finishes now, or waits somewhere. */
static void issue(epoll_backend *b, ioq_op *op) {
  int64_t res;
  int want, r;
  E(op)->heap_index = -1;
  E(op)->want = 0;
  E(op)->blocking = 0;
  if (op->timeout_ns > 0 && op->code != IOQ_SLEEP &&
      heap_add(b, op, ioq_now_ns() + op->timeout_ns) < 0) {
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
      E(op)->state = EOP_TIMER;
      if (heap_add(b, op, ioq_now_ns() + ns) < 0)
        finish(b, op, -ENOMEM);
      return;
    }
    case IOQ_SHUTDOWN:
      finish(b, op, shutdown(op->fd, op->flags) == 0 ? 0 : -errno);
      return;
    case IOQ_FSYNC:
    case IOQ_OPEN:
      r = queue_job(b, op);
      if (r < 0) finish(b, op, r);
      return;
    case IOQ_READ:
    case IOQ_WRITE:
      if (needs_worker(op, &E(op)->blocking)) {
        r = queue_job(b, op);
        if (r < 0) finish(b, op, r);
        return;
      }
      break;
    default:
      break;
  }
  want = (op->code == IOQ_SEND || op->code == IOQ_SENDTO ||
          op->code == IOQ_CONNECT || op->code == IOQ_WRITE)
       ? EPOLLOUT : EPOLLIN;
  /* A blocking pipe or tty is only touched once epoll says it is ready. */
  res = E(op)->blocking ? -EAGAIN : try_op(op);
  if (op->code == IOQ_CONNECT)
    E(op)->want = want;  /* from now on, look at SO_ERROR */
  if (res == -EAGAIN) {
    r = wait_ready(b, op, want);
    if (r == -EPERM) {  /* epoll cannot wait on it: a worker reads it */
      r = queue_job(b, op);
      if (r < 0) finish(b, op, r);
    } else if (r < 0) {
      finish(b, op, r);
    }
    return;
  }
  /* A multishot accept takes every connection that is there, then waits. */
  while (op->multishot && res >= 0) {
    if (!post(b, op, res, 1)) close((int)res);  /* out of memory: drop it */
    res = try_op(op);
    if (res == -EAGAIN) {
      r = wait_ready(b, op, want);
      if (r < 0) finish(b, op, r);
      return;
    }
  }
  finish(b, op, res);
}

/* Runs the ops waiting in one direction of a ready watch, oldest first,
** until one would block. */
static void run_waiters(epoll_backend *b, elist *l) {
  ioq_op *op;
  while ((op = l->head) != NULL) {
    int64_t res = try_op(op);
    if (res == -EAGAIN)
      return;
    if (op->multishot && res >= 0) {
      if (!post(b, op, res, 1)) close((int)res);
      continue;  /* stays first in line */
    }
    unlink_op(l, op);
    E(op)->w = NULL;
    finish(b, op, res);
  }
}

/* ---------------------------------------------------------------- class */

static int epoll_create_backend(ioq_backend **out, unsigned entries) {
  epoll_backend *b = calloc(1, sizeof *b);
  struct epoll_event ev;
  (void)entries;  /* no ring to size: ops wait in lists */
  if (b == NULL) return -ENOMEM;
  b->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (b->epfd < 0) {
    int err = errno;
    free(b);
    return -err;
  }
  b->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (b->evfd < 0) {
    int err = errno;
    close(b->epfd);
    free(b);
    return -err;
  }
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;  /* NULL: the workers' eventfd */
  if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->evfd, &ev) != 0) {
    int err = errno;
    close(b->evfd);
    close(b->epfd);
    free(b);
    return -err;
  }
  pthread_mutex_init(&b->lock, NULL);
  pthread_cond_init(&b->wake, NULL);
  b->owner = getpid();
  b->base.cls = &ioq_epoll_backend;
  /* Multishot accept is cheap to emulate here: take every connection
  ** that is there at each readiness. (IOQ_NO_MULTISHOT=1 turns it off,
  ** as on io_uring, to test the Lua fallback.) */
  b->base.caps = getenv("IOQ_NO_MULTISHOT") ? 0 : IOQ_CAP_MULTISHOT_ACCEPT;
  *out = &b->base;
  return 0;
}

static void epoll_destroy(ioq_backend *base) {
  epoll_backend *b = (epoll_backend *)base;
  int i;
  /* After a fork the workers stayed in the parent: nothing to join. */
  if (b->threads != NULL && getpid() == b->owner) {
    pthread_mutex_lock(&b->lock);
    b->stopping = 1;
    pthread_cond_broadcast(&b->wake);
    pthread_mutex_unlock(&b->lock);
    for (i = 0; i < b->nthreads; i++)
      pthread_join(b->threads[i], NULL);
  }
  free(b->threads);
  pthread_mutex_destroy(&b->lock);
  pthread_cond_destroy(&b->wake);
  for (i = 0; i < b->nwatches; i++)
    free(b->watches[i]);
  free(b->watches);
  free(b->heap);
  free(b->done);
  close(b->evfd);
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
  E(op)->state = EOP_STAGED;
  E(op)->heap_index = -1;
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
** waits. One that a worker is running, or that is done, keeps its result.
*/
static void abort_op(epoll_backend *b, ioq_op *op, int64_t res) {
  eop *e = E(op);
  switch (e->state) {
    case EOP_STAGED:
      unlink_op(&b->staged, op);
      finish(b, op, res);
      break;
    case EOP_WAITING:
      unlink_op(e->want == EPOLLIN ? &e->w->readers : &e->w->writers, op);
      arm(b, e->w);
      e->w = NULL;
      finish(b, op, res);
      break;
    case EOP_TIMER:
      finish(b, op, res);
      break;
    case EOP_QUEUED:
      pthread_mutex_lock(&b->lock);
      if (e->state == EOP_QUEUED) {
        unlink_op(&b->jobs, op);
        pthread_mutex_unlock(&b->lock);
        finish(b, op, res);
      } else {
        pthread_mutex_unlock(&b->lock);  /* a worker took it: it ends alone */
      }
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
  while (b->heap_n > 0 && E(b->heap[0])->deadline <= t) {
    ioq_op *op = b->heap[0];
    eop *e = E(op);
    heap_remove(b, op);
    if (e->state == EOP_TIMER)  /* a sleep ends, or its timeout fires */
      finish(b, op, op->timeout_ns > 0 && op->timeout_ns < op->ns
                    ? -ETIMEDOUT : 0);
    else
      abort_op(b, op, -ETIMEDOUT);
  }
}

/* Moves what the workers finished into `done`. */
static void collect_workers(epoll_backend *b) {
  uint64_t count;
  ioq_op *op;
  ssize_t r = read(b->evfd, &count, sizeof count);
  (void)r;
  pthread_mutex_lock(&b->lock);
  while ((op = b->finished.head) != NULL) {
    unlink_op(&b->finished, op);
    finish(b, op, op->res);
  }
  pthread_mutex_unlock(&b->lock);
}

static int epoll_reap(ioq_backend *base, ioq_event *out, int max,
                      int64_t timeout_ns) {
  epoll_backend *b = (epoll_backend *)base;
  struct epoll_event evs[MAX_EVENTS];
  int i, n, k;
  epoll_submit(base);
  if (b->done_n == 0) {
    int64_t wait = timeout_ns;
    struct timespec ts, *tsp = NULL;
    if (b->heap_n > 0) {
      int64_t until = E(b->heap[0])->deadline - ioq_now_ns();
      if (until < 0) until = 0;
      if (wait < 0 || until < wait) wait = until;
    }
    if (wait >= 0) {
      ts.tv_sec = wait / 1000000000;
      ts.tv_nsec = wait % 1000000000;
      tsp = &ts;
    }
    n = -1;
    errno = ENOSYS;
    if (!no_pwait2)
      n = epoll_pwait2(b->epfd, evs, MAX_EVENTS, tsp, NULL);
    if (n < 0 && errno == ENOSYS) {  /* before Linux 5.11: milliseconds */
      no_pwait2 = 1;
      n = epoll_wait(b->epfd, evs, MAX_EVENTS,
                     tsp ? (int)((wait + 999999) / 1000000) : -1);
    }
    if (n < 0)
      return -errno;  /* -EINTR included */
    for (i = 0; i < n; i++) {
      watch *w = evs[i].data.ptr;
      unsigned e = evs[i].events;
      if (w == NULL) {
        collect_workers(b);
        continue;
      }
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        run_waiters(b, &w->readers);
      if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        run_waiters(b, &w->writers);
      arm(b, w);  /* drop what nobody waits for any more */
    }
  }
  expire(b);  /* also when events were waiting: timers must not starve */
  for (k = 0; k < max && b->done_n > 0; k++) {
    out[k] = b->done[b->done_head];
    b->done_head = (b->done_head + 1) % b->done_cap;
    b->done_n--;
  }
  return k;
}

static const char *epoll_features(ioq_backend *b) {
  return b->caps & IOQ_CAP_MULTISHOT_ACCEPT ? "workers multishot_accept"
                                            : "workers";
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
  NULL,
};
