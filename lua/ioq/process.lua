--- ioq.process: child processes. ioq.process(spec) starts a program (the
-- C core's spawn: posix_spawn on POSIX systems, CreateProcessW on
-- Windows) and returns an ioq.process object; its pipes are ioq sockets
-- (ioq files on Windows: named pipes) that q:read, q:write and ioq.stream
-- take like any other, and its end is one more completion: p:wait() is a
-- handle (a poll of the child's pidfd, a wait for its process handle on
-- Windows), p:await([timeout]) waits for it in the way that fits (a task
-- yields, elsewhere it blocks).
--
-- Holds no state. It adds wait and await to the ioq.process class (the C
-- class's method table); it requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local getmetatable, pcall, type = getmetatable, pcall, type
local argerror, c_call = args.argerror, args.c_call
local loop_queue, blocking_queue, wait_for =
  loop.queue, loop.blocking_queue, loop.wait_for

local process_methods = core.classes.process
local q_wait_process = core.classes.queue.wait_process
local q_submit = core.classes.queue.submit

local function check_process(p, name)
  local mt = type(p) == "userdata" and getmetatable(p)
  if not (mt and mt.__name == "ioq.process") then
    argerror(0, name, "ioq.process expected, got " .. type(p), 3)
  end
end

--- p:wait(): a handle that resolves, once the child has ended, to its exit
-- status (128 + the signal's number when a signal ended it) and the
-- signal's name or nil. On the running loop's queue, or outside a loop on
-- a private one. Canceling it, or its timing out, leaves the child alone.
function process_methods.wait(p)
  check_process(p, "wait")
  local q = loop_queue()
  local outside = not q
  if outside then q = blocking_queue() end
  local ok, h = pcall(q_wait_process, q, p)
  if not ok then return c_call("wait", 1, ok, h) end
  if outside then q_submit(q) end
  return h
end

--- p:await([timeout]): p:wait():await(timeout): the exit status and
-- signal name, or fail, "wait: timed out", ETIMEDOUT (the child runs on).
function process_methods.await(p, timeout)
  check_process(p, "await")
  local h, msg, err = process_methods.wait(p)
  if not h then return nil, msg, err end
  return wait_for("await", h, timeout)
end

--- ioq.process{ prog, args..., env =, cwd =, stdin =, stdout =, stderr = }
-- (see README): the started process, or fail, "spawn: ...", errno.
return function(spec)
  if type(spec) ~= "table" then
    argerror(1, "process", "table expected, got " .. type(spec))
  end
  return c_call("process", 0, pcall(core.spawn, spec))
end
