/*
** ioq_fs_posix.h: the file-system ops as blocking POSIX calls
** (ioq_fs_posix.c), for the backends' worker threads.
*/
#ifndef IOQ_FS_POSIX_H
#define IOQ_FS_POSIX_H

#include "ioq.h"

/* Asked between the steps of a long op (a copy): whether the op was
** canceled or timed out, so that it stops there. */
typedef int (*ioq_stop_fn)(void *ctx, ioq_op *op);

/*
** Runs file-system op `op` (IOQ_STAT and after) with blocking calls.
** Returns its result, >= 0 or -errno; -EINTR when a signal (or `stopped`)
** cut it short, after which it may be called again and goes on.
*/
int64_t ioq_fs_run(ioq_op *op, ioq_stop_fn stopped, void *ctx);

#endif
