--- ioq: completion-based asynchronous I/O for Lua 5.4.
--
-- The C core (ioq.core) is mechanism: queues, buffers, handles, files.
-- This module adds policy on top, in Lua: a loop that runs coroutines
-- ("tasks") and resumes each one when the handle it awaits resolves, with
-- timeouts and cancellation.
local core = require "ioq.core"

local coroutine, error, select, setmetatable, tostring, type =
  coroutine, error, select, setmetatable, tostring, type
local getmetatable, pcall = getmetatable, pcall
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
-- fields live in the userdata), so h:done() would cost two C calls. They
-- are the C functions, taken before this module puts Lua ones in front.
local h_done, h_result, h_cancel, h_timeout, h_take, h_wait = handle_methods.done,
  handle_methods.result, handle_methods.cancel, handle_methods.timeout,
  handle_methods.take, handle_methods.wait
local q_wait, q_pending, q_submit = queue_methods.wait, queue_methods.pending,
  queue_methods.submit
local queue_of = core.queue_of

---------------------------------------------------------------- misuse
-- Every public function here checks its own arguments and raises, at its
-- caller, the message Lua's C functions give: bad argument #n to 'name'
-- (what is wrong). Argument 0 is the self of a method call.

--- Raises that error `level` frames up from the function calling argerror
-- (2, the default: that function's caller).
local function argerror(n, name, msg, level)
  if n == 0 then
    msg = string.format("calling '%s' on bad self (%s)", name, msg)
  else
    msg = string.format("bad argument #%d to '%s' (%s)", n, name, msg)
  end
  error(msg, (level or 2) + 1)
end

--- Checks an optional timeout: nil or a non-negative number (not NaN).
-- For use right inside a public function.
local function check_timeout(v, n, name)
  if v ~= nil and not (type(v) == "number" and v >= 0) then
    argerror(n, name, "timeout must be a non-negative number, got " ..
      (type(v) == "number" and tostring(v) or type(v)), 3)
  end
end

local function is_handle(h)
  local mt = type(h) == "userdata" and getmetatable(h)
  return mt and mt.__name == "ioq.handle" or false
end

local function check_handle(h, name)
  if not is_handle(h) then
    argerror(0, name, "ioq.handle expected, got " .. type(h), 3)
  end
end

--- What a public Lua function that handed its arguments to a C function
-- returns: `return c_call(name, shift, pcall(cfn, ...))`. On an error the
-- C function's argument numbers (it was called without a method name, so
-- they count from its first argument) are turned into the caller's, by
-- taking off `shift` (the arguments the caller did not pass itself, its
-- self counting as #0), and the error is raised at the caller. Called in
-- a tail call, so level 2 is the public function's caller.
local function c_call(name, shift, ok, ...)
  if ok then return ... end
  local e = ...
  if type(e) ~= "string" then error(e, 0) end
  local n, why = e:match("^bad argument #(%d+) to '[^']*' (%b())$")
  if n then
    n = tonumber(n) - shift
    if n <= 0 then
      e = string.format("calling '%s' on bad self %s", name, why)
    else
      e = string.format("bad argument #%d to '%s' %s", n, name, why)
    end
  end
  error(e, 2)
end

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
local waiters = {}         -- handle -> who awaits it: a task, a function,
                           -- or a list (a table without .co) of those
local timers = {}          -- min-heap of { at =, fn =, pos = }: fn(t) fires
local failed = {}          -- tasks that ended with an error, in order
local into = {}            -- scratch table for q:wait
local main_task = nil

-- Output ops (writes, sends, fsyncs, shutdowns) that failed while nobody
-- awaited them: handle -> record (weak, so a handle the script dropped can
-- go), and the first records in order, reported when the run ends unless
-- the script looked at the handle's result meanwhile ("claimed" it).
local unclaimed = setmetatable({}, { __mode = "k" })
local unclaimed_n = 0      -- records not claimed yet (0: claim has nothing to do)
local lost, lost_more = {}, 0
local LOST_KEPT = 20

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
  -- In this order a memory error (a new key, the heap growing) leaves
  -- the heap as it was: a timer is in it only once it is all there.
  local pos = #timers + 1
  t.at, t.fn, t.pos = now() + seconds, fn, false
  timers[pos] = t
  t.pos = pos
  heap_up(pos)
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

---------------------------------------------------------------- waiters
-- Several tasks (and ioq.first hooks) may wait for one handle; each is
-- woken when it resolves. One waiter is stored as itself (the common case
-- costs no table), two or more as a list.

local function is_list(w)
  return type(w) == "table" and w.co == nil
end

local function add_waiter(h, w)
  local cur = waiters[h]
  if cur == nil then
    waiters[h] = w
  elseif is_list(cur) then
    cur[#cur + 1] = w
  else
    waiters[h] = { cur, w }
  end
end

local function remove_waiter(h, w)
  local cur = waiters[h]
  if cur == w then
    waiters[h] = nil
  elseif is_list(cur) then
    for i = #cur, 1, -1 do
      if cur[i] == w then table.remove(cur, i) end
    end
    if cur[1] == nil then waiters[h] = nil end
  end
end

--- True if someone other than `w` waits for `h`.
local function others_wait(h, w)
  local cur = waiters[h]
  if cur == nil or cur == w then return false end
  if not is_list(cur) then return true end
  for i = 1, #cur do
    if cur[i] ~= w then return true end
  end
  return false
end

local OUTPUT = { write = true, send = true, sendto = true, fsync = true, shutdown = true }

--- Notes an output op that resolved with nobody waiting for it, if it
-- failed: the script is told at the end of the run unless it looks at the
-- handle by then. A cancel during the run is the script's own doing (its
-- h:cancel()). `closing` is true while the run's end lets outputs finish,
-- and "cut" once the linger time ran out and they were cancelled: an
-- output that ends then is reported even with a byte count, since a
-- cancelled send may have sent only part of its data.
local function unwaited(h, closing)
  if not h_done(h) then return end  -- a multishot handle's item
  local v, msg, err = h_result(h)
  local op = h.op
  if not OUTPUT[op] then return end
  -- A byte count short of what was asked for lost the rest.
  local short = type(v) == "number" and op ~= "fsync" and v < h.length
  if closing ~= "cut" and not short and
     (v ~= nil or (err == E.ECANCELED and not closing)) then
    return
  end
  if short and closing ~= "cut" then
    msg = string.format("%s: only %d of %d bytes went out", op, v, h.length)
  end
  if closing == "cut" then
    msg = op .. ": not done when the linger time of the run's end ran out; cancelled" ..
      (v ~= nil and " after " .. tostring(v) .. " bytes" or "")
  end
  local record = { msg = msg, err = err }
  if #lost < LOST_KEPT then
    lost[#lost + 1] = record
  else
    record.extra = true
    lost_more = lost_more + 1
  end
  unclaimed[h] = record
  unclaimed_n = unclaimed_n + 1
end

--- The script looks at h's result: it is no longer unclaimed.
local function claim(h)
  if unclaimed_n == 0 then return end
  local record = unclaimed[h]
  if record then
    unclaimed[h] = nil
    unclaimed_n = unclaimed_n - 1
    record.claimed = true
    if record.extra then lost_more = lost_more - 1 end
  end
end

local function call_waiter(w)
  if type(w) == "function" then w() else wake(w) end
end

--- Hands a handle that q:wait returned to whoever waits for it.
local function dispatch(h, closing)
  local w = waiters[h]
  if w == nil then return unwaited(h, closing) end
  waiters[h] = nil
  if type(w) == "function" then
    w()
  elseif w.co then  -- a task
    wake(w)
  else
    for i = 1, #w do call_waiter(w[i]) end
  end
end

---------------------------------------------------------------- awaiting

-- Timeouts up to this long on an op not yet handed to the backend go to
-- the backend (h:timeout: on io_uring a deadline heap in C plus an async
-- cancel, since a kernel linked timeout never fires for an op blocked in
-- an io-wq worker). Longer ones are mostly deadlines that never fire
-- ("give up if the peer is silent for 30 s"); they use the loop's own
-- timer heap. The split was measured when short ones were kernel linked
-- timeouts (bench/net/run.sh: 106k against 141k requests/s for the HTTP
-- example with a 30 s timeout); it is kept, as both ways now cost a heap
-- entry and a cancel.
local LINKED_TIMEOUT_MAX = 1.0

--- Ends `task`'s wait for `h` early (its cancel or timeout): if others
-- wait for the same op it goes on for them and only this task wakes;
-- otherwise the op is cancelled, and the task wakes once the kernel let
-- go of it (with its real result, if it finished anyway).
local function give_up(task, h)
  if others_wait(h, task) then
    remove_waiter(h, task)
    wake(task)
  else
    h_cancel(h)
  end
end

-- What a task's await timer does when it fires.
local function await_timed_out(t)
  t.timed_out = true
  give_up(t.task, t.h)
end

--- A task's cancel reached an await whose op ended: with the real result
-- if it finished anyway (the bytes a recv took from the kernel are not
-- lost), and then the cancel stays pending for the task's next wait.
local function canceled_result(task, v, msg, err)
  if err == E.ECANCELED or (v == nil and err == nil) then
    return fail("canceled", E.ECANCELED)
  end
  task.cancel_pending = true
  return v, msg, err
end

--- h:await in a task: yields until h resolves.
local function task_await(task, h, timeout)
  if h_done(h) then
    -- Its result is there: hand it over. A pending cancel waits for an
    -- await that would block.
    claim(h)
    return h_result(h)
  end
  local timer
  if task.cancel_pending then
    task.cancel_pending = nil
    if others_wait(h, task) then return fail("canceled", E.ECANCELED) end
    task.canceled = true
    h_cancel(h)
  elseif timeout then
    -- A short timeout on an op still in user space, that nobody else
    -- waits for: the kernel enforces it. Otherwise the task's timer record
    -- gives up on the op when it fires.
    if timeout == 0 or timeout > LINKED_TIMEOUT_MAX or waiters[h] ~= nil
        or not h_timeout(h, timeout) then
      timer = task.timer
      if not timer then
        timer = { task = task, h = false, timed_out = false }
        task.timer = timer
      end
    end
  end
  if waiters[h] == nil then waiters[h] = task else add_waiter(h, task) end
  if timer then
    -- Armed after the waiter is in place; if that fails (out of memory)
    -- the waiter goes again, so nothing is left to wake the task later.
    timer.h, timer.timed_out = h, false
    local ok, e = pcall(arm_timer, timer, timeout, await_timed_out)
    if not ok then
      remove_waiter(h, task)
      error(e, 0)
    end
  end
  task.waiting_on = h
  suspend(task)
  task.waiting_on = nil
  if waiters[h] ~= nil then remove_waiter(h, task) end  -- woken by something else than h
  local timed_out = false
  if timer then
    cancel_timer(timer)
    timed_out, timer.h = timer.timed_out, nil
  end
  local done = h_done(h)
  local v, msg, err
  if done then
    claim(h)
    v, msg, err = h_result(h)
  end
  if task.canceled then
    task.canceled = nil
    return canceled_result(task, v, msg, err)
  end
  if timed_out and (not done or err == E.ECANCELED) then
    return fail("timed out", E.ETIMEDOUT)
  end
  return v, msg, err
end

--- Drives the running loop's queue from code that is not a task but runs
-- inside the loop (a plain coroutine inside a task, a finalizer) until
-- `until_fn()` is true or `deadline` passes (then false). This blocks the
-- whole loop, but every completion and due timer goes to its waiter, so no
-- task loses its wake-up. It polls the queue at least once, even when the
-- deadline has passed already.
local function drive_until(until_fn, deadline)
  local got, polled = {}, false
  while not until_fn() do
    local wait
    if deadline then
      wait = deadline - now()
      if wait <= 0 then
        if polled then return false end
        wait = 0
      end
    end
    if timers[1] then
      local t = timers[1].at - now()
      if t < 0 then t = 0 end
      if not wait or t < wait then wait = t end
    end
    local n, msg, err = q_wait(loop_q, wait, got)
    if not n then return nil, msg, err end
    polled = true
    for i = 1, n do
      local h = got[i]
      got[i] = nil
      dispatch(h)
    end
    fire_timers()
  end
  return true
end

--- h:wait on the loop's queue from code that is not a task.
local function loop_wait(h, timeout)
  local function done() return h_done(h) end
  local ok, msg, err = drive_until(done, timeout and now() + timeout)
  if ok == nil then return nil, "wait: " .. msg, err end
  local timed_out = not ok
  if timed_out then
    if others_wait(h, nil) then  -- leave the op to the tasks awaiting it
      return fail("timed out", E.ETIMEDOUT)
    end
    h_cancel(h)
    ok, msg, err = drive_until(done)
    if ok == nil then return nil, "wait: " .. msg, err end
  end
  claim(h)
  local v
  v, msg, err = h_result(h)
  if timed_out and err == E.ECANCELED then return fail("timed out", E.ETIMEDOUT) end
  return v, msg, err
end

--- h:await and h:wait: one meaning, "wait for h in the way that fits
-- here". In a task, on the loop's queue: the task yields, the others run.
-- Inside a loop, but not in a task: the wait blocks, dispatching what
-- others wait for. Elsewhere (no loop, or another queue): the C wait,
-- which drives h's queue.
local function wait_for(name, h, timeout)
  -- The checks inline: this is the path of every await.
  local mt = type(h) == "userdata" and getmetatable(h)
  if not (mt and mt.__name == "ioq.handle") then check_handle(h, name) end
  if timeout ~= nil then check_timeout(timeout, 1, name) end
  if running and queue_of(h) == loop_q then
    local task = tasks[running_co()]
    if task then return task_await(task, h, timeout) end
    return loop_wait(h, timeout)
  end
  claim(h)
  return c_call(name, 1, pcall(h_wait, h, timeout))
end

--- h:await([timeout]): inside a task, yields until the handle resolves;
-- elsewhere, the same as h:wait([timeout]).
function handle_methods.await(h, timeout)
  return wait_for("await", h, timeout)
end

--- h:wait([timeout]): inside a running loop, h:await (a task never blocks
-- the loop, and no wait there takes another task's wake-up); elsewhere,
-- drives h's queue until h resolves.
function handle_methods.wait(h, timeout)
  return wait_for("wait", h, timeout)
end

--- h:result(): as the C method; also marks the result as seen.
function handle_methods.result(h)
  claim(h)
  return c_call("result", 1, pcall(h_result, h))
end

--- h:next([timeout]) on a multishot handle (q:accept_multi, q:recv_multi):
-- the next socket or buffer view; in a task it suspends until one comes,
-- elsewhere it drives the queue. nil, "end of stream" when the peer has
-- closed; fail, msg, errno when the op has ended (ECANCELED after
-- h:cancel()) or the timeout passed (ETIMEDOUT; the op stays armed).
function handle_methods.next(h, timeout)
  check_handle(h, "next")
  check_timeout(timeout, 1, "next")
  local v, msg, err = c_call("next", 1, pcall(h_take, h))
  if v ~= false then return v, msg, err end
  local q = queue_of(h)
  local deadline = timeout and now() + timeout
  if not running or q ~= loop_q then
    while true do
      local left = deadline and deadline - now()
      if left and left <= 0 then return fail("timed out", E.ETIMEDOUT) end
      local n, wmsg, werr = q_wait(q, left)
      if not n then return nil, "wait: " .. wmsg, werr end
      v, msg, err = h_take(h)
      if v ~= false then return v, msg, err end
    end
  end
  local task = tasks[running_co()]
  if not task then
    local ok, wmsg, werr = drive_until(function()
      v, msg, err = h_take(h)
      return v ~= false
    end, deadline)
    if ok == nil then return nil, "wait: " .. wmsg, werr end
    if not ok then return fail("timed out", E.ETIMEDOUT) end
    return v, msg, err
  end
  if task.cancel_pending then
    task.cancel_pending = nil
    return fail("canceled", E.ECANCELED)
  end
  local function timed_out_fn(t)
    t.timed_out = true
    remove_waiter(h, task)
    wake(task)
  end
  while true do
    local timer = timeout and { timed_out = false }
    add_waiter(h, task)
    if timer then
      local ok, e = pcall(arm_timer, timer, math.max(deadline - now(), 0), timed_out_fn)
      if not ok then
        remove_waiter(h, task)
        error(e, 0)
      end
    end
    task.waiting_on = h
    suspend(task)
    task.waiting_on = nil
    remove_waiter(h, task)
    if timer then cancel_timer(timer) end
    v, msg, err = h_take(h)
    if task.canceled then
      task.canceled = nil
      if v then  -- an item came before the cancel: hand it over
        task.cancel_pending = true
        return v, msg, err
      end
      return fail("canceled", E.ECANCELED)
    end
    if v ~= false then return v, msg, err end
    if timer and timer.timed_out then return fail("timed out", E.ETIMEDOUT) end
  end
end

--- for item in h:each() do ... end: every item of a multishot handle until
-- it ends (an error then is raised, end of stream and cancel are not).
function handle_methods.each(h)
  check_handle(h, "each")
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
    local ok
    ok, timer = pcall(add_timer, timeout, function() wake(me, false) end)
    if not ok then  -- out of memory: leave nothing behind
      remove_joiner(task, on_end)
      error(timer, 0)
    end
  end
  local done = suspend(me)
  if not done then
    if timer then cancel_timer(timer) end
    remove_joiner(task, on_end)
  end
  return done
end

local function check_task(t, name)
  if getmetatable(t) ~= Task then
    argerror(0, name, "ioq.task expected, got " .. type(t), 3)
  end
end

--- task:join([timeout]): the task's results; re-raises its error (with the
-- task's traceback); or fail, "timed out", ETIMEDOUT.
function Task:join(timeout)
  check_task(self, "join")
  check_timeout(timeout, 1, "join")
  if not ended(self) then
    local me = current_task()
    if not me then
      error("join: the task has not ended, and only a task can wait for it " ..
            "(call join inside ioq.run, in a task)", 2)
    end
    if me == self then error("join: a task cannot join itself", 2) end
    if me.cancel_pending then
      me.cancel_pending = nil
      return fail("canceled", E.ECANCELED)
    end
    local done = wait_task(me, self, timeout)
    if me.canceled then
      me.canceled = nil
      if not done then return fail("canceled", E.ECANCELED) end
      me.cancel_pending = true  -- it ended first: its results, then the cancel
    elseif not done then
      return fail("timed out", E.ETIMEDOUT)
    end
  end
  self.joined = true
  if self.status == "failed" then error(self.error, 0) end
  return unpack(self.results, 1, self.results.n)
end

--- task:done(): true once the task has ended.
function Task:done()
  check_task(self, "done")
  return ended(self)
end

--- task:cancel(): the task's current (or next) wait returns
-- fail, "canceled", ECANCELED, after its op has left the kernel. If that
-- op finished anyway, the wait returns its real result and the cancel
-- goes to the task's next wait instead. A task that has not started yet
-- never runs. Returns true if the task was live.
function Task:cancel()
  check_task(self, "cancel")
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
      give_up(self, h)  -- the task resumes when the kernel lets go of the op
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
  if n == 0 and timeout == nil then
    -- An endless wait came back empty: nothing is pending, or nothing
    -- pending can ever arrive (receives starved of pool buffers that
    -- waiting tasks hold), and no timer runs.
    return false
  end
  if n == 0 and q_pending(q) == 0 and timeout > 0 then  -- only timers
    h_wait(q:sleep(timeout))
  end
  for i = 1, n do
    local h = into[i]
    into[i] = nil
    dispatch(h)
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

-- How long, at the end of a run, output ops that nobody awaited get to
-- finish before they are cancelled (ioq.run's opts.linger).
local LINGER = 5

--- Once every task has ended, what is still pending was started and never
-- awaited. Inputs (reads, receives, accepts, sleeps...) have nobody left
-- to take what they bring: they are cancelled. Outputs (writes, sends,
-- fsyncs, shutdowns) are what the script wanted done, the last words of a
-- log or a protocol: they get `linger` seconds to finish, then they are
-- cancelled too, and those that failed are noted for the report.
local function settle(q, linger)
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

local function reset_loop()
  running, loop_q, main_task = false, nil, nil
  tasks, alive, waiters, timers, failed, into = {}, 0, {}, {}, {}, {}
  ready, rhead, rtail = {}, 1, 0
  unclaimed, lost, lost_more = setmetatable({}, { __mode = "k" }), {}, 0
  unclaimed_n = 0
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
-- test runner, shares them). Returns that set.
local function loop_queues(q)
  local mt = getmetatable(q)
  local loops = rawget(mt, "__ioq_loops")
  if loops then return loops end
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
  mt.__ioq_loops = loops
  return loops
end

local function is_queue(q)
  local mt = type(q) == "userdata" and getmetatable(q)
  return mt and mt.__name == "ioq.queue" or false
end

--- The body of ioq.run, `fn` being its argument number `fn_arg`. Called in
-- a tail call: level 2 is ioq.run's caller.
local function run(opts, fn_arg, fn, ...)
  if running then error("ioq.run: a loop is already running (nested ioq.run)", 2) end
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
  local loops = loop_queues(q)
  reset_loop()
  running, loop_q = true, q
  loops[q] = true
  main_task = new_task(fn, ...)
  local main, failures = main_task, failed
  local ok, err = pcall(drive)
  -- Also after a deadlock or a failed main task: the outputs started so
  -- far are still wanted.
  local settled, serr = pcall(settle, q, linger)
  local records, more = lost, lost_more
  loops[q] = nil
  reset_loop()
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

--- ioq.run([opts,] fn, ...): runs fn as the main task and drives the queue
-- until every task has ended; returns fn's results. opts:
--   queue   the queue to drive (default: a new one, closed at the end)
--   errors  "raise" (default) or "report": what to do, besides writing
--           them on stderr, with tasks that failed and that nobody joined,
--           and with outputs nobody awaited that failed
--   linger  seconds that outputs left pending at the end get to finish
--           before they are cancelled (default 5)
function ioq.run(opts, ...)
  if type(opts) == "table" then return run(opts, 2, ...) end
  return run({}, 1, opts, ...)
end

--- ioq.spawn(fn, ...): a new task in the running loop.
function ioq.spawn(fn, ...)
  if not running then error("ioq.spawn: no loop is running (call it inside ioq.run)", 2) end
  if type(fn) ~= "function" then
    argerror(1, "spawn", "function expected, got " .. type(fn))
  end
  return new_task(fn, ...)
end

--- ioq.current(): the running loop's queue, or nil outside a loop.
function ioq.current()
  return loop_q
end

--- ioq.sleep(seconds): suspends the task (or blocks, outside a loop).
function ioq.sleep(seconds)
  if not (type(seconds) == "number" and seconds >= 0) then
    argerror(1, "sleep", "seconds must be a non-negative number")
  end
  return wait_for("sleep", current_queue():sleep(seconds))
end

--- ioq.open(path [, mode [, perm]]): an ioq.file, or fail, msg, errno.
function ioq.open(path, mode, perm)
  local q = current_queue()
  local ok, h = pcall(queue_methods.open, q, path, mode, perm)
  if not ok then return c_call("open", 1, ok, h) end
  return wait_for("open", h)
end

--- Awaits a task (join) or a handle.
local function await_item(item, timeout)
  if getmetatable(item) == Task then return item:join(timeout) end
  return item:await(timeout)
end

--- Checks that each of ... is a task or a handle, for `name`.
local function check_items(name, items)
  for i = 1, items.n do
    local it = items[i]
    if getmetatable(it) ~= Task and not is_handle(it) then
      argerror(i, name, "ioq.task or ioq.handle expected, got " .. type(it), 3)
    end
  end
end

--- ioq.gather(...): awaits every task or handle; returns, in order, one
-- table.pack of results per item. A failed task's error is raised.
function ioq.gather(...)
  local out = pack(...)
  check_items("gather", out)
  for i = 1, out.n do out[i] = pack(await_item(out[i])) end
  return unpack(out, 1, out.n)
end

--- Hangs hooks[i] on items[i]: a joiner of a task, a waiter of a handle.
local function hook_items(items, hooks)
  for i = 1, items.n do
    local it = items[i]
    if getmetatable(it) == Task then
      it.joiners = it.joiners or {}
      it.joiners[#it.joiners + 1] = hooks[i]
    else
      add_waiter(it, hooks[i])
    end
  end
end

--- Takes every hook of hook_items off again (allocates nothing).
local function unhook_items(items, hooks)
  for i = 1, items.n do
    local it = items[i]
    if getmetatable(it) == Task then
      remove_joiner(it, hooks[i])
    else
      remove_waiter(it, hooks[i])
    end
  end
end

--- ioq.first(...): waits, inside a task, until one of the tasks or handles
-- ends; returns its position and its results. The others go on. Several
-- tasks may wait for the same items, and an item may be given twice.
function ioq.first(...)
  local items = pack(...)
  check_items("first", items)
  local me = current_task()
  for i = 1, items.n do
    local it = items[i]
    if me and getmetatable(it) ~= Task and queue_of(it) ~= loop_q then
      argerror(i, "first", "a handle of another queue than the running loop's")
    end
  end
  for i = 1, items.n do
    if items[i]:done() then return i, await_item(items[i]) end
  end
  if not me then
    error("first: no item has ended, and only a task can wait for them " ..
          "(call it inside ioq.run, in a task)", 2)
  end
  if me.cancel_pending then
    me.cancel_pending = nil
    return fail("canceled", E.ECANCELED)
  end
  local winner
  local hooks = {}
  for i = 1, items.n do
    hooks[i] = function()
      if not winner then winner = i; wake(me) end
    end
  end
  -- Hooking can only fail out of memory; then every hook goes again.
  local ok, e = pcall(hook_items, items, hooks)
  if not ok then
    unhook_items(items, hooks)
    error(e, 0)
  end
  suspend(me)
  unhook_items(items, hooks)
  if me.canceled then
    me.canceled = nil
    if not winner then return fail("canceled", E.ECANCELED) end
    me.cancel_pending = true  -- an item ended first: its results, then the cancel
  end
  return winner, await_item(items[winner])
end

---------------------------------------------------------------- files

--- Starts op `name` on the running loop's queue (its task awaits it), or,
-- outside a loop, on a private queue, where it is handed to the kernel at
-- once: an op nobody waits for (a last write before exit) still happens.
-- Argument errors name the caller's method and arguments.
local function start(name, fn, obj, a, b, c)
  local q = loop_q
  local outside = not q
  if outside then q = blocking_queue() end
  local ok, h, msg, err = pcall(fn, q, obj, a, b, c)
  if ok then
    if outside and h then q_submit(q) end
    return h, msg, err
  end
  return c_call(name, 2, ok, h)
end

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
local socket_methods = core.classes.socket

for _, name in ipairs { "accept", "connect", "recv", "send", "recvfrom", "sendto" } do
  local fn = queue_methods[name]
  socket_methods[name] = function(s, a, b, c)
    return start(name, fn, s, a, b, c)
  end
end

-- Where the backend has no multishot op, a plain op per item does the
-- same work behind the same interface (next, each, cancel, done).
local Emulated = {}
Emulated.__index = Emulated
Emulated.__name = "ioq.multishot (emulated)"

local function check_emulated(h, name)
  if getmetatable(h) ~= Emulated then
    argerror(0, name, "ioq.multishot expected, got " .. type(h), 3)
  end
end

function Emulated:next(timeout)
  check_emulated(self, "next")
  check_timeout(timeout, 1, "next")
  if self.ended then return nil, self.msg, self.err end
  self.h = self.start()
  local v, msg, err = wait_for("next", self.h, timeout)
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

--- The iterator of h:each() for either kind of multishot handle.
local function items_of(h)
  return function()
    local v, msg, err = h:next()
    if v then return v end
    if err and err ~= E.ECANCELED then error(msg, 2) end
    return nil
  end
end

function handle_methods.each(h)
  check_handle(h, "each")
  return items_of(h)
end

function Emulated:each()
  check_emulated(self, "each")
  return items_of(self)
end

function Emulated:cancel()
  check_emulated(self, "cancel")
  self.cancelled = true
  if self.h then return h_cancel(self.h) end
  if not self.ended then self.ended, self.msg, self.err = true, "canceled", E.ECANCELED end
  return true
end

function Emulated:done()
  check_emulated(self, "done")
  return self.ended == true
end

--- The native multishot handle of q:<kind>_multi(s), or, where the backend
-- has none (EOPNOTSUPP), an emulation starting one `start_one(q, buf)` op
-- per item (a receive gets its own buffer, made only here).
local function multishot(kind, s, start_one)
  local q = current_queue()
  local name = kind .. "_multi"
  local ok, h, msg, err = pcall(queue_methods[name], q, s)
  if not ok or h or err ~= E.EOPNOTSUPP then return c_call(name, 2, ok, h, msg, err) end
  local buf = kind == "recv" and core.buffer(16384) or nil
  return setmetatable({ kind = kind, buf = buf,
                        start = function() return start_one(q, buf) end }, Emulated)
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

local function check_signals(sigs, name)
  if getmetatable(sigs) ~= Signals then
    argerror(0, name, "ioq.signals expected, got " .. type(sigs), 3)
  end
end

--- ioq.signals(name, ...): delivers the named signals ("INT", "TERM",
-- ...) through the queue instead of their usual action, until sigs:close()
-- (or collection) gives each back as it was: sigs:wait([timeout]) (an
-- await) returns the name of the next one. Returns fail, msg, ENOSYS on
-- Windows.
function ioq.signals(...)
  local ok, f, msg, err = pcall(core.signalfd, ...)
  if not ok then return c_call("signals", 0, ok, f) end
  if not f then return nil, msg, err end  -- Windows: ENOSYS
  return setmetatable({ file = f, buf = core.buffer(128) }, Signals)
end

function Signals:wait(timeout)
  check_signals(self, "wait")
  check_timeout(timeout, 1, "wait")
  local q = current_queue()
  local ok, h = pcall(q_read, q, self.file, self.buf)
  if not ok then return c_call("wait", 2, ok, h) end
  local n, msg, err = wait_for("wait", h, timeout)
  if not n then return nil, msg, err end
  return core.signame(string.unpack("<I4", self.buf:tostring(1, 4)))
end

function Signals:close()
  check_signals(self, "close")
  return self.file:close()
end

Signals.__close = Signals.close

---------------------------------------------------------------- streams

--- ioq.stream(sock_or_file [, opts]): see lua/ioq/stream.lua.
function ioq.stream(obj, opts)
  return require("ioq.stream").new(obj, opts)
end

ioq._blocking_queue = blocking_queue
ioq._argerror = argerror
ioq.Task = Task
return ioq
