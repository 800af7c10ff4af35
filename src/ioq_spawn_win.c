/*
** ioq_spawn_win.c: starting a child process on Windows (CreateProcessW),
** for lioq_process.c. Knows nothing of Lua: strings come in as UTF-8, and
** everything made here is freed or closed here, except what the caller
** asked for (the process handle, the parent's ends of the pipes).
**
** What a child gets, and why:
**   - a command line made from argv by the C runtime's quoting rules
**     (CommandLineToArgvW and the CRT's own parser read it back as the
**     same argv), since Windows passes one string, not a vector;
**   - the handles the script asked for as stdin, stdout, stderr, and no
**     other: each is an inheritable copy made for this child alone and
**     named in PROC_THREAD_ATTRIBUTE_HANDLE_LIST, so another inheritable
**     handle of the process (a Lua io file, another child's pipe being
**     set up) does not leak into it;
**   - for a pipe, a named pipe with a name of its own (anonymous pipes
**     cannot do overlapped I/O, which the completion port needs): the
**     parent's end overlapped and not inheritable, the child's end an
**     ordinary (synchronous) handle, as programs expect their stdio;
**     one direction each, as on POSIX;
**   - an environment block sorted by name, case folded, as Windows wants
**     it, with SYSTEMROOT added from ours when the script's table lacks
**     it (without it Winsock, and so many programs, cannot start).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "ioq_spawn.h"

/* The longest command line CreateProcessW takes, its zero included. */
#define MAX_CMDLINE 32767

/* s (UTF-8) as a new UTF-16 string; NULL with *err set (EINVAL for bytes
** that are not UTF-8, ENOMEM). */
static wchar_t *widen(const char *s, int *err) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  wchar_t *w;
  if (n <= 0) {
    *err = EINVAL;
    return NULL;
  }
  if ((w = malloc((size_t)n * sizeof *w)) == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n);
  return w;
}

/* ---------------------------------------------------------------- command line */

/*
** Appends one argument, quoted so that the C runtime's parser gives it back
** as it is: in quotes when it is empty or holds a space, tab, newline or
** quote; inside, backslashes are literal except before a quote (or the
** closing quote), where each is doubled and the quote escaped. With out
** NULL it only counts. Returns the bytes written.
*/
static size_t quote_arg(char *out, const char *arg) {
  size_t n = 0, k;
  const char *p;
  if (*arg != '\0' && strpbrk(arg, " \t\n\v\"") == NULL) {
    n = strlen(arg);
    if (out != NULL)
      memcpy(out, arg, n);
    return n;
  }
#define PUT(c) do { if (out != NULL) out[n] = (c); n++; } while (0)
  PUT('"');
  for (p = arg;; p++) {
    size_t slashes = 0;
    while (*p == '\\') {
      slashes++;
      p++;
    }
    if (*p == '\0') {  /* doubled: the closing quote stays a quote */
      for (k = 0; k < 2 * slashes; k++) PUT('\\');
      break;
    }
    if (*p == '"') {
      for (k = 0; k < 2 * slashes + 1; k++) PUT('\\');
    } else {
      for (k = 0; k < slashes; k++) PUT('\\');
    }
    PUT(*p);
  }
  PUT('"');
#undef PUT
  return n;
}

/*
** The program's name, first on the line, is read by other rules: up to a
** space, or in quotes up to the next quote, backslashes as they are. So
** it is quoted when it has a space or a tab, and cannot hold a quote
** (nor can a Windows file name).
*/
static size_t quote_prog(char *out, const char *prog) {
  size_t len = strlen(prog);
  int q = len == 0 || strpbrk(prog, " \t") != NULL;
  if (out != NULL) {
    if (q) out[0] = '"';
    memcpy(out + q, prog, len);
    if (q) out[len + 1] = '"';
  }
  return len + 2 * (size_t)q;
}

