/*
** idle_client.c: memory per idle connection of a server, the same for
** every server it measures.
**
**   idle_client [-n CONNS] [-e EVERY] [-s SETTLE] [-k HOLD] [-H] -p PID HOST PORT
**
** Reads the resident memory of process PID (VmRSS in /proc/PID/status),
** opens CONNS connections (default 10000) that send nothing, plays one
** round trip on every EVERY-th of them (default 10; and on the last) to
** check that the server serves them, waits SETTLE seconds (default 1) and
** reads the server's memory again. It prints one line:
**
**   conns=N rss_before_kb=A rss_after_kb=B per_conn_kb=K checked=M
**
** per_conn_kb is (B - A) / N: what one idle connection costs the server
** (kernel socket memory is not resident memory of the server, so it is
** left out, as it should be: it is the same for every server). Then it
** keeps the connections open HOLD more seconds (default 0) and closes
** them. Exits 1 if a connection fails or a round trip is wrong.
**
** The round trip: with -H an HTTP/1.1 GET, answered with a status line
** and a Content-Length body; otherwise 16 bytes that must come back
** (an echo server). Plain blocking sockets, one at a time, on purpose:
** the client must not share any mechanism with a contender, and it is
** not what is measured. The file limit of both processes must allow
** CONNS descriptors (ulimit -n).
**
** Build: cc -O2 -Wall -Wextra -Werror idle_client.c -o idle_client
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int http;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "idle_client: %s: %s\n", what, detail);
  exit(1);
}

/* The server's resident memory in KiB, or -1. */
static long rss_kb(int pid) {
  char path[64], line[256];
  long kb = -1;
  FILE *f;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  if ((f = fopen(path, "r")) == NULL)
    return -1;
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

static void sleep_s(double s) {
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("send", w < 0 ? strerror(errno) : "no progress");
    p += w;
    n -= (size_t)w;
  }
}

/* One round trip on connection fd (number i); 0 when the answer is right. */
static int round_trip(int fd, unsigned i) {
  char out[64], in[4096];
  size_t got = 0;
  if (http) {
    static const char req[] = "GET / HTTP/1.1\r\nHost: idle\r\n\r\n";
    send_all(fd, req, sizeof req - 1);
    for (;;) {
      char *end, *cl;
      ssize_t r = recv(fd, in + got, sizeof in - 1 - got, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
      got += (size_t)r;
      in[got] = '\0';
      if ((end = strstr(in, "\r\n\r\n")) == NULL) {
        if (got >= sizeof in - 1) return -1;
        continue;
      }
      if (strncmp(in, "HTTP/1.1 200", 12) != 0) return -1;
      cl = strcasestr(in, "\r\nContent-Length:");
      if (cl == NULL) return -1;
      if (got >= (size_t)(end + 4 - in) + strtoul(cl + 17, NULL, 10))
        return 0;
    }
  }
  snprintf(out, sizeof out, "ping %010u\n", i);  /* 16 bytes */
  send_all(fd, out, 16);
  while (got < 16) {
    ssize_t r = recv(fd, in + got, 16 - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return memcmp(in, out, 16) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  unsigned conns = 10000, every = 10, i, checked = 0;
  double settle = 1, hold = 0;
  int pid = 0, opt, *fds, r;
  long before, after;
  struct addrinfo hints, *ai;
  struct timeval tv = {10, 0};  /* a round trip longer than this fails */
  while ((opt = getopt(argc, argv, "n:e:s:k:Hp:")) != -1) {
    switch (opt) {
      case 'n': conns = (unsigned)strtoul(optarg, NULL, 10); break;
      case 'e': every = (unsigned)strtoul(optarg, NULL, 10); break;
      case 's': settle = strtod(optarg, NULL); break;
      case 'k': hold = strtod(optarg, NULL); break;
      case 'H': http = 1; break;
      case 'p': pid = atoi(optarg); break;
      default: goto usage;
    }
  }
  if (argc - optind != 2 || pid <= 0 || conns == 0 || every == 0) {
  usage:
    fprintf(stderr, "usage: idle_client [-n CONNS] [-e EVERY] [-s SETTLE] "
                    "[-k HOLD] [-H] -p PID HOST PORT\n");
    return 2;
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  if ((r = getaddrinfo(argv[optind], argv[optind + 1], &hints, &ai)) != 0)
    die(argv[optind], gai_strerror(r));
  if ((fds = calloc(conns, sizeof *fds)) == NULL)
    die("calloc", strerror(errno));
  if ((before = rss_kb(pid)) < 0)
    die("no such process", argv[optind]);
  for (i = 0; i < conns; i++) {
    int one = 1, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
      if (errno != EINTR) die("connect", strerror(errno));
    fds[i] = fd;
    /* Now and then one round trip, so the server's accepts keep up with
    ** the backlog rather than the kernel dropping SYNs. */
    if (i % 512 == 511 && round_trip(fd, i) != 0)
      die("round trip", "wrong or no answer");
  }
  for (i = 0; i < conns; i++) {
    if (i % every != every - 1 && i != conns - 1)
      continue;
    if (round_trip(fds[i], i) != 0)
      die("round trip", "wrong or no answer");
    checked++;
  }
  sleep_s(settle);
  after = rss_kb(pid);
  printf("conns=%u rss_before_kb=%ld rss_after_kb=%ld per_conn_kb=%.2f "
         "checked=%u\n", conns, before, after,
         (double)(after - before) / conns, checked);
  fflush(stdout);
  sleep_s(hold);
  for (i = 0; i < conns; i++)
    close(fds[i]);
  freeaddrinfo(ai);
  free(fds);
  return 0;
}
