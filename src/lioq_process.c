/*
** lioq_process.c: ioq.process objects, child processes. core.spawn starts
** a program with its descriptors set up; the object keeps the child's pid,
** the parent's ends of its pipes, and a waitable descriptor (a pidfd) that
** q:wait_process polls with IOQ_POLL, so waiting for an exit is one more
** completion. Uses lioq_file.c (file and socket objects) and lioq_util.c.
**
** What a child gets, and why:
**   - an empty signal mask and every signal at its default action: the
**     loop's thread may have signals blocked or handled (ioq.signals, the
**     epoll backend's SIGURG), and a mask or an ignored signal survives
**     exec;
**   - descriptors 0, 1, 2 as asked, and no other: ioq opens everything
**     close-on-exec, but a Lua io file (fopen) is not, so the spawn also
**     closes every descriptor from 3 up;
**   - pipes are AF_UNIX stream socketpairs, as libuv makes them: a write
**     to a child that has gone is then a send, which says EPIPE, where a
**     write to a pipe raises SIGPIPE and kills the script.
**
** No zombies: a process object collected or closed before its child was
** reaped hands the pid to one reaper thread, which polls the children's
** pidfds and reaps each as it ends. Nothing here ever blocks the loop, and
** SIGCHLD is never used (it belongs to the program).
**
** On Windows ioq_spawn_win.c starts the child (CreateProcessW); the
** waitable is the process handle itself (IOQ_POLL on IOCP waits for it on
** the thread pool), the pipe ends are ioq files (named pipes), p:kill is
** TerminateProcess with 128 + the signal's Linux number as the exit
** code, and there is nothing to reap: closing the handle is all.
*/
#include <errno.h>
#include <signal.h>
#include <string.h>
#ifndef _WIN32
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ioq_workers.h"  /* ioq_pin_library */

extern char **environ;
#endif

#include "ioq_spawn.h"
#include "lioq.h"

/* User values of a process object. */
enum {
  PVAL_WAITABLE = 1,     /* an ioq.file: readable once the child has ended */
  PVAL_STDIN, PVAL_STDOUT, PVAL_STDERR,  /* pipe ends, or nil */
  PROCESS_NUV = PVAL_STDERR
};

/* A process object's state. */
enum {
  P_NONE,       /* not started (a failed spawn) */
  P_RUNNING,    /* started, not reaped */
  P_EXITED,     /* reaped: code and sig hold its end */
  P_RELEASED    /* closed before its end: the reaper has it */
};

typedef struct lioq_process {
  int state;
  lua_Integer code;        /* the exit status, or 128 + the signal */
  int sig;                 /* the signal that ended it, or 0 */
#ifdef _WIN32
  DWORD pid;
  HANDLE handle;           /* owned by the waitable file object; NULL
                              once p:close() has closed that */
  int killed;              /* the signal p:kill() ended it with, or 0 */
#else
  pid_t pid;
#endif
} lioq_process;

/* Signal names, for p:kill("TERM") and the name of the one that ended a
** child. */
static const struct { const char *name; int signo; } signames[] = {
#ifdef _WIN32
  /* No signals: p:kill ends the child with 128 + the number Linux gives
  ** the signal as its exit code (see process_kill), so these are Linux's. */
  {"HUP", 1}, {"INT", 2}, {"QUIT", 3}, {"ILL", 4}, {"TRAP", 5},
  {"ABRT", 6}, {"BUS", 7}, {"FPE", 8}, {"KILL", 9}, {"USR1", 10},
  {"SEGV", 11}, {"USR2", 12}, {"PIPE", 13}, {"ALRM", 14}, {"TERM", 15},
#else
  {"INT", SIGINT}, {"TERM", SIGTERM},
  {"HUP", SIGHUP}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL}, {"USR1", SIGUSR1},
  {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
  {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
  {"TSTP", SIGTSTP}, {"WINCH", SIGWINCH}, {"ABRT", SIGABRT},
  {"SEGV", SIGSEGV}, {"BUS", SIGBUS}, {"FPE", SIGFPE}, {"ILL", SIGILL},
  {"TRAP", SIGTRAP}, {"SYS", SIGSYS}, {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ},
  {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}, {"URG", SIGURG},
#endif
};
#define NSIGNAMES (sizeof signames / sizeof signames[0])

/* Pushes a signal's name ("KILL"), or its number where it has none here. */
static void pushsigname(lua_State *L, int signo) {
  size_t k;
  for (k = 0; k < NSIGNAMES; k++)
    if (signames[k].signo == signo) {
      lua_pushstring(L, signames[k].name);
      return;
    }
  lua_pushinteger(L, signo);
}

static lioq_process *checkprocess(lua_State *L, int arg) {
  return lioq_checkudata(L, arg, TAG_PROCESS);
}

/*
** Pushes a reaped process's end: its exit status (128 + the signal when a
** signal ended it, as shells say), then the signal's name or nil.
*/
static int pushstatus(lua_State *L, const lioq_process *p) {
  lua_pushinteger(L, p->code);
  if (p->sig != 0)
    pushsigname(L, p->sig);
  else
    lua_pushnil(L);
  return 2;
}

#ifndef _WIN32
/* ================================================================ POSIX */


/* Records how a reaped child ended. */
static void set_status(lioq_process *p, const siginfo_t *si) {
  p->state = P_EXITED;
  if (si->si_code == CLD_EXITED) {
    p->code = si->si_status;
    p->sig = 0;
  } else {
    p->code = 128 + si->si_status;
    p->sig = si->si_status;
  }
}

/*
** Reaps the child if it has ended, without waiting. 0 when it has (or
** had), -EAGAIN while it runs, or -errno.
*/
static int try_reap(lioq_process *p) {
  siginfo_t si;
  if (p->state != P_RUNNING)
    return p->state == P_EXITED ? 0 : -ECHILD;
  memset(&si, 0, sizeof si);
  if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG) != 0)
    return -errno;
  if (si.si_pid == 0)
    return -EAGAIN;
  set_status(p, &si);
  return 0;
}

