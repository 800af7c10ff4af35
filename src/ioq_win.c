/*
** ioq_win.c: what Windows needs so that scripts see the same errors as on
** Linux: Windows error codes as errno values, messages for the errno values
** the C runtime has no text for, and Winsock started once per process.
*/
#include <string.h>

#include "ioq_os.h"

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
    case ERROR_OPERATION_ABORTED: case ERROR_REQUEST_ABORTED:
      return ECANCELED;
    case ERROR_IO_PENDING: case ERROR_IO_INCOMPLETE: case WSAEINPROGRESS:
      return EINPROGRESS;
    case ERROR_NOACCESS: case ERROR_INVALID_USER_BUFFER: case WSAEFAULT:
      return EFAULT;
    case ERROR_NETNAME_DELETED: case WSAECONNRESET: case WSAENETRESET:
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
