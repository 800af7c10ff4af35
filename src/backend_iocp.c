/*
** backend_iocp.c: the queue on a Windows I/O completion port.
**
** IOCP is completion-based like io_uring: an overlapped ReadFile, WSARecv,
** AcceptEx... returns at once and a completion packet arrives on the port
** when the kernel is done. So most ops map one to one:
**
**   read, write        ReadFile / WriteFile at an explicit offset (a file
**                      object keeps its position: IOQ_CAP_NO_POSITION)
**   recv, send, ...    WSARecv, WSASend, WSARecvFrom, WSASendTo
**   accept, connect    AcceptEx, ConnectEx (found with WSAIoctl)
**   nop                PostQueuedCompletionStatus
**   open, fsync        CreateFileW, FlushFileBuffers on the system thread
**                      pool (they block), which posts the packet; so are
**                      reads and writes on handles not opened for
**                      overlapped I/O (Lua io files, consoles), and the
**                      binding's IOQ_CALL functions
**   sleep, timeouts    a timer heap that bounds the port's wait; a timed
**                      out op is canceled with CancelIoEx
**   shutdown, UDP      done at once (they never block); reported by the
**   connect            next reap
**   pooled recv        a 0-byte WSARecv, then a non-blocking recv into a
**                      pool buffer (see "the pool" below)
**
** A pool op is canceled (or timed out) with CancelSynchronousIo on the
** thread running its call: a read on an empty pipe or a console may
** otherwise never end, and closing the queue waits for every op.
**
** Lifetime (DESIGN.md rule 6): each started op gets a heap record with its
** OVERLAPPED first, its output fields and the I/O's own state. The record
** is freed only when its packet is dequeued, also after CancelIoEx (which
** only asks) and when the queue closes (the binding cancels everything and
** reaps until nothing is left).
**
** A handle is tied to one port for life, so it belongs to the first queue
** that uses it: an op on a handle some other port holds fails with EBUSY
** rather than completing on a port nobody may drive. Which port holds a
** handle value is kept for the whole process (ioq_win_tie): handle values
** are reused after a close, and only a record every queue updates knows
** that a value one queue tied now names a handle another queue tied. Each
** op still asks to tie its handle (a new handle under a known value then
** gets tied); and should a packet still reach another queue's port, that
** backend forwards it to the port of the record's owner.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ioq_blocking.h"
#include "ioq_bufstack.h"
#include "ioq_heap.h"
#include "ioq_os.h"

#include <mswsock.h>

/* Completion keys: how a packet's result is read. */
enum { KEY_IO = 1,     /* the kernel's: the status is in the OVERLAPPED */
       KEY_DONE = 2 }; /* ours: the result is in rec->res */

/* How a record completes, and so how it is canceled. */
enum { K_IO,           /* a kernel packet; CancelIoEx */
       K_POSTED,       /* a packet we posted (nop) */
       K_POOL,         /* a pool thread's packet; CancelSynchronousIo */
       K_LOCAL,        /* no packet: the done list (sleeps, instant ops) */
       K_WAIT,         /* an object wait's callback posts the packet; a
                          cancel posts it instead (whoever comes first) */
};

typedef struct iocp_backend iocp_backend;
typedef struct rec rec;

/*
** A pool op's state shared with the pool thread, under lock (so a cancel
** cannot hit the thread's next work). It lives apart from the record: an
** op canceled (or timed out) before a pool thread took it up ends at once
** and its record goes, since the pool has a limit (500 threads by default)
** that reads blocked on pipes or consoles can fill, and then queued work
** may wait forever. The work item stays queued; when it runs at last it
** finds the job abandoned and frees it.
*/
typedef struct pool_job {
  SRWLOCK lock;
  rec *r;                   /* the op's record; NULL once abandoned */
  HANDLE thread;            /* the thread in the op's call, while it is */
  int started, done;
  int aborted;              /* a cancel or a timeout came while it ran */
} pool_job;

struct rec {
  OVERLAPPED ov;            /* first: a packet's OVERLAPPED* is its rec* */
  ioq_op *op;
  iocp_backend *owner;
  struct rec *next;         /* on the done list */
  ioq_heap_node timer;      /* its place in the timer heap, if any */
  int64_t res;              /* K_POSTED, K_POOL, K_LOCAL: the result */
  int kind;
  int timed_out;            /* the op's timeout canceled it */
  int sleep_result;         /* a sleep's result when its timer fires */
  WSABUF wsabuf;
  DWORD flags;              /* WSARecv's in/out flags */
  int addrlen;              /* WSARecvFrom's in/out address length */
  SOCKET accepted;          /* AcceptEx: the socket it fills */
  /* AcceptEx writes both addresses here, each with 16 bytes to spare. */
  char addrs[2 * (sizeof(struct sockaddr_storage) + 16)];
  int append;               /* a write that goes to the end of the file */
  /* K_POOL: the job the pool thread runs; a cancel that found the thread
  ** not yet in its call is retried by reap. */
  pool_job *job;
  struct rec *retry_next;   /* on the owner's retry list */
  int on_retry;
  /* use_pool: on a stream socket the WSARecv is a 0-byte wait; on
  ** another it receives into pool buffer `buf`, lent to it meanwhile. */
  int stream;
  int32_t buf;
  /* K_WAIT: the thread pool's wait on the object, and who posts the
  ** packet: the callback (signaled) or a cancel, whichever swaps first. */
  HANDLE wait;
  volatile LONG posted;
};

struct iocp_backend {
  ioq_backend base;
  HANDLE port;
  rec *done_head, *done_tail;    /* finished without a packet, in order */
  ioq_heap timers;               /* through rec.timer, soonest first */
  LPFN_ACCEPTEX acceptex;        /* looked up on first use */
  LPFN_CONNECTEX connectex;
  unsigned started;              /* ops started since the last submit */
  rec *retries;                  /* pool ops whose cancel must be retried */
  ioq_bufstack *pool;            /* provided buffers, made on first use */
  unsigned long long port_id;    /* names the port in ioq_win_tie */
  OVERLAPPED_ENTRY entries[64];
};

#define TO_IOCP(b) ((iocp_backend *)(b))
#define rec_of(op) ((rec *)(op)->be.op.ptr[0])

static int start_wait(rec *r);

/* ---------------------------------------------------------------- timers */

/* The record whose timer node is t. */
static rec *timer_rec(ioq_heap_node *t) {
  return (rec *)(void *)((char *)t - offsetof(rec, timer));
}

/* Room for one more timer; called before an op starts, so a failure there
** leaves nothing half done. 0 or -ENOMEM. */
static int timer_reserve(iocp_backend *b) {
  return ioq_heap_reserve(&b->timers, 1);
}

static void timer_add(iocp_backend *b, rec *r, int64_t deadline) {
  ioq_heap_add(&b->timers, &r->timer, deadline);  /* room was reserved */
}

static void timer_remove(iocp_backend *b, rec *r) {
  ioq_heap_remove(&b->timers, &r->timer);
}

/* ---------------------------------------------------------------- records */

static void done_push(iocp_backend *b, rec *r, int64_t res) {
  r->res = res;
  r->kind = K_LOCAL;
  r->next = NULL;
  if (b->done_tail) b->done_tail->next = r;
  else b->done_head = r;
  b->done_tail = r;
}

static rec *done_pop(iocp_backend *b) {
  rec *r = b->done_head;
  if ((b->done_head = r->next) == NULL)
    b->done_tail = NULL;
  return r;
}

