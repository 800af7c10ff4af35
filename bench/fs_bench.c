/*
** bench/fs_bench.c: the plain C baselines of the stat, readdir and spawn
** benchmarks (bench/run.sh), and the tree of files they all work on. Plain
** synchronous system calls, the way a C program does them without any
** queue: what the Lua contenders are measured against.
**
**   fs_bench mkfiles DIR NDIRS NFILES   DIR/d0..d(NDIRS-1), each holding
**                                       NFILES empty files f0000...; made
**                                       once (kept while complete)
**   fs_bench stat DIR NDIRS NFILES N    N statx calls, round the files
**   fs_bench readdir DIR NDIRS N        N listings (opendir, readdir to
**                                       the end, closedir), round the
**                                       directories; the rate is entries/s
**   fs_bench spawn PROG N CONC          N posix_spawn of PROG (no
**                                       arguments), CONC running at once,
**                                       each reaped with waitpid
**
** Prints one line like bench/uring_bench.c, e.g.
**   stat ops=400000 secs=0.312345 rate=1280640
*/
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "fs_bench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static long count_arg(const char *s) {
  char *end;
  long n = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || n <= 0) {
    fprintf(stderr, "fs_bench: bad count '%s'\n", s);
    exit(2);
  }
  return n;
}

static void report(const char *job, long ops, double secs) {
  printf("%s ops=%ld secs=%.6f rate=%.0f\n", job, ops, secs, (double)ops / secs);
}

/* The names the Lua contenders use too: DIR/dK/fNNNN. */
static void file_name(char *out, size_t size, const char *dir, long d, long f) {
  snprintf(out, size, "%s/d%ld/f%04ld", dir, d, f);
}

static int job_mkfiles(const char *dir, long ndirs, long nfiles) {
  char path[4096];
  long d, f;
  if (mkdir(dir, 0777) != 0 && errno != EEXIST)
    die(dir);
  for (d = 0; d < ndirs; d++) {
    snprintf(path, sizeof path, "%s/d%ld", dir, d);
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
      die(path);
    for (f = 0; f < nfiles; f++) {
      int fd;
      file_name(path, sizeof path, dir, d, f);
      fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
      if (fd < 0)
        die(path);
      close(fd);
    }
  }
  return 0;
}

static int job_stat(const char *dir, long ndirs, long nfiles, long n) {
  long total = ndirs * nfiles, i;
  char **paths = malloc((size_t)total * sizeof *paths);
  char path[4096];
  double t0;
  if (paths == NULL)
    die("malloc");
  /* The names are made before the clock starts, as the Lua side does. */
  for (i = 0; i < total; i++) {
    file_name(path, sizeof path, dir, i / nfiles, i % nfiles);
    if ((paths[i] = strdup(path)) == NULL)
      die("strdup");
  }
  t0 = now();
  for (i = 0; i < n; i++) {
    struct statx st;
    if (statx(AT_FDCWD, paths[i % total], 0, STATX_BASIC_STATS, &st) != 0)
      die(paths[i % total]);
  }
  report("stat", n, now() - t0);
  for (i = 0; i < total; i++)
    free(paths[i]);
  free(paths);
  return 0;
}

static int job_readdir(const char *dir, long ndirs, long n) {
  char path[4096];
  long i, entries = 0;
  double t0 = now();
  for (i = 0; i < n; i++) {
    struct dirent *e;
    DIR *dp;
    snprintf(path, sizeof path, "%s/d%ld", dir, i % ndirs);
    if ((dp = opendir(path)) == NULL)
      die(path);
    errno = 0;
    while ((e = readdir(dp)) != NULL) {
      /* Counted as the others give them: without . and .. (d_type,
      ** the type they give too, comes with each entry for free). */
      if (e->d_name[0] == '.' &&
          (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
        continue;
      entries++;
    }
    if (errno != 0)
      die(path);
    closedir(dp);
  }
  report("readdir", entries, now() - t0);
  return 0;
}

static int job_spawn(const char *prog, long n, long conc) {
  long started = 0, ended = 0;
  char *argv[2];
  double t0;
  argv[0] = (char *)prog;
  argv[1] = NULL;
  t0 = now();
  while (ended < n) {
    int status;
    pid_t pid;
    while (started < n && started - ended < conc) {
      int err = posix_spawn(&pid, prog, NULL, NULL, argv, environ);
      if (err != 0) {
        errno = err;
        die(prog);
      }
      started++;
    }
    if ((pid = waitpid(-1, &status, 0)) < 0)
      die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "fs_bench: %s ended with status %d\n", prog, status);
      return 1;
    }
    ended++;
  }
  report("spawn", n, now() - t0);
  return 0;
}

int main(int argc, char **argv) {
  const char *job = argc > 1 ? argv[1] : "";
  if (strcmp(job, "mkfiles") == 0 && argc == 5)
    return job_mkfiles(argv[2], count_arg(argv[3]), count_arg(argv[4]));
  if (strcmp(job, "stat") == 0 && argc == 6)
    return job_stat(argv[2], count_arg(argv[3]), count_arg(argv[4]), count_arg(argv[5]));
  if (strcmp(job, "readdir") == 0 && argc == 5)
    return job_readdir(argv[2], count_arg(argv[3]), count_arg(argv[4]));
  if (strcmp(job, "spawn") == 0 && argc == 5)
    return job_spawn(argv[2], count_arg(argv[3]), count_arg(argv[4]));
  fprintf(stderr,
          "usage: fs_bench mkfiles DIR NDIRS NFILES\n"
          "       fs_bench stat DIR NDIRS NFILES N\n"
          "       fs_bench readdir DIR NDIRS N\n"
          "       fs_bench spawn PROG N CONC\n");
  return 2;
}
