/*
** ioq_workers.h: a small pool of worker threads that make blocking calls
** for a backend (POSIX only; IOCP has the system thread pool). Used by the
** epoll backend (regular files, blocking sockets, IOQ_CALL) and by the
** io_uring backend (IOQ_CALL, and ops the ring cannot do).
**
** The backend's thread pushes an op; a worker runs ioq_blocking_run on it
** and puts it on the finished list, then writes the pool's eventfd, which
** the backend watches (epoll: in its set; io_uring: a poll on the ring).
** The backend then takes the finished ops and reports them. A cancel or a
** timeout either takes an op off the jobs list before any worker has it
** (it ends at once), or interrupts its call with a signal sent to that
** worker's thread alone, again and again, less and less often, until the
** worker hands the op back (see ioq_workers_tick).
**
** An op's pool state (ioq_job) lies in its private space at an offset the
** backend names, so it can share the backend's own link: an op on the
** pool is on no other list of the backend. Only the backend's thread calls
** these functions, except ioq_blocking_aborted (ioq_blocking.h), which a
** worker calls.
*/
#ifndef IOQ_WORKERS_H
#define IOQ_WORKERS_H

#include <pthread.h>
#include <sys/types.h>

#include "ioq.h"
#include "ioq_list.h"

/* An op's state in the pool; its link comes first. */
typedef struct ioq_job {
  ioq_link link;           /* on the jobs or the finished list */
  int abort_res;           /* under lock: -ECANCELED or -ETIMEDOUT asked for
                              while a worker had it; 0: none */
  uint8_t taken;           /* under lock: a worker has it */
  uint8_t back;            /* collected: an abort now changes nothing */
} ioq_job;

struct ioq_worker;

typedef struct ioq_workers {
  int evfd;                /* written when the finished list stops being
                              empty; -1 until ioq_workers_init */
  size_t off;              /* where each op's ioq_job lies in it */
  pid_t owner;             /* the process whose threads these are */
  int interrupts;          /* ops whose call is being interrupted */
  int64_t kick_at, kick_gap;  /* when to interrupt them again, how often */
  pthread_mutex_t lock;
  pthread_cond_t wake;
  ioq_list jobs;           /* waiting for a worker, under lock */
  ioq_list finished;       /* back from workers, under lock */
  struct ioq_worker *workers;  /* started on first use */
  int nthreads;
  int stopping;
} ioq_workers;

/* Makes the eventfd (non-blocking, close-on-exec); no thread yet. 0 or
** -errno. `off`: where ops keep their ioq_job. */
/* Keeps this library loaded for the life of the process (a thread or a
** signal handler of ours may outlive the Lua state that loaded it, whose
** lua_close would unload it). */
void ioq_pin_library(void);

int ioq_workers_init(ioq_workers *w, size_t off);
/* Stops and joins the threads (none in a forked child: they stayed in the
** parent), closes the eventfd. Every op pushed must have been taken. */
void ioq_workers_free(ioq_workers *w);
/* Hands an op to a worker, starting the threads on first use. 0 or -errno
** (no thread could be started). */
int ioq_workers_push(ioq_workers *w, ioq_op *op);
/* Asks an op on the pool to end with `res`. 1: no worker had taken it, it
** is off the pool and the caller ends it now; 0: its call is interrupted
** (or was asked to end before), and it comes back through the finished
** list, with `res` or with its result if the call ended first (or it has
** been collected already, and the abort changes nothing). */
int ioq_workers_abort(ioq_workers *w, ioq_op *op, int res);
/* Interrupts again the calls still running after an abort, if it is time;
** then the deadline of the next such round, or -1 when none is due. */
int64_t ioq_workers_tick(ioq_workers *w, int64_t now);
/* Moves every finished op (op->res set) to the end of `out`, in order,
** after reading the eventfd. Returns how many. */
int ioq_workers_collect(ioq_workers *w, ioq_list *out);

#endif