/*
** Ties a handle to this port before an op on it. 0; -EBUSY when another
** port holds it (it was used by another queue first); -EBADF when it is
** not a handle.
*/
static int tie(iocp_backend *b, ioq_fd fd) {
  if (fd == 0 || fd == IOQ_NOFD)
    return -EBADF;
  return -ioq_win_tie(fd, b->port, b->port_id, KEY_IO);
}

/* The extension functions Winsock exports only through WSAIoctl. */
static int lookup(SOCKET s, GUID guid, void *fn, size_t size) {
  DWORD got = 0;
  if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof guid, fn,
               (DWORD)size, &got, NULL, NULL) != 0)
    return -ioq_sockerr();
  return 0;
}

static int socket_info(SOCKET s, WSAPROTOCOL_INFOW *info) {
  int len = sizeof *info;
  if (getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, (char *)info, &len) != 0)
    return -ioq_sockerr();
  return 0;
}

/*
** An op's error as errno. A read or write the handle has no right to is
** EBADF, as on POSIX systems (Windows says access denied).
*/
static int op_errno(const ioq_op *op, DWORD err) {
  if ((op->code == IOQ_READ || op->code == IOQ_WRITE) &&
      err == ERROR_ACCESS_DENIED)
    return EBADF;
  return ioq_win_errno(err);
}

/*
** A transfer's result when Windows reports `err` with `bytes` moved: the
** end of a file, or a pipe whose writer has gone, is a 0-byte read; a
** datagram (or a pipe message) cut to the buffer is the bytes that fit, as
** on Linux, whichever call received it; anything else is -errno.
*/
static int64_t failed_transfer(const ioq_op *op, DWORD err, DWORD bytes) {
  if (op->code == IOQ_READ &&
      (err == ERROR_HANDLE_EOF || err == ERROR_BROKEN_PIPE))
    return 0;
  if ((op->code == IOQ_READ || op->code == IOQ_RECV ||
       op->code == IOQ_RECVFROM) &&
      (err == ERROR_MORE_DATA || err == WSAEMSGSIZE))
    return bytes;
  return -op_errno(op, err);
}

/*
** Whether an overlapped call that reported `err` still queues a packet.
** Windows queues one for every status that is not an error: success,
** pending, and the warnings. A datagram or a pipe message cut to the
** buffer (STATUS_BUFFER_OVERFLOW, seen as ERROR_MORE_DATA or WSAEMSGSIZE)
** is such a warning, reported at once when the data was there: the record
** must then wait for its packet, which gives the result (freeing it would
** hand the packet freed memory). Every other immediate failure is an error
** status and queues nothing. (ioq never sets
** FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, so a success always has a packet.)
*/
static int packet_follows(DWORD err) {
  return err == ERROR_IO_PENDING || err == ERROR_MORE_DATA ||
         err == WSAEMSGSIZE;
}

/*
** An overlapped ReadFile/WriteFile's outcome, read right after the call:
** under way or done (0: its packet will come), or failed at once, with no
** packet. A failure that is a result (a read at the end of the file may
** say so at once) goes to the done list; an error is -errno.
*/
static int overlapped(iocp_backend *b, rec *r, BOOL ok) {
  DWORD err;
  int64_t res;
  if (ok || packet_follows(err = GetLastError()))
    return 0;
  if ((res = failed_transfer(r->op, err, 0)) < 0)
    return (int)res;
  done_push(b, r, res);
  return 0;
}

/* The same for the socket calls: 0 when the packet will come. */
static int wsa_overlapped(int r) {
  int err;
  if (r == 0)
    return 0;
  err = WSAGetLastError();
  return packet_follows((DWORD)err) ? 0 : -ioq_win_errno((unsigned long)err);
}

/* ---------------------------------------------------------------- ops */

static int start_accept(iocp_backend *b, rec *r) {
  ioq_op *op = r->op;
  SOCKET lst = (SOCKET)op->fd;
  WSAPROTOCOL_INFOW info;
  DWORD got;
  int err;
  if (b->acceptex == NULL) {
    GUID g = WSAID_ACCEPTEX;
    if ((err = lookup(lst, g, &b->acceptex, sizeof b->acceptex)) != 0)
      return err;
  }
  if ((err = socket_info(lst, &info)) != 0)
    return err;
  if ((err = tie(b, op->fd)) != 0)
    return err;
  r->accepted = WSASocketW(info.iAddressFamily, info.iSocketType,
                           info.iProtocol, NULL, 0,
                           WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  if (r->accepted == INVALID_SOCKET)
    return -ioq_sockerr();
  err = wsa_overlapped(b->acceptex(lst, r->accepted, r->addrs, 0,
                                   sizeof r->addrs / 2, sizeof r->addrs / 2,
                                   &got, &r->ov) ? 0 : SOCKET_ERROR);
  if (err != 0) {
    closesocket(r->accepted);
    r->accepted = INVALID_SOCKET;
  }
  return err;
}

/* ConnectEx wants a bound socket; bind to the any address if it is not. */
static int bind_any(SOCKET s, int family) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (getsockname(s, (struct sockaddr *)&ss, &len) == 0)
    return 0;
  memset(&ss, 0, sizeof ss);
  ss.ss_family = (unsigned short)family;
  len = family == AF_INET6 ? (int)sizeof(struct sockaddr_in6)
                           : (int)sizeof(struct sockaddr_in);
  if (bind(s, (struct sockaddr *)&ss, len) != 0)
    return -ioq_sockerr();
  return 0;
}

static int start_connect(iocp_backend *b, rec *r) {
  ioq_op *op = r->op;
  SOCKET s = (SOCKET)op->fd;
  WSAPROTOCOL_INFOW info;
  int err;
  if ((err = socket_info(s, &info)) != 0)
    return err;
  if (info.iSocketType != SOCK_STREAM) {  /* a datagram connect never waits */
    if (connect(s, op->addr, (int)op->addrlen) != 0)
      return -ioq_sockerr();
    done_push(b, r, 0);
    return 0;
  }
  if (b->connectex == NULL) {
    GUID g = WSAID_CONNECTEX;
    if ((err = lookup(s, g, &b->connectex, sizeof b->connectex)) != 0)
      return err;
  }
  if ((err = bind_any(s, info.iAddressFamily)) != 0 ||
      (err = tie(b, op->fd)) != 0)
    return err;
  return wsa_overlapped(b->connectex(s, op->addr, (int)op->addrlen, NULL, 0,
                                     NULL, &r->ov) ? 0 : SOCKET_ERROR);
}

/* CreateFileW's arguments for open(2)-style flags. */
static HANDLE open_path(const ioq_op *op, DWORD *err) {
  int acc = op->flags & O_ACCMODE, n;
  DWORD access = acc == O_RDONLY ? GENERIC_READ
               : acc == O_WRONLY ? GENERIC_WRITE
               : GENERIC_READ | GENERIC_WRITE;
  DWORD how, attrs = FILE_FLAG_OVERLAPPED;
  wchar_t *wpath;
  HANDLE h;
  if ((op->flags & O_CREAT) && (op->flags & O_EXCL)) how = CREATE_NEW;
  else if ((op->flags & O_CREAT) && (op->flags & O_TRUNC)) how = CREATE_ALWAYS;
  else if (op->flags & O_CREAT) how = OPEN_ALWAYS;
  else if (op->flags & O_TRUNC) how = TRUNCATE_EXISTING;
  else how = OPEN_EXISTING;
  /* Append: the right to add data but not to write it in place, which
  ** Windows (like O_APPEND) honours by writing at the end, and which
  ** start_io sees (append_only) to send every write there itself. */
  if ((op->flags & O_APPEND) && !(op->flags & O_TRUNC))
    access = (access & GENERIC_READ) | (FILE_GENERIC_WRITE & ~FILE_WRITE_DATA);
  if (op->flags & O_DIRECT)
    attrs |= FILE_FLAG_NO_BUFFERING | FILE_FLAG_WRITE_THROUGH;
  if ((op->flags & O_CREAT) && !(op->mode & 0200))
    attrs |= FILE_ATTRIBUTE_READONLY;
  /* Lua strings are bytes; paths are taken as UTF-8. */
  n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, op->buf, -1, NULL, 0);
  if (n <= 0) {
    *err = ERROR_INVALID_NAME;
    return INVALID_HANDLE_VALUE;
  }
  if ((wpath = malloc((size_t)n * sizeof *wpath)) == NULL) {
    *err = ERROR_NOT_ENOUGH_MEMORY;
    return INVALID_HANDLE_VALUE;
  }
  MultiByteToWideChar(CP_UTF8, 0, op->buf, -1, wpath, n);
  h = CreateFileW(wpath, access,
                  FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                  NULL, how, attrs, NULL);
  *err = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
  free(wpath);
  return h;
}

