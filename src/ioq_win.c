/*
** ioq_win.c: what Windows needs so that scripts see the same errors as on
** Linux: Windows error codes as errno values, messages for the errno values
** the C runtime has no text for, Winsock started once per process, and the
** process's record of which completion port each handle is tied to.
** Used by backend_iocp.c and ioq_os.h; knows nothing of Lua.
*/
#include <stdlib.h>
#include <string.h>

#include "ioq_os.h"

#ifndef ERROR_HANDLES_CLOSED
#define ERROR_HANDLES_CLOSED 676L  /* from STATUS_HANDLES_CLOSED */
#endif

/* GetLastError() and WSAGetLastError() codes, as errno values. */
int ioq_win_errno(unsigned long code) {
  switch (code) {
    case ERROR_FILE_NOT_FOUND: case ERROR_PATH_NOT_FOUND:
    case ERROR_INVALID_DRIVE: case ERROR_INVALID_NAME:
    case ERROR_BAD_PATHNAME: case ERROR_BAD_NETPATH: case ERROR_NOT_FOUND:
      return ENOENT;
    case ERROR_TOO_MANY_OPEN_FILES: case WSAEMFILE:
      return EMFILE;
    case ERROR_ACCESS_DENIED: case ERROR_SHARING_VIOLATION:
    case ERROR_LOCK_VIOLATION: case ERROR_PRIVILEGE_NOT_HELD: case WSAEACCES:
      return EACCES;
    case ERROR_INVALID_HANDLE: case WSAEBADF:
      return EBADF;
    case ERROR_NOT_ENOUGH_MEMORY: case ERROR_OUTOFMEMORY:
    case ERROR_NOT_ENOUGH_QUOTA: case ERROR_NO_SYSTEM_RESOURCES:
      return ENOMEM;
    case ERROR_WRITE_PROTECT:
      return EROFS;
    case ERROR_HANDLE_DISK_FULL: case ERROR_DISK_FULL:
      return ENOSPC;
    case ERROR_NOT_SUPPORTED: case WSAEOPNOTSUPP:
      return EOPNOTSUPP;
    case ERROR_FILE_EXISTS: case ERROR_ALREADY_EXISTS:
      return EEXIST;
    case ERROR_INVALID_PARAMETER: case ERROR_INVALID_FUNCTION:
    case ERROR_NEGATIVE_SEEK: case ERROR_SEEK: case WSAEINVAL:
    case WSANOTINITIALISED: case WSAESOCKTNOSUPPORT:
      return EINVAL;
    case ERROR_BROKEN_PIPE: case ERROR_NO_DATA: case ERROR_PIPE_NOT_CONNECTED:
    case WSAESHUTDOWN:
      return EPIPE;
    case ERROR_BUFFER_OVERFLOW: case ERROR_FILENAME_EXCED_RANGE:
    case WSAENAMETOOLONG:
      return ENAMETOOLONG;
    case ERROR_DIR_NOT_EMPTY: case WSAENOTEMPTY:
      return ENOTEMPTY;
    case ERROR_DIRECTORY:
      return ENOTDIR;
    /* ERROR_HANDLES_CLOSED: the I/O of a handle closed under it (Wine's
    ** status for it; Windows cancels it: ERROR_OPERATION_ABORTED). */
    case ERROR_OPERATION_ABORTED: case ERROR_REQUEST_ABORTED:
    case ERROR_CANCELLED: case WSAECANCELLED: case WSA_E_CANCELLED:
    case ERROR_HANDLES_CLOSED:
      return ECANCELED;
    case ERROR_IO_PENDING: case ERROR_IO_INCOMPLETE: case WSAEINPROGRESS:
      return EINPROGRESS;
    case ERROR_NOACCESS: case ERROR_INVALID_USER_BUFFER: case WSAEFAULT:
      return EFAULT;
    /* A connection reset before accept took it comes back as an
    ** "unexpected network error" (59, STATUS_UNEXPECTED_NETWORK_ERROR). */
    case ERROR_NETNAME_DELETED: case ERROR_UNEXP_NET_ERR:
    case WSAECONNRESET: case WSAENETRESET:
      return ECONNRESET;
    case ERROR_CONNECTION_REFUSED: case ERROR_PORT_UNREACHABLE:
    case WSAECONNREFUSED:
      return ECONNREFUSED;
    case ERROR_CONNECTION_ABORTED: case WSAECONNABORTED:
      return ECONNABORTED;
    case ERROR_NETWORK_UNREACHABLE: case WSAENETUNREACH: case WSAENETDOWN:
      return ENETUNREACH;
    case ERROR_HOST_UNREACHABLE: case WSAEHOSTUNREACH: case WSAEHOSTDOWN:
      return EHOSTUNREACH;
    case ERROR_SEM_TIMEOUT: case ERROR_TIMEOUT: case WAIT_TIMEOUT:
    case WSAETIMEDOUT:
      return ETIMEDOUT;
    case ERROR_MORE_DATA: case WSAEMSGSIZE:
      return EMSGSIZE;
    case ERROR_INSUFFICIENT_BUFFER: case WSAENOBUFS:
      return ENOBUFS;
    case ERROR_GRACEFUL_DISCONNECT: case WSAEDISCON:
      return EPIPE;
    case ERROR_CONNECTION_INVALID:
      return ENOTCONN;
    case ERROR_CONNECTION_ACTIVE:
      return EISCONN;
    case ERROR_ADDRESS_ALREADY_ASSOCIATED:
      return EADDRINUSE;
    case ERROR_ADDRESS_NOT_ASSOCIATED: case ERROR_INVALID_NETNAME:
      return EADDRNOTAVAIL;
    case ERROR_PROTOCOL_UNREACHABLE:
      return ENETUNREACH;
    case ERROR_NETWORK_ACCESS_DENIED:
      return EACCES;
    case ERROR_BUSY: case ERROR_PIPE_BUSY: case ERROR_NETWORK_BUSY:
      return EBUSY;
    case ERROR_NOT_SAME_DEVICE:
      return EXDEV;
    case ERROR_FILE_TOO_LARGE:
      return EFBIG;
    case ERROR_BAD_PIPE:
      return EPIPE;
    case ERROR_DEV_NOT_EXIST:
      return ENODEV;
    case WSAENOPROTOOPT: return EOPNOTSUPP;
    case WSAEINTR: return EINTR;
    case WSAEWOULDBLOCK: return EAGAIN;
    case WSAEALREADY: return EALREADY;
    case WSAENOTSOCK: return ENOTSOCK;
    case WSAEDESTADDRREQ: return EDESTADDRREQ;
    case WSAEPROTONOSUPPORT: return EPROTONOSUPPORT;
    case WSAEAFNOSUPPORT: case WSAEPFNOSUPPORT: return EAFNOSUPPORT;
    case WSAEADDRINUSE: return EADDRINUSE;
    case WSAEADDRNOTAVAIL: return EADDRNOTAVAIL;
    case WSAEISCONN: return EISCONN;
    case WSAENOTCONN: return ENOTCONN;
    case WSAELOOP: return ELOOP;
    case WSAEDQUOT: return EDQUOT;
    default: return EIO;
  }
}