static int pidfd_open_(pid_t pid) {
#ifdef SYS_pidfd_open
  return (int)syscall(SYS_pidfd_open, pid, 0);
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

/* Set (IOQ_NO_PIDFD=1) to test the way without pidfds on a kernel that
** has them. */
static int use_pidfd(void) {
  const char *no = getenv("IOQ_NO_PIDFD");
  return no == NULL || *no == '\0' || *no == '0';
}

/*
** The threads below (the reaper, and the waiters where pidfds are
** missing) may outlive the Lua state, whose lua_close unloads this
** library: once one has started, the library stays loaded.
*/
static void pin_library(void) {
  ioq_pin_library();
}

/* Starts a detached thread with every signal blocked (signals are the
** program's, never this thread's). 0 or -errno. */
static int start_thread(void *(*fn)(void *), void *arg) {
  pthread_t t;
  pthread_attr_t attr;
  sigset_t all, old;
  int r;
  pin_library();
  sigfillset(&all);
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  r = pthread_create(&t, &attr, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  return -r;
}

/* ---------------------------------------------------------------- reaper */

/*
** Children whose process object went before they were reaped. The reaper
** thread polls their pidfds (where a pidfd could not be had, it looks
** every 50 ms) and reaps each one that has ended. A pipe wakes it when a
** child is added.
*/
typedef struct orphan {
  pid_t pid;
  int fd;                  /* its pidfd, or -1 */
} orphan;

static pthread_mutex_t reaper_lock = PTHREAD_MUTEX_INITIALIZER;
static orphan *orphans;
static size_t norphans, orphans_cap;
static int reaper_wake[2] = {-1, -1};

static void *reaper_main(void *arg) {
  struct pollfd *fds = NULL;
  size_t cap = 0;
  (void)arg;
  for (;;) {
    size_t n, i;
    int timeout = -1;
    pthread_mutex_lock(&reaper_lock);
    n = norphans;
    if (n + 1 > cap) {
      struct pollfd *f = realloc(fds, (n + 1) * sizeof *f);
      if (f != NULL) {
        fds = f;
        cap = n + 1;
      }
    }
    if (n + 1 > cap) {  /* out of memory: look again soon */
      pthread_mutex_unlock(&reaper_lock);
      usleep(50000);
      continue;
    }
    fds[0].fd = reaper_wake[0];
    fds[0].events = POLLIN;
    for (i = 0; i < n; i++) {
      fds[i + 1].fd = orphans[i].fd;
      fds[i + 1].events = POLLIN;
      if (orphans[i].fd < 0)
        timeout = 50;
    }
    pthread_mutex_unlock(&reaper_lock);
    if (poll(fds, (nfds_t)(n + 1), timeout) < 0 && errno != EINTR) {
      usleep(50000);  /* not a busy loop on a poll that keeps failing */
      continue;
    }
    if (fds[0].revents & POLLIN) {
      char buf[64];
      while (read(reaper_wake[0], buf, sizeof buf) > 0)
        continue;
    }
    pthread_mutex_lock(&reaper_lock);
    for (i = 0; i < norphans;) {
      siginfo_t si;
      memset(&si, 0, sizeof si);
      if (waitid(P_PID, (id_t)orphans[i].pid, &si, WEXITED | WNOHANG) == 0 &&
          si.si_pid == 0) {
        i++;  /* still running */
        continue;
      }
      if (orphans[i].fd >= 0)
        close(orphans[i].fd);
      orphans[i] = orphans[--norphans];
    }
    pthread_mutex_unlock(&reaper_lock);
  }
  return NULL;
}

/* After a fork, the child has no reaper thread, and the orphans are not
** its children. */
static void reaper_atfork_child(void) {
  pthread_mutex_init(&reaper_lock, NULL);
  norphans = 0;
  if (reaper_wake[0] >= 0) {
    close(reaper_wake[0]);
    close(reaper_wake[1]);
  }
  reaper_wake[0] = reaper_wake[1] = -1;
}

static void reaper_setup(void) {
  if (pipe2(reaper_wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    reaper_wake[0] = reaper_wake[1] = -1;
    return;
  }
  if (start_thread(reaper_main, NULL) != 0) {
    close(reaper_wake[0]);
    close(reaper_wake[1]);
    reaper_wake[0] = reaper_wake[1] = -1;
    return;
  }
  pthread_atfork(NULL, NULL, reaper_atfork_child);
}

/*
** Hands a running child to the reaper. Never blocks on the child; if the
** reaper cannot be had (no memory, no thread), the child is left to be
** reaped by whoever reaps our orphans when we exit.
*/
static void release(lioq_process *p) {
  orphan o;
  if (try_reap(p) != -EAGAIN) {
    if (p->state == P_RUNNING)
      p->state = P_RELEASED;  /* gone already (someone else reaped it) */
    return;
  }
  p->state = P_RELEASED;
  o.pid = p->pid;
  o.fd = use_pidfd() ? pidfd_open_(p->pid) : -1;
  if (o.fd >= 0)
    fcntl(o.fd, F_SETFD, FD_CLOEXEC);  /* pidfds are close-on-exec anyway */
  pthread_mutex_lock(&reaper_lock);
  if (reaper_wake[0] < 0)
    reaper_setup();
  if (reaper_wake[0] >= 0 && norphans == orphans_cap) {
    size_t cap = orphans_cap ? orphans_cap * 2 : 16;
    orphan *a = realloc(orphans, cap * sizeof *a);
    if (a != NULL) {
      orphans = a;
      orphans_cap = cap;
    }
  }
  if (reaper_wake[0] >= 0 && norphans < orphans_cap) {
    ssize_t w;
    orphans[norphans++] = o;
    w = write(reaper_wake[1], "", 1);
    (void)w;  /* a full pipe wakes it all the same */
  } else if (o.fd >= 0) {
    close(o.fd);
  }
  pthread_mutex_unlock(&reaper_lock);
}

/* ---------------------------------------------------------------- waiting */

/*
** Where pidfd_open is missing (Linux before 5.3): a thread waits for the
** child's end without reaping it (WNOWAIT), then writes a byte to a pipe
** and closes it: the read end, the waitable, then polls readable.
*/
typedef struct waiter {
  pid_t pid;
  int fd;
} waiter;

static void *waiter_main(void *arg) {
  waiter *w = arg;
  siginfo_t si;
  ssize_t n;
  while (waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOWAIT) != 0 &&
         errno == EINTR)
    continue;
  n = write(w->fd, "", 1);  /* data, and then the hang-up: either wakes */
  (void)n;
  close(w->fd);
  free(w);
  return NULL;
}

/* A descriptor that polls readable once `pid` has ended; -errno. */
static int waitable_fd(pid_t pid) {
  int fd, fds[2], r;
  waiter *w;
  if (use_pidfd()) {
    if ((fd = pidfd_open_(pid)) >= 0)
      return fd;
    if (errno != ENOSYS)
      return -errno;
  }
  if ((w = malloc(sizeof *w)) == NULL)
    return -ENOMEM;
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    r = -errno;
    free(w);
    return r;
  }
  w->pid = pid;
  w->fd = fds[1];
  if ((r = start_thread(waiter_main, w)) != 0) {
    close(fds[0]);
    close(fds[1]);
    free(w);
    return r;
  }
  return fds[0];
}

/* ---------------------------------------------------------------- spawning */

/* One of the child's descriptors 0, 1, 2, as it is being set up. */
typedef struct stdio {
  int how;                 /* IO_* */
  int fd;                  /* IO_FD: the descriptor to give */
  int child, parent;       /* IO_PIPE: the two ends; a copy of fd made for
                              the spawn (child), or -1 */
} stdio;

static void close_ends(stdio *io, int parents_too) {
  int i;
  for (i = 0; i < 3; i++) {
    if (io[i].child >= 0) close(io[i].child);
    if (parents_too && io[i].parent >= 0) close(io[i].parent);
    io[i].child = -1;
    if (parents_too) io[i].parent = -1;
  }
}

/*
** Makes the descriptors the child will get: a socketpair per pipe (the
** parent's end non-blocking, the child's as programs expect it, blocking),
** and, for a descriptor the script gave that is itself 0, 1 or 2, a copy
** above 2, so that setting up one of 0, 1, 2 cannot overwrite another's
** source. 0 or -errno (nothing left open then).
*/
static int make_ends(stdio *io) {
  int i;
  for (i = 0; i < 3; i++) {
    if (io[i].how == IO_PIPE) {
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        goto fail;
      io[i].parent = sv[0];
      io[i].child = sv[1];
      if (sv[1] < 3) {
        /* With 0, 1 or 2 closed in this process, the child's end could be
        ** one of them, which setting up another of the three overwrites:
        ** move it above. */
        int up = fcntl(sv[1], F_DUPFD_CLOEXEC, 3);
        if (up < 0)
          goto fail;
        close(sv[1]);
        io[i].child = sv[1] = up;
      }
      if (fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK) != 0)
        goto fail;
      /* One direction each: the child cannot read its own stdout. */
      shutdown(sv[1], i == 0 ? SHUT_WR : SHUT_RD);
      shutdown(sv[0], i == 0 ? SHUT_RD : SHUT_WR);
    } else if (io[i].how == IO_FD && io[i].fd < 3) {
      if ((io[i].child = fcntl(io[i].fd, F_DUPFD_CLOEXEC, 3)) < 0)
        goto fail;
    } else if (io[i].how == IO_FD) {
      /* Checked now: posix_spawn would report a bad one as if exec
      ** had failed. */
      if (fcntl(io[i].fd, F_GETFD) < 0)
        goto fail;
    }
  }
  return 0;
fail:
  i = -errno;
  close_ends(io, 1);
  return i;
}

