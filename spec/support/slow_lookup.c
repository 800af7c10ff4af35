/*
** slow_lookup.c: an LD_PRELOAD library that gives the specs host names
** whose lookup is slow, or resolves to addresses of their choosing
** (spec/connect_name_spec.lua):
**
**   LD_PRELOAD=build/slow_lookup.so lua5.4 ...
**
** A name ending in ".fast.test" resolves to the numeric addresses before
** that ending, separated by '+' ("127.0.0.2+127.0.0.1.fast.test"), in that
** order; one ending in ".slow.test" the same, after SLOW_LOOKUP_MS
** milliseconds (500 unless set), slept through signals as a lookup that
** waits for a DNS server is. Every other name goes to the system's
** getaddrinfo, and so does a lookup with AI_NUMERICHOST (which asks
** whether a string is an address: these are not). With SLOW_LOOKUP_LOG
** set, each name looked up (AI_NUMERICHOST aside) is appended to that
** file, a line each: a spec sees which names were looked up. Built for
** the specs only.
*/
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int gai_fn(const char *, const char *, const struct addrinfo *,
                   struct addrinfo **);

static gai_fn *real_gai(void) {
  static gai_fn *real;
  if (real == NULL) {
    void *sym = dlsym(RTLD_NEXT, "getaddrinfo");
    if (sym == NULL) {
      fprintf(stderr, "slow_lookup: no getaddrinfo: %s\n", dlerror());
      abort();
    }
    memcpy(&real, &sym, sizeof real);  /* ISO C has no void* -> function */
  }
  return real;
}

static int ends_with(const char *s, const char *end) {
  size_t n = strlen(s), m = strlen(end);
  return n > m && strcmp(s + n - m, end) == 0;
}

static void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;  /* the rest of it */
}

int getaddrinfo(const char *node, const char *service,
                const struct addrinfo *hints, struct addrinfo **res) {
  struct addrinfo h, *head = NULL, **tail = &head;
  char *list, *part, *save = NULL;
  size_t len;
  int r = 0;
  if (node != NULL && !(hints != NULL && (hints->ai_flags & AI_NUMERICHOST))) {
    const char *log = getenv("SLOW_LOOKUP_LOG");
    FILE *f = log != NULL ? fopen(log, "a") : NULL;
    if (f != NULL) {
      fprintf(f, "%s\n", node);
      fclose(f);
    }
  }
  if (node == NULL || (hints != NULL && (hints->ai_flags & AI_NUMERICHOST)) ||
      !(ends_with(node, ".fast.test") || ends_with(node, ".slow.test")))
    return real_gai()(node, service, hints, res);
  if (ends_with(node, ".slow.test")) {
    const char *ms = getenv("SLOW_LOOKUP_MS");
    sleep_ms(ms != NULL ? atol(ms) : 500);
  }
  len = strlen(node) - strlen(".fast.test");
  if ((list = malloc(len + 1)) == NULL)
    return EAI_MEMORY;
  memcpy(list, node, len);
  list[len] = '\0';
  memset(&h, 0, sizeof h);
  if (hints != NULL) {
    h.ai_family = hints->ai_family;
    h.ai_socktype = hints->ai_socktype;
    h.ai_protocol = hints->ai_protocol;
  }
  h.ai_flags = AI_NUMERICHOST;
  for (part = strtok_r(list, "+", &save); part != NULL;
       part = strtok_r(NULL, "+", &save)) {
    struct addrinfo *one = NULL;
    r = real_gai()(part, service, &h, &one);
    if (r == EAI_NONAME || r == EAI_FAMILY || r == EAI_ADDRFAMILY) {
      r = 0;  /* an address of another family than asked for */
      continue;
    }
    if (r != 0)
      break;
    /* glibc frees a list node by node, so lists can be joined. */
    *tail = one;
    while (*tail != NULL)
      tail = &(*tail)->ai_next;
  }
  free(list);
  if (r == 0 && head == NULL)
    r = EAI_NONAME;
  if (r != 0) {
    if (head != NULL)
      freeaddrinfo(head);
    return r;
  }
  *res = head;
  return 0;
}