/*
** Whether a handle was opened for synchronous I/O (without
** FILE_FLAG_OVERLAPPED): its I/O blocks, so it goes to a pool thread. Asked
** of ntdll, the one place that tells (FileModeInformation).
*/
typedef LONG (WINAPI *query_file_fn)(HANDLE, void *, void *, ULONG, int);
typedef LONG (WINAPI *query_object_fn)(HANDLE, int, void *, ULONG, ULONG *);
static query_file_fn query_file;
static query_object_fn query_object;
static INIT_ONCE ntdll_once = INIT_ONCE_STATIC_INIT;

static BOOL CALLBACK find_query(PINIT_ONCE once, PVOID arg, PVOID *ctx) {
  HMODULE nt = GetModuleHandleW(L"ntdll.dll");
  (void)once; (void)arg; (void)ctx;
  if (nt != NULL) {  /* through void (*)(void): one function type to another */
    query_file = (query_file_fn)(void (*)(void))
                 GetProcAddress(nt, "NtQueryInformationFile");
    query_object = (query_object_fn)(void (*)(void))
                   GetProcAddress(nt, "NtQueryObject");
  }
  return TRUE;
}

/*
** Whether a handle may only add to its file (FILE_APPEND_DATA without
** FILE_WRITE_DATA: ioq opens "a" files so). As with O_APPEND on Linux,
** every write on it then goes to the end, whatever offset it names.
*/
static int append_only(HANDLE h) {
  struct {  /* OBJECT_BASIC_INFORMATION */
    ULONG attributes;
    ACCESS_MASK access;
    ULONG handles, pointers, reserved[10];
  } info;
  InitOnceExecuteOnce(&ntdll_once, find_query, NULL, NULL);
  if (query_object == NULL ||
      query_object(h, 0 /* ObjectBasicInformation */, &info, sizeof info,
                   NULL) != 0)
    return 0;
  return (info.access & (FILE_APPEND_DATA | FILE_WRITE_DATA)) ==
         FILE_APPEND_DATA;
}

static int is_synchronous(HANDLE h) {
  struct { void *status; ULONG_PTR info; } iosb;
  ULONG mode = 0;
  InitOnceExecuteOnce(&ntdll_once, find_query, NULL, NULL);
  if (query_file == NULL ||
      query_file(h, &iosb, &mode, sizeof mode, 16 /* FileModeInformation */) != 0)
    return 0;
  return (mode & 0x30) != 0;  /* FILE_SYNCHRONOUS_IO_(NON)ALERT */
}

/* A read or write on a synchronous handle: at the offset, or (-1) at the
** handle's own file pointer, which such handles have; an append at the
** end (offset all ones). */
static int64_t sync_transfer(rec *r) {
  ioq_op *op = r->op;
  OVERLAPPED at, *pat = NULL;
  DWORD n = 0;
  BOOL ok;
  if (op->offset >= 0 || r->append) {
    int64_t off = r->append ? -1 : op->offset;
    memset(&at, 0, sizeof at);
    at.Offset = (DWORD)off;
    at.OffsetHigh = (DWORD)((uint64_t)off >> 32);
    pat = &at;
  }
  ok = op->code == IOQ_READ
     ? ReadFile((HANDLE)op->fd, op->buf, op->len, &n, pat)
     : WriteFile((HANDLE)op->fd, op->buf, op->len, &n, pat);
  return ok ? (int64_t)n : failed_transfer(op, GetLastError(), n);
}

/* ---------------------------------------------------------------- files */

/* A UTF-8 path as UTF-16, in memory the caller frees; NULL with *err set
** when it is not UTF-8 or memory is short. `slashes`: '/' becomes '\\'
** (a symbolic link's target, which Windows reads literally). */
static wchar_t *wide(const char *s, int slashes, int64_t *err) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  wchar_t *w;
  if (n <= 0) {
    *err = -ioq_win_errno(ERROR_INVALID_NAME);
    return NULL;
  }
  if ((w = malloc((size_t)n * sizeof *w)) == NULL) {
    *err = -ENOMEM;
    return NULL;
  }
  MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n);
  if (slashes) {
    int i;
    for (i = 0; i < n; i++)
      if (w[i] == L'/') w[i] = L'\\';
  }
  return w;
}

/* A FILETIME (100 ns since 1601) as Unix seconds and nanoseconds. */
static struct ioq_statx_time unix_time(LARGE_INTEGER t) {
  struct ioq_statx_time u;
  int64_t ticks = t.QuadPart - 116444736000000000LL;
  u.tv_sec = ticks / 10000000;
  u.tv_nsec = (uint32_t)((ticks % 10000000 + 10000000) % 10000000) * 100;
  if (ticks % 10000000 < 0) u.tv_sec--;
  u.pad = 0;
  return u;
}

/*
** IOQ_STAT: what GetFileInformationByHandle(Ex) tell, in statx's fields.
** The mode is made up as the C runtime's stat makes it: read for all,
** write unless read-only, and search for directories.
*/
static int64_t win_stat(ioq_op *op) {
  ioq_statx *st = op->addr;
  BY_HANDLE_FILE_INFORMATION info;
  FILE_BASIC_INFO basic;
  HANDLE h = (HANDLE)op->fd;
  int64_t err = 0;
  unsigned type;
  if (op->buf != NULL) {
    wchar_t *w = wide(op->buf, 0, &err);
    if (w == NULL)
      return err;
    h = CreateFileW(w, FILE_READ_ATTRIBUTES,
                    FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                    NULL, OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS |
                    ((op->flags & IOQ_NOFOLLOW) ? FILE_FLAG_OPEN_REPARSE_POINT
                                                : 0), NULL);
    free(w);
    if (h == INVALID_HANDLE_VALUE)
      return -ioq_oserr();
  }
  if (!GetFileInformationByHandle(h, &info))
    err = -ioq_oserr();
  else if (!GetFileInformationByHandleEx(h, FileBasicInfo, &basic,
                                         sizeof basic))
    err = -ioq_oserr();
  if (op->buf != NULL)
    CloseHandle(h);
  if (err != 0)
    return err;
  memset(st, 0, sizeof *st);
  type = (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) ? IOQ_S_IFDIR
       : IOQ_S_IFREG;
  if ((info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) &&
      (op->flags & IOQ_NOFOLLOW))
    type = IOQ_S_IFLNK;
  st->stx_mask = STATX_BTIME;
  st->stx_mode = (uint16_t)(type | 0444 |
    ((info.dwFileAttributes & FILE_ATTRIBUTE_READONLY) ? 0 : 0222) |
    (type == IOQ_S_IFDIR ? 0111 : 0));
  st->stx_size = ((uint64_t)info.nFileSizeHigh << 32) | info.nFileSizeLow;
  st->stx_blocks = (st->stx_size + 511) / 512;
  st->stx_blksize = 4096;
  st->stx_nlink = info.nNumberOfLinks;
  st->stx_ino = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
  st->stx_dev_minor = info.dwVolumeSerialNumber;
  st->stx_atime = unix_time(basic.LastAccessTime);
  st->stx_mtime = unix_time(basic.LastWriteTime);
  st->stx_ctime = unix_time(basic.ChangeTime);
  st->stx_btime = unix_time(basic.CreationTime);
  return 0;
}