/* posix_spawn's file actions for descriptors 0, 1, 2, the working
** directory, and the closing of everything else. 0 or an errno value. */
static int file_actions(posix_spawn_file_actions_t *fa, stdio *io,
                        const char *cwd) {
  int i, r = 0;
  for (i = 0; i < 3 && r == 0; i++) {
    switch (io[i].how) {
      case IO_NULL:
        r = posix_spawn_file_actions_addopen(fa, i, "/dev/null",
                                             i == 0 ? O_RDONLY : O_WRONLY, 0);
        break;
      case IO_PIPE:
        r = posix_spawn_file_actions_adddup2(fa, io[i].child, i);
        break;
      case IO_FD:
        r = posix_spawn_file_actions_adddup2(
              fa, io[i].child >= 0 ? io[i].child : io[i].fd, i);
        break;
      case IO_MERGE:
        r = posix_spawn_file_actions_adddup2(fa, 1, 2);
        break;
      default:
        break;
    }
  }
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 29)
  if (r == 0 && cwd != NULL)
    r = posix_spawn_file_actions_addchdir_np(fa, cwd);
#else
  if (cwd != NULL)
    r = ENOSYS;
#endif
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
  if (r == 0)
    r = posix_spawn_file_actions_addclosefrom_np(fa, 3);
