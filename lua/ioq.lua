--- ioq: completion-based asynchronous I/O for Lua 5.4.
-- The C core (ioq.core) is mechanism: queues, buffers, handles.
local core = require "ioq.core"

local ioq = {
  version = core.version,
  errno = core.errno,
  queue = core.queue,
  buffer = core.buffer,
  backends = core.backends,
  now = core.now,
}

return ioq
