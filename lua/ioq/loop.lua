--- ioq.loop: the coroutine loop's state and its hot path. It holds what one
-- await costs: the running loop's queue, its tasks and the FIFO of those
-- ready to run, who waits for which handle, the timers, h:await / h:wait /
-- h:result, the poll that hands completions to their waiters, and the
-- drive of a run (ioq.run itself, its options and its end, is
-- lua/ioq/run.lua). The slower waits (join, first, next) and the Task
-- methods are lua/ioq/task.lua, built on the functions exported here.
--
-- The state is private to this file, in upvalues (the cheapest place Lua
-- has); siblings reach it only through the functions at the bottom. It
-- replaces the C methods await, wait and result of ioq.handle, and must
-- load before any module that puts Lua methods in front of C ones (it
-- takes the C ones). It requires ioq.core, ioq.args, ioq.heap and
-- ioq.outputs (the failed outputs nobody awaited, which it notes).
local core = require "ioq.core"
local args = require "ioq.args"
local heap = require "ioq.heap"
local outputs = require "ioq.outputs"

local coroutine, error, select, setmetatable, type =
  coroutine, error, select, setmetatable, type
local getmetatable, pcall = getmetatable, pcall
local pack = table.pack
local yield, running_co = coroutine.yield, coroutine.running
local traceback = debug.traceback
local now = core.now
local E = core.errno
local argerror, check_timeout, check_handle, c_call, c_raise =
  args.argerror, args.check_timeout, args.check_handle, args.c_call, args.c_raise
local heap_push, heap_remove, heap_fix, heap_filter =
  heap.push, heap.remove, heap.fix, heap.filter
local note_output, claim = outputs.note, outputs.claim

local handle_methods = core.classes.handle
local queue_methods = core.classes.queue

-- The loop calls these directly: a handle's __index is a C function (its
-- fields live in the userdata), so h:done() would cost two C calls. They
-- are the C functions, taken before this module puts Lua ones in front.
local h_done, h_result, h_cancel, h_wait = handle_methods.done,
  handle_methods.result, handle_methods.cancel, handle_methods.wait
local q_pending = queue_methods.pending
local queue_of = core.queue_of

-- What a task's coroutine yields when it waits for a wake-up. Any other
-- yield just lets the other tasks run first.
local WAIT = setmetatable({}, { __name = "ioq.wait" })

local function fail(msg, err)
  return nil, msg, err
end

--- The failures a wait makes itself, named after what it waited for, as
-- the C core names an op's own: "<what>: canceled", "<what>: timed out".
local function fail_canceled(what)
  return nil, what .. ": canceled", E.ECANCELED
end

local function fail_timed_out(what)
  return nil, what .. ": timed out", E.ETIMEDOUT
end

---------------------------------------------------------------- loop state
-- At most one loop runs per Lua state (ioq.run refuses to nest), so the
-- running loop's state lives in these upvalues: the cheapest place Lua has.

local running = false      -- true while ioq.run runs
local loop_q = nil         -- its queue
local tasks = {}           -- coroutine -> live task
local alive = 0            -- live tasks
-- The FIFO of tasks to resume, and their resume, are in C (src/lioq_loop.c;
-- c_push, c_run, c_nready below).
local waiters = {}         -- handle -> who awaits it: a task, a function,
                           -- or a list (a table without .co) of those
local timers = {}          -- min-heap of timer records (see timers below)
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
-- A timer record is any table: `due` is when it fires (nil: not armed),
-- `fn` what it runs (fn(t)), `at` and `pos` its entry in the heap. The
-- entries are lazy, as most timers never fire: a stream's timeout is
-- armed and cancelled again around every read. A cancel leaves the entry
-- where it is; arming again a record whose entry is still there, for a
-- later deadline, leaves it too (only an earlier deadline moves it). An
-- entry that comes to the top early goes back at its record's deadline,
-- one that comes to the top cancelled leaves; and when most entries are
-- of cancelled records the heap is rebuilt without them, so it holds at
-- most about twice the armed timers. So `at` <= `due`, always, and the
-- top entry, once settled (settle_top), is the next timer to fire.
-- The timer of a timed await that waits in C (the common h:await(timeout),
-- every stream read) is not one of these: it lives in C, in the task's
-- record and a heap of the same kind (src/lioq_loop.c), and Lua hears of
-- it only when it fires (fired, below). next_timer and fire_timers look
-- at both.

local live = 0             -- armed timers (the heap's other entries are
                           -- of cancelled ones)

local function is_armed(t)
  return t.due ~= nil
end

