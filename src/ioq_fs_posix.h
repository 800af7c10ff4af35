/*
** ioq_fs_posix.h: the file-system ops as blocking POSIX calls
** (ioq_fs_posix.c), for the backends' worker threads.
*/
#ifndef IOQ_FS_POSIX_H
#define IOQ_FS_POSIX_H

#include "ioq.h"

/*
** Runs file-system op `op` (IOQ_STAT and after) with blocking calls, for
** ioq_blocking_run. Returns its result, >= 0 or -errno; -EINTR when a
** signal cut it short (or, between the steps of a copy, a cancel or a
** timeout, which ioq_blocking_aborted tells), after which it may be
** called again and goes on where it was.
*/
int64_t ioq_fs_run(ioq_op *op);

#endif