/* The C runtime's strerror knows only the classic errno values (below
** 100); the socket ones ioq also produces get their Linux wording here. */
const char *ioq_strerror(int err) {
  static const struct { int err; const char *text; } texts[] = {
    {EADDRINUSE, "Address already in use"},
    {EADDRNOTAVAIL, "Cannot assign requested address"},
    {EAFNOSUPPORT, "Address family not supported by protocol"},
    {EALREADY, "Operation already in progress"},
    {ECANCELED, "Operation canceled"},
    {ECONNABORTED, "Software caused connection abort"},
    {ECONNREFUSED, "Connection refused"},
    {ECONNRESET, "Connection reset by peer"},
    {EDESTADDRREQ, "Destination address required"},
    {EHOSTUNREACH, "No route to host"},
    {EINPROGRESS, "Operation now in progress"},
    {EISCONN, "Transport endpoint is already connected"},
    {ELOOP, "Too many levels of symbolic links"},
    {EMSGSIZE, "Message too long"},
    {ENETUNREACH, "Network is unreachable"},
    {ENOBUFS, "No buffer space available"},
    {ENOTCONN, "Transport endpoint is not connected"},
    {ENOTSOCK, "Socket operation on non-socket"},
    {EOPNOTSUPP, "Operation not supported"},
    {EPROTONOSUPPORT, "Protocol not supported"},
    {ETIMEDOUT, "Connection timed out"},
    {EDQUOT, "Disk quota exceeded"},
  };
  size_t i;
  for (i = 0; i < sizeof texts / sizeof texts[0]; i++)
    if (texts[i].err == err)
      return texts[i].text;
  return strerror(err);
}

static INIT_ONCE winsock_once = INIT_ONCE_STATIC_INIT;
static int winsock_err;

static BOOL CALLBACK start_winsock(PINIT_ONCE once, PVOID arg, PVOID *ctx) {
  WSADATA data;
  int r = WSAStartup(MAKEWORD(2, 2), &data);
  (void)once; (void)arg; (void)ctx;
  winsock_err = r == 0 ? 0 : ioq_win_errno((unsigned long)r);
  return TRUE;
}

