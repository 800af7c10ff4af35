/*
** ioq_spawn.h: what lioq_process.c (the binding) and ioq_spawn_win.c
** (CreateProcessW, which knows nothing of Lua) share.
*/
#ifndef IOQ_SPAWN_H
#define IOQ_SPAWN_H

#include "ioq_os.h"

/* What the script asked for one of descriptors 0, 1, 2. */
enum { IO_INHERIT, IO_NULL, IO_PIPE, IO_FD, IO_MERGE };

#ifdef _WIN32
/*
** Starts argv[0] (a path, or a name looked up as SearchPathW does, ".exe"
** added where it has no extension) with the command line argv makes by the
** C runtime's quoting rules; envp: NULL (ours) or "NAME=value" strings;
** cwd: NULL or a directory; all UTF-8. how[i] and fds[i] say what the
** child gets as stdin, stdout, stderr; for IO_PIPE, parent[i] gets this
** side's end of a new overlapped named pipe. The child inherits those
** handles and no other. On success *process is its handle (the caller
** closes it) and *pid its id. Returns 0, or an errno value with nothing
** left open.
*/
int ioq_win_spawn(char **argv, char **envp, const char *cwd,
                  const int how[3], const ioq_fd fds[3], ioq_fd parent[3],
                  HANDLE *process, DWORD *pid);
#endif

#endif