--- Arms timer record `t` to run fn(t) after `seconds`. A record can be
-- armed again once it fired or was cancelled (or while armed: that moves
-- its deadline), so a hot path needs no new table per timer.
local function arm_timer(t, seconds, fn)
  local due = now() + seconds
  t.fn = fn
  if t.pos then  -- its entry is still there: it stays unless now late
    local was = t.due
    t.due = due
    if was == nil then live = live + 1 end
    if due < t.at then
      t.at = due
      heap_fix(timers, t)
    end
  else
    t.at = due
    heap_push(timers, t)  -- (may raise out of memory: then not armed)
    t.due = due
    live = live + 1
  end
  return t
end

local function add_timer(seconds, fn)
  return arm_timer({}, seconds, fn)
end

local function cancel_timer(t)
  if t.due == nil then return end
  t.due = nil
  live = live - 1
  local n = #timers
  if n > 2 * live + 32 then heap_filter(timers, is_armed) end
end

--- Settles the heap's top: drops cancelled entries there and moves the
-- entries that came up early to their deadlines, until the top entry is
-- an armed timer's own deadline, the next to fire. Returns it, or nil.
local function settle_top()
  local h = timers
  local top = h[1]
  while top do
    local due = top.due
    if due == nil then
      heap_remove(h, top)
    elseif due > top.at then
      top.at = due
      heap_fix(h, top)
    else
      return top
    end
    top = h[1]
  end
  return nil
end

local c_next_timer, c_fire_timers  -- the timers of awaits in C (below)

--- Seconds until the next Lua timer fires (0 if due already), or nil.
local function next_lua_timer()
  if live == 0 then
    if timers[1] then heap_filter(timers, is_armed) end
    return nil
  end
  -- The top entry's `at` is a lower bound of every deadline: waking then
  -- is never late, and most entries have moved on by then.
  local t = timers[1].at - now()
  if t > 0 then return t end
  t = settle_top().at - now()
  if t < 0 then t = 0 end
  return t
end

--- Seconds until the next timer, Lua's or an await's in C, fires (0 if
-- due already), or nil.
local function next_timer()
  local c = c_next_timer()
  local t = next_lua_timer()
  if c and (not t or c < t) then return c end
  return t
end

local function fire_lua_timers()
  if live == 0 then return end
  local t = now()
  if timers[1].at > t then return end  -- (a lower bound: see next_timer)
  while true do
    local first = settle_top()
    if not first or first.at > t then return end
    heap_remove(timers, first)
    first.due = nil
    live = live - 1
    first.fn(first)
  end
end

local function fire_timers()
  c_fire_timers()
  return fire_lua_timers()
end

---------------------------------------------------------------- tasks
-- The life of a task: made ready, resumed, suspended until woken, ended.
-- Its methods (join, done, cancel) are in lua/ioq/task.lua.

local Task = {}
Task.__index = Task
Task.__name = "ioq.task"

local c_push, c_free  -- below

local function make_ready(task)
  task.status = "ready"
  c_push(task.id)
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
  c_free(task.id)
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

-- What a resume of a task's coroutine came back with, when not WAIT (the
-- C runner, src/lioq_loop.c, calls this): `how` 1, a plain
-- coroutine.yield() (run again later); 2, the function returned these
-- values; 3, it raised this error. A task's coroutine runs its function
-- itself (no xpcall around it, no frame of the loop's below it, so a
-- suspended task holds little): the traceback is taken here from the
-- dead coroutine, whose <close> variables close then (once it is no
-- longer a live task: a wait in them blocks, as outside a task).
local function resumed(task, how, ...)
  if how == 1 then return make_ready(task) end
  if how == 2 then return finish(task, true, ...) end
  local raw = ...
  local co = task.co
  local err = raw
  if type(raw) == "string" then err = traceback(co, raw) end
  tasks[co] = nil
  local _, cerr = coroutine.close(co)
  if cerr ~= raw then err = cerr end  -- a __close failed: its error wins
  finish(task, false, err)
end

-- The loop's hot path in C: the ready FIFO and the resumes (c_run), the
-- poll that wakes the tasks awaiting handles (c_poll), and the common
-- case of h:await (c_await). See src/lioq_loop.c.
local C = core.loop(WAIT, Task, resumed)
local c_run, c_poll, c_await, c_nready, c_hook, c_new, c_sync =
  C.run, C.poll, C.await, C.nready, C.hook, C.new, C.sync
c_push, c_free = C.push, C.free
c_next_timer, c_fire_timers = C.next_timer, C.fire_timers

