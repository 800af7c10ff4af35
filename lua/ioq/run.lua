--- ioq.run: one run of the loop, from its options to its end. It checks
-- the options, guards the queue against a q:wait that would steal the
-- loop's wake-ups, drives the tasks (lua/ioq/loop.lua), then settles what
-- is left pending and reports the failures nobody looked at.
--
-- Holds no state of its own (the guard's set of driven queues lives in the
-- queue metatables, see loop_queues). It wraps the wait method of each
-- backend's queue class; it requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local error, getmetatable, ipairs, pcall, rawget, setmetatable, tostring, type =
  error, getmetatable, ipairs, pcall, rawget, setmetatable, tostring, type
local unpack = table.unpack
local now = core.now
local argerror, c_call, is_queue = args.argerror, args.c_call, args.is_queue
local dispatch = loop.dispatch

local queue_methods = core.classes.queue
local q_pending, q_submit = queue_methods.pending, queue_methods.submit

-- How long, at the end of a run, output ops that nobody awaited get to
-- finish before they are cancelled (ioq.run's opts.linger).
local LINGER = 5

--- Once every task has ended, what is still pending was started and never
-- awaited. Inputs (reads, receives, accepts, sleeps...) have nobody left
-- to take what they bring: they are cancelled. Outputs (writes, sends,
-- fsyncs, shutdowns) are what the script wanted done, the last words of a
-- log or a protocol: they get `linger` seconds to finish, then they are
-- cancelled too, and those that failed are noted for the report.
local function settle(q, q_wait, linger)
  if q_pending(q) == 0 then return end
  q:cancel_all("input")
  local deadline = now() + linger
  local got, cancelled = {}, false
  while q_pending(q) > 0 do
    local wait
    if not cancelled then
      wait = deadline - now()
      if wait <= 0 then
        q:cancel_all()
        cancelled, wait = "cut", nil
      end
    end
    local n, msg = q_wait(q, wait, got)
    if not n then error("ioq.run: " .. msg, 0) end
    for i = 1, n do
      local h = got[i]
      got[i] = nil
      dispatch(h, cancelled or true)
    end
  end
end

local function report(task)
  io.stderr:write("ioq: a task failed and nobody joined it: ",
                  tostring(task.error), "\n")
end

--- Reports on stderr the outputs nobody awaited that failed; returns the
-- first one's message, or nil.
local function report_lost(records, more)
  local first
  for _, r in ipairs(records) do
    if not r.claimed then
      io.stderr:write("ioq: an op nobody awaited failed: ", r.msg, "\n")
      first = first or r.msg
    end
  end
  if more > 0 then
    io.stderr:write("ioq: and ", more, " more such ops failed\n")
  end
  return first
end

--- q:wait on a queue that a loop drives is refused: the loop would lose
-- the wake-ups such a wait takes. Queue methods live in one table per
-- backend's class (the __index of its metatable), shared by every queue of
-- that backend, so the guard goes in front of the C q:wait there, once,
-- with the set of queues loops drive beside it in the metatable (not in
-- this module's upvalues: a second copy of this module, loaded again by a
-- test runner, shares them), and the C q:wait itself, which the loop
-- calls. Returns that set and that function.
local function loop_queues(q)
  local mt = getmetatable(q)
  local loops = rawget(mt, "__ioq_loops")
  if loops then return loops, rawget(mt, "__ioq_wait") end
  loops = setmetatable({}, { __mode = "k" })
  local methods = mt.__index
  local c_wait = methods.wait
  methods.wait = function(self, timeout, into_)
    if loops[self] then
      error("wait: a running loop drives this queue; await its handles " ..
            "instead (h:await(), ioq.sleep(), task:join())", 2)
    end
    return c_call("wait", 1, pcall(c_wait, self, timeout, into_))
  end
  local c_close = methods.close
  methods.close = function(self)
    if loops[self] then
      error("close: a running loop drives this queue; it is closed when " ..
            "ioq.run ends (or pass your own with opts.queue)", 2)
    end
    return c_close(self)
  end
  mt.__ioq_wait = c_wait
  mt.__ioq_loops = loops
  return loops, c_wait
end

--- The body of ioq.run, `fn` being its argument number `fn_arg`. Called in
-- a tail call: level 2 is ioq.run's caller.
local function run(opts, fn_arg, fn, ...)
  if loop.queue() then error("ioq.run: a loop is already running (nested ioq.run)", 2) end
  if type(fn) ~= "function" then
    argerror(fn_arg, "run", "function expected, got " .. type(fn))
  end
  local errors = opts.errors or "raise"
  if errors ~= "raise" and errors ~= "report" then
    argerror(1, "run", "errors must be \"raise\" or \"report\"")
  end
  local linger = opts.linger or LINGER
  if not (type(linger) == "number" and linger >= 0) then
    argerror(1, "run", "linger must be a non-negative number of seconds")
  end
  local q = opts.queue
  if q ~= nil then
    if not is_queue(q) then
      argerror(1, "run", "queue must be an ioq.queue, got " .. type(q))
    end
    -- Submitting allocates nothing on an open queue of this process.
    local ok, e = pcall(q_submit, q)
    if not ok then argerror(1, "run", "queue: " .. tostring(e):gsub("^.-%((.*)%)$", "%1")) end
  end
  q = q or core.queue()
  local loops, q_wait = loop_queues(q)
  loops[q] = true
  local main, failures = loop.start(q, fn, ...)
  local ok, err = pcall(loop.drive)
  -- Also after a deadlock or a failed main task: the outputs started so
  -- far are still wanted.
  local settled, serr = pcall(settle, q, q_wait, linger)
  loops[q] = nil
  local records, more = loop.stop()
  if not opts.queue then q:close() end
  if not ok then error(err, 0) end
  if not settled then error(serr, 0) end
  local unjoined
  for _, t in ipairs(failures) do
    if t ~= main and not t.joined then
      report(t)
      unjoined = unjoined or t
    end
  end
  local lost_msg = report_lost(records, more)
  if main.status == "failed" then error(main.error, 0) end
  if errors == "raise" then
    if unjoined then error(unjoined.error, 0) end
    if lost_msg then error("ioq.run: an op nobody awaited failed: " .. lost_msg, 0) end
  end
  return unpack(main.results, 1, main.results.n)
end

--- ioq.run([opts,] fn, ...): see lua/ioq.lua.
return function(opts, ...)
  if type(opts) == "table" then return run(opts, 2, ...) end
  return run({}, 1, opts, ...)
end
