--- ioq: completion-based asynchronous I/O for Lua 5.4.
--
-- The C core (ioq.core) is mechanism: queues, buffers, handles, files.
-- The Lua modules under lua/ioq/ add policy on top: a loop that runs
-- coroutines ("tasks") and resumes each one when the handle it awaits
-- resolves, with timeouts and cancellation. This file is only the public
-- table; where each part lives, from the bottom up:
--
--   ioq/args.lua       argument checks and their error messages
--   ioq/heap.lua       the min-heap behind the loop's timers
--   ioq/outputs.lua    failed outputs nobody awaited, for the run's report
--   ioq/loop.lua       the loop's state and hot path: tasks, waiters,
--                      timers, h:await / h:wait / h:result, poll, drive
--   ioq/run.lua        ioq.run: options, the queue guard, the end of a run
--   ioq/task.lua       task:join / done / cancel, h:next, first, gather
--   ioq/objects.lua    file and socket methods on the loop's queue,
--                      ioq.open, ioq.sleep
--   ioq/multishot.lua  s:accept_multi, s:recv_multi (emulated where the
--                      backend has no multishot op), h:each
--   ioq/fs.lua         ioq.fs: stat, rename, readfile, writefile...; the
--                      file methods f:stat, f:truncate, f:readv...
--   ioq/signals.lua    ioq.signals
--   ioq/stream.lua     ioq.stream, buffered reads and full writes
--   ioq/process.lua    ioq.process: child processes, p:wait / p:await
--
-- Touches nothing itself: the modules it requires add their methods to
-- the classes of ioq.core. ioq.loop comes first, as it takes the C methods
-- it calls before anything puts Lua ones in front of them.
local core = require "ioq.core"
local loop = require "ioq.loop"
local run = require "ioq.run"
local task = require "ioq.task"
local objects = require "ioq.objects"
require "ioq.multishot"
local signals = require "ioq.signals"
local fs = require "ioq.fs"
local process = require "ioq.process"

return {
  -- the core
  version = core.version,        -- this ioq's version, a string
  errno = core.errno,            -- errno numbers by name, and names by number
  backends = core.backends,      -- ioq.backends(): the backends that work here, best first
  now = core.now,                -- ioq.now(): a monotonic clock, in seconds
  queue = core.queue,            -- ioq.queue([opts]): a new queue
  buffer = core.buffer,          -- ioq.buffer(size or string): a buffer
  socket = core.socket,          -- ioq.socket(kind): a non-blocking socket ("tcp", "udp", "unix"...)
  socketpair = core.socketpair,  -- ioq.socketpair([kind]): two connected sockets

  -- the loop
  run = run,                     -- ioq.run([opts,] fn, ...): runs fn as a task until every task ends
  spawn = loop.spawn,            -- ioq.spawn(fn, ...): a new task in the running loop
  current = loop.queue,          -- ioq.current(): the running loop's queue, or nil
  sleep = objects.sleep,         -- ioq.sleep(seconds): suspends the task (blocks outside a loop)
  first = task.first,            -- ioq.first(...): the first task or handle to end, and its results
  gather = task.gather,          -- ioq.gather(...): every task's or handle's results, in order

  -- files, signals, streams
  open = objects.open,           -- ioq.open(path [, mode [, perm]]): an ioq.file
  signals = signals,             -- ioq.signals(name, ...): signals delivered through the queue
  fs = fs,                       -- ioq.fs.stat(path), ioq.fs.dir(path)...: the file system
  resolve = objects.resolve,     -- ioq.resolve(host [, port [, opts]]): a host's addresses
  process = process,             -- ioq.process{ prog, args..., stdout = "pipe" ... }: a child process
  -- ioq.stream(obj [, opts]): a buffered stream over a socket or file
  stream = function(obj, opts) return require("ioq.stream").new(obj, opts) end,
}