/*
** One read or write of `len` bytes at `off` on a file handle of either
** kind, waited for here: a synchronous handle at its file pointer when
** off < 0; an overlapped one through an event whose low bit keeps the
** packet off the port (the record it would name is not this op's).
*/
static int64_t win_transfer(ioq_op *op, HANDLE h, int writing, void *buf,
                            DWORD len, int64_t off) {
  OVERLAPPED ov;
  HANDLE ev;
  DWORD n = 0, err;
  BOOL ok;
  if (off < 0 && is_synchronous(h)) {
    ok = writing ? WriteFile(h, buf, len, &n, NULL)
                 : ReadFile(h, buf, len, &n, NULL);
    err = ok ? 0 : GetLastError();
    if (!ok && !writing && (err == ERROR_HANDLE_EOF || err == ERROR_BROKEN_PIPE))
      return 0;
    return ok ? (int64_t)n : failed_transfer(op, err, n);
  }
  if ((ev = CreateEventW(NULL, TRUE, FALSE, NULL)) == NULL)
    return -ioq_oserr();
  memset(&ov, 0, sizeof ov);
  if (off < 0 && !writing)
    off = 0;  /* no position to read at: the start, as start_io does */
  ov.Offset = off < 0 ? 0xffffffffu : (DWORD)off;
  ov.OffsetHigh = off < 0 ? 0xffffffffu : (DWORD)((uint64_t)off >> 32);
  ov.hEvent = (HANDLE)((uintptr_t)ev | 1);
  ok = writing ? WriteFile(h, buf, len, NULL, &ov)
               : ReadFile(h, buf, len, NULL, &ov);
  if (ok || (err = GetLastError()) == ERROR_IO_PENDING)
    ok = GetOverlappedResult(h, &ov, &n, TRUE);
  err = ok ? 0 : GetLastError();
  CloseHandle(ev);
  if (!ok && !writing && (err == ERROR_HANDLE_EOF || err == ERROR_BROKEN_PIPE))
    return 0;  /* the end of the file, whatever the op (a readv, a copy) */
  return ok ? (int64_t)n : failed_transfer(op, err, n);
}

/* IOQ_READV, IOQ_WRITEV: each buffer in turn, until one moves less. */
static int64_t win_vector(ioq_op *op) {
  ioq_iov *iov = op->buf;
  int64_t total = 0, off = op->offset;
  int i;
  for (i = 0; i < op->flags && (uint64_t)total < op->len; i++) {
    DWORD want = (DWORD)iov[i].iov_len;
    int64_t n;
    if (want == 0)
      continue;
    n = win_transfer(op, (HANDLE)op->fd, op->code == IOQ_WRITEV,
                     iov[i].iov_base, want, off);
    if (n < 0)
      return total > 0 ? total : n;
    total += n;
    if (off >= 0) off += n;
    if ((DWORD)n < want)
      break;
  }
  return total;
}

/* IOQ_COPY: through a bounce buffer, on the pool thread. */
static int64_t win_copy(ioq_op *op) {
  ioq_copyspec *c = op->addr;
  size_t room = 256 << 10;
  char *buf = malloc(room);
  if (buf == NULL)
    return -ENOMEM;
  while (c->done < c->len) {
    DWORD want = (DWORD)((uint64_t)(c->len - c->done) < room
                         ? (size_t)(c->len - c->done) : room);
    int64_t n = win_transfer(op, (HANDLE)op->fd, 0, buf, want, c->src_off);
    int64_t put = 0;
    if (n <= 0) {
      if (n < 0 && c->done == 0) c->done = n;
      break;
    }
    while (put < n) {
      int64_t w = win_transfer(op, (HANDLE)c->dst, 1, buf + put,
                               (DWORD)(n - put), c->dst_off);
      if (w <= 0) {
        free(buf);
        return c->done > 0 ? c->done : (w < 0 ? w : -EIO);
      }
      put += w;
      if (c->dst_off >= 0) c->dst_off += w;
    }
    c->done += n;
    if (c->src_off >= 0) c->src_off += n;
  }
  free(buf);
  return c->done;
}

/* Sets a file's size (FileEndOfFileInfo). */
static int64_t set_size(HANDLE h, int64_t size) {
  FILE_END_OF_FILE_INFO eof;
  eof.EndOfFile.QuadPart = size;
  return SetFileInformationByHandle(h, FileEndOfFileInfo, &eof, sizeof eof)
         ? 0 : -ioq_oserr();
}

/* IOQ_ALLOCATE, mode 0: room for the range, the file grown to reach its
** end. Windows has no other fallocate modes. */
static int64_t win_allocate(ioq_op *op) {
  LARGE_INTEGER size;
  HANDLE h = (HANDLE)op->fd;
  if (op->mode != 0)
    return -EOPNOTSUPP;
  if (!GetFileSizeEx(h, &size))
    return -ioq_oserr();
  if (op->offset + op->ns > size.QuadPart)
    return set_size(h, op->offset + op->ns);
  return 0;
}

/* A path op: the Win32 call on the UTF-16 path(s). */
static int64_t win_path_op(ioq_op *op) {
  int64_t err = 0;
  wchar_t *a = wide(op->buf, op->code == IOQ_SYMLINK, &err), *b = NULL;
  BOOL ok = FALSE;
  if (a == NULL)
    return err;
  if (op->code == IOQ_RENAME || op->code == IOQ_LINK ||
      op->code == IOQ_SYMLINK) {
    if ((b = wide(op->addr, 0, &err)) == NULL) {
      free(a);
      return err;
    }
  }
  switch (op->code) {
    case IOQ_UNLINK:
      ok = DeleteFileW(a);
      break;
    case IOQ_RMDIR:
      ok = RemoveDirectoryW(a);
      break;
    case IOQ_MKDIR:
      ok = CreateDirectoryW(a, NULL);
      break;
    case IOQ_RENAME:
      ok = MoveFileExW(a, b, op->flags & IOQ_NOREPLACE
                             ? 0 : MOVEFILE_REPLACE_EXISTING);
      break;
    case IOQ_LINK:
      ok = CreateHardLinkW(b, a, NULL);
      break;
    case IOQ_SYMLINK: {
      /* A link to a directory must say so; unprivileged where the
      ** system allows it (developer mode). */
      DWORD attrs = GetFileAttributesW(a), flags = 0x2;
      if (attrs != INVALID_FILE_ATTRIBUTES &&
          (attrs & FILE_ATTRIBUTE_DIRECTORY))
        flags |= 0x1;
      ok = CreateSymbolicLinkW(b, a, flags);
      if (!ok && GetLastError() == ERROR_INVALID_PARAMETER)
        ok = CreateSymbolicLinkW(b, a, flags & ~0x2u);  /* older systems */
      break;
    }
    default:
      break;
  }
  err = ok ? 0 : -ioq_oserr();
  free(a);
  free(b);
  return err;
}