/* Winsock, started once for the process and never stopped: sockets may
** outlive every queue, and the process's end cleans up. */
int ioq_win_startup(void) {
  InitOnceExecuteOnce(&winsock_once, start_winsock, NULL, NULL);
  return winsock_err;
}

/*
** Which port each handle value is tied to, for the whole process. A handle
** is tied to one port for life, and Windows cannot say which: the tie call
** only fails (ERROR_INVALID_PARAMETER) for a handle tied to any port. Each
** queue keeping its own list went wrong when a value was reused: a queue
** that had tied the old handle took the new one, tied meanwhile to another
** queue's port, for its own, and its ops completed on a port nobody drove
** (or that was closed). One table for the process is always right about
** ties made by ioq: every successful tie of a value, by any queue, records
** the port that now holds it, and ioq_close forgets a value before closing
** it. A handle that code outside ioq tied is "tied to another port"
** (EBUSY). The one case it cannot see: a value ioq tied, closed behind
** its back (CloseHandle, closesocket) and reused by a handle that code
** outside ioq tied; close ioq's handles with ioq.
**
** Open addressing on the handle value; a port is named by an id never
** reused (a pointer could be, once its queue is freed).
*/
typedef struct { ioq_fd fd; unsigned long long port; } tie_slot;

static SRWLOCK ties_lock = SRWLOCK_INIT;
static tie_slot *ties;
static size_t nties, capties;  /* capties: a power of 2, or 0 */

static size_t tie_home(ioq_fd fd, size_t cap) {
  return (size_t)(((unsigned long long)fd >> 2) * 0x9e3779b97f4a7c15ull) &
         (cap - 1);
}

static size_t tie_find(ioq_fd fd) {
  size_t i = tie_home(fd, capties);
  while (ties[i].fd != 0 && ties[i].fd != fd)
    i = (i + 1) & (capties - 1);
  return i;
}

/* Room for one more entry (at most half full). 0 or ENOMEM. */
static int ties_reserve(void) {
  tie_slot *old = ties, *t;
  size_t oldcap = capties, cap, i;
  if (2 * (nties + 1) <= capties)
    return 0;
  cap = capties ? 2 * capties : 64;
  if ((t = calloc(cap, sizeof *t)) == NULL)
    return ENOMEM;
  ties = t;
  capties = cap;
  for (i = 0; i < oldcap; i++)
    if (old[i].fd != 0)
      ties[tie_find(old[i].fd)] = old[i];
  free(old);
  return 0;
}

/* Removes slot i, moving later entries of its run back (no tombstones). */
static void tie_remove(size_t i) {
  size_t j = i;
  ties[i].fd = 0;
  nties--;
  for (;;) {
    size_t home;
    j = (j + 1) & (capties - 1);
    if (ties[j].fd == 0)
      return;
    home = tie_home(ties[j].fd, capties);
    /* Entry j may fill the hole at i unless its home lies in (i, j]. */
    if ((i <= j) ? (home <= i || home > j) : (home <= i && home > j)) {
      ties[i] = ties[j];
      ties[j].fd = 0;
      i = j;
    }
  }
}

unsigned long long ioq_win_port_id(void) {
  static volatile LONG64 last;
  return (unsigned long long)InterlockedIncrement64(&last);
}

int ioq_win_tie(ioq_fd fd, HANDLE port, unsigned long long id, ULONG_PTR key) {
  int err = 0;
  size_t i;
  AcquireSRWLockExclusive(&ties_lock);
  if ((err = ties_reserve()) != 0)
    goto out;
  i = tie_find(fd);
  if (CreateIoCompletionPort((HANDLE)fd, port, key, 0) != NULL) {
    if (ties[i].fd == 0)
      nties++;
    ties[i].fd = fd;   /* a new handle under this value, now ours */
    ties[i].port = id;
  } else {
    DWORD code = GetLastError();
    if (code != ERROR_INVALID_PARAMETER)  /* not a handle ports can take */
      err = ioq_win_errno(code);
    else if (ties[i].fd == 0 || ties[i].port != id)
      err = EBUSY;     /* tied, to another port */
  }
out:
  ReleaseSRWLockExclusive(&ties_lock);
  return err;
}

void ioq_win_untie(ioq_fd fd) {
  AcquireSRWLockExclusive(&ties_lock);
  if (capties > 0) {
    size_t i = tie_find(fd);
    if (ties[i].fd == fd)
      tie_remove(i);
  }
  ReleaseSRWLockExclusive(&ties_lock);
}
