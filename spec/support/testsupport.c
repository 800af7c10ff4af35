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
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