/* The file-system ops (IOQ_STAT and after) on a pool thread. */
static int64_t win_fs_run(ioq_op *op) {
  HANDLE h = (HANDLE)op->fd;
  switch (op->code) {
    case IOQ_STAT:
      return win_stat(op);
    case IOQ_UNLINK: case IOQ_RMDIR: case IOQ_MKDIR: case IOQ_RENAME:
    case IOQ_LINK:
    case IOQ_SYMLINK:
      return win_path_op(op);
    case IOQ_READLINK:
      return -ENOSYS;  /* a reparse point's data: not done yet */
    case IOQ_TRUNCATE:
      return set_size(h, op->offset);
    case IOQ_ALLOCATE:
      return win_allocate(op);
    case IOQ_DATASYNC:
      return FlushFileBuffers(h) ? 0 : -ioq_oserr();
    case IOQ_CLOSE:
      return ioq_close(op->fd, 0);
    case IOQ_READV: case IOQ_WRITEV:
      return win_vector(op);
    case IOQ_COPY:
      return win_copy(op);
    default:
      return -EINVAL;
  }
}

/* Runs the blocking part of an op and sets r->res. */
static void run_blocking(rec *r) {
  ioq_op *op = r->op;
  DWORD err = 0;
  if (op->code >= IOQ_STAT) {
    r->res = win_fs_run(op);
  } else if (op->code == IOQ_OPEN) {
    HANDLE h = open_path(op, &err);
    r->res = h == INVALID_HANDLE_VALUE ? -ioq_win_errno(err) : (int64_t)(intptr_t)h;
  } else if (op->code == IOQ_FSYNC) {
    r->res = FlushFileBuffers((HANDLE)op->fd) ? 0 : -ioq_oserr();
  } else if (op->code == IOQ_CALL) {
    r->res = op->call(op->buf);
  } else {
    r->res = sync_transfer(r);
  }
}

/* On a pool thread: the job whose call it runs (ioq_blocking_aborted). */
static _Thread_local pool_job *my_job;

/* A cancel or a timeout asks to end the call this thread runs: then
** -ECANCELED (finish turns it into -ETIMEDOUT for a timeout), else 0. */
int ioq_blocking_aborted(void) {
  pool_job *job = my_job;
  int aborted;
  if (job == NULL)
    return 0;
  AcquireSRWLockExclusive(&job->lock);
  aborted = job->aborted;
  ReleaseSRWLockExclusive(&job->lock);
  return aborted ? -ECANCELED : 0;
}

/*
** On a pool thread: the blocking part, then the packet to its port. The
** owner cannot go away before the packet is reaped. While the call runs,
** job->thread names this thread, so a cancel can interrupt it with
** CancelSynchronousIo (a read on a pipe or a console may never end). A job
** canceled before this ran was abandoned: its op has ended, and the job
** is all that is left.
*/
static void CALLBACK pool_work(PTP_CALLBACK_INSTANCE inst, void *arg) {
  pool_job *job = arg;
  HANDLE self = NULL;
  rec *r;
  (void)inst;
  AcquireSRWLockExclusive(&job->lock);
  r = job->r;
  job->started = 1;
  ReleaseSRWLockExclusive(&job->lock);
  if (r == NULL) {
    free(job);
    return;
  }
  DuplicateHandle(GetCurrentProcess(), GetCurrentThread(), GetCurrentProcess(),
                  &self, 0, FALSE, DUPLICATE_SAME_ACCESS);
  AcquireSRWLockExclusive(&job->lock);
  job->thread = self;
  ReleaseSRWLockExclusive(&job->lock);
  my_job = job;
  run_blocking(r);
  my_job = NULL;
  AcquireSRWLockExclusive(&job->lock);
  job->thread = NULL;
  job->done = 1;
  ReleaseSRWLockExclusive(&job->lock);
  if (self != NULL)
    CloseHandle(self);
  PostQueuedCompletionStatus(r->owner->port, 0, KEY_DONE, &r->ov);
}

/*
** Ends or interrupts a pool op. 1 when that is done or no longer needed:
** the op had not started (it ends now with ECANCELED, its job abandoned to
** the pool), its call was interrupted, or it has ended; 0 when its thread
** is not in the call yet: try again.
*/
static int pool_cancel(iocp_backend *b, rec *r) {
  pool_job *job = r->job;
  int settled, abandon = 0;
  AcquireSRWLockExclusive(&job->lock);
  if (!job->started) {
    job->r = NULL;
    abandon = settled = 1;
  } else {
    /* A call (IOQ_CALL) may be in no I/O that CancelSynchronousIo could
    ** end (a name lookup): it is told to stop, and ends when it returns. */
    job->aborted = 1;
    settled = job->done ||
              (job->thread != NULL && CancelSynchronousIo(job->thread)) ||
              r->op->code == IOQ_CALL;
  }
  ReleaseSRWLockExclusive(&job->lock);
  if (abandon) {
    r->job = NULL;  /* pool_work frees it */
    done_push(b, r, -ECANCELED);
  }
  return settled;
}

/* Cancels a pool op, or puts it on the list reap retries from. */
static void cancel_pool_op(iocp_backend *b, rec *r) {
  if (pool_cancel(b, r) || r->on_retry)
    return;
  r->on_retry = 1;
  r->retry_next = b->retries;
  b->retries = r;
}

/* Retries the pool cancels that found the thread outside its call. */
static void retry_cancels(iocp_backend *b) {
  rec **p = &b->retries;
  while (*p != NULL) {
    rec *r = *p;
    if (pool_cancel(b, r)) {
      *p = r->retry_next;
      r->on_retry = 0;
    } else {
      p = &r->retry_next;
    }
  }
}

static void retry_remove(iocp_backend *b, rec *r) {
  rec **p = &b->retries;
  while (*p != r)
    p = &(*p)->retry_next;
  *p = r->retry_next;
  r->on_retry = 0;
}

/*
** The pool's callback environment: it keeps this module loaded while a
** callback is queued or running, since an abandoned job may run after
** every queue (and the Lua state that loaded us) is gone.
*/
static TP_CALLBACK_ENVIRON pool_env;

static BOOL CALLBACK init_pool_env(PINIT_ONCE once, PVOID arg, PVOID *ctx) {
  HMODULE self = NULL;
  (void)once; (void)arg; (void)ctx;
  InitializeThreadpoolEnvironment(&pool_env);
  if (GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS |
                         GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                         (LPCWSTR)(void *)&pool_env, &self))
    SetThreadpoolCallbackLibrary(&pool_env, self);
  return TRUE;
}

static int start_blocking(iocp_backend *b, rec *r) {
  static INIT_ONCE once = INIT_ONCE_STATIC_INIT;
  pool_job *job = calloc(1, sizeof *job);
  if (job == NULL)
    return -ENOMEM;
  InitOnceExecuteOnce(&once, init_pool_env, NULL, NULL);
  InitializeSRWLock(&job->lock);
  job->r = r;
  r->job = job;
  r->kind = K_POOL;
  if (!TrySubmitThreadpoolCallback(pool_work, job, &pool_env)) {
    run_blocking(r);  /* no pool thread to be had: do it here */
    done_push(b, r, r->res);
  }
  return 0;
}

