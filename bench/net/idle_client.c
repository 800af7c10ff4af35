/*
** idle_client.c: the client of `bench/run.sh idle`, which measures how
** much resident memory an echo server holds per idle connection.
**
**   idle_client [-n CONNS] [-e EVERY] [-t SECS] HOST PORT
**
** Opens CONNS connections (default 10000) and sends nothing on them, then
** checks that they are served: one round trip (16 bytes out, the same 16
** back) on every EVERY-th connection (default 10) and on the last one,
** each within SECS seconds (default 10). The last check answering means
** the server has taken every connection before it (accepts come in
** order). Then it prints one line and keeps every connection open, idle,
** until the server closes them or the client is killed:
**
**   connections=N checked=M secs=S ready
**
** Plain blocking sockets and poll(2): this is setup, not load. Exits 1 if
** a connection fails or a check gets no (or a wrong) answer; the caller
** raises `ulimit -n` above CONNS first (this program cannot).
**
** Build: cc -O2 -Wall -Wextra -Werror idle_client.c -o idle_client
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 16

static void die(const char *what, int i, int err) {
  fprintf(stderr, "idle_client: %s (connection %d): %s\n", what, i,
          err ? strerror(err) : "no answer");
  exit(1);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long parse_num(const char *s, long lo, long hi) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "idle_client: bad number '%s'\n", s);
    exit(2);
  }
  return v;
}

/* One round trip on connection i: its own 16 bytes, echoed back whole. */
static void check(int fd, int i, int timeout_ms) {
  char out[MSG + 1], in[MSG];
  size_t got = 0;
  snprintf(out, sizeof out, "idle %010d\n", i);
  if (send(fd, out, MSG, MSG_NOSIGNAL) != MSG)
    die("send", i, errno);
  while (got < MSG) {
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t n;
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      die("check", i, r < 0 ? errno : 0);
    n = recv(fd, in + got, MSG - got, 0);
    if (n <= 0)
      die(n == 0 ? "closed by the server" : "recv", i, n == 0 ? 0 : errno);
    got += (size_t)n;
  }
  if (memcmp(in, out, MSG) != 0)
    die("echo differs", i, 0);
}

int main(int argc, char **argv) {
  struct sockaddr_in sin;
  int nconn = 10000, every = 10, secs = 10, opt, i, one = 1, checked = 0;
  int *fds;
  double t0 = now_sec();

  while ((opt = getopt(argc, argv, "n:e:t:")) != -1) {
    switch (opt) {
      case 'n': nconn = (int)parse_num(optarg, 1, 1000000); break;
      case 'e': every = (int)parse_num(optarg, 1, 1000000); break;
      case 't': secs = (int)parse_num(optarg, 1, 3600); break;
      default:
        fprintf(stderr, "usage: idle_client [-n CONNS] [-e EVERY] [-t SECS] "
                        "HOST PORT\n");
        return 2;
    }
  }
  if (argc - optind != 2) {
    fprintf(stderr, "usage: idle_client [options] HOST PORT\n");
    return 2;
  }
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((unsigned short)parse_num(argv[optind + 1], 1, 65535));
  if (inet_pton(AF_INET, argv[optind], &sin.sin_addr) != 1) {
    fprintf(stderr, "idle_client: HOST must be a numeric IPv4 address\n");
    return 2;
  }
  fds = calloc((size_t)nconn, sizeof *fds);
  if (fds == NULL)
    die("calloc", -1, ENOMEM);

  for (i = 0; i < nconn; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fds[i] < 0)
      die("socket", i, errno);
    if (connect(fds[i], (struct sockaddr *)&sin, sizeof sin) != 0)
      die("connect", i, errno);
    setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  /* The checks come after every connect, so all of them are open (and
  ** idle) while the server answers. */
  for (i = 0; i < nconn; i++) {
    if (i % every == 0 || i == nconn - 1) {
      check(fds[i], i, secs * 1000);
      checked++;
    }
  }
  printf("connections=%d checked=%d secs=%.2f ready\n", nconn, checked,
         now_sec() - t0);
  fflush(stdout);

  /* Idle until the server closes the first connection, or a signal. */
  for (;;) {
    struct pollfd p = {fds[0], POLLIN, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR)
      die("poll", 0, errno);
    if (p.revents)
      break;
  }
  return 0;
}
