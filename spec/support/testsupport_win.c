/*
** testsupport_win.c: the Windows side of testsupport.c, for make
** test-windows (build-win/ioq_test.dll). Alarms and fork have no Windows
** counterpart: specs that need them skip there (util.posix_only).
*/
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"

/* fdcount(): the number of open handles of this process. */
static int fdcount(lua_State *L) {
  DWORD n = 0;
  if (!GetProcessHandleCount(GetCurrentProcess(), &n))
    return luaL_error(L, "GetProcessHandleCount failed (%d)", (int)GetLastError());
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/*
** pipe(): the read and write handles of a new pipe. Anonymous pipes cannot
** do overlapped I/O, so this is a uniquely named pipe with both ends
** overlapped, as the I/O completion port needs.
*/
static int make_pipe(lua_State *L) {
  static LONG serial;
  char name[96];
  HANDLE r, w;
  snprintf(name, sizeof name, "\\\\.\\pipe\\ioq-test-%lu-%ld",
           (unsigned long)GetCurrentProcessId(), InterlockedIncrement(&serial));
  r = CreateNamedPipeA(name, PIPE_ACCESS_INBOUND | FILE_FLAG_OVERLAPPED |
                       FILE_FLAG_FIRST_PIPE_INSTANCE,
                       PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT, 1,
                       65536, 65536, 0, NULL);
  if (r == INVALID_HANDLE_VALUE)
    return luaL_error(L, "CreateNamedPipe failed (%d)", (int)GetLastError());
  w = CreateFileA(name, GENERIC_WRITE, 0, NULL, OPEN_EXISTING,
                  FILE_FLAG_OVERLAPPED, NULL);
  if (w == INVALID_HANDLE_VALUE) {
    DWORD err = GetLastError();
    CloseHandle(r);
    return luaL_error(L, "CreateFile on the pipe failed (%d)", (int)err);
  }
  lua_pushinteger(L, (lua_Integer)(intptr_t)r);
  lua_pushinteger(L, (lua_Integer)(intptr_t)w);
  return 2;
}

/*
** sync_pipe(): an anonymous pipe, whose handles do synchronous I/O only:
** the iocp backend serves them from pool threads, where a read on an
** empty pipe blocks until cancelled.
*/
static int make_sync_pipe(lua_State *L) {
  HANDLE r, w;
  if (!CreatePipe(&r, &w, NULL, 0))
    return luaL_error(L, "CreatePipe failed (%d)", (int)GetLastError());
  lua_pushinteger(L, (lua_Integer)(intptr_t)r);
  lua_pushinteger(L, (lua_Integer)(intptr_t)w);
  return 2;
}

/* close(handle): closes a raw handle; true on success. */
static int close_fd(lua_State *L) {
  lua_pushboolean(L, CloseHandle((HANDLE)(intptr_t)luaL_checkinteger(L, 1)));
  return 1;
}

/* setenv(name [, value]): sets, or with no value removes, a variable. */
static int set_env(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *value = luaL_optstring(L, 2, "");
  lua_pushboolean(L, _putenv_s(name, value) == 0);
  return 1;
}

/* ---- watchdog (the runner's per-test time limit) ---- */

static CRITICAL_SECTION wd_lock;
static HANDLE wd_event;
static int wd_started, wd_armed, wd_seconds;
static ULONGLONG wd_deadline;
static char wd_name[1024];

static DWORD WINAPI watchdog_main(LPVOID arg) {
  (void)arg;
  for (;;) {
    DWORD wait = INFINITE;
    ULONGLONG now = GetTickCount64();
    EnterCriticalSection(&wd_lock);
    if (wd_armed) {
      if (now >= wd_deadline) {
        fprintf(stderr, "\n\nspec timed out after %d s (a hang?): %s\n",
                wd_seconds, wd_name);
        fflush(stderr);
        ExitProcess(124);
      }
      wait = (DWORD)(wd_deadline - now);
    }
    LeaveCriticalSection(&wd_lock);
    WaitForSingleObject(wd_event, wait);
  }
  return 0;
}

/* watchdog(seconds, name): as in testsupport.c; watchdog(0) disarms. */
static int watchdog(lua_State *L) {
  lua_Integer secs = luaL_checkinteger(L, 1);
  const char *name = luaL_optstring(L, 2, "?");
  if (!wd_started) {
    HANDLE t;
    HMODULE self;
    /* The thread outlives lua_close, which unloads this library: pin it. */
    GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS |
                       GET_MODULE_HANDLE_EX_FLAG_PIN,
                       (LPCWSTR)(void *)&wd_started, &self);
    InitializeCriticalSection(&wd_lock);
    wd_event = CreateEventW(NULL, FALSE, FALSE, NULL);
    t = CreateThread(NULL, 0, watchdog_main, NULL, 0, NULL);
    if (t != NULL) CloseHandle(t);
    wd_started = 1;
  }
  EnterCriticalSection(&wd_lock);
  wd_armed = secs > 0;
  wd_seconds = (int)secs;
  wd_deadline = GetTickCount64() + (ULONGLONG)(secs > 0 ? secs : 0) * 1000;
  snprintf(wd_name, sizeof wd_name, "%s", name);
  LeaveCriticalSection(&wd_lock);
  SetEvent(wd_event);
  return 0;
}

int luaopen_ioq_test(lua_State *L);

__declspec(dllexport) int luaopen_ioq_test(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"fdcount", fdcount},
    {"pipe", make_pipe},
    {"sync_pipe", make_sync_pipe},
    {"close", close_fd},
    {"setenv", set_env},
    {"watchdog", watchdog},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
