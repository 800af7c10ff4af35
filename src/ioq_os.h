/*
** ioq_os.h: the few things the binding does differently on Windows and on
** POSIX systems (as luasocket keeps usocket.c and wsocket.c behind one
** header). Everything else in the binding is the same code on both.
**
** On Windows a descriptor (ioq_fd, see ioq.h) is a HANDLE for files and a
** SOCKET for sockets; errors are mapped from GetLastError/WSAGetLastError to
** the errno values the rest of ioq uses, so scripts see ioq.errno.ECONNRESET
** whatever the platform.
*/
#ifndef IOQ_OS_H
#define IOQ_OS_H

#ifdef _WIN32

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <errno.h>
#include <fcntl.h>

#ifndef SHUT_RD
#define SHUT_RD SD_RECEIVE
#define SHUT_WR SD_SEND
#define SHUT_RDWR SD_BOTH
#endif
#ifndef O_ACCMODE
#define O_ACCMODE (O_RDONLY | O_WRONLY | O_RDWR)
#endif
/* Not in the C runtime's flags: the iocp backend maps it to
** FILE_FLAG_NO_BUFFERING. Handles are never inherited, so no O_CLOEXEC. */
#define O_DIRECT 0x01000000
#define O_CLOEXEC 0

/* errno values the C runtime lacks (not produced by Windows itself). */
#ifndef EDQUOT
#define EDQUOT 10069  /* WSAEDQUOT */
#endif

#define IOQ_SOCKLEN int

/* GetLastError()/WSAGetLastError() codes as errno values (ioq_win.c). */
int ioq_win_errno(unsigned long code);
/* strerror for the errno values ioq produces, sockets' included. */
const char *ioq_strerror(int err);
/* Starts Winsock once per process; 0 or an errno value. */
int ioq_win_startup(void);

static inline int ioq_sockerr(void) {
  return ioq_win_errno((unsigned long)WSAGetLastError());
}
static inline int ioq_oserr(void) {
  return ioq_win_errno(GetLastError());
}

#else  /* POSIX */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define IOQ_SOCKLEN socklen_t
#define ioq_strerror strerror

static inline int ioq_sockerr(void) {
  return errno;
}
static inline int ioq_oserr(void) {
  return errno;
}

#endif

#include "ioq.h"

#ifdef _WIN32
/* The process's handle-to-port ties (ioq_win.c). A new id for a port;
** tie a handle to a port (0, EBUSY when another port holds it, or an
** errno value); forget a handle about to be closed. */
unsigned long long ioq_win_port_id(void);
int ioq_win_tie(ioq_fd fd, HANDLE port, unsigned long long id, ULONG_PTR key);
void ioq_win_untie(ioq_fd fd);
#endif

/* Monotonic nanoseconds, for timers and ioq.now(). */
#ifdef _WIN32
static inline int64_t ioq_now_ns(void) {
  static LARGE_INTEGER freq;  /* fixed at boot: a racing store is the same */
  LARGE_INTEGER t;
  if (freq.QuadPart == 0)
    QueryPerformanceFrequency(&freq);
  QueryPerformanceCounter(&t);
  return (int64_t)(t.QuadPart / freq.QuadPart) * 1000000000 +
         (int64_t)(t.QuadPart % freq.QuadPart) * 1000000000 / freq.QuadPart;
}
#else
#include <time.h>
static inline int64_t ioq_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif

/* Memory aligned for O_DIRECT (and FILE_FLAG_NO_BUFFERING); NULL if none. */
#ifdef _WIN32
#include <malloc.h>
static inline void *ioq_aligned_alloc(size_t align, size_t size) {
  return _aligned_malloc(size, align);
}
static inline void ioq_aligned_free(void *p) {
  _aligned_free(p);
}
#else
#include <stdlib.h>
static inline void *ioq_aligned_alloc(size_t align, size_t size) {
  void *p;
  return posix_memalign(&p, align, size) == 0 ? p : NULL;
}
static inline void ioq_aligned_free(void *p) {
  free(p);
}
#endif

/*
** Closes a descriptor ioq made: a socket if `is_socket`, else a file.
** Returns 0 or -errno; the descriptor is gone either way (Linux
** closes it even when close reports EINTR).
*/
static inline int ioq_close(ioq_fd fd, int is_socket) {
#ifdef _WIN32
  /* Closing does not reliably end the overlapped I/O still on the handle
  ** (Wine leaves a pending send, and even a recv, waiting forever; Windows
  ** may report the aborted recv as a network error), and once it is
  ** closed nothing can cancel it. So cancel it all first: every op on it
  ** ends with ECANCELED. Then forget its tie: the value may come back. */
  CancelIoEx((HANDLE)fd, NULL);
  ioq_win_untie(fd);
  if (is_socket)
    return closesocket((SOCKET)fd) == 0 ? 0 : -ioq_sockerr();
  return CloseHandle((HANDLE)fd) ? 0 : -ioq_oserr();
#else
  (void)is_socket;
  return close(fd) == 0 || errno == EINTR ? 0 : -errno;
#endif
}

#endif