#endif
  return r;
}

/*
** The program to run: argv[0] itself when it names a path (a relative one
** is looked for in cwd, where the child runs it), else the first
** executable of that name in our PATH (also when the child gets another
** environment), pushed as a string. 0, or ENOENT/EACCES: found before the
** child exists, so the error is clear wherever exec's own cannot come
** back (valgrind, a C library that does not report it).
*/
static int find_program(lua_State *L, const char *prog, const char *cwd) {
  const char *path = getenv("PATH"), *p;
  int err = ENOENT;
  if (strchr(prog, '/') != NULL) {
    lua_pushstring(L, prog);
    if (prog[0] != '/' && cwd != NULL) {
      /* The child runs it after changing to cwd: look for it there. */
      int r;
      lua_pushfstring(L, "%s/%s", cwd, prog);
      r = access(lua_tostring(L, -1), X_OK) == 0 ? 0 : errno;
      lua_pop(L, 1);
      return r;
    }
    return access(prog, X_OK) == 0 ? 0 : errno;
  }
  if (path == NULL)
    path = "/bin:/usr/bin";
  for (p = path;; p++) {
    const char *end = strchr(p, ':');
    size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
    if (len == 0)
      lua_pushfstring(L, "./%s", prog);  /* an empty entry: here */
    else
      lua_pushfstring(L, "%s/%s", lua_pushlstring(L, p, len), prog);
    if (len != 0)
      lua_remove(L, -2);
    if (access(lua_tostring(L, -1), X_OK) == 0) {
      struct stat st;
      if (stat(lua_tostring(L, -1), &st) == 0 && S_ISREG(st.st_mode))
        return 0;
      err = EACCES;
    } else if (errno == EACCES) {
      err = EACCES;
    }
    lua_pop(L, 1);
    if (end == NULL)
      break;
    p = end;
  }
  lua_pushstring(L, prog);
  return err;
}

