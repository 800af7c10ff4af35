/*
** no_ext_arg.c: an LD_PRELOAD library that makes io_uring look like Linux
** 5.6 to 5.10, whose rings lack IORING_FEAT_EXT_ARG (a wait cannot carry
** its own timeout, so liburing queues a timeout SQE of its own, with
** user_data LIBURING_UDATA_TIMEOUT, for every timed wait):
**
**   LD_PRELOAD=build/no_ext_arg.so lua5.4 ...
**
** liburing 2.3 makes the io_uring_setup system call inline (no libc
** syscall() to catch), so this wraps the entry point ioq calls,
** io_uring_queue_init_params, and clears the bit both in the params it
** returns and in the ring, where liburing's own waits look for it.
** Built for the specs only (spec/regress/uring_spec.lua).
*/
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <liburing.h>

typedef int init_fn(unsigned, struct io_uring *, struct io_uring_params *);

int io_uring_queue_init_params(unsigned entries, struct io_uring *ring,
                               struct io_uring_params *p) {
  static init_fn *real;
  int r;
  if (real == NULL) {
    /* Not dlsym(RTLD_NEXT): Lua loads ioq (and so liburing) with
    ** RTLD_LOCAL, out of the global scope RTLD_NEXT searches. */
    void *lib = dlopen("liburing.so.2", RTLD_LAZY | RTLD_LOCAL);
    void *sym = lib != NULL ? dlsym(lib, "io_uring_queue_init_params") : NULL;
    if (sym == NULL) {
      fprintf(stderr, "no_ext_arg: no liburing.so.2: %s\n", dlerror());
      abort();  /* a shim that does nothing must not look like a pass */
    }
    memcpy(&real, &sym, sizeof real);  /* ISO C has no void* -> function */
  }
  r = real(entries, ring, p);
  if (r == 0) {
    p->features &= ~IORING_FEAT_EXT_ARG;
    ring->features &= ~IORING_FEAT_EXT_ARG;
  }
  return r;
}
