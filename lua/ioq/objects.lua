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

local ipairs, pairs, pcall, type = ipairs, pairs, pcall, type
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
-- private one outside a loop); each returns a handle to await.
for _, name in ipairs { "accept", "recv", "send", "recvfrom" } do
  local fn = queue_methods[name]
  socket_methods[name] = function(s, a, b, c)
    return start(name, fn, s, a, b, c)
  end
end

-- The lookup hints for each kind of socket that takes a host name.
local LOOKUP = { connect = {}, sendto = {} }
for op, hints in pairs(LOOKUP) do
  hints.tcp = { family = "inet", socktype = "stream", op = op }
  hints.tcp6 = { family = "inet6", socktype = "stream", op = op }
  hints.udp = { family = "inet", socktype = "dgram", op = op }
  hints.udp6 = { family = "inet6", socktype = "dgram", op = op }
end
local s_kind = socket_methods.kind

--- The address to hand the C op for `host` on socket s: the host itself
-- when the C side takes it without a lookup (a Unix path, a numeric
-- address, "localhost", "*"), else the first address q:resolve gives,
-- awaited here (the task yields; outside a loop this blocks). On a failed
-- lookup, nil and the lookup's handle, which holds the failure in the
-- op's name ("connect: cannot resolve 'x': ...", as the C op says it).
local function lookup(op, s, host)
  -- Not a socket: no lookup, and the op's own check names the mistake.
  local ok, kind = pcall(s_kind, s)
  local hints = ok and type(host) == "string" and LOOKUP[op][kind]
  if not hints or host == "" or host == "*" or host == "localhost"
     or host:find(":", 1, true) or host:find("^[%d.]+$") or host:find("%z") then
    return host
  end
  local q = current_queue()
  local h = queue_methods.resolve(q, host, nil, hints)
  local list = wait_for(op, h)
  if not list or not list[1] then return nil, h end
  return list[1].host
end

--- s:connect(host, port) and s:sendto(data, host, port): a host name is
-- looked up through the queue first (q:resolve, which never blocks the
-- loop), then the op starts with its first address; the returned handle
-- is the op's, or, when the lookup failed, the lookup's (nil, "connect:
-- cannot resolve ...", ENOENT...).
local q_connect, q_sendto = queue_methods.connect, queue_methods.sendto
function socket_methods.connect(s, host, port)
  local addr, failed = lookup("connect", s, host)
  if not addr then return failed end
  return start("connect", q_connect, s, addr, port)
end

function socket_methods.sendto(s, data, host, port)
  local addr, failed = lookup("sendto", s, host)
  if not addr then return failed end
  return start("sendto", q_sendto, s, data, addr, port)
end

---------------------------------------------------------------- open, sleep

local M = {}

--- ioq.sleep(seconds): suspends the task (or blocks, outside a loop).
function M.sleep(seconds)
  if not (type(seconds) == "number" and seconds >= 0) then
    argerror(1, "sleep", "seconds must be a non-negative number")
  end
  return wait_for("sleep", current_queue():sleep(seconds))
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
