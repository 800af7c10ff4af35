--- ioq.task: the waits besides h:await, all built on the loop's suspend
-- and wake (lua/ioq/loop.lua): the methods of a task (join, done, cancel),
-- h:next on a multishot handle, and ioq.first and ioq.gather over tasks
-- and handles.
--
-- Holds no state: a task's joiners live in the task, a handle's waiters in
-- the loop. It adds methods to the Task class of ioq.loop and the method
-- next to ioq.handle; it requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local error, getmetatable, pcall, tostring, type =
  error, getmetatable, pcall, tostring, type
local pack, unpack = table.pack, table.unpack
local now = core.now
local E = core.errno
local queue_of = core.queue_of
local argerror, check_timeout, check_handle, c_call, is_handle =
  args.argerror, args.check_timeout, args.check_handle, args.c_call, args.is_handle
local Task, ended, current_task, suspend, wake, sync = loop.Task,
  loop.ended, loop.current_task, loop.suspend, loop.wake, loop.sync
local fail_canceled, fail_timed_out = loop.fail_canceled, loop.fail_timed_out
local add_waiter, remove_waiter, suspend_on =
  loop.add_waiter, loop.remove_waiter, loop.suspend_on
local finish, give_up = loop.finish, loop.give_up
local add_timer, cancel_timer = loop.add_timer, loop.cancel_timer
local loop_queue, drive_until = loop.queue, loop.drive_until

local handle_methods = core.classes.handle
local h_take, h_cancel = handle_methods.take, handle_methods.cancel
local q_wait = core.classes.queue.wait

-- What h:take says while a multishot op is armed and nothing has come.
local function nothing_yet(v, err)
  return v == nil and err == E.EAGAIN
end

-- An item, a failure, or nil alone at the end of the stream.
local function taken(v, msg, err)
  if v == nil and err == nil then return nil end
  return v, msg, err
end

---------------------------------------------------------------- multishot items

--- h:next([timeout]) on a multishot handle (q:accept_multi, q:recv_multi):
-- the next socket or buffer view; in a task it suspends until one comes,
-- elsewhere it drives the queue. nil alone when the peer has closed (the
-- end of the stream); fail, msg, errno when the op has ended (ECANCELED
-- after h:cancel()) or the timeout passed (ETIMEDOUT; the op stays armed).
function handle_methods.next(h, timeout)
  check_handle(h, "next")
  check_timeout(timeout, 1, "next")
  local v, msg, err = c_call("next", 1, pcall(h_take, h))
  if not nothing_yet(v, err) then return taken(v, msg, err) end
  local q = queue_of(h)
  local deadline = timeout and now() + timeout
  local loop_q = loop_queue()
  if not loop_q or q ~= loop_q then
    while true do
      local left = deadline and deadline - now()
      if left and left <= 0 then return fail_timed_out(h.op) end
      local n, wmsg, werr = q_wait(q, left)
      if not n then return nil, wmsg, werr end
      v, msg, err = h_take(h)
      if not nothing_yet(v, err) then return taken(v, msg, err) end
    end
  end
  local task = current_task()
  if not task then
    local ok, wmsg, werr = drive_until(function()
      v, msg, err = h_take(h)
      return not nothing_yet(v, err)
    end, deadline)
    if ok == nil then return nil, wmsg, werr end
    if not ok then return fail_timed_out(h.op) end
    return taken(v, msg, err)
  end
  if task.cancel_pending then
    task.cancel_pending = nil
    return fail_canceled(h.op)
  end
  local function timed_out_fn(t)
    t.timed_out = true
    remove_waiter(h, task)
    wake(task)
  end
  while true do
    local timer = timeout and { timed_out = false }
    suspend_on(task, h, timer, timer and math.max(deadline - now(), 0), timed_out_fn)
    remove_waiter(h, task)
    if timer then cancel_timer(timer) end
    v, msg, err = h_take(h)
    if task.canceled then
      task.canceled = nil
      if v then  -- an item came before the cancel: hand it over
        task.cancel_pending = true
        return v, msg, err
      end
      return fail_canceled(h.op)
    end
    if not nothing_yet(v, err) then return taken(v, msg, err) end
    if timer and timer.timed_out then return fail_timed_out(h.op) end
  end
end

---------------------------------------------------------------- tasks

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
  return args.check_self(t, Task, name)  -- a tail call: the level stays right
end

--- task:join([timeout]): the task's results; re-raises its error (with the
-- task's traceback); or fail, "join: timed out", ETIMEDOUT.
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
      return fail_canceled("join")
    end
    local done = wait_task(me, self, timeout)
    if me.canceled then
      me.canceled = nil
      if not done then return fail_canceled("join") end
      me.cancel_pending = true  -- it ended first: its results, then the cancel
    elseif not done then
      return fail_timed_out("join")
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
-- fail, "<op>: canceled", ECANCELED, after its op has left the kernel. If that
-- op finished anyway, the wait returns its real result and the cancel
-- goes to the task's next wait instead. A task that has not started yet
-- never runs. Returns true if the task was live.
function Task:cancel()
  check_task(self, "cancel")
  if ended(self) then return false end
  self.cancels = (self.cancels or 0) + 1  -- what ioq.gather watches
  if self.fn then
    -- It never ran: end it now, with the result a canceled await gives.
    coroutine.close(self.co)
    finish(self, true, fail_canceled("task"))
    return true
  end
  sync(self)  -- (a task that waits in C says "ready" until then)
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
  if not ended(self) then sync(self) end
  local status = self.status
  -- "ready" is also the running task's (the loop need not tell them apart)
  if status == "ready" and current_task() == self then status = "running" end
  return string.format("ioq.task (%s): %s", status,
                       tostring(self.co):match("0x%x+") or "")
end

---------------------------------------------------------------- first, gather

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

local M = {}

--- ioq.gather(...): awaits every task or handle; returns, in order, one
-- table.pack of results per item. A failed task's error is raised. When
-- the task that gathers is canceled, the items it has not waited for yet
-- are given up (handles canceled, tasks left running) and their results
-- are fail, "gather: canceled", ECANCELED.
function M.gather(...)
  local out = pack(...)
  check_items("gather", out)
  local me = current_task()
  local cancels = me and me.cancels or 0
  local function canceled() return me and (me.cancels or 0) ~= cancels end
  for i = 1, out.n do
    local item = out[i]
    if canceled() then
      if getmetatable(item) ~= Task then h_cancel(item) end
      out[i] = pack(fail_canceled("gather"))
    else
      out[i] = pack(await_item(item))
    end
  end
  if canceled() then me.cancel_pending = nil end
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
function M.first(...)
  local items = pack(...)
  if items.n == 0 then  -- nothing could ever wake the task
    argerror(1, "first", "ioq.task or ioq.handle expected, got no value")
  end
  check_items("first", items)
  local me = current_task()
  for i = 1, items.n do
    local it = items[i]
    if me and getmetatable(it) ~= Task and queue_of(it) ~= loop_queue() then
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
    return fail_canceled("first")
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
    if not winner then return fail_canceled("first") end
    me.cancel_pending = true  -- an item ended first: its results, then the cancel
  end
  return winner, await_item(items[winner])
end

return M
