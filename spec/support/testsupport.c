/*
** testsupport.c: a few process-level tools the specs need and Lua lacks.
** Built only for the test run (build/ioq_test.so), never installed.
*/
#include <dirent.h>
#include <pthread.h>
#include <time.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <sys/socket.h>

#include "lua.h"
#include "lauxlib.h"

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

/*
** arm_alarm(seconds): SIGALRM after `seconds`, caught by a handler installed
** without SA_RESTART, so a blocking system call then fails with EINTR.
*/
static int arm_alarm(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  struct sigaction sa;
  struct itimerval it;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, NULL);
  memset(&it, 0, sizeof it);
  it.it_value.tv_sec = (time_t)s;
  it.it_value.tv_usec = (suseconds_t)((s - (lua_Number)(time_t)s) * 1e6);
  setitimer(ITIMER_REAL, &it, NULL);
  return 0;
}

/* alarms(): how many SIGALRMs the handler has caught. */
static int get_alarms(lua_State *L) {
  lua_pushinteger(L, alarms);
  return 1;
}

/* fdcount(): the number of open descriptors of this process. */
static int fdcount(lua_State *L) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  lua_Integer n = 0;
  if (d == NULL)
    return luaL_error(L, "cannot list /proc/self/fd");
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  lua_pushinteger(L, n - 1);  /* less the one opendir used */
  return 1;
}

/* pipe(): the read and write descriptors of a new pipe (close-on-exec). */
static int make_pipe(lua_State *L) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return luaL_error(L, "pipe: %s", strerror(errno));
  lua_pushinteger(L, fds[0]);
  lua_pushinteger(L, fds[1]);
  return 2;
}

/* close(fd): closes a raw descriptor; true on success. */
static int close_fd(lua_State *L) {
  lua_pushboolean(L, close((int)luaL_checkinteger(L, 1)) == 0);
  return 1;
}

/* fork(): the child's pid in the parent, 0 in the child. */
static int do_fork(lua_State *L) {
  pid_t pid;
  fflush(NULL);
  pid = fork();
  if (pid < 0)
    return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

/* waitpid(pid): the child's exit status (-1 if it did not exit). */
static int do_waitpid(lua_State *L) {
  int status = 0;
  if (waitpid((pid_t)luaL_checkinteger(L, 1), &status, 0) < 0)
    return luaL_error(L, "waitpid: %s", strerror(errno));
  lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 1;
}

/* exit(code): ends the process at once, without closing the Lua state. */
static int do_exit(lua_State *L) {
  fflush(NULL);
  _exit((int)luaL_optinteger(L, 1, 0));
  return 0;
}

/* setenv(name [, value]): sets, or with no value removes, a variable. */
static int set_env(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *value = luaL_optstring(L, 2, NULL);
  int r = value ? setenv(name, value, 1) : unsetenv(name);
  lua_pushboolean(L, r == 0);
  return 1;
}

/* ---- threads (lead: regress/core_spec) ---- */

typedef struct { lua_State *L; int status; } thread_call;

static void *call_function(void *arg) {
  thread_call *c = arg;
  c->status = lua_pcall(c->L, lua_gettop(c->L) - 1, LUA_MULTRET, 0);
  return NULL;
}

/*
** in_thread(fn, ...): calls fn(...) on a new OS thread while this one
** waits for it (the Lua state is used by one thread at a time, as when a
** state is handed from thread to thread). Returns true and fn's results,
** or false and its error.
*/
static int in_thread(lua_State *L) {
  thread_call c;
  pthread_t t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  c.L = L;
  c.status = LUA_OK;
  if (pthread_create(&t, NULL, call_function, &c) != 0)
    return luaL_error(L, "cannot start a thread");
  pthread_join(t, NULL);
  lua_pushboolean(L, c.status == LUA_OK);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* ---- watchdog (lead: spec/helper.lua) ---- */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wd_cond;
static int wd_started, wd_armed, wd_seconds;
static struct timespec wd_deadline;
static char wd_name[1024];

static void *watchdog_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&wd_lock);
  for (;;) {
    if (!wd_armed) {
      pthread_cond_wait(&wd_cond, &wd_lock);
    } else if (pthread_cond_timedwait(&wd_cond, &wd_lock, &wd_deadline)
               == ETIMEDOUT && wd_armed) {
      fprintf(stderr, "\n\nspec timed out after %d s (a hang?): %s\n",
              wd_seconds, wd_name);
      fflush(stderr);
      _exit(124);
    }
  }
  return NULL;
}

