/*
** echo_uring.c: a TCP echo server on raw liburing, the baseline ("the
** physical limit") that `bench/run.sh echo` measures the ioq echo server
** (examples/echo_server.lua) against.
**
**   echo_uring PORT        listens on 127.0.0.1:PORT
**
** It does the example's work with nothing between the program and
** liburing: one 16 KiB buffer per connection; recv into it, send all of it
** back, recv again. The ring is set up like ioq's backend (single issuer
** with deferred task work, stepping down where the kernel refuses), accept
** is multishot as in ioq, every connection gets TCP_NODELAY as in the
** example, and signals arrive through a signalfd read on the ring as with
** ioq.signals. Deliberately nothing the binding could not do as well:
** no registered files or buffers, no SQPOLL, no linked recv->send chains.
** The point is to measure what Lua and the binding cost, not to win.
**
** Prints one line ending in "ready" once it listens; SIGINT or SIGTERM
** closes every connection and ends it with status 0.
**
** Build: cc -O2 -Wall -Wextra -Werror echo_uring.c -o echo_uring -luring
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <liburing.h>

#define RING_ENTRIES 256    /* ioq.queue()'s default, so both rings match */
#define BUF_SIZE 16384      /* the example's per-connection buffer */
#define BACKLOG 1024        /* the example's listen backlog */

/* user_data of the ops that are not a connection's (connections use
** their address, which is never this small). */
#define TAG_ACCEPT ((uint64_t)1)
#define TAG_SIGNAL ((uint64_t)2)
#define TAG_CANCEL ((uint64_t)3)

typedef struct conn {
  int fd;
  int sending;             /* which op is in flight: send (1) or recv (0) */
  unsigned len;            /* bytes received, to send back */
  unsigned sent;           /* bytes of them sent so far */
  struct conn *prev, *next;  /* the live list, to close them all at exit */
  char buf[BUF_SIZE];
} conn;

static struct io_uring ring;
static conn *live;
static int listen_fd;
static int multishot = 1;  /* cleared if the kernel lacks multishot accept */
static int accepting;      /* an accept is in flight */
static int stopping;       /* a signal came: let everything drain */

static void die(const char *what, int err) {
  fprintf(stderr, "echo_uring: %s: %s\n", what, strerror(err));
  exit(1);
}

/* Same walk as ioq's backend (src/backend_uring.c): best flags first. */
static void ring_init(void) {
  static const unsigned tries[] = {
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
      IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
      IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL,
    0,
  };
  size_t i;
  int r = -EINVAL;
  for (i = 0; i < sizeof tries / sizeof tries[0] && r == -EINVAL; i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = tries[i];
    r = io_uring_queue_init_params(RING_ENTRIES, &ring, &p);
  }
  if (r < 0)
    die("io_uring_queue_init", -r);
}

/* An SQE, submitting what is queued first if the ring is full. */
static struct io_uring_sqe *sqe_get(void) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
  while (sqe == NULL) {
    int r = io_uring_submit(&ring);
    if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR)
      die("io_uring_submit", -r);
    sqe = io_uring_get_sqe(&ring);
  }
  return sqe;
}

static void arm_accept(void) {
  struct io_uring_sqe *sqe = sqe_get();
  if (multishot)
    io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL,
                                   SOCK_NONBLOCK | SOCK_CLOEXEC);
  else
    io_uring_prep_accept(sqe, listen_fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, TAG_ACCEPT);
  accepting = 1;
}

static void arm_recv(conn *c) {
  struct io_uring_sqe *sqe = sqe_get();
  c->sending = 0;
  io_uring_prep_recv(sqe, c->fd, c->buf, BUF_SIZE, 0);
  io_uring_sqe_set_data(sqe, c);
}

static void arm_send(conn *c) {
  struct io_uring_sqe *sqe = sqe_get();
  c->sending = 1;
  io_uring_prep_send(sqe, c->fd, c->buf + c->sent, c->len - c->sent,
                     MSG_NOSIGNAL);
  io_uring_sqe_set_data(sqe, c);
}

