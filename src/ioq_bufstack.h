/*
** ioq_bufstack.h: the pool of provided buffers (ioq.h's ioq_pool) of a
** backend whose kernel has none (epoll, IOCP), which then lends the
** buffers itself: `count` buffers of `size` bytes and a stack of the free
** ones. The one given back last is lent first: it is the likeliest to be
** in the cache, and buffers never lent cost no memory (the block is not
** touched until a receive uses it). One allocation for the record, so
** that ioq_pool_unref frees all of it, also after the backend is gone.
*/
#ifndef IOQ_BUFSTACK_H
#define IOQ_BUFSTACK_H

#include <errno.h>
#include <stdlib.h>

#include "ioq.h"

typedef struct ioq_bufstack {
  ioq_pool base;
  unsigned stack[];         /* base.nfree free buffers */
} ioq_bufstack;

static inline void ioq_bufstack_recycle(ioq_pool *base, int buf) {
  ((ioq_bufstack *)base)->stack[base->nfree++] = (unsigned)buf;
}

/* A pool with one reference, the backend's: 0 or -errno. */
static inline int ioq_bufstack_new(unsigned count, unsigned size,
                                   ioq_bufstack **out) {
  ioq_bufstack *p;
  unsigned i;
  if (count == 0 || size == 0)
    return -EINVAL;
  p = malloc(sizeof *p + (size_t)count * sizeof p->stack[0]);
  if (p == NULL)
    return -ENOMEM;
  if ((p->base.mem = malloc((size_t)count * size)) == NULL) {
    free(p);
    return -ENOMEM;
  }
  p->base.refs = 1;
  p->base.count = count;
  p->base.size = size;
  p->base.recycle = ioq_bufstack_recycle;
  for (i = 0; i < count; i++)
    p->stack[i] = count - 1 - i;  /* buffer 0 first */
  p->base.nfree = count;
  *out = p;
  return 0;
}

/* The buffer a receive may fill now (the next one lent), or -1. */
static inline int ioq_bufstack_next(const ioq_bufstack *p) {
  return p->base.nfree > 0 ? (int)p->stack[p->base.nfree - 1] : -1;
}

static inline unsigned char *ioq_bufstack_mem(const ioq_bufstack *p,
                                              int buf) {
  return p->base.mem + (size_t)buf * p->base.size;
}

/* Lends that buffer (it holds data now): it comes back through
** ioq_pool_release, with the reference it takes. */
static inline void ioq_bufstack_lend(ioq_bufstack *p) {
  p->base.nfree--;
  p->base.refs++;
}

/* The backend's end: buffers still lent keep the memory, and none comes
** back to the stack. */
static inline void ioq_bufstack_drop(ioq_bufstack *p) {
  if (p != NULL) {
    p->base.recycle = NULL;
    ioq_pool_unref(&p->base);
  }
}

#endif