/*
** A read of 0 bytes: 0 at once, as read(2) gives on Linux, where Windows
** would wait for data (a 0-byte read is its way to wait until a pipe or a
** socket is readable). A recv of 0 bytes keeps that wait, which is what
** recv(2) does on a Linux stream socket too: it ends, taking nothing, when
** data comes (a datagram socket's ends on a datagram and drops it).
** 1 when done here, with *err set when the handle is bad.
*/
static int zero_read(iocp_backend *b, rec *r, int *err) {
  ioq_op *op = r->op;
  *err = 0;
  if (GetFileType((HANDLE)op->fd) == FILE_TYPE_UNKNOWN) {
    DWORD code = GetLastError();  /* NO_ERROR: a handle of no known type */
    if (code != NO_ERROR) {
      *err = -op_errno(op, code);
      return 1;
    }
  }
  done_push(b, r, 0);
  return 1;
}

/* ---------------------------------------------------------------- the pool */

/*
** The pool of provided buffers (IOQ_CAP_POOL; see ioq_bufstack.h) has no
** kernel part on Windows, so a receive with use_pool works so:
**
**   - on a stream socket, a 0-byte WSARecv waits for data holding no
**     buffer (Windows ends it once data is there, or at the end of the
**     stream). Its packet (pool_packet) then takes a free buffer and
**     receives into it without blocking: the socket is made
**     non-blocking, which overlapped calls ignore. A multishot op takes
**     every chunk waiting (16 at most), then waits again; a wake-up with
**     nothing to read (another reader was first) waits again too. With
**     no free buffer, a peek tells data (ENOBUFS, which the binding waits
**     out) from the end of the stream;
**   - a 0-byte receive would drop a datagram, so on any other socket the
**     op takes a buffer first (ENOBUFS when none is free) and receives
**     into it.
*/

/* recv_now's answer when nothing is there to read. */
#define POOL_EMPTY (-((int64_t)1 << 40))

static int arm_pooled(iocp_backend *b, rec *r) {
  SOCKET s = (SOCKET)r->op->fd;
  int err;
  memset(&r->ov, 0, sizeof r->ov);
  r->flags = 0;
  r->wsabuf.buf = NULL;
  r->wsabuf.len = 0;
  if (!r->stream) {
    int i = ioq_bufstack_next(b->pool);
    if (i < 0)
      return -ENOBUFS;
    ioq_bufstack_lend(b->pool);
    r->buf = i;
    r->wsabuf.buf = (char *)ioq_bufstack_mem(b->pool, i);
    r->wsabuf.len = b->pool->base.size;
  }
  err = wsa_overlapped(WSARecv(s, &r->wsabuf, 1, NULL, &r->flags, &r->ov,
                               NULL));
  if (err != 0 && r->buf >= 0) {
    ioq_pool_release(&b->pool->base, r->buf);
    r->buf = -1;
  }
  return err;
}

static int start_pooled(iocp_backend *b, rec *r) {
  SOCKET s = (SOCKET)r->op->fd;
  int type = 0, len = sizeof type;
  if (b->pool == NULL)
    return -EOPNOTSUPP;
  if (getsockopt(s, SOL_SOCKET, SO_TYPE, (char *)&type, &len) != 0)
    return -ioq_sockerr();
  r->stream = type == SOCK_STREAM;
  if (r->stream) {
    u_long on = 1;
    if (ioctlsocket(s, FIONBIO, &on) != 0)
      return -ioq_sockerr();
  }
  return arm_pooled(b, r);
}

/* A receive that does not block, into a free buffer (lent with *buf):
** the byte count, 0 at the end of the stream, POOL_EMPTY, or -errno. */
static int64_t recv_now(iocp_backend *b, rec *r, int32_t *buf) {
  SOCKET s = (SOCKET)r->op->fd;
  int i = ioq_bufstack_next(b->pool), got, err;
  *buf = -1;
  if (i < 0) {
    char c;
    if ((got = recv(s, &c, 1, MSG_PEEK)) > 0)
      return -ENOBUFS;
  } else {
    got = recv(s, (char *)ioq_bufstack_mem(b->pool, i),
               (int)b->pool->base.size, 0);
    if (got > 0) {
      ioq_bufstack_lend(b->pool);
      *buf = i;
      return got;
    }
  }
  if (got == 0)
    return 0;
  err = WSAGetLastError();
  return err == WSAEWOULDBLOCK ? POOL_EMPTY : -ioq_win_errno((unsigned long)err);
}

static int start_io(iocp_backend *b, rec *r) {
  ioq_op *op = r->op;
  SOCKET s = (SOCKET)op->fd;
  int64_t off = op->offset;
  int err;
  r->wsabuf.buf = op->buf;
  r->wsabuf.len = op->len;
  switch (op->code) {
    case IOQ_NOP:
      r->kind = K_POSTED;
      r->res = 0;
      if (!PostQueuedCompletionStatus(b->port, 0, KEY_DONE, &r->ov))
        return -ioq_oserr();
      return 0;
    case IOQ_SLEEP: {
      int64_t ns = op->ns;
      r->kind = K_LOCAL;
      r->sleep_result = 0;
      if (op->timeout_ns > 0 && op->timeout_ns < ns) {
        ns = op->timeout_ns;
        r->sleep_result = -ETIMEDOUT;
      }
      timer_add(b, r, ioq_now_ns() + ns);
      return 0;
    }
    case IOQ_OPEN: case IOQ_FSYNC: case IOQ_CALL:
      return start_blocking(b, r);
    case IOQ_STAT: case IOQ_UNLINK: case IOQ_RMDIR: case IOQ_MKDIR:
    case IOQ_RENAME:
    case IOQ_LINK: case IOQ_SYMLINK: case IOQ_READLINK: case IOQ_TRUNCATE:
    case IOQ_ALLOCATE: case IOQ_DATASYNC: case IOQ_CLOSE: case IOQ_READV:
    case IOQ_WRITEV: case IOQ_COPY:
      return start_blocking(b, r);
    case IOQ_SHUTDOWN:
      if (shutdown(s, op->flags) != 0)
        return -ioq_sockerr();
      done_push(b, r, 0);
      return 0;
    case IOQ_ACCEPT:
      return start_accept(b, r);
    case IOQ_CONNECT:
      return start_connect(b, r);
    case IOQ_POLL:
      return start_wait(r);
    default:
      break;
  }
  if (op->len == 0 && op->code == IOQ_READ && zero_read(b, r, &err))
    return err;
  if (op->code == IOQ_WRITE && op->fd != 0 && op->fd != IOQ_NOFD)
    r->append = append_only((HANDLE)op->fd);
  if ((op->code == IOQ_READ || op->code == IOQ_WRITE) &&
      is_synchronous((HANDLE)op->fd))
    return start_blocking(b, r);
  if ((err = tie(b, op->fd)) != 0)
    return err;
  switch (op->code) {
    case IOQ_READ:
      /* A descriptor without a position (a raw handle) reads at 0. */
      off = off < 0 ? 0 : off;
      r->ov.Offset = (DWORD)off;
      r->ov.OffsetHigh = (DWORD)(off >> 32);
      return overlapped(b, r, ReadFile((HANDLE)op->fd, op->buf, op->len,
                                       NULL, &r->ov));
    case IOQ_WRITE:
      /* Offset -1 (all ones) writes at the end of the file. */
      if (r->append)
        off = -1;
      r->ov.Offset = off < 0 ? 0xffffffffu : (DWORD)off;
      r->ov.OffsetHigh = off < 0 ? 0xffffffffu : (DWORD)(off >> 32);
      return overlapped(b, r, WriteFile((HANDLE)op->fd, op->buf, op->len,
                                        NULL, &r->ov));
    case IOQ_RECV:
      if (op->use_pool)
        return start_pooled(b, r);
      r->flags = 0;
      return wsa_overlapped(WSARecv(s, &r->wsabuf, 1, NULL, &r->flags,
                                    &r->ov, NULL));
    case IOQ_SEND:
      return wsa_overlapped(WSASend(s, &r->wsabuf, 1, NULL, 0, &r->ov,
                                    NULL));
    case IOQ_RECVFROM:
      r->flags = 0;
      r->addrlen = sizeof(struct sockaddr_storage);
      return wsa_overlapped(WSARecvFrom(s, &r->wsabuf, 1, NULL, &r->flags,
                                        op->addr, &r->addrlen, &r->ov, NULL));
    case IOQ_SENDTO:
      return wsa_overlapped(WSASendTo(s, &r->wsabuf, 1, NULL, 0, op->addr,
                                      (int)op->addrlen, &r->ov, NULL));
    default:
      return -EINVAL;
  }
}

