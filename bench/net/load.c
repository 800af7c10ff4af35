/*
** load.c: the load client of `bench/run.sh echo`, the same for every echo
** server it measures.
**
**   load [-c CONNS] [-m BYTES] [-w WARMUP] [-d SECS] [-p PID] HOST PORT
**
** Plain non-blocking sockets and level-triggered epoll, on purpose: the
** client must not share any mechanism (io_uring, libuv) with a contender.
** CONNS connections (default 100) each play ping-pong: send one message of
** BYTES bytes (default 128), wait for all of it to come back, check it is
** byte for byte what was sent, send the next. Every message differs (it
** carries its connection and sequence number), so a server that mixes up
** buffers or connections is caught, not just one that loses bytes.
**
** After WARMUP seconds (default 1) it counts the round trips completed in
** the next SECS seconds (default 5) and prints one line:
**
**   requests=N secs=S rate=R mismatches=0 cpu0=B0 cpu1=B1 [server_cpu=C
**   server_us=U]
**
** cpuN is how busy each CPU was during the window (from /proc/stat, in %),
** server_cpu the share of one CPU the process PID (-p) used: they tell
** whether the server or the client was the bottleneck. server_us is that
** process's CPU time (utime + stime from /proc/PID/stat, all its threads)
** per round trip, in microseconds: the server's cost, which does not
** depend on how fast the client is. Exits 1 if any echo
** differed or a connection failed.
**
** Build: cc -O2 -Wall -Wextra -Werror load.c -o load
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_MSG 65536
#define MAX_CPUS 64

typedef struct client {
  int fd;
  uint32_t id;
  uint64_t seq;            /* number of the message in flight */
  size_t sent, got;        /* bytes of it sent, and echoed back so far */
  int want_out;            /* EPOLLOUT armed after a short send */
  unsigned char *out, *in;
} client;

static size_t msg_size = 128;
static int epfd;
static unsigned long long done_total, mismatches;

static void die(const char *what, int err) {
  fprintf(stderr, "load: %s: %s\n", what, strerror(err));
  exit(1);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The message's bytes follow from (id, seq) alone: a cheap xorshift
** stream, so no two messages in a run are alike. */
static void make_message(client *c) {
  uint64_t x = ((uint64_t)c->id << 40) ^ c->seq ^ 0x9e3779b97f4a7c15ULL;
  size_t i;
  for (i = 0; i < msg_size; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c->out[i] = (unsigned char)x;
  }
  c->sent = c->got = 0;
}

static void set_events(client *c, int out) {
  struct epoll_event ev;
  if (c->want_out == out)
    return;
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
  ev.data.ptr = c;
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0)
    die("epoll_ctl", errno);
  c->want_out = out;
}

/* Sends what is left of the message; EPOLLOUT only while some is left. */
static void pump_out(client *c) {
  while (c->sent < msg_size) {
    ssize_t n = send(c->fd, c->out + c->sent, msg_size - c->sent,
                     MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      if (errno == EINTR)
        continue;
      die("send", errno);
    }
    c->sent += (size_t)n;
  }
  set_events(c, c->sent < msg_size);
}

/* Reads the echo; a complete one is checked and the next message starts.
** One recv per readiness event: epoll is level-triggered, so bytes left
** over bring another event, and the client spends no syscall on EAGAIN
** (the client must stay cheaper than the servers it measures). */
static void pump_in(client *c) {
  ssize_t n = recv(c->fd, c->in + c->got, msg_size - c->got, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return;
    die("recv", errno);
  }
  if (n == 0) {
    fprintf(stderr, "load: connection %u closed by the server\n", c->id);
    exit(1);
  }
  c->got += (size_t)n;
  /* More echo than was sent so far is a server bug, and shows up as a
  ** mismatch: the surplus bytes are read as the next echo. */
  if (c->got < msg_size)
    return;
  if (memcmp(c->in, c->out, msg_size) != 0)
    mismatches++;
  done_total++;
  c->seq++;
  make_message(c);
  pump_out(c);
}

static void connect_all(client *cs, int nconn, const char *host, int port) {
  struct sockaddr_in sin;
  int i, one = 1;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
    fprintf(stderr, "load: HOST must be a numeric IPv4 address\n");
    exit(2);
  }
  for (i = 0; i < nconn; i++) {
    client *c = &cs[i];
    struct epoll_event ev;
    /* Connect blocking (it is setup, not load), then go non-blocking. */
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
      die("socket", errno);
    if (connect(c->fd, (struct sockaddr *)&sin, sizeof sin) != 0)
      die("connect", errno);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->id = (uint32_t)i;
    c->out = malloc(msg_size);
    c->in = malloc(msg_size);
    if (c->out == NULL || c->in == NULL)
      die("malloc", ENOMEM);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
      die("epoll_ctl", errno);
  }
}