/* Starts the program; 0 or an errno value (ENOENT for one that is not
** there: posix_spawn reports a failed exec). */
static int spawn(pid_t *pid, const char *file, char **argv, char **envp,
                 stdio *io, const char *cwd) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none, all;
  int r;
  if ((r = posix_spawn_file_actions_init(&fa)) != 0)
    return r;
  if ((r = posix_spawnattr_init(&attr)) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    return r;
  }
  sigemptyset(&none);
  sigfillset(&all);
  r = file_actions(&fa, io, cwd);
  if (r == 0)
    r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF);
  if (r == 0) r = posix_spawnattr_setsigmask(&attr, &none);
  if (r == 0) r = posix_spawnattr_setsigdefault(&attr, &all);
  if (r == 0)
    r = posix_spawn(pid, file, &fa, &attr, argv, envp);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  return r;
}

#else
/* ================================================================ Windows */

/* Records the end of a child whose handle is signaled: its exit code, and
** the signal p:kill() ended it with when the code is the one kill set. */
static void set_exited(lioq_process *p) {
  DWORD code = 0;
  GetExitCodeProcess(p->handle, &code);
  p->state = P_EXITED;
  p->code = (lua_Integer)code;
  p->sig = p->killed != 0 && code == (DWORD)(128 + p->killed) ? p->killed : 0;
}

/*
** Records the child's end if it has ended. 0 when it has (or had),
** -EAGAIN while it runs, -ECHILD once p:close() let it go. Windows has no
** reaping: a process handle tells its exit code for as long as it is open,
** and closing it is all that is left to do.
*/
static int try_reap(lioq_process *p) {
  if (p->state != P_RUNNING || p->handle == NULL)
    return p->state == P_EXITED ? 0 : -ECHILD;
  switch (WaitForSingleObject(p->handle, 0)) {
    case WAIT_OBJECT_0:
      set_exited(p);
      return 0;
    case WAIT_TIMEOUT:
      return -EAGAIN;
    default:
      return -ioq_oserr();
  }
}

#endif

/* ================================================================ binding */

/* Room for n string pointers and a NULL, in a userdata box (pushed), so
** that an error anywhere later leaks nothing. */
static char **string_array(lua_State *L, lua_Integer n) {
  char **a = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *a, 0);
  a[n] = NULL;
  return a;
}

/* More arguments than any system takes (Linux: 2^31 - 1 strings, but at
** most a quarter of the stack's limit in bytes). */
#define MAX_ARGS 1000000

/*
** The argument vector: spec[1..n], strings without zero bytes. The spec
** is read raw (no __len, no __index), so the strings stay in the spec
** table, which is on the stack at 1 for the whole call.
*/
static char **checkargv(lua_State *L) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1), i;
  char **argv;
  luaL_argcheck(L, n >= 1, 1, "the program to run expected at [1]");
  luaL_argcheck(L, n <= MAX_ARGS, 1, "too many arguments");
  argv = string_array(L, n);
  for (i = 1; i <= n; i++) {
    size_t len;
    if (lua_rawgeti(L, 1, i) != LUA_TSTRING)
      luaL_argerror(L, 1, lua_pushfstring(L, "[%I] must be a string, got %s",
                    (lua_Integer)i, luaL_typename(L, -1)));
    argv[i - 1] = (char *)lua_tolstring(L, -1, &len);
    luaL_argcheck(L, strlen(argv[i - 1]) == len, 1,
                  "an argument contains a zero byte");
    lua_pop(L, 1);  /* the spec keeps it */
  }
  return argv;
}

