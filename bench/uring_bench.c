/*
** uring_bench.c: the raw liburing baseline for bench/ops.lua.
**
** It runs the same two jobs as ops.lua with nothing between the program and
** liburing, so the ratio of the two rates is what the ioq binding (and Lua)
** costs per op:
**
**   uring_bench nop N              N NOPs, in batches of 64: prepare 64,
**                                  submit, reap all 64, repeat
**   uring_bench randread FILE N    N buffered 4 KiB reads at random aligned
**                                  offsets in FILE, 64 always in flight
**   uring_bench randread FILE N direct
**                                  the same with FILE opened O_DIRECT
**
** Output is one line, e.g. "nop ops=6400000 secs=0.412345 rate=15520736".
**
** Build: cc -O2 -Wall -Wextra -Werror uring_bench.c -o uring_bench -luring
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#define DEPTH 64          /* batch size (nop) and ops in flight (randread) */
#define BLOCK 4096        /* read size and offset alignment */
#define RING_ENTRIES 256  /* ioq.queue()'s default, so both rings match */

static void die(const char *what, int err) {
  fprintf(stderr, "uring_bench: %s: %s\n", what, strerror(err));
  exit(1);
}

static double now_sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
** Sets the ring up the way ioq's io_uring backend does on a recent kernel
** (deferred task work for a single submitter), stepping down to a plain
** ring where the kernel refuses the flags. The benchmark is meant to
** measure the binding, not a difference in ring modes.
*/
static void ring_init(struct io_uring *ring) {
  static const unsigned tries[] = {
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
      IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
    0,
  };
  size_t i;
  int r = -EINVAL;
  for (i = 0; i < sizeof tries / sizeof tries[0] && r == -EINVAL; i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = tries[i];
    r = io_uring_queue_init_params(RING_ENTRIES, ring, &p);
  }
  if (r < 0)
    die("io_uring_queue_init", -r);
}

static unsigned long long parse_count(const char *s) {
  char *end;
  unsigned long long n;
  errno = 0;
  n = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || n == 0) {
    fprintf(stderr, "uring_bench: bad count '%s'\n", s);
    exit(2);
  }
  return n;
}

static void report(const char *job, unsigned long long ops, double secs) {
  printf("%s ops=%llu secs=%.6f rate=%.0f\n", job, ops, secs,
         (double)ops / secs);
}

/*
** Takes every CQE that is ready, calling `on_cqe` for each; waits for one
** first when none is ready (with deferred task work, only entering the
** kernel runs the completions, so a bare peek could spin forever).
*/
static unsigned reap(struct io_uring *ring,
                     void (*on_cqe)(struct io_uring_cqe *, void *),
                     void *ctx) {
  struct io_uring_cqe *cqes[DEPTH];
  unsigned i, n = io_uring_peek_batch_cqe(ring, cqes, DEPTH);
  if (n == 0) {
    int r = io_uring_wait_cqe(ring, &cqes[0]);
    if (r < 0)
      die("io_uring_wait_cqe", -r);
    n = io_uring_peek_batch_cqe(ring, cqes, DEPTH);
  }
  for (i = 0; i < n; i++)
    on_cqe(cqes[i], ctx);
  io_uring_cq_advance(ring, n);
  return n;
}

/* ------------------------------------------------------------------ nop */

static void check_nop(struct io_uring_cqe *cqe, void *ctx) {
  (void)ctx;
  if (cqe->res < 0)
    die("nop", -cqe->res);
}

static void job_nop(unsigned long long n) {
  struct io_uring ring;
  unsigned long long done = 0;
  double t0;
  ring_init(&ring);
  t0 = now_sec();
  while (done < n) {
    unsigned batch = n - done < DEPTH ? (unsigned)(n - done) : DEPTH;
    unsigned i, reaped = 0;
    int r;
    for (i = 0; i < batch; i++)
      io_uring_prep_nop(io_uring_get_sqe(&ring));
    r = io_uring_submit_and_wait(&ring, batch);
    if (r < 0)
      die("io_uring_submit_and_wait", -r);
    while (reaped < batch)
      reaped += reap(&ring, check_nop, NULL);
    done += batch;
  }
  report("nop", n, now_sec() - t0);
  io_uring_queue_exit(&ring);
}