local function new_task(fn, ...)
  -- fn (and args) until its first run: see src/lioq_loop.c's run. Every
  -- field that src/lioq_loop.c's hook sets is there from the start (and
  -- never nil), so that setting it allocates nothing.
  local co = coroutine.create(fn)
  local task = setmetatable({ fn = fn, co = co, status = "ready",
                              waiting_on = false }, Task)
  if select("#", ...) > 0 then task.args = pack(...) end
  task.id = c_new(task, co)
  tasks[co] = task
  alive = alive + 1
  make_ready(task)
  return task
end

--- Brings a live task's status up to date before Lua looks at it: a task
-- that waits in C (src/lioq_loop.c) still says "ready" until this moves
-- it to waiters. Its cancel fields count from then on.
local function sync(task)
  c_sync(task.id, task)
end

local function current_task()
  return running and tasks[running_co()] or nil
end

--- Suspends the running task until something calls wake(task, value);
-- returns that value. `on`: the handle it waits for, if any (what
-- Task:cancel gives up); every wait sets it, so nothing need clear it.
local function suspend(task, on)
  task.status, task.waiting_on = "waiting", on or false
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
-- costs no table), two or more as a list. The commonest case of all, one
-- task in c_await, waits in C (src/lioq_loop.c), not here: every function
-- below calls c_hook(h) before it looks at waiters[h], which moves such a
-- task here.

local function is_list(w)
  return type(w) == "table" and w.co == nil
end

local function add_waiter(h, w)
  c_hook(h)
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
  c_hook(h)
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
  c_hook(h)
  local cur = waiters[h]
  if cur == nil or cur == w then return false end
  if not is_list(cur) then return true end
  for i = 1, #cur do
    if cur[i] ~= w then return true end
  end
  return false
end

--- An op resolved with nobody waiting for it: noted if it is an output
-- that failed (lua/ioq/outputs.lua).
local function unwaited(h, closing)
  if not h_done(h) then return end  -- a multishot handle's item
  return note_output(h, closing, h_result(h))
end

local function call_waiter(w)
  if type(w) == "function" then w() else wake(w) end
end

--- Hands a handle that q:wait returned to whoever waits for it.
local function dispatch(h, closing)
  local w = waiters[h]
  if w == nil then
    c_hook(h)  -- (outside c_poll, a task may wait in C)
    w = waiters[h]
    if w == nil then return unwaited(h, closing) end
  end
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
local function canceled_result(task, what, v, msg, err)
  if err == E.ECANCELED or (v == nil and err == nil) then
    return fail_canceled(what)
  end
  task.cancel_pending = true
  return v, msg, err
end

--- Suspends `task` as a waiter of h, with `timer` (if any) armed to run
-- `on_fire` after `seconds`. The timer is armed after the waiter is in
-- place; if that fails (out of memory) the waiter goes again, so nothing
-- is left to wake the task later.
local function suspend_on(task, h, timer, seconds, on_fire)
  add_waiter(h, task)
  if timer then
    local ok, e = pcall(arm_timer, timer, seconds, on_fire)
    if not ok then
      remove_waiter(h, task)
      error(e, 0)
    end
  end
  suspend(task, h)
  task.waiting_on = false
end

local await_tail  -- below

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
    if others_wait(h, task) then return fail_canceled(h.op) end
    task.canceled = true
    h_cancel(h)
  elseif timeout then
    -- The task's timer record gives up on the op when it fires: only this
    -- task's wait ends, and the op goes on for any other awaiter. (A
    -- timeout armed on the op itself, h:timeout, would end it for all.)
    timer = task.timer
    if not timer then
      timer = { task = task, h = false, timed_out = false }
      task.timer = timer
    end
  end
  if timer then timer.h, timer.timed_out = h, false end
  suspend_on(task, h, timer, timeout, await_timed_out)
  return await_tail(task, h, timer)
end

--- The end of a task's await of h, once it woke (and of c_await's, when
-- something else than h's end woke it; then `fired` says whether its
-- timer in C fired).
function await_tail(task, h, timer, fired)
  task.waiting_on = false
  -- Woken by something else than h: then it may still be a waiter of h,
  -- in waiters (not in C: what wakes a task waiting in C, but h's end,
  -- hooks it over first, see give_up).
  if waiters[h] ~= nil then remove_waiter(h, task) end
  local timed_out = fired or false
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
    return canceled_result(task, h.op, v, msg, err)
  end
  if timed_out and (not done or err == E.ECANCELED) then
    return fail_timed_out(h.op)
  end
  return v, msg, err
end

