/*
** ioq_ring.h: a growable ring (a FIFO queue in one array) of fixed-size
** elements, in static inline functions. The element size is a constant at
** every call, so each use compiles to plain array code. Includes only the
** C library; used by the binding's multishot items (lioq_engine.c,
** lioq_handle.c) and backend_epoll.c's finished events.
*/
#ifndef IOQ_RING_H
#define IOQ_RING_H

#include <stdlib.h>
#include <string.h>

typedef struct ioq_ring {
  void *v;
  unsigned head, n, cap;   /* the oldest element, how many, room */
} ioq_ring;

/* The k-th element from the oldest (k < n). */
static inline void *ioq_ring_at(const ioq_ring *r, size_t size, unsigned k) {
  return (char *)r->v + (size_t)((r->head + k) % r->cap) * size;
}

/*
** Makes room for `room` more elements (growing from `first` elements,
** doubling); the elements keep their order. 0 if out of memory.
*/
static inline int ioq_ring_reserve(ioq_ring *r, size_t size, unsigned room,
                                   unsigned first) {
  unsigned cap = r->cap ? r->cap : first, k;
  char *p;
  if (r->cap - r->n >= room)
    return 1;
  while (cap - r->n < room) {
    if (cap * 2 < cap)
      return 0;
    cap *= 2;
  }
  if ((p = malloc((size_t)cap * size)) == NULL)
    return 0;
  for (k = 0; k < r->n; k++)  /* unroll the ring into the new array */
    memcpy(p + (size_t)k * size, ioq_ring_at(r, size, k), size);
  free(r->v);
  r->v = p;
  r->cap = cap;
  r->head = 0;
  return 1;
}

/* The slot of a new newest element (room was reserved). */
static inline void *ioq_ring_push(ioq_ring *r, size_t size) {
  return ioq_ring_at(r, size, r->n++);
}

/* Takes the oldest element (n > 0): returns its slot, valid until the next
** push. */
static inline void *ioq_ring_shift(ioq_ring *r, size_t size) {
  void *e = ioq_ring_at(r, size, 0);
  r->head = (r->head + 1) % r->cap;
  r->n--;
  return e;
}

static inline void ioq_ring_free(ioq_ring *r) {
  free(r->v);
  r->v = NULL;
  r->head = r->n = r->cap = 0;
}

#endif
