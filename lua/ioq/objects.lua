--- ioq.objects: files and sockets as objects whose methods start their op
-- on the queue that fits (the running loop's, or outside a loop a private
-- one that drives itself), plus ioq.open and ioq.sleep, which start an op
-- there and wait for it.
--
-- Holds no state. It adds read, write and fsync to ioq.file and accept,
-- connect, recv, send, recvfrom and sendto to ioq.socket (the C classes'
-- method tables), and ioq.resolve; it requires ioq.core, ioq.args and
-- ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local ipairs, pcall, type = ipairs, pcall, type
local argerror, c_call = args.argerror, args.c_call
local loop_queue, blocking_queue, current_queue, wait_for =
  loop.queue, loop.blocking_queue, loop.current_queue, loop.wait_for

local queue_methods = core.classes.queue
local file_methods = core.classes.file
local socket_methods = core.classes.socket
local q_submit = queue_methods.submit

--- Starts op `name` on the running loop's queue (its task awaits it), or,
-- outside a loop, on a private queue, where it is handed to the kernel at
-- once: an op nobody waits for (a last write before exit) still happens.
-- Argument errors name the caller's method and arguments.
local function start(name, fn, obj, a, b, c)
  local q = loop_queue()
  local outside = not q
  if outside then q = blocking_queue() end
  local ok, h, msg, err = pcall(fn, q, obj, a, b, c)
  if ok then
    if outside and h then q_submit(q) end
    return h, msg, err
  end
  return c_call(name, 2, ok, h)
end

---------------------------------------------------------------- files

local q_read, q_write, q_fsync = queue_methods.read, queue_methods.write,
  queue_methods.fsync

--- f:read(buf [, offset [, length]]), f:write(data [, offset [, length]]),
-- f:fsync(): the op on the running loop's queue (or, outside a loop, on a
-- private one); each returns a handle to await.
function file_methods.read(f, buf, offset, length)
  return start("read", q_read, f, buf, offset, length)
end

function file_methods.write(f, data, offset, length)
  return start("write", q_write, f, data, offset, length)
end

function file_methods.fsync(f)
  return start("fsync", q_fsync, f)
end

---------------------------------------------------------------- sockets

--- s:accept(), s:connect(host, port), s:recv(buf [, length]),
-- s:send(data [, length]), s:recvfrom(buf [, length]),
-- s:sendto(data, host, port): the op on the running loop's queue (or a
-- private one outside a loop); each returns a handle to await. A host
-- name is looked up by the op itself, on a worker thread (connect tries
-- each address in turn), so neither blocks the loop.
for _, name in ipairs { "accept", "connect", "recv", "send", "recvfrom", "sendto" } do
  local fn = queue_methods[name]
  socket_methods[name] = function(s, a, b, c)
    return start(name, fn, s, a, b, c)
  end
end

---------------------------------------------------------------- open, sleep

local M = {}

-- Shared with the modules that add more methods to the same classes
-- (ioq.fs).
M.start = start

--- ioq.sleep(seconds): suspends the task (or blocks, outside a loop).
function M.sleep(seconds)
  if not (type(seconds) == "number" and seconds >= 0) then
    argerror(1, "sleep", "seconds must be a non-negative number")
  end
  -- h:await, whose common case (a task of the running loop) is in C.
  return current_queue():sleep(seconds):await()
end

--- ioq.open(path [, mode [, perm]]): an ioq.file, or fail, msg, errno.
function M.open(path, mode, perm)
  local q = current_queue()
  local ok, h = pcall(queue_methods.open, q, path, mode, perm)
  if not ok then return c_call("open", 1, ok, h) end
  return wait_for("open", h)
end

--- ioq.resolve(host [, port [, opts]]): the addresses of a host name, a
-- list of {host =, port =, family =, socktype =}, or fail, msg, errno
-- (ENOENT: no such name; EAGAIN: try again later...). opts: family
-- ("inet", "inet6", "any"), socktype ("stream", "dgram", "any"), timeout
-- (seconds). In a task the task waits and the others run; outside a loop
-- it blocks.
function M.resolve(host, port, opts)
  local q = current_queue()
  local ok, h = pcall(queue_methods.resolve, q, host, port, opts)
  if not ok then return c_call("resolve", 1, ok, h) end
  return wait_for("resolve", h, opts and opts.timeout)
end

return M