/*
** The environment: nil (inherit ours), or a table of name = value pairs
** and/or "NAME=value" strings in its array part. The "NAME=value" strings
** go into a table (pushed below the array) that keeps them.
*/
static char **checkenv(lua_State *L) {
  lua_Integer n = 0;
  char **envp;
  int tab;
  lua_pushliteral(L, "env");
  if (lua_rawget(L, 1) == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1))
    luaL_argerror(L, 1, "env must be a table or nil");
  tab = lua_gettop(L);
  lua_newtable(L);  /* the strings, kept here */
  lua_pushnil(L);
  while (lua_next(L, tab)) {
    if (lua_type(L, -2) == LUA_TSTRING &&
        (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
      lua_pushvalue(L, -2);
      lua_pushliteral(L, "=");
      lua_pushvalue(L, -3);
      lua_concat(L, 3);
    } else if (lua_type(L, -2) == LUA_TNUMBER &&
               lua_type(L, -1) == LUA_TSTRING) {
      lua_pushvalue(L, -1);
    } else {
      luaL_argerror(L, 1, "env: name = value strings expected");
    }
    {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      luaL_argcheck(L, strlen(s) == len, 1, "env contains a zero byte");
    }
    lua_rawseti(L, tab + 1, ++n);
    lua_pop(L, 1);
  }
  envp = string_array(L, n);
  for (; n > 0; n--) {
    lua_rawgeti(L, tab + 1, n);
    envp[n - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  return envp;
}

/*
** What the spec says for descriptor i (0, 1, 2): "inherit" (or nil),
** "null", "pipe", "stdout" (stderr only), or a descriptor: an integer, an
** ioq file or socket, a Lua io file.
*/
static int checkstdio(lua_State *L, int i, ioq_fd *fd) {
  static const char *const names[] = {"stdin", "stdout", "stderr"};
  const char *name = names[i];
  int how = IO_INHERIT;
  lua_pushstring(L, name);
  lua_rawget(L, 1);  /* raw: the object stays in the spec while we spawn */
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    if (strcmp(s, "inherit") == 0) how = IO_INHERIT;
    else if (strcmp(s, "null") == 0) how = IO_NULL;
    else if (strcmp(s, "pipe") == 0) how = IO_PIPE;
    else if (strcmp(s, "stdout") == 0 && i == 2) how = IO_MERGE;
    else how = -1;
  } else if (lua_isinteger(L, -1)) {
    lua_Integer n = lua_tointeger(L, -1);
    how = n >= 0 && n <= 0x7fffffff ? IO_FD : -1;
    *fd = (ioq_fd)n;
  } else if (!lua_isnil(L, -1)) {
    *fd = lioq_tofd(L, -1);
    how = *fd != IOQ_NOFD ? IO_FD : -1;
  }
  if (how < 0)
    luaL_argerror(L, 1, lua_pushfstring(L, "%s must be \"inherit\", \"null\", "
                  "\"pipe\",%s a descriptor or an open file", name,
                  i == 2 ? " \"stdout\"," : ""));
  lua_pop(L, 1);
  return how;
}

#ifndef _WIN32
/* Why `cwd` cannot be a child's working directory, as an errno; 0 if it
** can. */
static int cwd_error(const char *cwd) {
  struct stat st;
  if (stat(cwd, &st) != 0)
    return errno;
  if (!S_ISDIR(st.st_mode))
    return ENOTDIR;
  if (access(cwd, X_OK) != 0)
    return errno;
  return 0;
}
#endif

/*
** core.spawn{ prog, args..., env =, cwd =, stdin =, stdout =, stderr = }:
** starts the program; returns the process object, or fail, msg, errno.
*/
static int process_spawn(lua_State *L) {
  char **argv, **envp;
  const char *cwd = NULL;
  int how[3], i, err, pidx;
  ioq_fd fds[3] = {IOQ_NOFD, IOQ_NOFD, IOQ_NOFD};
  lioq_process *p;
  lioq_file *ends[3] = {NULL, NULL, NULL}, *waitable;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  argv = checkargv(L);
  envp = checkenv(L);
  lua_pushliteral(L, "cwd");
  if (lua_rawget(L, 1) != LUA_TNIL) {  /* kept on the stack */
    size_t len;
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1,
                  "cwd must be a string or nil");
    cwd = lua_tolstring(L, -1, &len);
    luaL_argcheck(L, strlen(cwd) == len, 1, "cwd contains a zero byte");
  }
  for (i = 0; i < 3; i++)
    how[i] = checkstdio(L, i, &fds[i]);
  /* The objects, all closed, before any descriptor exists. */
  p = lua_newuserdatauv(L, sizeof *p, PROCESS_NUV);
  memset(p, 0, sizeof *p);
  p->state = P_NONE;
  luaL_setmetatable(L, LIOQ_PROCESS);
  pidx = lua_gettop(L);
  waitable = lioq_file_prepare(L);
  lua_setiuservalue(L, -2, PVAL_WAITABLE);
  for (i = 0; i < 3; i++)
    if (how[i] == IO_PIPE) {
#ifdef _WIN32
      ends[i] = lioq_file_prepare(L);  /* a named pipe's end */
#else
      ends[i] = lioq_socket_prepare(L, AF_UNIX, SOCK_STREAM);
#endif
      lua_setiuservalue(L, -2, PVAL_STDIN + i);
    }
#ifndef _WIN32
  {
    stdio io[3];
    pid_t pid;
    int wfd;
    const char *file;
    /* A cwd that cannot be entered would fail the exec as a missing
    ** program does (or, where exec's error cannot come back, the child
    ** alone): found first, and named. */
    if (cwd != NULL && (err = cwd_error(cwd)) != 0) {
      luaL_pushfail(L);
      lua_pushfstring(L, "spawn: cwd %s: %s", cwd, ioq_strerror(err));
      lua_pushinteger(L, err);
      return 3;
    }
    if ((err = find_program(L, argv[0], cwd)) != 0)
      goto failed;
    file = lua_tostring(L, -1);  /* kept on the stack */
    for (i = 0; i < 3; i++) {
      io[i].how = how[i];
      io[i].fd = fds[i];
      io[i].child = io[i].parent = -1;
    }
    if ((err = make_ends(io)) != 0)
      return lioq_fail(L, "spawn", -err);
    err = spawn(&pid, file, argv, envp != NULL ? envp : environ, io, cwd);
    close_ends(io, err != 0);
    if (err != 0)
      goto failed;
    p->pid = pid;
    p->state = P_RUNNING;
    for (i = 0; i < 3; i++)
      if (ends[i] != NULL)
        ends[i]->fd = io[i].parent;
    if ((wfd = waitable_fd(pid)) < 0) {
      /* No way to wait without blocking: the child must not outlive a
      ** process object that cannot say when it ends. */
      siginfo_t si;
      kill(pid, SIGKILL);
      waitid(P_PID, (id_t)pid, &si, WEXITED);
      p->state = P_EXITED;
      for (i = 0; i < 3; i++)
        if (ends[i] != NULL)
          lioq_dropfd(ends[i]);
      return lioq_fail(L, "spawn", -wfd);
    }
    waitable->fd = wfd;
  }
#else
  {
    ioq_fd parent[3];
    HANDLE h;
    DWORD pid;
    if ((err = ioq_win_spawn(argv, envp, cwd, how, fds, parent, &h, &pid)) != 0)
      goto failed;
    p->pid = pid;
    p->handle = h;
    p->state = P_RUNNING;
    waitable->fd = (ioq_fd)h;  /* signaled once the child has ended */
    for (i = 0; i < 3; i++)
      if (ends[i] != NULL)
        ends[i]->fd = parent[i];
  }
#endif
  lua_pushvalue(L, pidx);
  return 1;
failed:
  luaL_pushfail(L);
  lua_pushfstring(L, "spawn: %s: %s", argv[0], ioq_strerror(err));
  lua_pushinteger(L, err);
  return 3;
}

