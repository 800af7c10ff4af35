/*
** lioq_signal.c: the mechanism under ioq.signals. A signal handler turns
** each delivery into a 4-byte record (the signal number, little-endian)
** in a pipe; the pipe's read end is an ioq.file that the queue reads like
** any other, so a signal is one more completion.
**
** Why a handler and not signalfd: signalfd needs the signal blocked, and a
** mask is per thread and inherited. Blocked with sigprocmask it stayed
** blocked in every program the script started (a child then survived
** SIGTERM), and it stayed unblocked in threads started before (the epoll
** backend's workers), which then took it with its default action. A
** handler runs in whichever thread the kernel picks and the record reaches
** the loop all the same; exec resets a handled signal to its default; the
** mask is left alone; and the previous disposition comes back when the
** last watcher of a signal goes.
**
** The pipe is in packet mode (O_DIRECT): each read returns exactly one
** record, so Lua reads a signal per completion. Standard signals coalesce
** in the kernel (one pending per signal); the records do too: a watcher
** never holds two unread records of one signal. So at most one record per
** signal is ever in a pipe, which is far below its capacity, and a flood
** of one signal cannot crowd another out.
*/
#include <errno.h>
#include <string.h>

#ifndef _WIN32
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <unistd.h>
#else
#include <signal.h>
#endif

#include "lioq.h"