/* The command line for argv, in UTF-16; NULL with *err set. */
static wchar_t *command_line(char **argv, int *err) {
  size_t n = 0, i;
  char *line;
  wchar_t *w;
  if (strchr(argv[0], '"') != NULL || strpbrk(argv[0], "\n\v") != NULL) {
    *err = EINVAL;
    return NULL;
  }
  n = quote_prog(NULL, argv[0]);
  for (i = 1; argv[i] != NULL; i++) {
    n += 1 + quote_arg(NULL, argv[i]);
    if (n >= MAX_CMDLINE * 3)  /* longer in UTF-16 too: no need to go on */
      break;
  }
  if (n >= MAX_CMDLINE * 3) {
    *err = E2BIG;
    return NULL;
  }
  if ((line = malloc(n + 1)) == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  n = quote_prog(line, argv[0]);
  for (i = 1; argv[i] != NULL; i++) {
    line[n++] = ' ';
    n += quote_arg(line + n, argv[i]);
  }
  line[n] = '\0';
  w = widen(line, err);
  free(line);
  if (w != NULL && wcslen(w) >= MAX_CMDLINE) {
    free(w);
    *err = E2BIG;
    return NULL;
  }
  return w;
}

/* ---------------------------------------------------------------- the program */

/* Whether path names an existing file (not a directory); 0, or ENOENT or
** EACCES. */
static int is_file(const wchar_t *path) {
  DWORD a = GetFileAttributesW(path);
  if (a == INVALID_FILE_ATTRIBUTES)
    return GetLastError() == ERROR_ACCESS_DENIED ? EACCES : ENOENT;
  return (a & FILE_ATTRIBUTE_DIRECTORY) ? EACCES : 0;
}

/*
** The program to run, found before anything is made, so that a missing
** one is a clear ENOENT: a name with a directory in it is taken as it is
** (".exe" tried first where it has no extension, as CreateProcessW does
** for a command line); a bare name is looked up as SearchPathW does
** (this program's directory, the current one, the system's, then PATH).
** 0 with *out set (to be freed), or an errno value.
*/
static int find_program(const char *prog, wchar_t **out) {
  const char *base = prog, *s;
  int has_ext, err = 0;
  wchar_t *w, *buf;
  DWORD n;
  for (s = prog; *s != '\0'; s++)
    if (*s == '/' || *s == '\\' || *s == ':')
      base = s + 1;
  has_ext = strchr(base, '.') != NULL;
  if (*base == '\0')
    return ENOENT;
  if ((w = widen(prog, &err)) == NULL)
    return err;
  if (base != prog) {  /* a path */
    if (!has_ext) {
      size_t len = wcslen(w);
      if ((buf = malloc((len + 5) * sizeof *buf)) == NULL) {
        free(w);
        return ENOMEM;
      }
      memcpy(buf, w, len * sizeof *buf);
      memcpy(buf + len, L".exe", 5 * sizeof *buf);
      if (is_file(buf) == 0) {
        free(w);
        *out = buf;
        return 0;
      }
      free(buf);
    }
    if ((err = is_file(w)) != 0) {
      free(w);
      return err;
    }
    *out = w;
    return 0;
  }
  buf = NULL;
  n = MAX_PATH;
  for (;;) {
    wchar_t *b = realloc(buf, (size_t)n * sizeof *b);
    DWORD got;
    if (b == NULL) {
      err = ENOMEM;
      break;
    }
    buf = b;
    got = SearchPathW(NULL, w, has_ext ? NULL : L".exe", n, buf, NULL);
    if (got == 0) {
      err = ENOENT;
      break;
    }
    if (got < n) {
      err = is_file(buf);
      break;
    }
    n = got + 1;
  }
  free(w);
  if (err != 0) {
    free(buf);
    return err;
  }
  *out = buf;
  return 0;
}

/* ---------------------------------------------------------------- the environment */

/* The length of an entry's name: up to its '=' (a name may begin with
** one, as "=C:" does). */
static int name_len(const wchar_t *entry) {
  const wchar_t *eq = wcschr(entry + 1, L'=');
  return (int)(eq != NULL ? eq - entry : (ptrdiff_t)wcslen(entry));
}

static int by_name(const void *a, const void *b) {
  const wchar_t *x = *(wchar_t *const *)a, *y = *(wchar_t *const *)b;
  return CompareStringOrdinal(x, name_len(x), y, name_len(y), TRUE) - CSTR_EQUAL;
}

/*
** The environment block for envp: the entries in UTF-16, sorted by name
** with case folded, each ended by a zero, and one more zero at the end.
** NULL with *err set.
*/
static wchar_t *env_block(char **envp, int *err) {
  size_t n = 0, i, total = 1;
  wchar_t **e, *block = NULL, *p;
  int has_root = 0;
  while (envp[n] != NULL)
    n++;
  if ((e = calloc(n + 2, sizeof *e)) == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  for (i = 0; i < n; i++) {
    if ((e[i] = widen(envp[i], err)) == NULL)
      goto out;
    if (name_len(e[i]) == 10 &&
        CompareStringOrdinal(e[i], 10, L"SYSTEMROOT", 10, TRUE) == CSTR_EQUAL)
      has_root = 1;
  }
  if (!has_root) {
    DWORD len = GetEnvironmentVariableW(L"SYSTEMROOT", NULL, 0);
    if (len > 0) {
      if ((e[n] = malloc((11 + (size_t)len) * sizeof *e[n])) == NULL) {
        *err = ENOMEM;
        goto out;
      }
      memcpy(e[n], L"SYSTEMROOT=", 11 * sizeof *e[n]);
      if (GetEnvironmentVariableW(L"SYSTEMROOT", e[n] + 11, len) == len - 1)
        n++;
      else {
        free(e[n]);
        e[n] = NULL;
      }
    }
  }
  qsort(e, n, sizeof *e, by_name);
  for (i = 0; i < n; i++)
    total += wcslen(e[i]) + 1;
  if (n == 0)
    total = 2;  /* an empty block is still two zeros */
  if ((block = malloc(total * sizeof *block)) == NULL) {
    *err = ENOMEM;
    goto out;
  }
  p = block;
  for (i = 0; i < n; i++) {
    size_t len = wcslen(e[i]) + 1;
    memcpy(p, e[i], len * sizeof *p);
    p += len;
  }
  *p++ = L'\0';
  if (n == 0)
    *p = L'\0';
out:
  for (i = 0; i < n + 1; i++)
    free(e[i]);
  free(e);
  return block;
}

/* ---------------------------------------------------------------- handles */

/* An inheritable copy of h, for one child; 0 or an errno value. */
static int inheritable(HANDLE h, HANDLE *out) {
  if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(), out, 0,
                       TRUE, DUPLICATE_SAME_ACCESS)) {
    *out = NULL;
    return ioq_oserr();
  }
  return 0;
}

