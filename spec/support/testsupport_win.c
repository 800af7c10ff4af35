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

int luaopen_ioq_test(lua_State *L);

__declspec(dllexport) int luaopen_ioq_test(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"fdcount", fdcount},
    {"pipe", make_pipe},
    {"sync_pipe", make_sync_pipe},
    {"close", close_fd},
    {"setenv", set_env},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  return 1;
}