/* ------------------------------------------------------------- randread */

typedef struct randread {
  struct io_uring ring;
  int fd;
  uint64_t nblocks;        /* whole 4 KiB blocks in the file */
  uint64_t rng;            /* xorshift64* state */
  unsigned long long issued, done, total;
  unsigned char *bufs[DEPTH];
} randread;

/* xorshift64*: cheap enough that the generator does not show in the rate. */
static uint64_t next_random(randread *rr) {
  rr->rng ^= rr->rng >> 12;
  rr->rng ^= rr->rng << 25;
  rr->rng ^= rr->rng >> 27;
  return rr->rng * 0x2545F4914F6CDD1DULL;
}

/* Queues a read into buffer `slot`; the slot rides in user_data. */
static void issue_read(randread *rr, unsigned slot) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&rr->ring);
  uint64_t off = (next_random(rr) % rr->nblocks) * BLOCK;
  io_uring_prep_read(sqe, rr->fd, rr->bufs[slot], BLOCK, off);
  io_uring_sqe_set_data64(sqe, slot);
  rr->issued++;
}

/* A finished read: count it and put its buffer straight back to work. */
static void on_read(struct io_uring_cqe *cqe, void *ctx) {
  randread *rr = ctx;
  if (cqe->res < 0)
    die("read", -cqe->res);
  if (cqe->res != BLOCK) {
    fprintf(stderr, "uring_bench: short read (%d bytes)\n", cqe->res);
    exit(1);
  }
  rr->done++;
  if (rr->issued < rr->total)
    issue_read(rr, (unsigned)io_uring_cqe_get_data64(cqe));
}

static void job_randread(const char *path, unsigned long long n, int direct) {
  static randread rr;
  struct stat st;
  unsigned i;
  double t0;
  rr.fd = open(path, O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
  if (rr.fd < 0)
    die(path, errno);
  if (fstat(rr.fd, &st) != 0)
    die("fstat", errno);
  rr.nblocks = (uint64_t)st.st_size / BLOCK;
  if (rr.nblocks == 0) {
    fprintf(stderr, "uring_bench: %s is smaller than %d bytes\n", path, BLOCK);
    exit(2);
  }
  rr.rng = 0x9E3779B97F4A7C15ULL;
  rr.total = n;
  for (i = 0; i < DEPTH; i++) {
    void *p;
    if (posix_memalign(&p, BLOCK, BLOCK) != 0)
      die("posix_memalign", ENOMEM);
    memset(p, 0, BLOCK);  /* fault the pages in before the clock starts */
    rr.bufs[i] = p;
  }
  ring_init(&rr.ring);
  t0 = now_sec();
  for (i = 0; i < DEPTH && rr.issued < n; i++)
    issue_read(&rr, i);
  while (rr.done < n) {
    /* Hands the reads queued by on_read to the kernel, and waits for one. */
    int r = io_uring_submit_and_wait(&rr.ring, 1);
    if (r < 0 && r != -EINTR)
      die("io_uring_submit_and_wait", -r);
    reap(&rr.ring, on_read, &rr);
  }
  report("randread", n, now_sec() - t0);
  io_uring_queue_exit(&rr.ring);
  for (i = 0; i < DEPTH; i++)
    free(rr.bufs[i]);
  close(rr.fd);
}

static void usage(void) {
  fprintf(stderr, "usage: uring_bench nop N\n"
                  "       uring_bench randread FILE N [direct]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "nop") == 0)
    job_nop(parse_count(argv[2]));
  else if (argc == 4 && strcmp(argv[1], "randread") == 0)
    job_randread(argv[2], parse_count(argv[3]), 0);
  else if (argc == 5 && strcmp(argv[1], "randread") == 0 &&
           strcmp(argv[4], "direct") == 0)
    job_randread(argv[2], parse_count(argv[3]), 1);
  else
    usage();
  return 0;
}