/*
** Pushes the end of the process at idx, reaping it: its status and signal
** name (see pushstatus), or fail, "wait: ...", errno. For a wait handle
** whose poll said the child has ended.
*/
int lioq_process_result(lua_State *L, int idx) {
  lioq_process *p = checkprocess(L, idx);
  int r = try_reap(p);
  if (r == -EAGAIN)  /* not reached: the waitable said it ended */
    r = -EINTR;
  if (r < 0)
    return lioq_fail(L, "wait", -r);
  return pushstatus(L, p);
}

/* The process at arg 2's waitable (pushed): an ioq.file, open while the
** object is. */
void lioq_process_waitable(lua_State *L, int arg) {
  checkprocess(L, arg);
  lua_getiuservalue(L, arg, PVAL_WAITABLE);
}

/* p:kill([sig]): sends a signal ("TERM" by default; a name or a number);
** true, or fail, msg, errno (ESRCH once the child is reaped). */
static int process_kill(lua_State *L) {
  lioq_process *p = checkprocess(L, 1);
  int signo = SIGTERM;
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *name = lua_tostring(L, 2);
    size_t k;
    if (strncmp(name, "SIG", 3) == 0)
      name += 3;
    for (k = 0; k < NSIGNAMES; k++)
      if (strcmp(signames[k].name, name) == 0)
        break;
    if (k == NSIGNAMES)
      return luaL_argerror(L, 2, lua_pushfstring(L, "unknown signal '%s'",
                                                 name));
    signo = signames[k].signo;
  } else if (!lua_isnoneornil(L, 2)) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0 && n < 128, 2, "invalid signal number");
    signo = (int)n;
  }
  if (p->state != P_RUNNING)
    return lioq_fail(L, "kill", ESRCH);