/*
** A pipe for descriptor i: the parent's end (overlapped, not inheritable)
** and the child's (synchronous, inheritable), one direction: the child
** reads its stdin, writes its stdout and stderr. 0 or an errno value.
*/
static int make_pipe(int i, HANDLE *parent, HANDLE *child) {
  static volatile LONG serial;
  SECURITY_ATTRIBUTES sa;
  char name[80];
  int tries;
  sa.nLength = sizeof sa;
  sa.lpSecurityDescriptor = NULL;
  sa.bInheritHandle = TRUE;
  *parent = *child = INVALID_HANDLE_VALUE;
  for (tries = 0;; tries++) {
    /* FIRST_PIPE_INSTANCE: a name someone else holds fails, and the next
    ** serial is tried, so nobody else can own the server end. */
    snprintf(name, sizeof name, "\\\\.\\pipe\\ioq-%lu-%ld-%lu",
             (unsigned long)GetCurrentProcessId(),
             (long)InterlockedIncrement(&serial),
             (unsigned long)GetTickCount());
    *parent = CreateNamedPipeA(name,
                 (i == 0 ? PIPE_ACCESS_OUTBOUND : PIPE_ACCESS_INBOUND) |
                 FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                 PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT |
                 PIPE_REJECT_REMOTE_CLIENTS, 1, 65536, 65536, 0, NULL);
    if (*parent != INVALID_HANDLE_VALUE)
      break;
    if (tries == 16 || (GetLastError() != ERROR_ACCESS_DENIED &&
                        GetLastError() != ERROR_PIPE_BUSY))
      return ioq_oserr();
  }
  *child = CreateFileA(name, i == 0 ? GENERIC_READ | FILE_WRITE_ATTRIBUTES
                                    : GENERIC_WRITE | FILE_READ_ATTRIBUTES,
                       0, &sa, OPEN_EXISTING, 0, NULL);
  if (*child == INVALID_HANDLE_VALUE) {
    int err = ioq_oserr();
    CloseHandle(*parent);
    *parent = INVALID_HANDLE_VALUE;
    return err;
  }
  return 0;
}

/* The NUL device, inheritable, for reading (stdin) or writing. */
static int open_null(int i, HANDLE *out) {
  SECURITY_ATTRIBUTES sa;
  sa.nLength = sizeof sa;
  sa.lpSecurityDescriptor = NULL;
  sa.bInheritHandle = TRUE;
  *out = CreateFileW(L"NUL", i == 0 ? GENERIC_READ : GENERIC_WRITE,
                     FILE_SHARE_READ | FILE_SHARE_WRITE, &sa, OPEN_EXISTING,
                     0, NULL);
  if (*out == INVALID_HANDLE_VALUE) {
    *out = NULL;
    return ioq_oserr();
  }
  return 0;
}