/* ---------------------------------------------------------------- waits */

/*
** IOQ_POLL on Windows: wait until a handle (a process, an event...) is
** signaled. The pool's wait calls back once, on a pool thread; the
** callback or a cancel, whichever comes first, posts the op's one packet,
** and reap unregisters the wait (waiting for a callback that may still be
** running) before the record goes. A file, pipe or socket is signaled
** when some I/O on it ends, which says nothing of readiness: EOPNOTSUPP.
*/
static void post_wait(rec *r, int64_t res) {
  if (InterlockedExchange(&r->posted, 1) == 0) {
    r->res = res;
    PostQueuedCompletionStatus(r->owner->port, 0, KEY_DONE, &r->ov);
  }
}

static VOID CALLBACK wait_signaled(PVOID arg, BOOLEAN timed_out) {
  (void)timed_out;  /* INFINITE: never */
  post_wait(arg, IOQ_POLLIN);
}

static int start_wait(rec *r) {
  if (GetFileType((HANDLE)r->op->fd) != FILE_TYPE_UNKNOWN)
    return -EOPNOTSUPP;
  /* Not a handle one can wait for: say so now (the pool would wait on). */
  if (WaitForSingleObject((HANDLE)r->op->fd, 0) == WAIT_FAILED)
    return -ioq_oserr();
  r->kind = K_WAIT;
  if (!RegisterWaitForSingleObject(&r->wait, (HANDLE)r->op->fd, wait_signaled,
                                   r, INFINITE, WT_EXECUTEONLYONCE))
    return -ioq_oserr();
  return 0;
}

static int iocp_start(ioq_backend *base, ioq_op *op) {
  iocp_backend *b = TO_IOCP(base);
  rec *r;
  int err;
  if (op->multishot && !op->use_pool)
    return -EOPNOTSUPP;
  if ((err = timer_reserve(b)) != 0)  /* a timer must not fail later */
    return err;
  if ((r = calloc(1, sizeof *r)) == NULL)
    return -ENOMEM;
  r->op = op;
  r->owner = b;
  r->kind = K_IO;
  r->accepted = INVALID_SOCKET;
  r->buf = -1;
  op->be.op.ptr[0] = r;
  if ((err = start_io(b, r)) != 0) {
    free(r);
    return err;
  }
  /* A timeout for an op that can wait: cancel it when the time is up. */
  if (op->timeout_ns > 0 && op->code != IOQ_SLEEP && op->code != IOQ_CLOSE &&
      (r->kind == K_IO || r->kind == K_POOL || r->kind == K_WAIT))
    timer_add(b, r, ioq_now_ns() + op->timeout_ns);
  b->started++;
  return 0;
}

/*
** Asks the kernel to stop an op that may be waiting: CancelIoEx for an
** overlapped I/O (which fails when it has finished, or when closing its
** handle canceled it: either way its packet is on the way), the pool
** thread's call for a pool op. A posted nop is already on its way.
*/
static void ask_cancel(iocp_backend *b, rec *r) {
  if (r->kind == K_IO)
    CancelIoEx((HANDLE)r->op->fd, &r->ov);
  else if (r->kind == K_POOL)
    cancel_pool_op(b, r);
  else if (r->kind == K_WAIT)
    post_wait(r, -ECANCELED);
}

static int iocp_cancel(ioq_backend *base, ioq_op *op) {
  iocp_backend *b = TO_IOCP(base);
  rec *r = rec_of(op);
  if (r->kind == K_LOCAL) {
    if (r->timer.slot != 0) {  /* a sleep that has not fired */
      timer_remove(b, r);
      done_push(b, r, -ECANCELED);
    }
    return 0;
  }
  ask_cancel(b, r);
  return 0;
}

/* Every op went to the kernel in start; this only counts them. */
static int iocp_submit(ioq_backend *base) {
  iocp_backend *b = TO_IOCP(base);
  int n = (int)b->started;
  b->started = 0;
  return n;
}

/* Fires the timers that are due: sleeps end, ops that timed out are
** canceled (their packet then reports -ETIMEDOUT). */
static void fire_timers(iocp_backend *b, int64_t now) {
  ioq_heap_node *next;
  while ((next = ioq_heap_top(&b->timers)) != NULL && next->deadline <= now) {
    rec *r = timer_rec(next);
    timer_remove(b, r);
    if (r->op->code == IOQ_SLEEP) {
      done_push(b, r, r->sleep_result);
    } else {
      r->timed_out = 1;
      ask_cancel(b, r);
    }
  }
}

/* The result of a kernel packet's op, as ioq reports it. */
static int64_t io_result(rec *r, DWORD bytes) {
  ioq_op *op = r->op;
  DWORD err = 0, n;
  int64_t res;
  if (r->ov.Internal != 0 &&  /* not STATUS_SUCCESS: ask for the error */
      !GetOverlappedResult((HANDLE)op->fd, &r->ov, &n, FALSE))
    err = GetLastError();
  res = err == 0 ? (int64_t)bytes : failed_transfer(op, err, bytes);
  switch (op->code) {
    case IOQ_ACCEPT:
      if (res >= 0) {
        SOCKET lst = (SOCKET)op->fd;
        setsockopt(r->accepted, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT,
                   (char *)&lst, sizeof lst);
        res = (int64_t)r->accepted;
      } else {
        closesocket(r->accepted);
      }
      r->accepted = INVALID_SOCKET;
      break;
    case IOQ_CONNECT:
      if (res >= 0) {
        setsockopt((SOCKET)op->fd, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT,
                   NULL, 0);
        res = 0;
      }
      break;
    case IOQ_RECVFROM:
      if (res >= 0)
        op->addrlen = (uint32_t)r->addrlen;
      break;
    default:
      break;
  }
  return res;
}

/* The last event of record r (freed), with pool buffer `buf` or -1. */
static void finish_buf(iocp_backend *b, rec *r, int64_t res, int32_t buf,
                       ioq_event *ev) {
  timer_remove(b, r);  /* if it is in the heap */
  if (r->on_retry)
    retry_remove(b, r);
  if (res == -ECANCELED && r->timed_out)
    res = -ETIMEDOUT;
  if (r->buf >= 0)  /* a datagram receive's buffer, which got nothing */
    ioq_pool_release(&b->pool->base, r->buf);
  ev->op = r->op;
  ev->res = res;
  ev->buf = buf;
  ev->more = 0;
  r->op->res = res;
  if (r->wait != NULL)  /* a callback that lost the race may still run */
    UnregisterWaitEx(r->wait, INVALID_HANDLE_VALUE);
  free(r->job);  /* its thread is done with it: the packet came */
  free(r);
}

static void finish(iocp_backend *b, rec *r, int64_t res, ioq_event *ev) {
  finish_buf(b, r, res, -1, ev);
}

