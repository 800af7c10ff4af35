-- The coroutine loop: tasks, await, deadlines, cancellation, errors.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

describe("ioq.run", function()
  after_each(util.cleanup)

  it("returns the main function's results and ends with every task", function()
    local log = {}
    local a, b = ioq.run(function(x)
      ioq.spawn(function() ioq.sleep(0.02); log[#log + 1] = "late" end)
      return x, "two"
    end, "one")
    assert.are.equal("one", a)
    assert.are.equal("two", b)
    assert.are.same({ "late" }, log)
    assert.is_nil(ioq.current())
  end)

  it("runs tasks in the order they were spawned", function()
    local log = {}
    ioq.run(function()
      for i = 1, 5 do ioq.spawn(function() log[#log + 1] = i end) end
      log[#log + 1] = "main"
      ioq.current():nop():await()
      log[#log + 1] = "main again"
    end)
    assert.are.same({ "main", 1, 2, 3, 4, 5, "main again" }, log)
  end)

  it("refuses a nested run", function()
    ioq.run(function()
      assert.has_error(function() ioq.run(function() end) end,
        "ioq.run: a loop is already running (nested ioq.run)")
    end)
  end)

  it("gives the running queue through ioq.current", function()
    assert.is_nil(ioq.current())
    ioq.run(function()
      local q = ioq.current()
      assert.are.equal("ioq.queue", getmetatable(q).__name)
      assert.is_true(q:nop():await())
    end)
  end)

  it("takes a queue of the caller's and leaves it open", function()
    local q <close> = ioq.queue()
    ioq.run({ queue = q }, function() assert.are.equal(q, ioq.current()) end)
    assert.is_true(q:nop():wait())
  end)
end)

describe("tasks", function()
  after_each(util.cleanup)

  it("join returns a task's results, also after it ended", function()
    ioq.run(function()
      local a = ioq.spawn(function(x) ioq.sleep(0.01); return x * 2, "ok" end, 21)
      local b = ioq.spawn(function() return "quick" end)
      assert.are.same({ 42, "ok" }, { a:join() })
      assert.is_true(b:done())
      assert.are.equal("quick", b:join())
      assert.are.equal("quick", b:join())
    end)
  end)

  it("join re-raises a task's error with the task's traceback", function()
    ioq.run(function()
      local task = ioq.spawn(function()
        ioq.sleep(0.001)
        local function deep() error("boom in task") end
        deep()
      end)
      local ok, err = pcall(task.join, task)
      assert.is_false(ok)
      assert.matches("boom in task", err)
      assert.matches("stack traceback:", err)
      assert.matches("in [%a ]*'deep'", err)
    end)
  end)

  it("join can time out, leaving the task running", function()
    ioq.run(function()
      local slow = ioq.spawn(function() ioq.sleep(0.1); return "slow" end)
      assert.are.same({ nil, "join: timed out", E.ETIMEDOUT }, { slow:join(0.01) })
      assert.is_false(slow:done())
      assert.are.equal("slow", slow:join())
    end)
  end)

  it("an error in a task ends that task, not the loop", function()
    local after = false
    local ok, err = pcall(ioq.run, function()
      local bad = ioq.spawn(function() error("task failed") end)
      ioq.sleep(0.01)
      assert.is_true(bad:done())
      after = true
    end)
    assert.is_true(after)
    -- Nobody joined the failed task: ioq.run raises its error at the end.
    assert.is_false(ok)
    assert.matches("task failed", err)
  end)

  it("reports an unjoined failed task on stderr, and raises unless told not to", function()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      ioq.run({ errors = "report" }, function()
        ioq.spawn(function() error("nobody joins me") end)
      end)
      print("run returned")
    ]])
    assert.is_true(ok, "exit code " .. tostring(code) .. ": " .. out)
    assert.matches("a task failed and nobody joined it: [^\n]*nobody joins me", out)
    assert.matches("stack traceback:", out)
    assert.matches("run returned", out)
    local ok2, _, out2 = util.run_lua([[
      local ioq = require "ioq"
      ioq.run(function() ioq.spawn(function() error("nobody joins me") end) end)
    ]])
    assert.is_false(ok2)
    assert.matches("nobody joins me", out2)
  end)

  it("a failed main task cancels the others and ioq.run raises its error", function()
    local closed = false
    local ok, err = pcall(ioq.run, function()
      ioq.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        local v, msg = ioq.sleep(30)
        assert(v, msg)
      end)
      ioq.sleep(0.01)
      error("main failed")
    end)
    assert.is_false(ok)
    assert.matches("main failed", err)
    assert.is_true(closed)
  end)

  it("detects tasks that wait for each other with nothing pending", function()
    local ok, err = pcall(ioq.run, function()
      local me = ioq.spawn(function() end)
      local a
      local b = ioq.spawn(function() return a:join() end)
      a = ioq.spawn(function() return b:join() end)
      me:join()
      a:join()
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
  end)

  it("a plain coroutine.yield() in a task lets the others run", function()
    local log = {}
    ioq.run(function()
      local other = ioq.spawn(function() log[#log + 1] = "other" end)
      coroutine.yield()
      log[#log + 1] = "main"
      other:join()
    end)
    assert.are.same({ "other", "main" }, log)
  end)
end)

describe("await", function()
  after_each(util.cleanup)

  it("behaves as h:wait outside a loop", function()
    local q <close> = ioq.queue()
    assert.is_true(q:nop():await())
    assert.are.same({ nil, "sleep: timed out", E.ETIMEDOUT }, { q:sleep(5):await(0.01) })
  end)

  it("times out a read whose op was not sent yet (linked timeout)", function()
    local r, w = t.pipe()
    local buf = ioq.buffer(8)
    ioq.run(function()
      local h = ioq.current():read(r, buf)
      local t0 = ioq.now()
      assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { h:await(0.05) })
      assert.is_true(ioq.now() - t0 >= 0.045)
      assert.is_false(buf:busy())  -- the kernel let go before await returned
      assert.is_true(h:done())
    end)
    t.close(r); t.close(w)
  end)

  it("times out a read already in the kernel (timer and cancel)", function()
    local r, w = t.pipe()
    local buf = ioq.buffer(8)
    ioq.run(function()
      local q = ioq.current()
      local h = q:read(r, buf)
      q:submit()
      assert.is_false(h:timeout(1))  -- too late for a linked timeout
      local t0 = ioq.now()
      assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { h:await(0.05) })
      assert.is_true(ioq.now() - t0 >= 0.045)
      assert.is_false(buf:busy())
    end)
    t.close(r); t.close(w)
  end)

  it("returns the data when it comes before the deadline", function()
    local r, w = t.pipe()
    ioq.run(function()
      local buf = ioq.buffer(8)
      ioq.spawn(function() ioq.sleep(0.01); ioq.current():write(w, "hi"):await() end)
      assert.are.equal(2, ioq.current():read(r, buf):await(5))
      assert.are.equal("hi", buf:tostring(1, 2))
    end)
    t.close(r); t.close(w)
  end)

  -- The loop's timer entries are lazy (a cancelled timeout keeps its place
  -- in the heap, a re-armed one moves only if earlier): none of that shows.
  it("times out at each await's own deadline, whatever the task's earlier timeouts were", function()
    local r, w = t.pipe()
    ioq.run(function()
      local q = ioq.current()
      local buf = ioq.buffer(8)
      local function timed(timeout)
        local t0 = ioq.now()
        assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { q:read(r, buf):await(timeout) })
        return ioq.now() - t0
      end
      assert.is_true(q:nop():await(0.02))  -- its timer, cancelled, still due in 20 ms
      local dt = timed(0.15)                -- later: not at the first one's time
      assert.is_true(dt >= 0.145 and dt < 1, "timed out after " .. dt)
      assert.is_true(q:nop():await(30))     -- cancelled, due in 30 s
      dt = timed(0.03)                      -- earlier than that
      assert.is_true(dt >= 0.025 and dt < 1, "timed out after " .. dt)
      -- Many tasks, each with a long timeout cancelled and a short one that
      -- fires: the heap drops the cancelled ones and keeps the order.
      local tasks = {}
      for i = 1, 200 do
        tasks[i] = ioq.spawn(function()
          assert.is_true(q:nop():await(10))
          local want = 0.01 + (i % 5) * 0.01
          local tr, tw = t.pipe()
          local t0 = ioq.now()
          local v, _, err = q:read(tr, ioq.buffer(1)):await(want)
          local took = ioq.now() - t0
          t.close(tr); t.close(tw)
          assert.is_nil(v)
          assert.are.equal(E.ETIMEDOUT, err)
          assert.is_true(took >= want - 0.005 and took < want + 2, "timed out after " .. took)
        end)
      end
      for i = 1, 200 do tasks[i]:join(10) end
    end)
    t.close(r); t.close(w)
  end)

  -- A timed await that waits in C (one task, nothing else awaiting the
  -- op) keeps its timer in C (src/lioq_loop.c): the cases below leave
  -- that common case while its timer is armed.
  it("times out only the task whose timer fired when another task awaits the same op", function()
    local r, w = t.pipe()
    ioq.run(function()
      local q = ioq.current()
      local buf = ioq.buffer(8)
      local h = q:read(r, buf)
      local first = ioq.spawn(function()
        local t0 = ioq.now()
        local v, msg, err = h:await(0.05)   -- waits in C, with its timer
        return v, msg, err, ioq.now() - t0
      end)
      ioq.sleep(0)                            -- it waits now
      local second = ioq.spawn(function() return h:await(5) end)
      local v, msg, err, dt = first:join(5)
      assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { v, msg, err })
      assert.is_true(dt >= 0.045 and dt < 1, "timed out after " .. dt)
      assert.is_false(h:done())              -- the op goes on for the other
      assert(q:write(w, "ok"):await())
      assert.are.same({ 2 }, { second:join(5) })
    end)
    t.close(r); t.close(w)
  end)

  it("cancels a task in a timed await with ECANCELED, and its timer reaches no later await", function()
    local r, w = t.pipe()
    local r2, w2 = t.pipe()
    ioq.run(function()
      local q = ioq.current()
      local buf = ioq.buffer(8)
      local task = ioq.spawn(function()
        local a = { q:read(r, buf):await(0.05) }
        -- Its next await, untimed, outlives the first one's deadline.
        local b = { q:read(r2, ioq.buffer(8)):await() }
        return a, b
      end)
      ioq.sleep(0.01)
      assert.is_true(task:cancel())
      ioq.sleep(0.1)                          -- past the first deadline
      assert(q:write(w2, "hey"):await())
      local a, b = task:join(5)
      assert.are.same({ nil, "read: canceled", E.ECANCELED }, a)
      assert.are.same({ 3 }, b)
    end)
    t.close(r); t.close(w); t.close(r2); t.close(w2)
  end)

  it("fires a timed await's timer on time while a plain coroutine in another task blocks the loop", function()
    local r, w = t.pipe()
    ioq.run(function()
      local q = ioq.current()
      local waiter = ioq.spawn(function()
        local t0 = ioq.now()
        local v, msg, err = q:read(r, ioq.buffer(8)):await(0.05)
        return v, msg, err, ioq.now() - t0
      end)
      ioq.sleep(0)
      -- h:wait in a plain coroutine: it drives the loop itself until done.
      coroutine.wrap(function() assert.is_true(q:sleep(0.2):wait()) end)()
      local v, msg, err, dt = waiter:join(5)
      assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { v, msg, err })
      assert.is_true(dt >= 0.045 and dt < 0.19, "timed out after " .. dt)
    end)
    t.close(r); t.close(w)
  end)

  it("leaves no timer to a task that reuses an ended task's record", function()
    local r, w = t.pipe()
    ioq.run(function()
      local q = ioq.current()
      -- Ends with its timer's entry (due in 20 ms) still in the heap.
      ioq.spawn(function() assert.is_true(q:nop():await(0.02)) end):join(5)
      local task = ioq.spawn(function() return q:read(r, ioq.buffer(8)):await() end)
      ioq.sleep(0.06)
      assert(q:write(w, "late"):await())
      assert.are.same({ 4 }, { task:join(5) })
    end)
    t.close(r); t.close(w)
  end)

  it("detects a deadlock at once, though cancelled timeouts were due much later", function()
    local t0 = ioq.now()
    local ok, err = pcall(ioq.run, function()
      assert.is_true(ioq.current():nop():await(30))
      local a
      local b = ioq.spawn(function() return a:join() end)
      a = ioq.spawn(function() return b:join() end)
      a:join()
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
    assert.is_true(ioq.now() - t0 < 5)  -- not after the 30 s
  end)

  it("sleeps 50 ms in 50 to 80 ms", function()
    ioq.run(function()
      for _ = 1, 3 do
        local t0 = ioq.now()
        assert.is_true(ioq.sleep(0.05))
        local dt = ioq.now() - t0
        assert.is_true(dt >= 0.049 and dt <= 0.08, "slept " .. dt)
      end
    end)
  end)

  it("uses next to no CPU while idle", function()
    if util.windows then
      pending("os.clock measures wall time, not CPU time, on Windows")
    end
    ioq.run(function()
      local c0, t0 = os.clock(), ioq.now()
      ioq.sleep(0.5)
      local cpu, wall = os.clock() - c0, ioq.now() - t0
      assert.is_true(cpu < 0.05 * wall, string.format("%.3f s CPU in %.3f s", cpu, wall))
    end)
  end)
end)

describe("task:cancel", function()
  after_each(util.cleanup)

  it("ends the current await with ECANCELED once the kernel let go", function()
    local r, w = t.pipe()
    local buf = ioq.buffer(8)
    ioq.run(function()
      local result
      local reader = ioq.spawn(function()
        result = { ioq.current():read(r, buf):await() }
        assert.is_false(buf:busy())
        return "cleaned up"
      end)
      ioq.sleep(0.01)
      assert.is_true(buf:busy())
      assert.is_true(reader:cancel())
      assert.are.equal("cleaned up", reader:join())
      assert.are.same({ nil, "read: canceled", E.ECANCELED }, result)
    end)
    t.close(r); t.close(w)
  end)

  it("closes the <close> variables of a cancelled task", function()
    local closed = {}
    ioq.run(function()
      local task = ioq.spawn(function()
        local _ <close> = setmetatable({}, { __close = function() closed[#closed + 1] = "a" end })
        local f <close> = assert(ioq.open("/dev/null"))
        closed.fd = f:fileno()
        assert(ioq.sleep(10))     -- raises once canceled
        closed[#closed + 1] = "not reached"
      end)
      -- until it sleeps: its open runs on a worker on epoll, which takes
      -- longer than any fixed wait under valgrind on a loaded machine
      for _ = 1, 500 do
        if closed.fd then break end
        ioq.sleep(0.01)
      end
      task:cancel()
      local ok, err = pcall(task.join, task)
      assert.is_false(ok)
      assert.matches("canceled", err)
    end)
    assert.is_number(closed.fd)
    closed.fd = nil
    assert.are.same({ "a" }, closed)
  end)

  it("cancels a task that never ran, which then never runs", function()
    local ran = false
    ioq.run(function()
      local task = ioq.spawn(function() ran = true end)
      assert.is_true(task:cancel())
      assert.are.same({ nil, "task: canceled", E.ECANCELED }, { task:join() })
      assert.is_false(task:cancel())
    end)
    assert.is_false(ran)
  end)

  it("cancels a task waiting in join", function()
    ioq.run(function()
      local sleeper = ioq.spawn(function() return ioq.sleep(0.05) end)
      local joiner = ioq.spawn(function() return sleeper:join() end)
      ioq.sleep(0.001)
      joiner:cancel()
      assert.are.same({ nil, "join: canceled", E.ECANCELED }, { joiner:join() })
      assert.is_true(sleeper:join())
    end)
  end)

  -- The loop numbers its live tasks and reuses the numbers run after run:
  -- a task that a deadlock left unended must not reach the task that has
  -- its number in a later run.
  it("a task a deadlocked run left behind wakes nobody in a later run", function()
    local stale, other
    local ok, err = pcall(ioq.run, function()
      stale = ioq.spawn(function() ioq.sleep(0); other:join() end)
      other = ioq.spawn(function() ioq.sleep(0); stale:join() end)
    end)
    assert.is_false(ok)
    assert.matches("deadlock", err)
    local got = ioq.run(function()
      local sleeper = ioq.spawn(function() return ioq.sleep(0.03) end)
      ioq.sleep(0.005)
      stale:cancel()  -- (its number is now the main task's or sleeper's)
      assert.is_false(sleeper:done())
      return sleeper:join()
    end)
    assert.is_true(got)
  end)

  it("cancels tasks awaiting in C while spawns move the loop's records", function()
    ioq.run(function()
      local q = ioq.current()
      local tasks, asleep = {}, 0
      for i = 1, 200 do
        tasks[i] = ioq.spawn(function()
          -- timed and untimed awaits, spawning more tasks in between
          for _ = 1, 3 do
            assert(q:nop():await(5))
            ioq.spawn(function() return q:nop():await() end)
            assert(q:nop():await())
          end
          asleep = asleep + 1
          return q:sleep(5):await()
        end)
      end
      local deadline = ioq.now() + 5
      while asleep < 200 and ioq.now() < deadline do ioq.sleep(0.001) end
      assert.are.equal(200, asleep)
      for i = 1, 200, 2 do assert.is_true(tasks[i]:cancel()) end
      for i = 1, 200, 2 do
        assert.are.same({ nil, "sleep: canceled", E.ECANCELED }, { tasks[i]:join() })
      end
      for i = 2, 200, 2 do
        assert.is_false(tasks[i]:done())
        assert.is_true(tasks[i]:cancel())
      end
      for i = 2, 200, 2 do
        assert.are.same({ nil, "sleep: canceled", E.ECANCELED }, { tasks[i]:join() })
      end
    end)
  end)
end)

describe("gather and first", function()
  it("gather waits for all and keeps their order", function()
    ioq.run(function()
      local q = ioq.current()
      local a = ioq.spawn(function() ioq.sleep(0.02); return "a" end)
      local b = ioq.spawn(function() return "b", 2 end)
      local ra, rb, rc = ioq.gather(a, b, q:nop())
      assert.are.same({ n = 1, "a" }, ra)
      assert.are.same({ n = 2, "b", 2 }, rb)
      assert.are.same({ n = 1, true }, rc)
    end)
  end)

  it("first returns the first to end and leaves the others going", function()
    ioq.run(function()
      local q = ioq.current()
      local slow = ioq.spawn(function() ioq.sleep(0.2); return "slow" end)
      local sleep = q:sleep(0.01)
      local i, v = ioq.first(slow, sleep)
      assert.are.equal(2, i)
      assert.is_true(v)
      assert.is_false(slow:done())
      local fast = ioq.spawn(function() return "fast" end)
      assert.are.same({ 2, "fast" }, { ioq.first(q:sleep(1), fast) })
      slow:cancel()
    end)
  end)
end)

describe("files in the loop", function()
  after_each(util.cleanup)

  it("opens through the queue and reads and writes with file methods", function()
    local name = util.tmpfile()
    ioq.run(function()
      local f <close> = assert(ioq.open(name, "w+"))
      assert.are.equal(5, f:write("hello", 0):await())
      assert.is_true(f:fsync():await())
      local buf = ioq.buffer(16)
      assert.are.equal(5, f:read(buf, 0):await())
      assert.are.equal("hello", buf:tostring(1, 5))
      local _, msg, err = ioq.open("/no/such/file")
      assert.are.equal(E.ENOENT, err)
      assert.matches("^open: ", msg)
    end)
    -- Outside a loop the same calls block.
    local f <close> = assert(ioq.open(name))
    local buf = ioq.buffer(5)
    assert.are.equal(5, f:read(buf, 0):await())
    assert.are.equal("hello", buf:tostring())
    assert.is_true(ioq.sleep(0.001))
  end)
end)

describe("scale", function()
  after_each(util.cleanup)

  it("runs 10,000 tasks that each sleep and read", function()
    local name = util.tmpfile(util.random_bytes(65536, 9))
    local data = util.readfile(name)
    local f <close> = assert(io.open(name, "rb"))
    local ok = 0
    ioq.run(function()
      local q = ioq.current()
      for i = 1, 10000 do
        ioq.spawn(function()
          ioq.sleep((i % 10) * 0.001)
          local buf = ioq.buffer(16)
          local off = (i * 37) % 65000
          assert.are.equal(16, q:read(f, buf, off):await())
          if buf:tostring() == data:sub(off + 1, off + 16) then ok = ok + 1 end
        end)
      end
    end)
    assert.are.equal(10000, ok)
  end)
end)
