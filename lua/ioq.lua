--- ioq: completion-based asynchronous I/O for Lua 5.4.
--
-- The C core (ioq.core) is mechanism: queues, buffers, handles, files.
-- This module adds policy on top, in Lua: a loop that runs coroutines
-- ("tasks") and resumes each one when the handle it awaits resolves, with
-- timeouts and cancellation.
local core = require "ioq.core"

local coroutine, error, select, setmetatable, tostring, type =
  coroutine, error, select, setmetatable, tostring, type
local pack, unpack = table.pack, table.unpack
local now = core.now
local E = core.errno

local ioq = {
  version = core.version,
  errno = core.errno,
  queue = core.queue,
  buffer = core.buffer,
  backends = core.backends,
  now = now,
}

local handle_methods = core.classes.handle
local file_methods = core.classes.file

-- The value tasks yield to the loop when they wait; any other yield from a
-- task just lets the other tasks run first.
local WAIT = setmetatable({}, { __name = "ioq.wait" })

local running = nil       -- the running loop, if any
local sync_queue = nil    -- for blocking calls made outside any loop

local function fail(msg, err)
  return nil, msg, err
end

--- The queue for an op started outside a loop: a private one, made on first
-- use, driven by h:wait().
local function blocking_queue()
  if not sync_queue then sync_queue = core.queue { entries = 64 } end
  return sync_queue
end

local function current_queue()
  return running and running.q or blocking_queue()
end

---------------------------------------------------------------- timers
-- A binary min-heap of timers ordered by deadline. Each timer is a table
-- { at = deadline, fn = callback, pos = index } so it can be removed.

local function heap_swap(h, i, j)
  h[i], h[j] = h[j], h[i]
  h[i].pos, h[j].pos = i, j
end

local function heap_up(h, i)
  while i > 1 do
    local parent = i // 2
    if h[parent].at <= h[i].at then break end
    heap_swap(h, i, parent)
    i = parent
  end
end

local function heap_down(h, i)
  local n = #h
  while true do
    local l, small = 2 * i, i
    if l <= n and h[l].at < h[small].at then small = l end
    if l + 1 <= n and h[l + 1].at < h[small].at then small = l + 1 end
    if small == i then return end
    heap_swap(h, i, small)
    i = small
  end
end

