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
local resume, yield, running_co = coroutine.resume, coroutine.yield, coroutine.running
local now = core.now
local E = core.errno

local ioq = {
  version = core.version,
  errno = core.errno,
  queue = core.queue,
  buffer = core.buffer,
  backends = core.backends,
  now = now,
  socket = core.socket,
  socketpair = core.socketpair,
}

local handle_methods = core.classes.handle
local file_methods = core.classes.file
local queue_methods = core.classes.queue

-- The loop calls these directly: a handle's __index is a C function (its
-- fields live in the userdata), so h:done() would cost two C calls.
local h_done, h_result, h_cancel, h_timeout, h_take = handle_methods.done,
  handle_methods.result, handle_methods.cancel, handle_methods.timeout,
  handle_methods.take
local q_wait, q_pending = queue_methods.wait, queue_methods.pending
local queue_of = core.queue_of

-- What a task's coroutine hands the loop: WAIT when it waits for a wake-up,
-- DONE (then its status and values) when its body has returned. Any other
-- yield just lets the other tasks run first.
local WAIT = setmetatable({}, { __name = "ioq.wait" })
local DONE = setmetatable({}, { __name = "ioq.done" })

local function fail(msg, err)
  return nil, msg, err
end

---------------------------------------------------------------- loop state
-- At most one loop runs per Lua state (ioq.run refuses to nest), so the
-- running loop's state lives in these upvalues: the cheapest place Lua has.

local running = false      -- true while ioq.run runs
local loop_q = nil         -- its queue
local tasks = {}           -- coroutine -> live task
local alive = 0            -- live tasks
local ready, rhead, rtail = {}, 1, 0   -- FIFO of tasks to resume
local waiters = {}         -- handle -> the task (or function) awaiting it
local timers = {}          -- min-heap of { at =, fn =, pos = }: fn(t) fires
local failed = {}          -- tasks that ended with an error, in order
local into = {}            -- scratch table for q:wait
local main_task = nil

local sync_queue = nil     -- for blocking calls made outside any loop

--- The queue for an op started outside a loop: a private one, made on first
-- use, driven by h:wait().
local function blocking_queue()
  if not sync_queue then sync_queue = core.queue { entries = 64 } end
  return sync_queue
end

local function current_queue()
  return loop_q or blocking_queue()
end

---------------------------------------------------------------- timers

local function heap_swap(i, j)
  local h = timers
  h[i], h[j] = h[j], h[i]
  h[i].pos, h[j].pos = i, j
end

local function heap_up(i)
  local h = timers
  while i > 1 do
    local parent = i // 2
    if h[parent].at <= h[i].at then break end
    heap_swap(i, parent)
    i = parent
  end
end

local function heap_down(i)
  local h = timers
  local n = #h
  while true do
    local l, small = 2 * i, i
    if l <= n and h[l].at < h[small].at then small = l end
    if l + 1 <= n and h[l + 1].at < h[small].at then small = l + 1 end
    if small == i then return end
    heap_swap(i, small)
    i = small
  end
end

--- Arms timer record `t` (any table; fn(t) runs when it fires) to fire
-- after `seconds`. A record can be armed again once it fired or was
-- cancelled, so a hot path needs no new table per timer.
local function arm_timer(t, seconds, fn)
  t.at, t.fn, t.pos = now() + seconds, fn, #timers + 1
  timers[t.pos] = t
  heap_up(t.pos)
  return t
end

local function add_timer(seconds, fn)
  return arm_timer({}, seconds, fn)
end

local function cancel_timer(t)
  local h = timers
  local i = t.pos
  if not i then return end
  t.pos = nil
  local last = #h
  if i ~= last then
    h[i] = h[last]
    h[i].pos = i
    h[last] = nil
    heap_down(i)
    heap_up(i)
  else
    h[last] = nil
  end
end

local function fire_timers()
  local h = timers
  if not h[1] then return end
  local t = now()
  while h[1] and h[1].at <= t do
    local first = h[1]
    cancel_timer(first)
    first.fn(first)
  end
end

---------------------------------------------------------------- tasks

local Task = {}
Task.__index = Task
Task.__name = "ioq.task"

local function make_ready(task)
  task.status = "ready"
  rtail = rtail + 1
  ready[rtail] = task
end

local function ended(task)
  local s = task.status
  return s == "done" or s == "failed"
end

