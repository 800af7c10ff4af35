/*
** ioq_heap.h: a binary min-heap of deadlines, in static inline functions.
** The heap holds pointers to nodes its user embeds in its own records (an
** op, a backend's record) and gets the record back from a node with
** offsetof; a node knows its slot, so any node leaves in O(log n), not only
** the soonest. Includes only the C library; used by ioq.h (the node an op
** keeps for its timeout) and the three backends' timers.
*/
#ifndef IOQ_HEAP_H
#define IOQ_HEAP_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct ioq_heap_node {
  int64_t deadline;        /* the key: monotonic ns */
  size_t slot;             /* the index in the heap + 1; 0: not in it */
} ioq_heap_node;

typedef struct ioq_heap {
  ioq_heap_node **v;       /* v[0] is the soonest */
  size_t n, cap;
} ioq_heap;

static inline void ioq_heap_place(ioq_heap *h, size_t i, ioq_heap_node *x) {
  h->v[i] = x;
  x->slot = i + 1;
}

static inline void ioq_heap_sift_up(ioq_heap *h, size_t i) {
  ioq_heap_node *x = h->v[i];
  while (i > 0 && h->v[(i - 1) / 2]->deadline > x->deadline) {
    ioq_heap_place(h, i, h->v[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  ioq_heap_place(h, i, x);
}

static inline void ioq_heap_sift_down(ioq_heap *h, size_t i) {
  ioq_heap_node *x = h->v[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= h->n)
      break;
    if (c + 1 < h->n && h->v[c + 1]->deadline < h->v[c]->deadline)
      c++;
    if (h->v[c]->deadline >= x->deadline)
      break;
    ioq_heap_place(h, i, h->v[c]);
    i = c;
  }
  ioq_heap_place(h, i, x);
}

/*
** Makes room for `room` more nodes (growing from 64, doubling), so that a
** later add cannot fail. 0 or -ENOMEM.
*/
static inline int ioq_heap_reserve(ioq_heap *h, size_t room) {
  size_t cap = h->cap ? h->cap : 64;
  ioq_heap_node **v;
  if (h->cap - h->n >= room)
    return 0;
  while (cap - h->n < room) {
    if (cap > SIZE_MAX / 2 / sizeof *v)
      return -ENOMEM;
    cap *= 2;
  }
  if ((v = realloc(h->v, cap * sizeof *v)) == NULL)
    return -ENOMEM;
  h->v = v;
  h->cap = cap;
  return 0;
}

/* Puts x, not in any heap, into h at `deadline` (room was reserved). */
static inline void ioq_heap_add(ioq_heap *h, ioq_heap_node *x,
                                int64_t deadline) {
  x->deadline = deadline;
  h->v[h->n] = x;
  ioq_heap_sift_up(h, h->n++);
}

/* ioq_heap_add, making room first. 0 or -ENOMEM (x is then not in h). */
static inline int ioq_heap_push(ioq_heap *h, ioq_heap_node *x,
                                int64_t deadline) {
  int err = ioq_heap_reserve(h, 1);
  if (err == 0)
    ioq_heap_add(h, x, deadline);
  return err;
}

/* Takes x out of h; nothing if it is not in it. */
static inline void ioq_heap_remove(ioq_heap *h, ioq_heap_node *x) {
  size_t i = x->slot;
  ioq_heap_node *last;
  if (i-- == 0)
    return;
  x->slot = 0;
  last = h->v[--h->n];
  if (last == x)
    return;
  ioq_heap_place(h, i, last);  /* the last fills the hole: up or down */
  ioq_heap_sift_up(h, i);
  ioq_heap_sift_down(h, last->slot - 1);
}

/* Moves x, which is in h, to a new deadline. */
static inline void ioq_heap_update(ioq_heap *h, ioq_heap_node *x,
                                   int64_t deadline) {
  x->deadline = deadline;
  ioq_heap_sift_up(h, x->slot - 1);
  ioq_heap_sift_down(h, x->slot - 1);
}

/* The soonest node, or NULL when h is empty. */
static inline ioq_heap_node *ioq_heap_top(const ioq_heap *h) {
  return h->n > 0 ? h->v[0] : NULL;
}

/* Takes the soonest node out of h and returns it (NULL when empty). */
static inline ioq_heap_node *ioq_heap_pop(ioq_heap *h) {
  ioq_heap_node *x = ioq_heap_top(h);
  if (x != NULL)
    ioq_heap_remove(h, x);
  return x;
}

static inline void ioq_heap_free(ioq_heap *h) {
  free(h->v);
  h->v = NULL;
  h->n = h->cap = 0;
}

#endif