/* Busy and total jiffies of each CPU (from /proc/stat); returns how many. */
static int cpu_times(unsigned long long busy[], unsigned long long total[]) {
  char line[512];
  int n = 0;
  FILE *f = fopen("/proc/stat", "r");
  if (f == NULL)
    return 0;
  while (n < MAX_CPUS && fgets(line, sizeof line, f) != NULL) {
    unsigned long long v[8] = {0};
    int cpu, i;
    if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu,
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 9 ||
        cpu != n)
      continue;  /* the "cpu " summary line, or not a CPU line */
    total[n] = 0;
    for (i = 0; i < 8; i++)
      total[n] += v[i];
    busy[n] = total[n] - v[3] - v[4];  /* all but idle and iowait */
    n++;
  }
  fclose(f);
  return n;
}

/* utime + stime of a process, in clock ticks; 0 if it cannot be read. */
static unsigned long long proc_ticks(long pid) {
  char path[64], buf[1024], *p;
  unsigned long long ut = 0, st = 0;
  FILE *f;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  f = fopen(path, "r");
  if (f == NULL)
    return 0;
  p = fgets(buf, sizeof buf, f);
  fclose(f);
  /* Fields 14 and 15, counted after the ")" that ends the command name. */
  if (p == NULL || (p = strrchr(buf, ')')) == NULL ||
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
             &ut, &st) != 2)
    return 0;
  return ut + st;
}

static double parse_num(const char *s, double lo, double hi) {
  char *end;
  double v = strtod(s, &end);
  if (*end != '\0' || !(v >= lo && v <= hi)) {
    fprintf(stderr, "load: bad number '%s'\n", s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  static unsigned long long busy0[MAX_CPUS], total0[MAX_CPUS],
    busy1[MAX_CPUS], total1[MAX_CPUS];
  struct epoll_event evs[256];
  int nconn = 100, opt, i, ncpu0 = 0, ncpu1;
  double warmup = 1, secs = 5, t0 = 0, t1, deadline;
  int counting = 0;
  unsigned long long count0 = 0, ticks0 = 0, ticks1;
  long server_pid = 0;
  client *cs;

  while ((opt = getopt(argc, argv, "c:m:w:d:p:")) != -1) {
    switch (opt) {
      case 'c': nconn = (int)parse_num(optarg, 1, 100000); break;
      case 'm': msg_size = (size_t)parse_num(optarg, 1, MAX_MSG); break;
      case 'w': warmup = parse_num(optarg, 0, 3600); break;
      case 'd': secs = parse_num(optarg, 0.1, 3600); break;
      case 'p': server_pid = (long)parse_num(optarg, 1, 1e9); break;
      default:
        fprintf(stderr, "usage: load [-c CONNS] [-m BYTES] [-w WARMUP] "
                        "[-d SECS] [-p PID] HOST PORT\n");
        return 2;
    }
  }
  if (argc - optind != 2) {
    fprintf(stderr, "usage: load [options] HOST PORT\n");
    return 2;
  }

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0)
    die("epoll_create1", errno);
  cs = calloc((size_t)nconn, sizeof *cs);
  if (cs == NULL)
    die("calloc", ENOMEM);
  connect_all(cs, nconn, argv[optind],
              (int)parse_num(argv[optind + 1], 1, 65535));

  for (i = 0; i < nconn; i++) {
    make_message(&cs[i]);
    pump_out(&cs[i]);
  }

  /* Warm-up, then the measured window: the clock is read once per
  ** epoll_wait, which returns many times a millisecond under load. */
  deadline = now_sec() + warmup;
  for (;;) {
    double t;
    int n = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]), 100);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("epoll_wait", errno);
    }
    for (i = 0; i < n; i++) {
      client *c = evs[i].data.ptr;
      if (evs[i].events & EPOLLOUT)
        pump_out(c);
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        pump_in(c);
    }
    t = now_sec();
    if (t < deadline)
      continue;
    if (!counting) {  /* the warm-up is over: start counting */
      counting = 1;
      t0 = t;
      count0 = done_total;
      ncpu0 = cpu_times(busy0, total0);
      if (server_pid)
        ticks0 = proc_ticks(server_pid);
      deadline = t0 + secs;
      continue;
    }
    t1 = t;
    break;
  }

  {
    unsigned long long requests = done_total - count0;
    double elapsed = t1 - t0;
    printf("requests=%llu secs=%.3f rate=%.0f mismatches=%llu", requests,
           elapsed, (double)requests / elapsed, mismatches);
    ncpu1 = cpu_times(busy1, total1);
    for (i = 0; i < ncpu0 && i < ncpu1; i++) {
      unsigned long long dt = total1[i] - total0[i];
      printf(" cpu%d=%.0f", i,
             dt ? 100.0 * (double)(busy1[i] - busy0[i]) / (double)dt : 0.0);
    }
    if (server_pid) {
      double cpu_secs;
      ticks1 = proc_ticks(server_pid);
      cpu_secs = (double)(ticks1 - ticks0) / (double)sysconf(_SC_CLK_TCK);
      printf(" server_cpu=%.0f server_us=%.3f", 100.0 * cpu_secs / elapsed,
             requests ? 1e6 * cpu_secs / (double)requests : 0.0);
    }
    printf("\n");
    fflush(stdout);
  }
  if (mismatches > 0) {
    fprintf(stderr, "load: %llu echo(es) differed from what was sent\n",
            mismatches);
    return 1;
  }
  return 0;
}