/*
** watchdog(seconds, name): unless watchdog is called again within
** `seconds`, prints `name` and ends the process (exit 124): a spec that
** hangs names itself instead of stalling the whole run. watchdog(0)
** disarms it.
*/
static int watchdog(lua_State *L) {
  lua_Integer secs = luaL_checkinteger(L, 1);
  const char *name = luaL_optstring(L, 2, "?");
  pthread_mutex_lock(&wd_lock);
  if (!wd_started) {
    pthread_condattr_t attr;
    pthread_t t;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wd_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&t, NULL, watchdog_main, NULL) == 0) {
      pthread_detach(t);
      wd_started = 1;
    }
  }
  wd_armed = secs > 0;
  wd_seconds = (int)secs;
  clock_gettime(CLOCK_MONOTONIC, &wd_deadline);
  wd_deadline.tv_sec += (time_t)secs;
  snprintf(wd_name, sizeof wd_name, "%s", name);
  pthread_cond_signal(&wd_cond);
  pthread_mutex_unlock(&wd_lock);
  return 0;
}


/* ------------------------------------------------------------------------
** For spec/regress/epoll_spec.lua (epoll backend, issue 12): descriptors
** in blocking mode, FIFOs, a signal blocked in the calling thread, and a
** system call made to fail.
*/
#ifdef __linux__
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

/* set_blocking(fd, on): clears (on) or sets O_NONBLOCK; true on success. */
static int set_blocking(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  int fl = fcntl(fd, F_GETFL);
  int ok = fl >= 0 &&
           fcntl(fd, F_SETFL, lua_toboolean(L, 2) ? fl & ~O_NONBLOCK
                                                  : fl | O_NONBLOCK) == 0;
  lua_pushboolean(L, ok);
  return 1;
}

/* is_blocking(fd): true when O_NONBLOCK is clear. */
static int is_blocking(lua_State *L) {
  int fl = fcntl((int)luaL_checkinteger(L, 1), F_GETFL);
  if (fl < 0)
    return luaL_error(L, "fcntl: %s", strerror(errno));
  lua_pushboolean(L, !(fl & O_NONBLOCK));
  return 1;
}

/* mkfifo(path): makes a FIFO; true, or nil and the error text. */
static int make_fifo(lua_State *L) {
  if (mkfifo(luaL_checkstring(L, 1), 0600) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** block_alarm(on): blocks (on) or unblocks SIGALRM in the calling thread
** only, as ioq.signals does in the loop's thread; arm_alarm's handler
** counts the ones that get through. alarm_pending(): true while a SIGALRM
** waits, blocked, for the process.
*/
static int block_alarm(lua_State *L) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGALRM);
  pthread_sigmask(lua_toboolean(L, 1) ? SIG_BLOCK : SIG_UNBLOCK, &set, NULL);
  return 0;
}

static int alarm_pending(lua_State *L) {
  sigset_t set;
  sigpending(&set);
  lua_pushboolean(L, sigismember(&set, SIGALRM) == 1);
  return 1;
}

/*
** fail_syscall(name, errno): from now on the system call `name` fails with
** `errno` in this process: "accept" (accept and accept4) or
** "epoll_pwait2" (ENOSYS: a kernel before 5.11). A seccomp filter: for a
** child process only, it cannot be undone. true, or nil and the error text.
*/
static int fail_syscall(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  unsigned err = (unsigned)luaL_checkinteger(L, 2);
  unsigned nr1, nr2;
  struct sock_fprog prog;
  if (strcmp(name, "accept") == 0) {
    nr1 = __NR_accept4;
    nr2 = __NR_accept;
  } else if (strcmp(name, "epoll_pwait2") == 0) {
    nr1 = nr2 = __NR_epoll_pwait2;
  } else {
    return luaL_argerror(L, 1, "accept or epoll_pwait2 expected");
  }
  {
    struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr1, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr2, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    prog.len = (unsigned short)(sizeof filter / sizeof filter[0]);
    prog.filter = filter;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* dup(fd): a second descriptor for the same open file (close-on-exec). */
static int dup_fd(lua_State *L) {
  int fd = fcntl((int)luaL_checkinteger(L, 1), F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    return luaL_error(L, "dup: %s", strerror(errno));
  lua_pushinteger(L, fd);
  return 1;
}

/* send_oob(fd, byte): sends one byte of TCP urgent data (ioq has no
** send flags), which stops the peer's reads at its mark. */
static int send_oob(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  const char *c = luaL_checkstring(L, 2);
  if (send(fd, c, 1, MSG_OOB) != 1)
    return luaL_error(L, "send_oob: %s", strerror(errno));
  return 0;
}
#endif
/* ------------------------------------------------ end of epoll_spec's block */

int luaopen_ioq_test(lua_State *L);

int luaopen_ioq_test(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"arm_alarm", arm_alarm},
    {"alarms", get_alarms},
    {"fdcount", fdcount},
    {"pipe", make_pipe},
    {"close", close_fd},
    {"setenv", set_env},
    {"fork", do_fork},
    {"waitpid", do_waitpid},
    {"exit", do_exit},
    {"in_thread", in_thread},
    {"watchdog", watchdog},
#ifdef __linux__
    {"set_blocking", set_blocking},
    {"is_blocking", is_blocking},
    {"mkfifo", make_fifo},
    {"block_alarm", block_alarm},
    {"alarm_pending", alarm_pending},
    {"fail_syscall", fail_syscall},
    {"dup", dup_fd},
    {"send_oob", send_oob},
#endif
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