static const struct { const char *name; int signo; } signals[] = {
  {"INT", SIGINT}, {"TERM", SIGTERM},
#ifndef _WIN32
  {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
  {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"CHLD", SIGCHLD},
  {"PIPE", SIGPIPE}, {"WINCH", SIGWINCH}, {"ALRM", SIGALRM},
#endif
};
#define NSIGNALS (sizeof signals / sizeof signals[0])

/* Which signals the arguments name, as bits of `signals`; raises on an
** unknown name. */
static unsigned checksignals(lua_State *L) {
  int i, n = lua_gettop(L);
  unsigned set = 0;
  luaL_argcheck(L, n > 0, 1, "signal name expected");
  for (i = 1; i <= n; i++) {
    const char *name = luaL_checkstring(L, i);
    size_t k;
    for (k = 0; k < NSIGNALS; k++)
      if (strcmp(signals[k].name, name) == 0)
        break;
    if (k == NSIGNALS)
      return (unsigned)luaL_argerror(L, i,
        lua_pushfstring(L, "unknown signal '%s'", name));
    set |= 1u << k;
  }
  return set;
}

/* core.signame(number): the name of a signal number ("INT"...), or nil. */
int lioq_signame(lua_State *L) {
  lua_Integer signo = luaL_checkinteger(L, 1);
  size_t k;
  for (k = 0; k < NSIGNALS; k++)
    if (signals[k].signo == signo) {
      lua_pushstring(L, signals[k].name);
      return 1;
    }
  lua_pushnil(L);
  return 1;
}

#ifdef _WIN32

/* Console control events are not signals; nothing to read them as yet. */
int lioq_signalfd(lua_State *L) {
  checksignals(L);
  luaL_pushfail(L);
  lua_pushliteral(L, "signals: not supported on Windows");
  lua_pushinteger(L, ENOSYS);
  return 3;
}

#else

#if ATOMIC_INT_LOCK_FREE != 2
#error "the signal handler needs lock-free atomic ints"
#endif

/*
** The watchers: one per signals object, in a fixed table the handler
** walks without a lock. A slot is live while `wfd1` (the write end + 1)
** is not 0; everything else in it is written before `wfd1` is published
** and read by the handler only after it has seen `wfd1`. Slots, the
** per-signal counts and dispositions change only under `updating`.
*/
#define MAX_WATCHERS 64

typedef struct watcher {
  atomic_int wfd1;        /* write end + 1; 0: a free slot */
  unsigned set;           /* the signals watched, as bits of `signals` */
  pid_t pid;              /* the process that made it (see on_signal) */
  int keep;               /* a read end of our own (see lioq_signalfd) */
  atomic_flag lock;       /* handlers in two threads take turns */
  unsigned long written;  /* records written so far */
  unsigned long last[NSIGNALS];  /* `written` after the last record of
                                 ** each signal; 0: none yet */
} watcher;

static watcher watchers[MAX_WATCHERS];

static struct {
  int watchers;           /* live watchers of this signal */
  int unblocked;          /* we unblocked it in the registering thread */
  struct sigaction saved; /* its disposition before we took it */
} kinds[NSIGNALS];

static pthread_mutex_t updating = PTHREAD_MUTEX_INITIALIZER;
static atomic_int in_handler;  /* handlers that may be reading a slot */

static int kind_of(int signo) {
  size_t k;
  for (k = 0; k < NSIGNALS; k++)
    if (signals[k].signo == signo)
      return (int)k;
  return -1;
}

/*
** Writes a record of signal k unless the pipe still holds an unread one:
** the kernel's counter of unread bytes says how many of the last records
** written are unread. A full pipe (it cannot be, see the top) drops the
** record, as the kernel drops a signal already pending.
*/
static void post(watcher *w, int fd, int k) {
  unsigned signo = (unsigned)signals[k].signo;
  unsigned char rec[4];
  int unread;
  rec[0] = (unsigned char)(signo & 0xff);
  rec[1] = (unsigned char)((signo >> 8) & 0xff);
  rec[2] = (unsigned char)((signo >> 16) & 0xff);
  rec[3] = (unsigned char)((signo >> 24) & 0xff);
  /* Held for two system calls at most, and never by this thread: the
  ** handler runs with every signal blocked, so it cannot interrupt itself. */
  while (atomic_flag_test_and_set(&w->lock))
    ;
  if (ioctl(fd, FIONREAD, &unread) != 0 || unread < 0 ||
      (unsigned long)unread / sizeof rec > w->written ||
      w->last[k] <= w->written - (unsigned long)unread / sizeof rec) {
    if (write(fd, rec, sizeof rec) == (ssize_t)sizeof rec)
      w->last[k] = ++w->written;
  }
  atomic_flag_clear(&w->lock);
}

/*
** What the signal would have done without us (`old`, its disposition
** before we took it): for a forked child that inherited the handler
** but has no watcher of its own (the parent's pipes are not its business),
** and for a signal that arrives while its last watcher is being closed.
*/
static void fall_back(const struct sigaction *old, int signo,
                      siginfo_t *info, void *ctx) {
  if (old->sa_flags & SA_SIGINFO) {
    old->sa_sigaction(signo, info, ctx);
  } else if (old->sa_handler == SIG_DFL) {
    /* Pending until this handler returns, then the default action. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(signo, &dfl, NULL);
    raise(signo);
  } else if (old->sa_handler != SIG_IGN) {
    old->sa_handler(signo);
  }
}

/*
** The handler: async-signal-safe (atomics, getpid, ioctl, write), errno
** kept. It posts a record to every watcher of this signal that belongs to
** this process. `in_handler` covers only the walk over the slots: a
** previous handler called from fall_back may never return (longjmp).
*/
static void on_signal(int signo, siginfo_t *info, void *ctx) {
  int saved_errno = errno;
  int k = kind_of(signo);
  pid_t self = getpid();
  int i, delivered = 0;
  struct sigaction old;
  if (k < 0)
    return;
  atomic_fetch_add(&in_handler, 1);
  for (i = 0; i < MAX_WATCHERS; i++) {
    watcher *w = &watchers[i];
    int fd = atomic_load(&w->wfd1) - 1;
    if (fd < 0 || !(w->set & (1u << k)) || w->pid != self)
      continue;
    post(w, fd, k);
    delivered = 1;
  }
  if (!delivered)
    old = kinds[k].saved;
  atomic_fetch_sub(&in_handler, 1);
  if (!delivered)
    fall_back(&old, signo, info, ctx);
  errno = saved_errno;
}

/* Waits until no handler can still be using a slot just freed. */
static void quiesce(void) {
  while (atomic_load(&in_handler) != 0)
    sched_yield();
}

/* Whether our handler is signal k's disposition now. */
static int ours(int k) {
  struct sigaction now;
  return sigaction(signals[k].signo, NULL, &now) == 0 &&
         (now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_signal;
}

/*
** Takes signal k over, saving the disposition ours replaces: for its
** first watcher, and for a later one when something replaced our handler
** since (the script, or fall_back in a forked child), so that the newest
** watcher gets the signal and the last one gives back the newest other
** disposition. 0 or -errno.
*/
static int take(int k) {
  int signo = signals[k].signo;
  struct sigaction sa;
  if (kinds[k].watchers > 0 && ours(k))
    return 0;
  /* Read first, then replace: the handler may run (in another thread) as
  ** soon as it is in place, and reads `saved`. */
  if (sigaction(signo, NULL, &kinds[k].saved) != 0)
    return -errno;
  if (kinds[k].watchers == 0)
    kinds[k].unblocked = 0;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  return sigaction(signo, &sa, NULL) == 0 ? 0 : -errno;
}

/* Gives signal k back as it was before we took it. */
static void uninstall(int k) {
  int signo = signals[k].signo;
  if (kinds[k].unblocked) {
    /* Blocked again first, so that one arriving meanwhile waits for the
    ** old disposition rather than taking ours. */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    kinds[k].unblocked = 0;
  }
  /* Somebody else's handler, set since, stays. */
  if (ours(k))
    sigaction(signo, &kinds[k].saved, NULL);
}

/*
** A watcher is to be a signal's only way in: if this thread blocks the
** signal (a host program's choice, or one a thread inherited), it would
** stay pending here, so unblock it, and remember to block it again.
*/
static void unblock(int k) {
  int signo = signals[k].signo;
  sigset_t one, old;
  sigemptyset(&one);
  sigaddset(&one, signo);
  if (pthread_sigmask(SIG_UNBLOCK, &one, &old) == 0 &&
      sigismember(&old, signo) == 1)
    kinds[k].unblocked = 1;
}

/* Frees slot i: no handler writes to it once this returns. */
static void release(int i) {
  watcher *w = &watchers[i];
  int wfd;
  size_t k;
  pthread_mutex_lock(&updating);
  wfd = atomic_load(&w->wfd1) - 1;
  atomic_store(&w->wfd1, 0);
  quiesce();
  for (k = 0; k < NSIGNALS; k++)
    if ((w->set & (1u << k)) && --kinds[k].watchers == 0)
      uninstall((int)k);
  close(wfd);
  close(w->keep);
  w->set = 0;
  pthread_mutex_unlock(&updating);
}

/*
** Makes a watcher of `set` writing to `wfd`: its slot index, or -errno
** (-EMFILE when the table is full).
*/
static int watch(unsigned set, int wfd, int keep) {
  int i, err = 0;
  size_t k;
  watcher *w = NULL;
  pthread_mutex_lock(&updating);
  for (i = 0; i < MAX_WATCHERS; i++)
    if (atomic_load(&watchers[i].wfd1) == 0) {
      w = &watchers[i];
      break;
    }
  if (w == NULL) {
    pthread_mutex_unlock(&updating);
    return -EMFILE;
  }
  w->set = set;
  w->pid = getpid();
  w->keep = keep;
  atomic_flag_clear(&w->lock);
  w->written = 0;
  memset(w->last, 0, sizeof w->last);
  atomic_store(&w->wfd1, wfd + 1);
  /* Published before the handler is installed: from its first run it
  ** finds the watcher. */
  for (k = 0; k < NSIGNALS && err == 0; k++)
    if (set & (1u << k)) {
      err = take((int)k);
      if (err == 0)
        kinds[k].watchers++;
    }
  if (err != 0) {
    atomic_store(&w->wfd1, 0);
    quiesce();
    while (k-- > 0)
      if ((set & (1u << k)) && kinds[k].watchers > 0 &&
          --kinds[k].watchers == 0)
        uninstall((int)k);
    w->set = 0;
    pthread_mutex_unlock(&updating);
    return err;
  }
  for (k = 0; k < NSIGNALS; k++)
    if ((set & (1u << k)) && kinds[k].watchers == 1)
      unblock((int)k);
  pthread_mutex_unlock(&updating);
  return i;
}

/*
** The read end handed to Lua: an ioq.file (its class tag, so every op and
** lioq_checkfd take it) whose close and collection first stop the
** watcher. Until then the watcher keeps a read end of its own, so a write
** in the handler never meets a pipe without readers (which would raise
** SIGPIPE in the handler) even if the script's end is closed behind
** ioq's back.
*/
typedef struct sigfile {
  lioq_file f;
  int slot;               /* the watcher; -1 once stopped */
} sigfile;

#define SIGFILE_META "ioq.file (signals)"

static sigfile *checksigfile(lua_State *L) {
  return luaL_checkudata(L, 1, SIGFILE_META);
}

static void stop(sigfile *sf) {
  if (sf->slot >= 0) {
    release(sf->slot);
    sf->slot = -1;
  }
}

static int sigfile_close(lua_State *L) {
  sigfile *sf = checksigfile(L);
  luaL_argcheck(L, sf->f.fd != IOQ_NOFD, 1, "attempt to use a closed file");
  stop(sf);
  return lioq_closefd(L, &sf->f);
}

static int sigfile_gc(lua_State *L) {
  sigfile *sf = checksigfile(L);
  stop(sf);
  lioq_dropfd(&sf->f);
  return 0;
}

static int sigfile_repr(lua_State *L) {
  sigfile *sf = checksigfile(L);
  if (sf->f.fd == IOQ_NOFD)
    lua_pushliteral(L, "ioq.file (signals, closed)");
  else
    lua_pushfstring(L, "ioq.file (signals, fd %d)", (int)sf->f.fd);
  return 1;
}

/*
** Pushes the class, made on first use: the file class's tag and name, its
** own close and finalizer, and the file methods (those ioq.lua adds
** included) behind its own.
*/
static void push_sigfile_meta(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"close", sigfile_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__tostring", sigfile_repr},
    {"__close", sigfile_gc},
    {"__gc", sigfile_gc},
    {NULL, NULL}
  };
  if (luaL_getmetatable(L, SIGFILE_META) != LUA_TNIL)
    return;
  lua_pop(L, 1);
  lioq_newmetatable(L, TAG_FILE, meta);
  luaL_newlib(L, methods);
  lua_createtable(L, 0, 1);
  luaL_getmetatable(L, LIOQ_FILE);
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, SIGFILE_META);
}

/*
** core.signalfd(name, ...): from now on the named signals ("INT",
** "TERM"...) come as 4-byte records (the number, little-endian) on the
** returned ioq.file, one per read, instead of taking their usual action,
** until it is closed or collected. Several may watch one signal: each
** gets every delivery.
*/
int lioq_signalfd(lua_State *L) {
  unsigned set = checksignals(L);
  sigfile *sf;
  int fds[2], keep, slot;
  /* The object first, closed, so that a memory error leaks nothing. */
  sf = lua_newuserdatauv(L, sizeof *sf, 0);
  lioq_file_init(&sf->f, 0, 0);
  sf->slot = -1;
  push_sigfile_meta(L);
  lua_setmetatable(L, -2);
  if (pipe2(fds, O_DIRECT | O_NONBLOCK | O_CLOEXEC) != 0)
    return lioq_fail(L, "signals: pipe", errno);
  keep = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
  if (keep < 0) {
    int err = errno;
    close(fds[0]);
    close(fds[1]);
    return lioq_fail(L, "signals: dup", err);
  }
  slot = watch(set, fds[1], keep);
  if (slot < 0) {
    close(fds[0]);
    close(fds[1]);
    close(keep);
    return lioq_fail(L, "signals", -slot);
  }
  sf->f.fd = fds[0];
  sf->slot = slot;
  return 1;
}

#endif