local function add_timer(loop, seconds, fn)
  local h = loop.timers
  local t = { at = now() + seconds, fn = fn, pos = #h + 1 }
  h[t.pos] = t
  heap_up(h, t.pos)
  return t
end

local function cancel_timer(loop, t)
  local h = loop.timers
  local i = t.pos
  if not i then return end
  t.pos = nil
  local last = #h
  if i ~= last then
    h[i] = h[last]
    h[i].pos = i
    h[last] = nil
    heap_down(h, i)
    heap_up(h, i)
  else
    h[last] = nil
  end
end

local function fire_timers(loop)
  local h = loop.timers
  local t = now()
  while h[1] and h[1].at <= t do
    local first = h[1]
    cancel_timer(loop, first)
    first.fn()
  end
end

---------------------------------------------------------------- tasks

local Task = {}
Task.__index = Task
Task.__name = "ioq.task"

local function make_ready(loop, task)
  local r = loop.ready
  r.tail = r.tail + 1
  r[r.tail] = task
end

--- Wakes whatever waits for `task` (tasks in join, or first/gather).
local function notify_joiners(task)
  local joiners = task.joiners
  task.joiners = nil
  if joiners then
    for i = 1, #joiners do joiners[i](task) end
  end
end

local function finish(loop, task, ok, ...)
  task.status = ok and "done" or "failed"
  loop.tasks[task.co] = nil
  loop.alive = loop.alive - 1
  if ok then
    task.results = pack(...)
  else
    task.error = ...
    loop.failed[#loop.failed + 1] = task
  end
  notify_joiners(task)
end

local function traceback_handler(err)
  if type(err) == "string" then
    return debug.traceback(err, 2)
  end
  return err
end

-- What a resume of a task's coroutine came back with.
local function resumed(loop, task, ok, a, ...)
  if not ok then  -- only if the body could not even start
    finish(loop, task, false, traceback_handler(a))
  elseif coroutine.status(task.co) == "dead" then
    finish(loop, task, a, ...)  -- the body ran in xpcall: a is its status
  elseif a ~= WAIT then  -- a plain coroutine.yield(): run again later
    task.status = "ready"
    make_ready(loop, task)
  end
end

local function step(loop, task)
  resumed(loop, task, coroutine.resume(task.co))
end

local function new_task(loop, fn, ...)
  local task = setmetatable({ status = "ready", loop = loop }, Task)
  local args = pack(...)
  task.co = coroutine.create(function()
    return xpcall(fn, traceback_handler, unpack(args, 1, args.n))
  end)
  loop.tasks[task.co] = task
  loop.alive = loop.alive + 1
  make_ready(loop, task)
  return task
end

local function current_task()
  if not running then return nil end
  local co = coroutine.running()
  return running.tasks[co]
end

--- Suspends the running task until something calls wake(task, value);
-- returns that value.
local function suspend(task)
  task.status = "waiting"
  coroutine.yield(WAIT)
  task.status = "running"
  local v = task.wake_value
  task.wake_value = nil
  return v
end

local function wake(task, value)
  if task.status == "waiting" then
    task.status = "ready"
    task.wake_value = value
    make_ready(task.loop, task)
  end
end

---------------------------------------------------------------- awaiting

--- h:await([timeout]): inside a task, yields until the handle resolves;
-- elsewhere, the same as h:wait([timeout]).
function handle_methods.await(h, timeout)
  local task = current_task()
  if not task or h.queue ~= task.loop.q then
    return h:wait(timeout)  -- no loop, or a queue the loop does not drive
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("bad argument #1 to 'await' (timeout must be a non-negative number)", 2)
  end
  if h:done() then
    if task.cancel_pending then
      task.cancel_pending = nil
      return fail("canceled", E.ECANCELED)
    end
    return h:result()
  end
  local loop = task.loop
  local timer, timed_out
  if task.cancel_pending then
    task.cancel_pending = nil
    task.canceled = true
    h:cancel()
  elseif timeout then
    -- An op still in user space gets a timeout the kernel enforces;
    -- one already in flight gets a timer that cancels it.
    if timeout == 0 or not h:timeout(timeout) then
      timer = add_timer(loop, timeout, function()
        timed_out = true
        h:cancel()
      end)
    end
  end
  loop.waiters[h] = task
  task.waiting_on = h
  suspend(task)
  task.waiting_on = nil
  if timer then cancel_timer(loop, timer) end
  if task.canceled then
    task.canceled = nil
    return fail("canceled", E.ECANCELED)
  end
  local v, msg, err = h:result()
  if timed_out and err == E.ECANCELED then
    return fail("timed out", E.ETIMEDOUT)
  end
  return v, msg, err
end

--- Waits, inside a task, until `task` ends or `timeout` passes.
local function wait_task(self, task, timeout)
  local loop = self.loop
  if task.status == "done" or task.status == "failed" then return true end
  local timer
  local function on_end()
    if timer then cancel_timer(loop, timer) end
    wake(self, true)
  end
  task.joiners = task.joiners or {}
  task.joiners[#task.joiners + 1] = on_end
  if timeout then
    timer = add_timer(loop, timeout, function() wake(self, false) end)
  end
  self.waiting_task = task
  local ended = suspend(self)
  self.waiting_task = nil
  if not ended then
    local j = task.joiners
    for i = #(j or {}), 1, -1 do
      if j[i] == on_end then table.remove(j, i) end
    end
  end
  return ended
end

--- task:join([timeout]): the task's results; re-raises its error (with the
-- task's traceback); or fail, "timed out", ETIMEDOUT.
function Task:join(timeout)
  if self.status ~= "done" and self.status ~= "failed" then
    local me = current_task()
    if not me then
      error("join: the task has not ended and no loop is running here", 2)
    end
    if me == self then error("join: a task cannot join itself", 2) end
    if me.cancel_pending then
      me.cancel_pending = nil
      return fail("canceled", E.ECANCELED)
    end
    local ended = wait_task(me, self, timeout)
    if me.canceled then
      me.canceled = nil
      return fail("canceled", E.ECANCELED)
    end
    if not ended then return fail("timed out", E.ETIMEDOUT) end
  end
  self.joined = true
  if self.status == "failed" then error(self.error, 0) end
  return unpack(self.results, 1, self.results.n)
end

function Task:done()
  return self.status == "done" or self.status == "failed"
end

--- task:cancel(): the task's current (or next) await returns
-- fail, "canceled", ECANCELED, after its op has left the kernel. A task
-- that has not started yet never runs. Returns true if the task was live.
function Task:cancel()
  local loop = self.loop
  if self:done() then return false end
  if self.status == "ready" and not self.started then
    -- It never ran: end it now, with the result a canceled await gives.
    coroutine.close(self.co)
    finish(loop, self, true, fail("canceled", E.ECANCELED))
    return true
  end
  if self.status == "waiting" then
    self.canceled = true
    local h = self.waiting_on
    if h then
      h:cancel()  -- the task resumes when the kernel lets go of the op
    else
      wake(self, false)
    end
  else
    self.cancel_pending = true
  end
  return true
end

function Task:__tostring()
  return string.format("ioq.task (%s): %s", self.status, tostring(self.co):match("0x%x+") or "")
end

---------------------------------------------------------------- the loop

local function loop_new(q)
  return {
    q = q,
    tasks = {},            -- coroutine -> task
    alive = 0,
    ready = { head = 1, tail = 0 },
    waiters = {},          -- handle -> task awaiting it
    timers = {},
    failed = {},
    into = {},
  }
end

local function run_ready(loop)
  local r = loop.ready
  -- Tasks made ready while this runs wait for the next round, so a task
  -- that keeps yielding cannot starve the queue.
  local last = r.tail
  while r.head <= last do
    local task = r[r.head]
    r[r.head] = nil
    r.head = r.head + 1
    if task.status == "ready" then
      task.status = "running"
      task.started = true
      step(loop, task)
    end
  end
  if r.head > r.tail then r.head, r.tail = 1, 0 end
end

local function poll(loop)
  local q, into = loop.q, loop.into
  local timeout
  if loop.ready.head <= loop.ready.tail then
    timeout = 0
  elseif loop.timers[1] then
    timeout = loop.timers[1].at - now()
    if timeout < 0 then timeout = 0 end
  end
  if q:pending() == 0 then
    if timeout == nil then return false end
    if timeout > 0 then q:sleep(timeout):wait() end
  else
    local n, msg = q:wait(timeout, into)
    if not n then error("ioq.run: " .. msg, 0) end
    local waiters = loop.waiters
    for i = 1, n do
      local h = into[i]
      into[i] = nil
      local w = waiters[h]
      if w then
        waiters[h] = nil
        if type(w) == "function" then w() else wake(w) end
      end
    end
  end
  fire_timers(loop)
  return true
end

local function report(task)
  io.stderr:write("ioq: a task failed and nobody joined it: ",
                  tostring(task.error), "\n")
end

--- ioq.run([opts,] fn, ...): runs fn as the main task and drives the queue
-- until every task has ended; returns fn's results. opts: { queue = q,
-- errors = "raise" | "report" } (what to do with failed unjoined tasks).
function ioq.run(opts, ...)
  local fn
  if type(opts) == "table" then
    fn = ...
    return ioq._run(opts, fn, select(2, ...))
  end
  return ioq._run({}, opts, ...)
end

function ioq._run(opts, fn, ...)
  if running then error("ioq.run: a loop is already running (nested ioq.run)", 3) end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 3)
  end
  local errors = opts.errors or "raise"
  if errors ~= "raise" and errors ~= "report" then
    error("bad argument #1 to 'run' (errors must be \"raise\" or \"report\")", 3)
  end
  local q = opts.queue or core.queue()
  local loop = loop_new(q)
  running = loop
  local ok, err = pcall(function(...)
    local main = new_task(loop, fn, ...)
    loop.main = main
    while loop.alive > 0 do
      run_ready(loop)
      if loop.alive == 0 then break end
      if main:done() and main.status == "failed" and not loop.cancelling then
        -- The main task failed: cancel the others, then let them end.
        loop.cancelling = true
        for _, t in pairs(loop.tasks) do t:cancel() end
      elseif not poll(loop) then
        local n = loop.alive
        for _, t in pairs(loop.tasks) do coroutine.close(t.co) end
        error(string.format("ioq.run: %d task(s) wait for each other and nothing else" ..
          " can wake them (deadlock)", n), 0)
      end
    end
    return main
  end, ...)
  running = nil
  if not opts.queue then q:close() end
  if not ok then error(err, 0) end
  local main = err
  local unjoined
  for _, t in ipairs(loop.failed) do
    if t ~= main and not t.joined then
      report(t)
      unjoined = unjoined or t
    end
  end
  if main.status == "failed" then error(main.error, 0) end
  if unjoined and errors == "raise" then error(unjoined.error, 0) end
  return unpack(main.results, 1, main.results.n)
end

--- ioq.spawn(fn, ...): a new task in the running loop.
function ioq.spawn(fn, ...)
  if not running then error("ioq.spawn: no loop is running (call it inside ioq.run)", 2) end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  return new_task(running, fn, ...)
end

--- ioq.current(): the running loop's queue, or nil outside a loop.
function ioq.current()
  return running and running.q or nil
end

--- ioq.sleep(seconds): suspends the task (or blocks, outside a loop).
function ioq.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error("bad argument #1 to 'sleep' (seconds must be a non-negative number)", 2)
  end
  return current_queue():sleep(seconds):await()
end

--- ioq.open(path [, mode [, perm]]): an ioq.file, or fail, msg, errno.
function ioq.open(path, mode, perm)
  return current_queue():open(path, mode, perm):await()
end

--- Awaits a task (join) or a handle.
local function await_item(item, timeout)
  if getmetatable(item) == Task then return item:join(timeout) end
  return item:await(timeout)
end

--- ioq.gather(...): awaits every task or handle; returns, in order, one
-- table.pack of results per item. A failed task's error is raised.
function ioq.gather(...)
  local out = pack(...)
  for i = 1, out.n do out[i] = pack(await_item(out[i])) end
  return unpack(out, 1, out.n)
end

--- ioq.first(...): waits, inside a task, until one of the tasks or handles
-- ends; returns its position and its results. The others go on.
function ioq.first(...)
  local items = pack(...)
  for i = 1, items.n do
    if items[i]:done() then return i, await_item(items[i]) end
  end
  local me = current_task()
  if not me then error("ioq.first: no loop is running (call it inside a task)", 2) end
  local loop = me.loop
  local winner
  local hooks = {}
  for i = 1, items.n do
    local it = items[i]
    hooks[i] = function()
      if not winner then winner = i; wake(me) end
    end
    if getmetatable(it) == Task then
      it.joiners = it.joiners or {}
      it.joiners[#it.joiners + 1] = hooks[i]
    else
      if it.queue ~= loop.q then error("ioq.first: a handle of another queue", 2) end
      if loop.waiters[it] then error("ioq.first: a handle that a task already awaits", 2) end
      loop.waiters[it] = hooks[i]
    end
  end
  suspend(me)
  for i = 1, items.n do  -- unhook from the items that did not win
    local it = items[i]
    if getmetatable(it) == Task then
      local j = it.joiners or {}
      for k = #j, 1, -1 do
        if j[k] == hooks[i] then table.remove(j, k) end
      end
    elseif loop.waiters[it] == hooks[i] then
      loop.waiters[it] = nil
    end
  end
  if me.canceled then
    me.canceled = nil
    return fail("canceled", E.ECANCELED)
  end
  return winner, await_item(items[winner])
end

---------------------------------------------------------------- files

--- f:read(buf [, offset [, length]]), f:write(data [, offset [, length]]),
-- f:fsync(): the op on the running loop's queue (or, outside a loop, on a
-- private one); each returns a handle to await.
function file_methods.read(f, buf, offset, length)
  return current_queue():read(f, buf, offset, length)
end

function file_methods.write(f, data, offset, length)
  return current_queue():write(f, data, offset, length)
end

function file_methods.fsync(f)
  return current_queue():fsync(f)
end

ioq.Task = Task
return ioq