--- Drives the running loop's queue from code that is not a task but runs
-- inside the loop (a plain coroutine inside a task, a finalizer) until
-- `until_fn()` is true or `deadline` passes (then false). The task whose
-- coroutine waits is held up, but every completion and due timer goes to
-- its waiter, so no task loses its wake-up, and the other tasks run
-- meanwhile (the one whose
-- coroutine waits is running, so it is not among them): one of them may
-- be what this wait waits for. It polls the queue at least once, even
-- when the deadline has passed already.
local run_ready  -- below

local function drive_until(until_fn, deadline)
  local got, polled = {}, false
  while not until_fn() do
    if c_nready() > 0 then
      run_ready()
      if until_fn() then break end
    end
    local wait
    if deadline then
      wait = deadline - now()
      if wait <= 0 then
        if polled then return false end
        wait = 0
      end
    end
    local t = next_timer()
    if t and (not wait or t < wait) then wait = t end
    if c_nready() > 0 then wait = 0 end  -- tasks to run: only a look
    -- c_poll wakes the tasks that await in C; the rest is dispatched.
    local n, kept, err = c_poll(wait, got)
    if not n then return nil, kept, err end
    polled = true
    for i = 1, kept do
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
  if ok == nil then return nil, msg, err end
  local timed_out = not ok
  if timed_out then
    if others_wait(h, nil) then  -- leave the op to the tasks awaiting it
      return fail_timed_out(h.op)
    end
    h_cancel(h)
    ok, msg, err = drive_until(done)
    if ok == nil then return nil, msg, err end
  end
  claim(h)
  local v
  v, msg, err = h_result(h)
  if timed_out and err == E.ECANCELED then return fail_timed_out(h.op) end
  return v, msg, err
end

--- h:await and h:wait: one meaning, "wait for h in the way that fits
-- here". In a task, on the loop's queue: the task yields, the others run.
-- Inside a loop, but not in a task: the wait blocks, dispatching what
-- others wait for. Elsewhere (no loop, or another queue): the C wait,
-- which drives h's queue.
-- `up`: 1 when called from the C h:await, which is a frame more between
-- the caller and here than a Lua tail call would be.
local function wait_for(name, h, timeout, up)
  -- The checks inline: this is the path of every await.
  local mt = type(h) == "userdata" and getmetatable(h)
  if not (mt and mt.__name == "ioq.handle") then
    check_handle(h, name, up and 3 + up)
  end
  if timeout ~= nil then check_timeout(timeout, 1, name, up and 3 + up) end
  if running and queue_of(h) == loop_q then
    local task = tasks[running_co()]
    if task then return task_await(task, h, timeout) end
    return loop_wait(h, timeout)
  end
  claim(h)
  if up then
    local ok, v, msg, err = pcall(h_wait, h, timeout)
    if ok then return v, msg, err end
    return c_raise(name, 1, v, 2 + up)
  end
  return c_call(name, 1, pcall(h_wait, h, timeout))
end

