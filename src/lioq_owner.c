/*
** lioq_owner.c: who may drive a queue: the process and the thread that
** made it. A forked child must not touch its parent's ring, workers or
** epoll set; io_uring refuses any thread but the creator's (single
** issuer), and ioq holds every backend to the same rule. Uses only
** lioq_queue.h's struct; the engine and the queue's files call it.
*/
#include "lioq_queue.h"

#ifdef _WIN32
#define checkprocess(L, q) ((void)0)  /* Windows has no fork */
int lioq_forked_child(const lqueue *q) {
  (void)q;
  return 0;
}
#else
/*
** Forks, counted by an atfork handler, so that noticing one costs a load
** rather than a getpid() system call on every wait. (glibc drops the
** handler if this module is ever unloaded.)
*/
static volatile unsigned long forks;

static void count_fork(void) {
  forks++;
}

static void watch_forks(void) {
  pthread_atfork(NULL, NULL, count_fork);
}

/*
** A forked child must not drive its parent's queue: the ring (or the
** epoll set and its worker threads) works for the parent. Checked where
** ops reach the kernel, not on every call.
*/
static void checkprocess(lua_State *L, lqueue *q) {
  if (q->forks != forks && getpid() != q->owner)
    luaL_error(L, "this queue belongs to the process that created it "
                  "(make a new queue after fork)");
}

/* Is this a forked child of the process that made q? */
int lioq_forked_child(const lqueue *q) {
  return getpid() != q->owner;
}
#endif

/*
** A queue is driven by the thread that created it: io_uring refuses any
** other (single issuer), and a rule that holds on every backend is one a
** script can rely on. Checked wherever the backend is called.
*/
void lioq_checkowner(lua_State *L, lqueue *q) {
  checkprocess(L, q);
  if (!lioq_on_owner_thread(q))
    luaL_error(L, "this queue belongs to the thread that created it "
                  "(make a queue in each thread)");
}

/* Is this the thread that may drive q? */
int lioq_on_owner_thread(const lqueue *q) {
  return same_thread(q->thread, this_thread());
}

/* Records who owns a new queue: this process and this thread. */
void lioq_owner_init(lqueue *q) {
#ifndef _WIN32
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, watch_forks);
  q->owner = getpid();
  q->forks = forks;
#endif
  q->thread = this_thread();
}
