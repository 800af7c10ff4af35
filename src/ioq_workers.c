/*
** ioq_workers.c: the worker threads that make blocking calls for the epoll
** and io_uring backends (see ioq_workers.h). Touches only the pool and the
** ops pushed to it; the work itself is ioq_blocking_run (ioq_blocking.c).
**
** A worker blocked in a system call is ended by a cancel or a timeout with
** SIGURG, sent to that thread only (see `kick`).
*/
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ioq_blocking.h"
#include "ioq_os.h"
#include "ioq_workers.h"

#define WORKERS 4

/* Interrupting a worker: first after 1 ms, then twice as long each time,
** up to 100 ms (a call the kernel does not interrupt ends by itself). */
#define KICK_FIRST 1000000
#define KICK_MAX 100000000

typedef struct ioq_worker {
  pthread_t thread;
  ioq_workers *w;
  ioq_op *current;         /* under `lock`: the op it runs, or NULL */
} ioq_worker;

static ioq_job *job_of(const ioq_workers *w, ioq_op *op) {
  return (ioq_job *)(void *)((char *)op + w->off);
}

/* ---------------------------------------------------------------- kicks */

/*
** A worker's blocking call is ended by a signal sent to its thread alone,
** caught by a handler installed without SA_RESTART, so that the call fails
** with EINTR. SIGURG: ignored by default, so one that reaches another
** thread (from a socket's out-of-band data, with F_SETOWN) does no harm,
** and seldom used otherwise (Go's runtime chose it for the same reason).
** A handler that was there before is still called for the signals that do
** not reach one of our workers.
*/
#define KICK_SIGNAL SIGURG

/* On a worker: its pool and the op it runs (for ioq_blocking_aborted). */
static _Thread_local ioq_workers *my_pool;
static _Thread_local ioq_op *my_op;
static _Thread_local int is_worker;
static struct sigaction chained;
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void on_kick(int sig, siginfo_t *info, void *ctx) {
  if (is_worker)
    return;  /* the interrupted call is all it was for */
  if (chained.sa_flags & SA_SIGINFO) {
    if (chained.sa_sigaction != NULL)
      chained.sa_sigaction(sig, info, ctx);
  } else if (chained.sa_handler != SIG_DFL && chained.sa_handler != SIG_IGN &&
             chained.sa_handler != NULL) {
    chained.sa_handler(sig);
  }
}

void ioq_pin_library(void) {
  static int pinned;
  Dl_info info;
  if (!pinned && dladdr((void *)&pinned, &info) && info.dli_fname != NULL &&
      dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) != NULL)
    pinned = 1;
}

static void install_kick(void) {
  struct sigaction sa;
  /* The handler stays installed after every queue has gone: its code
  ** must stay too. */
  ioq_pin_library();
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_kick;
  sa.sa_flags = SA_SIGINFO;  /* and no SA_RESTART */
  sigemptyset(&sa.sa_mask);
  sigaction(KICK_SIGNAL, &sa, &chained);
}

/*
** What a cancel or a timeout asked for while this worker ran its op: 0
** when nothing (an EINTR then came from a stray signal, or from a signal
** meant for the op the worker ran before, and the call is made again).
*/
int ioq_blocking_aborted(void) {
  ioq_workers *w = my_pool;
  int res;
  if (w == NULL || my_op == NULL)
    return 0;
  pthread_mutex_lock(&w->lock);
  res = job_of(w, my_op)->abort_res;
  pthread_mutex_unlock(&w->lock);
  return res;
}

/*
** Interrupts the call of each worker whose op was canceled or timed out.
** The signal may come before the call starts, and then interrupts nothing:
** ioq_workers_tick sends it again, less and less often, until the worker
** hands the op back. Sent under the lock, so never to a worker that has
** moved on to its next op (one that comes late is an EINTR the next op's
** call retries).
*/
static void kick(ioq_workers *w) {
  int i;
  pthread_mutex_lock(&w->lock);
  for (i = 0; i < w->nthreads; i++) {
    ioq_op *op = w->workers[i].current;
    if (op != NULL && job_of(w, op)->abort_res != 0)
      pthread_kill(w->workers[i].thread, KICK_SIGNAL);
  }
  pthread_mutex_unlock(&w->lock);
}

/* ---------------------------------------------------------------- workers */