--- h:await([timeout]): inside a task, yields until the handle resolves;
-- elsewhere, the same as h:wait([timeout]). h:wait([timeout]): inside a
-- running loop, h:await (a task never blocks the loop, and no wait there
-- takes another task's wake-up); elsewhere, drives h's queue until h
-- resolves. Both are C functions on Lua 5.2 and later (src/lioq_loop.c's
-- await_method: the common case in C, then wait_for, or after_wake once
-- something else than h's end woke the task), so a suspended task holds
-- no frame of them in Lua.
local function after_wake(h, fired)
  return await_tail(tasks[running_co()], h, nil, fired)
end

--- The timer of a timed await in C fired (src/lioq_loop.c's fire_timers):
-- the task gives up on h, as task_await's timer does.
local function fired(task, h)
  give_up(task, h)
end

--- The end of a timed await in C whose timer fired, once h's end woke the
-- task: h's result, or a timeout when the timer's give_up cancelled it.
local function timed_end(h, v, msg, err, ...)
  if v == nil and err == E.ECANCELED then
    return fail_timed_out(h.op)
  end
  return v, msg, err, ...
end

if C.await_method then
  C.set_lua(wait_for, after_wake, fired, timed_end)
  handle_methods.await, handle_methods.wait = C.await_method, C.wait_method
else
  -- The same in Lua: c_await returns true and h's result once h woke the
  -- task, nothing if something else did, or false at once when the
  -- common case does not apply.
  function handle_methods.await(h, timeout)
    if timeout == nil then
      local r, a, b, c = c_await(h)
      if r == true then return a, b, c end
      if r == nil then return after_wake(h) end
    end
    return wait_for("await", h, timeout)
  end

  function handle_methods.wait(h, timeout)
    if timeout == nil then
      local r, a, b, c = c_await(h)
      if r == true then return a, b, c end
      if r == nil then return after_wake(h) end
    end
    return wait_for("wait", h, timeout)
  end
end

-- h:result() is the C method: it claims (outputs.claim) a handle whose
-- failure outputs.lua noted, which marks it in C for that.
core.set_claim(claim)

---------------------------------------------------------------- the loop

-- Resumes the ready tasks (tasks made ready meanwhile wait for the next
-- round); in C, see src/lioq_loop.c.
run_ready = c_run

--- Waits for completions (or the next timer) and wakes their tasks.
-- Returns false when nothing at all can wake a task any more.
local function poll()
  local q = loop_q
  local timeout
  if c_nready() > 0 then
    timeout = 0
  else
    timeout = next_timer()
  end
  -- c_poll wakes the tasks awaiting handles itself, and leaves the other
  -- handles (kept of them) in `into` for dispatch.
  local n, kept = c_poll(timeout, into)
  if not n then error("ioq.run: " .. kept, 0) end
  if n == 0 and timeout == nil then
    -- An endless wait came back empty: nothing is pending, or nothing
    -- pending can ever arrive (receives starved of pool buffers that
    -- waiting tasks hold), and no timer runs.
    return false
  end
  if n == 0 and q_pending(q) == 0 and timeout > 0 then  -- only timers
    h_wait(q:sleep(timeout))
  end
  for i = 1, kept do
    local h = into[i]
    into[i] = nil
    dispatch(h)
  end
  fire_timers()
  return true
end

--- Runs the tasks until every one has ended.
local function drive()
  local cancelling = false
  while alive > 0 do
    run_ready()
    if alive == 0 then break end
    if main_task.status == "failed" and not cancelling then
      -- The main task failed: cancel the others, then let them end.
      cancelling = true
      for _, t in pairs(tasks) do t:cancel() end  -- lua/ioq/task.lua
    elseif not poll() then
      local n = alive
      for co in pairs(tasks) do coroutine.close(co) end
      error(string.format("ioq.run: %d task(s) wait for each other and nothing" ..
        " else can wake them (deadlock)", n), 0)
    end
  end
end

local function none() return false end

local function reset_loop()
  running, loop_q, main_task = false, nil, nil
  -- Tasks a run left unended (a deadlock, a failed loop) lose their
  -- records, which the next run reuses: a wake or cancel of one later
  -- must not reach the task that has its number then.
  for _, t in pairs(tasks) do t.id = 0 end
  heap_filter(timers, none)  -- no record keeps an entry of the old heap
  tasks, alive, waiters, timers, failed, into = {}, 0, {}, {}, {}, {}
  live = 0
  C.stop()
  return outputs.reset()
end

---------------------------------------------------------------- for siblings
-- What lua/ioq/*.lua may use of the loop; nothing else of its state is
-- reachable.
local loop = {
  fail = fail, fail_canceled = fail_canceled, fail_timed_out = fail_timed_out,
  Task = Task, ended = ended, finish = finish,   -- tasks
  current_task = current_task, suspend = suspend, wake = wake, sync = sync,
  add_waiter = add_waiter, remove_waiter = remove_waiter,    -- waits
  give_up = give_up, drive_until = drive_until, wait_for = wait_for,
  suspend_on = suspend_on,
  add_timer = add_timer, arm_timer = arm_timer, cancel_timer = cancel_timer,
  dispatch = dispatch, drive = drive,                        -- the run
  blocking_queue = blocking_queue, current_queue = current_queue,
}

--- The running loop's queue, or nil outside a loop.
function loop.queue()
  return loop_q
end

--- ioq.spawn(fn, ...): a new task in the running loop.
function loop.spawn(fn, ...)
  if not running then error("ioq.spawn: no loop is running (call it inside ioq.run)", 2) end
  if type(fn) ~= "function" then
    argerror(1, "spawn", "function expected, got " .. type(fn))
  end
  return new_task(fn, ...)
end

--- Starts a run on queue `q` with fn(...) as its main task; returns that
-- task and the list that failed tasks go to.
function loop.start(q, fn, ...)
  reset_loop()
  running, loop_q = true, q
  C.start(q, waiters)
  main_task = new_task(fn, ...)
  return main_task, failed
end

--- Ends the run: the loop's state is new again. Returns the records of
-- the outputs nobody awaited that failed, and how many more there were.
function loop.stop()
  return reset_loop()
end

return loop
