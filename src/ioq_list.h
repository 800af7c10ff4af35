/*
** ioq_list.h: an intrusive doubly linked list of ops, in static inline
** functions (no state, no allocation). An op carries its link at an offset
** the list's user names: the binding's link (ioq_op.link) or one a backend
** keeps in the op's private area. A list knows its length.
** Includes only ioq.h; used by the binding's engine and backend_epoll.c.
*/
#ifndef IOQ_LIST_H
#define IOQ_LIST_H

#include <stddef.h>

#include "ioq.h"

typedef struct ioq_list {
  ioq_op *head, *tail;
  size_t n;
} ioq_list;

/* The link of `op` at byte offset `off` into it. */
static inline ioq_link *ioq_link_at(ioq_op *op, size_t off) {
  return (ioq_link *)(void *)((char *)op + off);
}

/* Appends op to l. */
static inline void ioq_list_push(ioq_list *l, ioq_op *op, size_t off) {
  ioq_link *k = ioq_link_at(op, off);
  k->next = NULL;
  k->prev = l->tail;
  if (l->tail) ioq_link_at(l->tail, off)->next = op;
  else l->head = op;
  l->tail = op;
  l->n++;
}

/* Takes op, which is on l, off it. */
static inline void ioq_list_remove(ioq_list *l, ioq_op *op, size_t off) {
  ioq_link *k = ioq_link_at(op, off);
  if (k->prev) ioq_link_at(k->prev, off)->next = k->next;
  else l->head = k->next;
  if (k->next) ioq_link_at(k->next, off)->prev = k->prev;
  else l->tail = k->prev;
  k->next = k->prev = NULL;
  l->n--;
}

#endif