static void conn_open(int fd) {
  int one = 1;
  conn *c = malloc(sizeof *c);
  if (c == NULL) {
    close(fd);  /* shed the connection, keep serving the others */
    return;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->prev = NULL;
  c->next = live;
  if (live != NULL)
    live->prev = c;
  live = c;
  arm_recv(c);
}

/* Only called with no op of c in flight, so the buffer is ours to free. */
static void conn_close(conn *c) {
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    live = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  close(c->fd);
  free(c);
}

static void on_accept(int res, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE))
    accepting = 0;
  if (res >= 0 && stopping) {
    close(res);
  } else if (res >= 0) {
    conn_open(res);
  } else if (res == -EINVAL && multishot) {
    multishot = 0;  /* a kernel before 5.19: one accept per connection */
  } else if (res != -ECANCELED) {
    fprintf(stderr, "echo_uring: accept: %s\n", strerror(-res));
  }
  /* A multishot accept that ended (or a single one) is armed again. */
  if (!accepting && !stopping)
    arm_accept();
}

static void on_conn(conn *c, int res) {
  if (res <= 0 || stopping) {  /* closed by the peer (0), failed, or done */
    conn_close(c);
  } else if (!c->sending) {
    c->len = (unsigned)res;
    c->sent = 0;
    arm_send(c);
  } else {
    c->sent += (unsigned)res;
    if (c->sent < c->len)
      arm_send(c);  /* a short send: the rest */
    else
      arm_recv(c);
  }
}

static int nclosing;  /* connections open when the signal came */

static void begin_stop(void) {
  struct io_uring_sqe *sqe;
  conn *c;
  stopping = 1;
  if (accepting) {
    sqe = sqe_get();
    io_uring_prep_cancel64(sqe, TAG_ACCEPT, 0);
    io_uring_sqe_set_data64(sqe, TAG_CANCEL);
  }
  for (c = live; c != NULL; c = c->next) {
    shutdown(c->fd, SHUT_RDWR);
    nclosing++;
  }
}

static int listen_on(int port) {
  struct sockaddr_in sin;
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    die("socket", errno);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
    die("bind", errno);
  if (listen(fd, BACKLOG) != 0)
    die("listen", errno);
  return fd;
}

int main(int argc, char **argv) {
  struct signalfd_siginfo si;
  sigset_t mask;
  char *end;
  long port;
  int sfd;

  port = argc == 2 ? strtol(argv[1], &end, 10) : -1;
  if (argc != 2 || *end != '\0' || port < 1 || port > 65535) {
    fprintf(stderr, "usage: echo_uring PORT\n");
    return 2;
  }

  /* Signals come as completions, like everything else: no race between
  ** checking a flag and going to sleep in the kernel. */
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0)
    die("sigprocmask", errno);
  sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0)
    die("signalfd", errno);

  listen_fd = listen_on((int)port);
  ring_init();
  arm_accept();
  {
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_read(sqe, sfd, &si, sizeof si, 0);
    io_uring_sqe_set_data64(sqe, TAG_SIGNAL);
  }
  printf("echo_uring on 127.0.0.1 port %ld (flags 0x%x), ready\n", port,
         ring.flags);
  fflush(stdout);

  /* Runs until a signal, then until the kernel has handed back every op:
  ** the accept is cancelled, each connection shut down (its recv ends
  ** with 0). Ending with ops in flight would leave the listening socket
  ** open a moment after exit (the kernel tears a ring down in the
  ** background), and the next server on this port would fail to bind. */
  while (!stopping || accepting || live != NULL) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int r = io_uring_submit_and_wait(&ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
      die("io_uring_submit_and_wait", -r);
    io_uring_for_each_cqe(&ring, head, cqe) {
      uint64_t tag = io_uring_cqe_get_data64(cqe);
      seen++;
      if (tag == TAG_ACCEPT)
        on_accept(cqe->res, cqe->flags);
      else if (tag == TAG_SIGNAL)
        begin_stop();
      else if (tag != TAG_CANCEL)
        on_conn((conn *)(uintptr_t)tag, cqe->res);
    }
    io_uring_cq_advance(&ring, seen);
  }

  io_uring_queue_exit(&ring);
  close(listen_fd);
  printf("SIG%s: closed %d connection(s)\n",
         si.ssi_signo == SIGINT ? "INT" : "TERM", nclosing);
  return 0;
}