--- Calls whatever waits for `task` to end (joiners, ioq.first).
local function notify_joiners(task)
  local joiners = task.joiners
  task.joiners = nil
  if joiners then
    for i = 1, #joiners do joiners[i](task) end
  end
end

local function finish(task, ok, ...)
  tasks[task.co] = nil
  alive = alive - 1
  if ok then
    task.status = "done"
    task.results = pack(...)
  else
    task.status = "failed"
    task.error = ...
    failed[#failed + 1] = task
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
local function resumed(task, ok, a, ...)
  if a == WAIT then return end
  if not ok then  -- only if the body could not even start
    finish(task, false, traceback_handler(a))
  elseif a == DONE then
    finish(task, ...)  -- the xpcall status, then the values
  else  -- a plain coroutine.yield(): run again later
    make_ready(task)
  end
end

local function step(task)
  task.status = "running"
  local fn = task.fn
  if fn then  -- the first run: hand the body its function and arguments
    local args = task.args
    task.fn, task.args = nil, nil
    if args then
      resumed(task, resume(task.co, fn, unpack(args, 1, args.n)))
    else
      resumed(task, resume(task.co, fn))
    end
  else
    resumed(task, resume(task.co))
  end
end

-- Every task's coroutine runs this (one shared function: no closure per task).
local function task_body(fn, ...)
  return DONE, xpcall(fn, traceback_handler, ...)
end

local function new_task(fn, ...)
  local task = setmetatable({ fn = fn, co = coroutine.create(task_body) }, Task)
  if select("#", ...) > 0 then task.args = pack(...) end
  tasks[task.co] = task
  alive = alive + 1
  make_ready(task)
  return task
end

local function current_task()
  return running and tasks[running_co()] or nil
end

--- Suspends the running task until something calls wake(task, value);
-- returns that value.
local function suspend(task)
  task.status = "waiting"
  yield(WAIT)
  local v = task.wake_value
  task.wake_value = nil
  return v
end

local function wake(task, value)
  if task.status == "waiting" then
    task.wake_value = value
    make_ready(task)
  end
end

---------------------------------------------------------------- awaiting

-- Timeouts up to this long become a linked timeout in the kernel (on
-- io_uring), which then cancels the op itself, precisely. Longer ones are
-- mostly deadlines that never fire ("give up if the peer is silent for 30
-- s"), and for those arming and disarming a kernel timer on every op costs
-- more than the op (measured with bench/net/run.sh: 106k against 141k
-- requests/s for the HTTP example with a 30 s timeout); the loop's own
-- timer heap does it for a few hundred nanoseconds instead.
local LINKED_TIMEOUT_MAX = 1.0

-- What a task's await timer does when it fires: cancel the op it waits for.
local function await_timed_out(t)
  t.timed_out = true
  h_cancel(t.h)
end

--- h:await([timeout]): inside a task, yields until the handle resolves;
-- elsewhere, the same as h:wait([timeout]).
function handle_methods.await(h, timeout)
  local task = current_task()
  if not task or queue_of(h) ~= loop_q then
    return h:wait(timeout)  -- no loop, or a queue the loop does not drive
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("bad argument #1 to 'await' (timeout must be a non-negative number)", 2)
  end
  if h_done(h) then
    if task.cancel_pending then
      task.cancel_pending = nil
      return fail("canceled", E.ECANCELED)
    end
    return h_result(h)
  end
  local timer
  if task.cancel_pending then
    task.cancel_pending = nil
    task.canceled = true
    h_cancel(h)
  elseif timeout then
    -- A short timeout on an op still in user space: the kernel enforces
    -- it. Otherwise the task's timer record cancels the op when it fires.
    if timeout == 0 or timeout > LINKED_TIMEOUT_MAX or not h_timeout(h, timeout) then
      timer = task.timer
      if not timer then
        timer = {}
        task.timer = timer
      end
      timer.h, timer.timed_out = h, false
      arm_timer(timer, timeout, await_timed_out)
    end
  end
  waiters[h] = task
  task.waiting_on = h
  suspend(task)
  task.waiting_on = nil
  local timed_out = false
  if timer then
    cancel_timer(timer)
    timed_out, timer.h = timer.timed_out, nil
  end
  if task.canceled then
    task.canceled = nil
    return fail("canceled", E.ECANCELED)
  end
  local v, msg, err = h_result(h)
  if timed_out and err == E.ECANCELED then
    return fail("timed out", E.ETIMEDOUT)
  end
  return v, msg, err
end

--- h:next([timeout]) on a multishot handle (q:accept_multi, q:recv_multi):
-- the next socket or buffer view; in a task it suspends until one comes,
-- elsewhere it drives the queue. nil, "end of stream" when the peer has
-- closed; fail, msg, errno when the op has ended (ECANCELED after
-- h:cancel()) or the timeout passed (ETIMEDOUT; the op stays armed).
function handle_methods.next(h, timeout)
  local v, msg, err = h_take(h)
  if v ~= false then return v, msg, err end
  local task = current_task()
  local q = queue_of(h)
  local deadline = timeout and now() + timeout
  while true do
    if task and q == loop_q then
      local timer, timed_out
      if timeout then
        timer = add_timer(math.max(deadline - now(), 0), function()
          timed_out = true
          wake(task)
        end)
      end
      waiters[h] = task
      task.waiting_on = h
      suspend(task)
      task.waiting_on = nil
      if waiters[h] == task then waiters[h] = nil end
      if timer then cancel_timer(timer) end
      if task.canceled then
        task.canceled = nil
        return fail("canceled", E.ECANCELED)
      end
      v, msg, err = h_take(h)
      if v ~= false then return v, msg, err end
      if timed_out then return fail("timed out", E.ETIMEDOUT) end
    else
      local left = deadline and deadline - now()
      if left and left <= 0 then return fail("timed out", E.ETIMEDOUT) end
      q:wait(left)
      v, msg, err = h_take(h)
      if v ~= false then return v, msg, err end
    end
  end
end

--- for item in h:each() do ... end: every item of a multishot handle until
-- it ends (an error then is raised, end of stream and cancel are not).
function handle_methods.each(h)
  return function()
    local v, msg, err = h:next()
    if v then return v end
    if err and err ~= E.ECANCELED then error(msg, 2) end
    return nil
  end
end

local function remove_joiner(task, fn)
  local j = task.joiners
  if not j then return end
  for i = #j, 1, -1 do
    if j[i] == fn then table.remove(j, i) end
  end
end

--- Suspends task `me` until `task` ends (true) or `timeout` passes (false).
local function wait_task(me, task, timeout)
  local timer
  local function on_end()
    if timer then cancel_timer(timer) end
    wake(me, true)
  end
  task.joiners = task.joiners or {}
  task.joiners[#task.joiners + 1] = on_end
  if timeout then
    timer = add_timer(timeout, function() wake(me, false) end)
  end
  local done = suspend(me)
  if not done then
    if timer then cancel_timer(timer) end
    remove_joiner(task, on_end)
  end
  return done
end

--- task:join([timeout]): the task's results; re-raises its error (with the
-- task's traceback); or fail, "timed out", ETIMEDOUT.
function Task:join(timeout)
  if not ended(self) then
    local me = current_task()
    if not me then
      error("join: the task has not ended and no loop is running here", 2)
    end
    if me == self then error("join: a task cannot join itself", 2) end
    if me.cancel_pending then
      me.cancel_pending = nil
      return fail("canceled", E.ECANCELED)
    end
    local done = wait_task(me, self, timeout)
    if me.canceled then
      me.canceled = nil
      return fail("canceled", E.ECANCELED)
    end
    if not done then return fail("timed out", E.ETIMEDOUT) end
  end
  self.joined = true
  if self.status == "failed" then error(self.error, 0) end
  return unpack(self.results, 1, self.results.n)
end

Task.done = ended

--- task:cancel(): the task's current (or next) await returns
-- fail, "canceled", ECANCELED, after its op has left the kernel. A task
-- that has not started yet never runs. Returns true if the task was live.
function Task:cancel()
  if ended(self) then return false end
  if self.fn then
    -- It never ran: end it now, with the result a canceled await gives.
    coroutine.close(self.co)
    finish(self, true, fail("canceled", E.ECANCELED))
    return true
  end
  if self.status == "waiting" then
    self.canceled = true
    local h = self.waiting_on
    if h then
      h_cancel(h)  -- the task resumes when the kernel lets go of the op
    else
      wake(self, false)
    end
  else
    self.cancel_pending = true
  end
  return true
end

function Task:__tostring()
  return string.format("ioq.task (%s): %s", self.status,
                       tostring(self.co):match("0x%x+") or "")
end

---------------------------------------------------------------- the loop

local function run_ready()
  -- Tasks made ready while this runs wait for the next round, so a task
  -- that keeps yielding cannot starve the queue.
  local last = rtail
  while rhead <= last do
    local task = ready[rhead]
    ready[rhead] = nil
    rhead = rhead + 1
    if task.status == "ready" then step(task) end
  end
  if rhead > rtail then rhead, rtail = 1, 0 end
end

--- Waits for completions (or the next timer) and wakes their tasks.
-- Returns false when nothing at all can wake a task any more.
local function poll()
  local q = loop_q
  local timeout
  if rhead <= rtail then
    timeout = 0
  elseif timers[1] then
    timeout = timers[1].at - now()
    if timeout < 0 then timeout = 0 end
  end
  local n, msg = q_wait(q, timeout, into)
  if not n then error("ioq.run: " .. msg, 0) end
  if n == 0 and q_pending(q) == 0 then  -- nothing in the kernel: only timers
    if timeout == nil then return false end
    if timeout > 0 then q:sleep(timeout):wait() end
  end
  for i = 1, n do
    local h = into[i]
    into[i] = nil
    local w = waiters[h]
    if w then
      waiters[h] = nil
      if type(w) == "function" then w() else wake(w) end
    end
  end
  fire_timers()
  return true
end

local function drive()
  local cancelling = false
  while alive > 0 do
    run_ready()
    if alive == 0 then break end
    if main_task.status == "failed" and not cancelling then
      -- The main task failed: cancel the others, then let them end.
      cancelling = true
      for _, t in pairs(tasks) do t:cancel() end
    elseif not poll() then
      local n = alive
      for co in pairs(tasks) do coroutine.close(co) end
      error(string.format("ioq.run: %d task(s) wait for each other and nothing" ..
        " else can wake them (deadlock)", n), 0)
    end
  end
end

local function reset_loop()
  running, loop_q, main_task = false, nil, nil
  tasks, alive, waiters, timers, failed, into = {}, 0, {}, {}, {}, {}
  ready, rhead, rtail = {}, 1, 0
end

local function report(task)
  io.stderr:write("ioq: a task failed and nobody joined it: ",
                  tostring(task.error), "\n")
end

local function run(opts, fn, ...)
  if running then error("ioq.run: a loop is already running (nested ioq.run)", 3) end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'run' (function expected, got " .. type(fn) .. ")", 3)
  end
  local errors = opts.errors or "raise"
  if errors ~= "raise" and errors ~= "report" then
    error("bad argument #1 to 'run' (errors must be \"raise\" or \"report\")", 3)
  end
  local q = opts.queue or core.queue()
  reset_loop()
  running, loop_q = true, q
  main_task = new_task(fn, ...)
  local main, failures = main_task, failed
  local ok, err = pcall(drive)
  reset_loop()
  if not opts.queue then q:close() end
  if not ok then error(err, 0) end
  local unjoined
  for _, t in ipairs(failures) do
    if t ~= main and not t.joined then
      report(t)
      unjoined = unjoined or t
    end
  end
  if main.status == "failed" then error(main.error, 0) end
  if unjoined and errors == "raise" then error(unjoined.error, 0) end
  return unpack(main.results, 1, main.results.n)
end

--- ioq.run([opts,] fn, ...): runs fn as the main task and drives the queue
-- until every task has ended; returns fn's results. opts: { queue = q,
-- errors = "raise" | "report" } (what to do with failed unjoined tasks).
function ioq.run(opts, ...)
  if type(opts) == "table" then return run(opts, ...) end
  return run({}, opts, ...)
end

--- ioq.spawn(fn, ...): a new task in the running loop.
function ioq.spawn(fn, ...)
  if not running then error("ioq.spawn: no loop is running (call it inside ioq.run)", 2) end
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  return new_task(fn, ...)
end

--- ioq.current(): the running loop's queue, or nil outside a loop.
function ioq.current()
  return loop_q
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
      if queue_of(it) ~= loop_q then error("ioq.first: a handle of another queue", 2) end
      if waiters[it] then error("ioq.first: a handle that a task already awaits", 2) end
      waiters[it] = hooks[i]
    end
  end
  suspend(me)
  for i = 1, items.n do  -- unhook from the items that did not win
    local it = items[i]
    if getmetatable(it) == Task then
      remove_joiner(it, hooks[i])
    elseif waiters[it] == hooks[i] then
      waiters[it] = nil
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

---------------------------------------------------------------- sockets

--- s:accept(), s:connect(host, port), s:recv(buf [, length]),
-- s:send(data [, length]), s:recvfrom(buf [, length]),
-- s:sendto(data, host, port): the op on the running loop's queue (or a
-- private one outside a loop); each returns a handle to await.
local socket_methods = core.classes.socket

function socket_methods.accept(s)
  return current_queue():accept(s)
end

function socket_methods.connect(s, host, port)
  return current_queue():connect(s, host, port)
end

function socket_methods.recv(s, buf, length)
  return current_queue():recv(s, buf, length)
end

function socket_methods.send(s, data, length)
  return current_queue():send(s, data, length)
end

function socket_methods.recvfrom(s, buf, length)
  return current_queue():recvfrom(s, buf, length)
end

function socket_methods.sendto(s, data, host, port)
  return current_queue():sendto(s, data, host, port)
end

-- Where the backend has no multishot op, a plain op per item does the
-- same work behind the same interface (next, each, cancel, done).
local Emulated = {}
Emulated.__index = Emulated
Emulated.__name = "ioq.multishot (emulated)"

function Emulated:next(timeout)
  if self.ended then return nil, self.msg, self.err end
  self.h = self.start()
  local v, msg, err = self.h:await(timeout)
  self.h = nil
  if v == 0 and self.kind == "recv" then  -- the peer closed
    self.ended, self.msg = true, "end of stream"
    return nil, self.msg
  end
  if v and self.kind == "recv" then return core.buffer(self.buf:tostring(1, v)) end
  if not v and err ~= E.ETIMEDOUT then self.ended, self.msg, self.err = true, msg, err end
  if not v and self.cancelled then return fail("canceled", E.ECANCELED) end
  return v, msg, err
end

Emulated.each = handle_methods.each

function Emulated:cancel()
  self.cancelled = true
  if self.h then return self.h:cancel() end
  if not self.ended then self.ended, self.msg, self.err = true, "canceled", E.ECANCELED end
  return true
end

function Emulated:done()
  return self.ended == true
end

--- The native multishot handle of q:<kind>_multi(s), or, where the backend
-- has none (EOPNOTSUPP), an emulation starting one `start(q, buf)` op per
-- item (a receive gets its own buffer, made only here).
local function multishot(kind, s, start)
  local q = current_queue()
  local h, msg, err = q[kind .. "_multi"](q, s)
  if h or err ~= E.EOPNOTSUPP then return h, msg, err end
  local buf = kind == "recv" and core.buffer(16384) or nil
  return setmetatable({ kind = kind, buf = buf,
                        start = function() return start(q, buf) end }, Emulated)
end

--- s:accept_multi(): a stream of incoming connections: h:next() or
-- h:each() give a socket each, until h:cancel(). One multishot accept in
-- the kernel where it can; one accept per connection elsewhere.
function socket_methods.accept_multi(s)
  return multishot("accept", s, function(q) return q:accept(s) end)
end

--- s:recv_multi(): a stream of received chunks, each a buffer (close it,
-- or let it be collected, to give it back). One multishot receive into
-- the queue's provided buffers where it can; one recv per chunk elsewhere.
function socket_methods.recv_multi(s)
  return multishot("recv", s, function(q, buf) return q:recv(s, buf) end)
end

---------------------------------------------------------------- signals

local Signals = {}
Signals.__index = Signals
Signals.__name = "ioq.signals"

--- ioq.signals(name, ...): blocks the named signals ("INT", "TERM", ...)
-- for the process and delivers them through the queue instead:
-- sigs:wait([timeout]) (an await) returns the name of the next one.
-- Returns fail, msg, ENOSYS on Windows.
function ioq.signals(...)
  local f, msg, err = core.signalfd(...)
  if not f then return nil, msg, err end  -- Windows: ENOSYS
  return setmetatable({ file = f, buf = core.buffer(128) }, Signals)
end

function Signals:wait(timeout)
  local n, msg, err = current_queue():read(self.file, self.buf):await(timeout)
  if not n then return nil, msg, err end
  return core.signame(string.unpack("<I4", self.buf:tostring(1, 4)))
end

function Signals:close()
  return self.file:close()
end

Signals.__close = Signals.close

---------------------------------------------------------------- streams

--- ioq.stream(sock_or_file [, opts]): see lua/ioq/stream.lua.
function ioq.stream(obj, opts)
  return require("ioq.stream").new(obj, opts)
end

ioq._blocking_queue = blocking_queue
ioq.Task = Task
return ioq