/*
** The handles the child gets as 0, 1, 2 (NULL: none), made for it; the
** parent's ends of the pipes in parent[]. 0 or an errno value (the
** caller closes what was made either way).
*/
static int child_handles(const int how[3], const ioq_fd fds[3],
                         HANDLE child[3], HANDLE parent[3]) {
  static const DWORD std[3] = {STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
                               STD_ERROR_HANDLE};
  int i, err = 0;
  for (i = 0; i < 3 && err == 0; i++) {
    HANDLE h;
    switch (how[i]) {
      case IO_INHERIT:
        /* None of ours (a program without a console): none for it. A
        ** handle that cannot be copied (a Windows 7 console's pseudo
        ** handle) is left out too. */
        h = GetStdHandle(std[i]);
        if (h != NULL && h != INVALID_HANDLE_VALUE)
          inheritable(h, &child[i]);
        break;
      case IO_NULL:
        err = open_null(i, &child[i]);
        break;
      case IO_PIPE:
        if ((err = make_pipe(i, &parent[i], &child[i])) != 0)
          parent[i] = child[i] = NULL;
        break;
      case IO_FD:
        err = inheritable((HANDLE)fds[i], &child[i]);
        break;
      case IO_MERGE:
        child[i] = child[1];  /* the same handle: closed once */
        break;
      default:
        break;
    }
  }
  return err;
}

/* ---------------------------------------------------------------- spawning */

int ioq_win_spawn(char **argv, char **envp, const char *cwd,
                  const int how[3], const ioq_fd fds[3], ioq_fd parent[3],
                  HANDLE *process, DWORD *pid) {
  wchar_t *app = NULL, *cmd = NULL, *env = NULL, *wcwd = NULL;
  HANDLE child[3] = {NULL, NULL, NULL}, ends[3] = {NULL, NULL, NULL};
  HANDLE list[3];
  LPPROC_THREAD_ATTRIBUTE_LIST attrs = NULL;
  STARTUPINFOEXW si;
  PROCESS_INFORMATION pi;
  DWORD flags = CREATE_UNICODE_ENVIRONMENT;
  SIZE_T size = 0;
  int err, i, nlist = 0;
  if ((err = find_program(argv[0], &app)) != 0)
    return err;
  if ((cmd = command_line(argv, &err)) == NULL ||
      (envp != NULL && (env = env_block(envp, &err)) == NULL) ||
      (cwd != NULL && (wcwd = widen(cwd, &err)) == NULL))
    goto out;
  if ((err = child_handles(how, fds, child, ends)) != 0)
    goto out;
  for (i = 0; i < 3; i++) {
    int k, seen = 0;
    for (k = 0; k < nlist; k++)
      seen |= list[k] == child[i];
    if (child[i] != NULL && !seen)
      list[nlist++] = child[i];
  }
  memset(&si, 0, sizeof si);
  si.StartupInfo.cb = sizeof si.StartupInfo;
  si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
  si.StartupInfo.hStdInput = child[0];
  si.StartupInfo.hStdOutput = child[1];
  si.StartupInfo.hStdError = child[2];
  if (nlist > 0) {
    /* The one way to say which handles a child inherits: only these. */
    InitializeProcThreadAttributeList(NULL, 1, 0, &size);
    if ((attrs = malloc(size)) == NULL) {
      err = ENOMEM;
      goto out;
    }
    if (!InitializeProcThreadAttributeList(attrs, 1, 0, &size)) {
      err = ioq_oserr();
      free(attrs);
      attrs = NULL;
      goto out;
    }
    if (!UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
                                   list, (SIZE_T)nlist * sizeof list[0],
                                   NULL, NULL)) {
      err = ioq_oserr();
      goto out;
    }
    si.StartupInfo.cb = sizeof si;
    si.lpAttributeList = attrs;
    flags |= EXTENDED_STARTUPINFO_PRESENT;
  }
  if (!CreateProcessW(app, cmd, NULL, NULL, nlist > 0, flags, env, wcwd,
                      &si.StartupInfo, &pi)) {
    DWORD code = GetLastError();
    err = code == ERROR_BAD_EXE_FORMAT || code == ERROR_EXE_MACHINE_TYPE_MISMATCH
          ? ENOEXEC : ioq_win_errno(code);
    goto out;
  }
  CloseHandle(pi.hThread);
  *process = pi.hProcess;
  *pid = pi.dwProcessId;
  for (i = 0; i < 3; i++)
    parent[i] = ends[i] != NULL ? (ioq_fd)ends[i] : IOQ_NOFD;
  err = 0;
out:
  if (attrs != NULL) {
    DeleteProcThreadAttributeList(attrs);
    free(attrs);
  }
  for (i = 0; i < 3; i++) {
    if (child[i] != NULL && (i != 2 || how[2] != IO_MERGE))
      CloseHandle(child[i]);
    if (err != 0 && ends[i] != NULL)
      CloseHandle(ends[i]);
  }
  free(app);
  free(cmd);
  free(env);
  free(wcwd);
  return err;
}