/*
** Ends pooled record r with `res` in ev[n] if n < room, else later
** through the done list (its timer goes: a local record has none).
** Returns the events stored.
*/
static int pool_end(iocp_backend *b, rec *r, int64_t res, ioq_event *ev,
                    int n, int room) {
  if (n < room) {
    finish(b, r, res, &ev[n]);
    return n + 1;
  }
  timer_remove(b, r);
  done_push(b, r, res);
  return n;
}

/*
** The packet of a pooled receive's WSARecv, with `res` its result: stores
** up to `room` (> 0) events in ev and returns how many. The record ends
** with its last event, or waits again (see "the pool").
*/
static int pool_packet(iocp_backend *b, rec *r, int64_t res, ioq_event *ev,
                       int room) {
  ioq_op *op = r->op;
  int n = 0, err;
  if (res < 0) {
    finish(b, r, res, ev);
    return 1;
  }
  if (!r->stream) {  /* a datagram, in r->buf */
    int32_t buf = r->buf;
    r->buf = -1;
    if (!op->multishot) {
      finish_buf(b, r, res, buf, ev);
      return 1;
    }
    ev[n].op = op;
    ev[n].res = res;
    ev[n].buf = buf;
    ev[n++].more = 1;
  } else {
    while (n < room && n < 16) {
      int32_t buf;
      int64_t got = recv_now(b, r, &buf);
      if (got == POOL_EMPTY)
        break;
      if (got <= 0 || !op->multishot) {  /* the one chunk, or the end */
        finish_buf(b, r, got, buf, &ev[n]);
        return n + 1;
      }
      ev[n].op = op;
      ev[n].res = got;
      ev[n].buf = buf;
      ev[n++].more = 1;
    }
  }
  /* Wait again, unless the op was canceled meanwhile (the cancel hit
  ** the call that has just ended). */
  if (op->cancel_requested || r->timed_out)
    return pool_end(b, r, -ECANCELED, ev, n, room);
  if ((err = arm_pooled(b, r)) != 0)
    return pool_end(b, r, err, ev, n, room);
  return n;
}

/* Moves finished records from the done list into ev[n..max). */
static int take_done(iocp_backend *b, ioq_event *ev, int n, int max) {
  while (n < max && b->done_head != NULL) {
    rec *r = done_pop(b);
    finish(b, r, r->res, &ev[n++]);
  }
  return n;
}

/* Milliseconds for the port's wait: no longer than `wait` ns (< 0: no
** bound), nor past the next timer; rounded up so no timer fires early. */
static DWORD wait_ms(iocp_backend *b, int64_t wait, int64_t now) {
  ioq_heap_node *next = ioq_heap_top(&b->timers);
  if (next != NULL && (wait < 0 || next->deadline - now < wait))
    wait = next->deadline - now;
  if (wait < 0 && next == NULL)
    return INFINITE;
  if (wait <= 0)
    return 0;
  if (wait / 1000000 >= 0x7ffffffe)
    return 0x7ffffffe;
  return (DWORD)((wait + 999999) / 1000000);
}

static int iocp_reap(ioq_backend *base, ioq_event *ev, int max,
                     int64_t timeout_ns) {
  iocp_backend *b = TO_IOCP(base);
  int64_t now = ioq_now_ns(), until = timeout_ns < 0 ? -1 : now + timeout_ns;
  int n = 0;
  b->started = 0;
  if (max > (int)(sizeof b->entries / sizeof b->entries[0]))
    max = (int)(sizeof b->entries / sizeof b->entries[0]);
  for (;;) {
    ULONG got = 0, i;
    DWORD ms;
    if (b->retries != NULL)
      retry_cancels(b);
    fire_timers(b, now);
    if ((n = take_done(b, ev, n, max)) == max)
      return n;
    ms = n > 0 ? 0 : wait_ms(b, until < 0 ? -1 : until - now, now);
    if (b->retries != NULL && ms > 1)
      ms = 1;  /* a cancel to retry soon */
    if (!GetQueuedCompletionStatusEx(b->port, b->entries, (ULONG)(max - n),
                                     &got, ms, FALSE)) {
      DWORD err = GetLastError();
      if (err != WAIT_TIMEOUT)
        return n > 0 ? n : -ioq_win_errno(err);
      got = 0;
    }
    for (i = 0; i < got; i++) {
      OVERLAPPED_ENTRY *e = &b->entries[i];
      rec *r = (rec *)e->lpOverlapped;
      if (r == NULL)
        continue;
      if (r->owner != b) {  /* a handle tied to this port, another's op */
        PostQueuedCompletionStatus(r->owner->port,
                                   e->dwNumberOfBytesTransferred,
                                   e->lpCompletionKey, e->lpOverlapped);
        continue;
      }
      if (e->lpCompletionKey == KEY_IO && r->op->use_pool)
        n += pool_packet(b, r, io_result(r, e->dwNumberOfBytesTransferred),
                         &ev[n], max - n - (int)(got - i - 1));
      else
        finish(b, r, e->lpCompletionKey == KEY_DONE
                       ? r->res : io_result(r, e->dwNumberOfBytesTransferred),
               &ev[n++]);
    }
    if (n > 0)
      return n;
    now = ioq_now_ns();
    if (until >= 0 && now >= until) {  /* time is up: what is due, if any */
      fire_timers(b, now);
      return take_done(b, ev, 0, max);
    }
  }
}

static int iocp_features(ioq_backend *base, const char **names, int max) {
  int n = 0;
  if (n < max) names[n++] = "threadpool";
  if (n < max && (base->caps & IOQ_CAP_POOL))
    names[n++] = "provided_buffers";
  return n;
}

static int iocp_create(ioq_backend **out, unsigned entries) {
  iocp_backend *b;
  int err;
  (void)entries;  /* a port has no fixed size */
  if ((err = ioq_win_startup()) != 0)
    return -err;
  if ((b = calloc(1, sizeof *b)) == NULL)
    return -ENOMEM;
  b->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
  if (b->port == NULL) {
    err = ioq_oserr();
    free(b);
    return -err;
  }
  b->port_id = ioq_win_port_id();
  b->base.cls = &ioq_iocp_backend;
  /* IOQ_NO_MULTISHOT=1 turns the pool off, as elsewhere, to test the
  ** binding's receives without one. */
  b->base.caps = IOQ_CAP_NO_POSITION |
                 (getenv("IOQ_NO_MULTISHOT") ? 0 : IOQ_CAP_POOL);
  *out = &b->base;
  return 0;
}

static void iocp_destroy(ioq_backend *base) {
  iocp_backend *b = TO_IOCP(base);
  CloseHandle(b->port);
  ioq_heap_free(&b->timers);
  ioq_bufstack_drop(b->pool);
  free(b);
}

/* The pool (see "the pool"), made once. */
static int iocp_pool(ioq_backend *base, unsigned count, unsigned size,
                     ioq_pool **out) {
  iocp_backend *b = TO_IOCP(base);
  int r;
  if (b->pool == NULL) {
    if (!(base->caps & IOQ_CAP_POOL))
      return -EOPNOTSUPP;
    if ((r = ioq_bufstack_new(count, size, &b->pool)) < 0)
      return r;
  }
  *out = &b->pool->base;
  return 0;
}

const ioq_backend_class ioq_iocp_backend = {
  .name = "iocp",
  .create = iocp_create,
  .destroy = iocp_destroy,
  .start = iocp_start,
  .cancel = iocp_cancel,
  .submit = iocp_submit,
  .reap = iocp_reap,
  .features = iocp_features,
  .pool = iocp_pool,
};