#ifndef _WIN32
  /* The pid cannot be another process's: it is ours, and not reaped. */
  if (kill(p->pid, signo) != 0)
    return lioq_fail(L, "kill", errno);
#else
  /* A child that has ended counts as reaped now: ESRCH, as after a wait
  ** on POSIX. Else the signal becomes an exit code that says which it
  ** was, 128 + its number, as a shell reports a signal's end. */
  if (try_reap(p) != -EAGAIN)
    return lioq_fail(L, "kill", ESRCH);
  if (signo != 0) {
    if (!TerminateProcess(p->handle, (UINT)(128 + signo))) {
      int err = ioq_oserr();
      return lioq_fail(L, "kill", try_reap(p) == -EAGAIN ? err : ESRCH);
    }
    p->killed = signo;
  }
#endif
  lua_pushboolean(L, 1);
  return 1;
}

/*
** p:close(): closes the parent's ends of the pipes and the waitable, and
** lets the child go on alone (it is reaped in the background when it
** ends). Idempotent; also __close and __gc.
*/
static int process_close(lua_State *L) {
  lioq_process *p = checkprocess(L, 1);
  int i;
#ifdef _WIN32
  /* What a later wait needs from the handle, before it goes. */
  if (try_reap(p) == -EAGAIN)
    p->state = P_RELEASED;
  p->handle = NULL;
#endif
  for (i = PVAL_WAITABLE; i <= PVAL_STDERR; i++) {
    void *f;
    lua_getiuservalue(L, 1, i);
    if ((f = lioq_toudata(L, -1, TAG_FILE)) != NULL ||
        (f = lioq_toudata(L, -1, TAG_SOCKET)) != NULL)
      lioq_dropfd(f);
    lua_pop(L, 1);
  }
#ifndef _WIN32
  if (p->state == P_RUNNING)
    release(p);
#endif
  return 0;
}

/* __gc: the objects in the user values close themselves; only the child
** is left to hand over. */
static int process_gc(lua_State *L) {
  lioq_process *p = checkprocess(L, 1);
#ifndef _WIN32
  if (p->state == P_RUNNING)
    release(p);
#else
  p->handle = NULL;  /* its file object may have closed it already */
#endif
  return 0;
}

/* Methods first, then the fields pid, stdin, stdout, stderr, exit_code,
** signal. */
static int process_index(lua_State *L) {
  lioq_process *p;
  const char *key;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
    return 1;
  p = checkprocess(L, 1);
  key = lua_tostring(L, 2);
  if (key == NULL)
    return 0;
  if (strcmp(key, "pid") == 0 && p->state != P_NONE)
    lua_pushinteger(L, (lua_Integer)p->pid);
  else if (strcmp(key, "stdin") == 0)
    lua_getiuservalue(L, 1, PVAL_STDIN);
  else if (strcmp(key, "stdout") == 0)
    lua_getiuservalue(L, 1, PVAL_STDOUT);
  else if (strcmp(key, "stderr") == 0)
    lua_getiuservalue(L, 1, PVAL_STDERR);
  else if (strcmp(key, "exit_code") == 0 && p->state == P_EXITED)
    lua_pushinteger(L, p->code);
  else if (strcmp(key, "signal") == 0 && p->state == P_EXITED && p->sig != 0)
    pushsigname(L, p->sig);
  else
    lua_pushnil(L);
  return 1;
}

static int process_repr(lua_State *L) {
  lioq_process *p = checkprocess(L, 1);
  static const char *const states[] = {"not started", "running", "exited",
                                       "closed"};
  lua_pushfstring(L, "ioq.process (pid %I, %s)", (lua_Integer)p->pid,
                  states[p->state]);
  return 1;
}

void lioq_open_process(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"kill", process_kill},
    {"close", process_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__tostring", process_repr},
    {"__close", process_close},
    {"__gc", process_gc},
    {NULL, NULL}
  };
  lioq_newmetatable(L, TAG_PROCESS, meta);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  lioq_setclass(L, TAG_PROCESS);
  lua_pushcclosure(L, process_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int lioq_spawn(lua_State *L) {
  return process_spawn(L);
}