static void *worker_main(void *arg) {
  ioq_worker *me = arg;
  ioq_workers *w = me->w;
  is_worker = 1;
  my_pool = w;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    ioq_op *op;
    while (w->jobs.head == NULL && !w->stopping)
      pthread_cond_wait(&w->wake, &w->lock);
    if (w->jobs.head == NULL)
      break;
    op = w->jobs.head;
    ioq_list_remove(&w->jobs, op, w->off);
    job_of(w, op)->taken = 1;
    me->current = op;
    my_op = op;
    pthread_mutex_unlock(&w->lock);
    op->res = ioq_blocking_run(op);
    pthread_mutex_lock(&w->lock);
    me->current = NULL;
    my_op = NULL;
    /* Only the first finished op since the backend last looked needs to
    ** wake it: it reads the eventfd, then takes the whole list. */
    if (w->finished.head == NULL) {
      uint64_t one = 1;
      ssize_t r = write(w->evfd, &one, sizeof one);
      (void)r;  /* a full counter still wakes the backend */
    }
    ioq_list_push(&w->finished, op, w->off);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

/*
** Starts the workers. They block every signal but the faults a thread
** causes itself and KICK_SIGNAL, so that a signal sent to the process
** (SIGINT, SIGCHLD, one that ioq.signals reads...) goes to a thread of the
** program's own; they are made with that mask, so it holds from their
** first instruction.
*/
static int start_workers(ioq_workers *w) {
  sigset_t mask, old;
  int i;
  pthread_once(&kick_once, install_kick);
  w->workers = calloc(WORKERS, sizeof *w->workers);
  if (w->workers == NULL) return -ENOMEM;
  sigfillset(&mask);
  sigdelset(&mask, KICK_SIGNAL);
  sigdelset(&mask, SIGSEGV);
  sigdelset(&mask, SIGBUS);
  sigdelset(&mask, SIGFPE);
  sigdelset(&mask, SIGILL);
  sigdelset(&mask, SIGTRAP);
  sigdelset(&mask, SIGSYS);
  pthread_sigmask(SIG_SETMASK, &mask, &old);
  for (i = 0; i < WORKERS; i++) {
    w->workers[i].w = w;
    if (pthread_create(&w->workers[i].thread, NULL, worker_main,
                       &w->workers[i]) != 0)
      break;
    w->nthreads++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (w->nthreads == 0) {
    free(w->workers);
    w->workers = NULL;
    return -EAGAIN;
  }
  return 0;
}

/* ---------------------------------------------------------------- the pool */

int ioq_workers_init(ioq_workers *w, size_t off) {
  memset(w, 0, sizeof *w);
  w->off = off;
  w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (w->evfd < 0) {
    w->evfd = -1;
    return -errno;
  }
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->wake, NULL);
  w->owner = getpid();
  return 0;
}

void ioq_workers_free(ioq_workers *w) {
  int i;
  if (w->evfd < 0)
    return;
  /* After a fork the workers stayed in the parent: nothing to join. */
  if (w->workers != NULL && getpid() == w->owner) {
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    for (i = 0; i < w->nthreads; i++)
      pthread_join(w->workers[i].thread, NULL);
  }
  free(w->workers);
  w->workers = NULL;
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->wake);
  close(w->evfd);
  w->evfd = -1;
}

int ioq_workers_push(ioq_workers *w, ioq_op *op) {
  ioq_job *j = job_of(w, op);
  if (w->workers == NULL) {
    int r = start_workers(w);
    if (r < 0) return r;
  }
  pthread_mutex_lock(&w->lock);
  j->taken = 0;
  j->back = 0;
  j->abort_res = 0;
  ioq_list_push(&w->jobs, op, w->off);
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

int ioq_workers_abort(ioq_workers *w, ioq_op *op, int res) {
  ioq_job *j = job_of(w, op);
  int queued, first = 0;
  pthread_mutex_lock(&w->lock);
  if (j->back) {  /* handed back already: nothing to end */
    pthread_mutex_unlock(&w->lock);
    return 0;
  }
  queued = !j->taken;
  if (queued) {
    ioq_list_remove(&w->jobs, op, w->off);
    j->back = 1;
  } else if (j->abort_res == 0) {
    j->abort_res = res;
    first = 1;
  }
  pthread_mutex_unlock(&w->lock);
  if (first) {
    w->interrupts++;
    w->kick_gap = KICK_FIRST;
    w->kick_at = ioq_now_ns() + KICK_FIRST;
    kick(w);
  }
  return queued;
}

int64_t ioq_workers_tick(ioq_workers *w, int64_t now) {
  if (w->interrupts == 0)
    return -1;
  if (now >= w->kick_at) {  /* keep interrupting until the workers answer */
    kick(w);
    w->kick_gap = w->kick_gap * 2 < KICK_MAX ? w->kick_gap * 2 : KICK_MAX;
    w->kick_at = now + w->kick_gap;
  }
  return w->kick_at;
}

int ioq_workers_collect(ioq_workers *w, ioq_list *out) {
  uint64_t count;
  ioq_op *op;
  int n = 0;
  ssize_t r = read(w->evfd, &count, sizeof count);
  (void)r;
  pthread_mutex_lock(&w->lock);
  while ((op = w->finished.head) != NULL) {
    ioq_list_remove(&w->finished, op, w->off);
    if (job_of(w, op)->abort_res != 0)
      w->interrupts--;
    job_of(w, op)->back = 1;
    ioq_list_push(out, op, w->off);
    n++;
  }
  pthread_mutex_unlock(&w->lock);
  return n;
}
