-- Regression specs for the Lua loop layer (issue 12, items 10, 11, 12, 14
-- and 19): waits inside a running loop, handles several tasks await, ops
-- left pending when a run ends, argument checks, cancels that lose a race.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

-- pcall(fn, ...) that must fail; returns the message.
local function raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

-- Asserts that `msg` is the argument error `bad argument #n to 'name'`
-- raised at this file's line (the caller's own call, not inside ioq).
local function argerror(msg, n, name)
  local want = n == 0 and ("calling '" .. name .. "' on bad self")
    or ("bad argument #" .. n .. " to '" .. name .. "'")
  assert.matches("^[^\n]*loop_spec%.lua:%d+: " .. want:gsub("%p", "%%%0"), msg)
end

describe("#10 waits inside a running loop", function()
  after_each(util.cleanup)

  it("#10 h:wait() in a task suspends it and steals no other task's wake-up", function()
    ioq.run(function()
      local q = ioq.current()
      local other = ioq.spawn(function() return q:nop():await() end)
      ioq.sleep(0)  -- the other task now awaits its nop
      local log = {}
      local ticker = ioq.spawn(function()
        for i = 1, 3 do ioq.sleep(0.005); log[#log + 1] = i end
      end)
      assert.is_true(q:sleep(0.05):wait(1))
      assert.are.same({ true }, { other:join(1) })
      -- The ticker ran while this task waited: wait suspended it only.
      assert.are.same({ 1, 2, 3 }, log)
      ticker:join(1)
    end)
  end)

  it("#10 await in a coroutine.wrap generator inside a task loses no wake-up", function()
    ioq.run(function()
      local q = ioq.current()
      local other = ioq.spawn(function() return q:nop():await() end)
      ioq.sleep(0)
      local gen = coroutine.wrap(function()
        coroutine.yield(q:sleep(0.02):await(1))
        coroutine.yield(ioq.sleep(0.01))
      end)
      assert.is_true(gen())
      assert.is_true(gen())
      assert.are.same({ true }, { other:join(1) })
    end)
  end)

  it("#10 a blocking wait in a generator fires due timers and times out", function()
    ioq.run(function()
      local q = ioq.current()
      local slow = ioq.spawn(function() return q:sleep(5):await(0.02) end)
      ioq.sleep(0)
      local gen = coroutine.wrap(function() return q:sleep(5):wait(0.1) end)
      local t0 = ioq.now()
      assert.are.same({ nil, "sleep: timed out", E.ETIMEDOUT }, { gen() })
      assert.is_true(ioq.now() - t0 < 1)
      -- The other task's own deadline fired during that wait.
      local v, _, err = slow:join(1)
      assert.is_nil(v)
      assert.are.equal(E.ETIMEDOUT, err)
    end)
  end)

  it("#10 h:next() on a multishot handle in a generator loses no wake-up", function()
    ioq.run(function()
      local q = ioq.current()
      local a, b = ioq.socketpair()
      local ms = a:recv_multi()
      local other = ioq.spawn(function() return q:sleep(0.01):await() end)
      ioq.sleep(0)
      local gen = coroutine.wrap(function() return ms:next(0.05) end)
      assert.are.same({ nil, "recv: timed out", E.ETIMEDOUT }, { gen() })
      assert.are.same({ true }, { other:join(1) })
      assert.are.equal(4, b:send("ping"):await(1))
      gen = coroutine.wrap(function() return ms:next(1) end)
      assert.are.equal("ping", gen():tostring())
      ms:cancel()
      a:close(); b:close()
    end)
  end)

  it("#10 q:wait() on the running loop's queue raises a clear error", function()
    ioq.run(function()
      local q = ioq.current()
      local h = q:nop()
      local msg = raises(function() local _ = q:wait(0) end)
      assert.matches("loop", msg)
      assert.matches("loop_spec%.lua:%d+:", msg)
      assert.is_true(h:await(1))
      -- Another queue is the script's to drive.
      local q2 <close> = ioq.queue()
      q2:nop()
      assert.are.equal(1, q2:wait(1))
    end)
    local q = ioq.queue()
    q:nop()
    assert.are.equal(1, q:wait(1))  -- and outside a loop, as before
    q:close()
  end)
end)

describe("#11 handles several waiters share", function()
  after_each(util.cleanup)

  it("#11 two tasks awaiting one handle both wake with its result", function()
    ioq.run(function()
      local h = ioq.current():sleep(0.01)
      local a = ioq.spawn(function() return h:await(1) end)
      local b = ioq.spawn(function() return h:await(1) end)
      assert.are.same({ true }, { a:join(1) })
      assert.are.same({ true }, { b:join(1) })
    end)
  end)

  it("#11 cancelling one of two awaiters leaves the op to the other", function()
    ioq.run(function()
      local h = ioq.current():sleep(0.05)
      local a = ioq.spawn(function() return h:await(1) end)
      local b = ioq.spawn(function() return h:await(1) end)
      ioq.sleep(0)
      a:cancel()
      assert.are.same({ nil, "sleep: canceled", E.ECANCELED }, { a:join(1) })
      assert.are.same({ true }, { b:join(1) })
    end)
  end)

  it("#11 first with a handle given twice, or one a task awaits, works and leaves nothing behind", function()
    ioq.run(function()
      local q = ioq.current()
      local h = q:sleep(0.01)
      assert.are.same({ 1, true }, { ioq.first(h, h) })
      local h2 = q:sleep(0.01)
      local t = ioq.spawn(function() return h2:await(1) end)
      ioq.sleep(0)
      assert.are.same({ 1, true }, { ioq.first(h2) })
      assert.are.same({ true }, { t:join(1) })
      -- No hook of those calls wakes this later await early.
      local t0 = ioq.now()
      assert.is_true(q:sleep(0.05):await(1))
      assert.is_true(ioq.now() - t0 >= 0.04)
    end)
  end)

  it("#11 a first that raises leaves no hook that wakes a later await", function()
    ioq.run(function()
      local q = ioq.current()
      local h = q:nop()
      local other <close> = ioq.queue()
      raises(ioq.first, h, other:nop())
      raises(ioq.first, h, 5)
      local t0 = ioq.now()
      assert.is_true(q:sleep(0.05):await(1))
      assert.is_true(ioq.now() - t0 >= 0.04)
      assert.is_true(h:await(1))
    end)
  end)
end)

describe("#12 ops left pending when a run ends", function()
  after_each(util.cleanup)

  it("#12 a write started and not awaited by the main task reaches the file", function()
    local name = util.tmpfile("")
    ioq.run(function()
      local f = assert(ioq.open(name, "w"))
      f:write("last words\n", 0)
    end)
    assert.are.equal("last words\n", util.readfile(name))
  end)

  it("#12 a final send leaves; a pending receive is cancelled", function()
    local a, b = ioq.socketpair()
    local t0 = ioq.now()
    ioq.run(function()
      a:recv(ioq.buffer(16))  -- nobody awaits it: cancelled at the end
      a:send("bye")
    end)
    assert.is_true(ioq.now() - t0 < 1)
    local buf = ioq.buffer(16)
    assert.are.equal(3, b:recv(buf):wait(1))
    assert.are.equal("bye", buf:tostring(1, 3))
    a:close(); b:close()
  end)

  it("#12 the run's own queue keeps the outputs too (opts.queue)", function()
    local name = util.tmpfile("")
    local q <close> = ioq.queue()
    ioq.run({ queue = q }, function()
      local f = assert(ioq.open(name, "w"))
      f:write("mine\n", 0)
    end)
    assert.are.equal(0, q:pending())
    assert.are.equal("mine\n", util.readfile(name))
  end)

  it("#12 a write nobody awaited that failed is reported, and raises unless errors = report", function()
    local name = util.tmpfile("x")
    local msg = raises(ioq.run, function()
      local f = assert(ioq.open(name, "r"))
      f:write("y", 0)
    end)
    assert.matches("write", msg)
    -- Awaited (or looked at) failures are the script's: no report.
    assert.has_no.errors(function()
      ioq.run(function()
        local f = assert(ioq.open(name, "r"))
        local h = f:write("y", 0)
        ioq.sleep(0.01)
        assert.is_nil((h:result()))
      end)
    end)
    assert.has_no.errors(function()
      ioq.run({ errors = "report" }, function()
        local f = assert(ioq.open(name, "r"))
        f:write("y", 0)
      end)
    end)
  end)

  it("#12 an output that cannot finish is cancelled after the linger time, and reported", function()
    local a, b = ioq.socketpair()
    local big = string.rep("x", 8 << 20)  -- more than any socket buffer
    local t0 = ioq.now()
    local msg = raises(ioq.run, { linger = 0.1 }, function()
      -- The socket's buffers are full after this (it sends part of it, or
      -- none before the timeout cancels it).
      local n, _, err = a:send(big):await(0.3)
      assert(n and n < #big or err == E.ETIMEDOUT)
      a:send("tail")
    end)
    assert.is_true(ioq.now() - t0 < 2)
    assert.matches("send", msg)
    a:close(); b:close()
  end)

  it("#12 a send nobody awaited that went out short is reported", function()
    if util.windows then
      -- An overlapped WSASend takes all of it, or waits: never short.
      return pending("a send on Windows is never short: it waits for room")
    end
    local a, b = ioq.socketpair()
    local big = string.rep("x", 8 << 20)  -- more than any socket buffer
    local msg = raises(ioq.run, { linger = 1 }, function()
      local h = a:send(big)
      while not h:done() do ioq.sleep(0.01) end  -- resolved, not looked at
    end)
    assert.matches("^ioq.run: an op nobody awaited failed: send: only %d+ of 8388608 bytes went out", msg)
    a:close(); b:close()
  end)

  it("#12 outside a loop, a write nobody waits for still happens", function()
    local name = util.tmpfile("")
    local f = assert(ioq.open(name, "w"))
    f:write("eager\n", 0)
    local t0 = ioq.now()
    local got
    repeat got = util.readfile(name) until got ~= "" or ioq.now() - t0 > 1
    assert.are.equal("eager\n", got)
    f:close()
  end)
end)

describe("#14 argument checks", function()
  after_each(util.cleanup)

  it("#14 join and next with a bad timeout raise in the caller, and the loop goes on", function()
    ioq.run(function()
      local t = ioq.spawn(function() ioq.sleep(0.01); return "ok" end)
      argerror(raises(function() local _ = t:join(0 / 0) end), 1, "join")
      argerror(raises(function() local _ = t:join("x") end), 1, "join")
      argerror(raises(function() local _ = t:join(-1) end), 1, "join")
      assert.are.equal("ok", t:join(1))
    end)
  end)

  it("#14 next with a bad timeout leaves the multishot handle usable", function()
    ioq.run(function()
      local a, b = ioq.socketpair()
      local ms = a:recv_multi()
      argerror(raises(function() local _ = ms:next(0 / 0) end), 1, "next")
      argerror(raises(function() local _ = ms:next("x") end), 1, "next")
      b:send("hi")
      local item = assert(ms:next(1))
      assert.are.equal("hi", item:tostring())
      ms:cancel()
      a:close(); b:close()
    end)
  end)

  it("#14 the loop functions name the caller's argument", function()
    ioq.run(function()
      local q = ioq.current()
      argerror(raises(function() local _ = ioq.gather(5) end), 1, "gather")
      argerror(raises(function() local _ = ioq.first(q:nop(), 5) end), 2, "first")
      argerror(raises(function() local _ = ioq.spawn(5) end), 1, "spawn")
      argerror(raises(function() local _ = q:nop():await("x") end), 1, "await")
      argerror(raises(function() local _ = q:nop():wait(0 / 0) end), 1, "wait")
      local t = ioq.spawn(function() end)
      argerror(raises(function() local _ = t.join(5) end), 0, "join")
    end)
    argerror(raises(function() local _ = ioq.run({ queue = 5 }, print) end), 1, "run")
    argerror(raises(function() local _ = ioq.run({ linger = -1 }, print) end), 1, "run")
    argerror(raises(function() local _ = ioq.queue():nop().await(5) end), 0, "await")
    argerror(raises(function() local _ = ioq.sleep("x") end), 1, "sleep")
  end)

  it("#14 file and socket methods name their own arguments", function()
    local name = util.tmpfile("abc")
    local f = assert(ioq.open(name, "r"))
    argerror(raises(function() local _ = f:read(5) end), 1, "read")
    argerror(raises(function() local _ = f:read(ioq.buffer(4), -1) end), 2, "read")
    argerror(raises(function() local _ = f:write({}) end), 1, "write")
    f:close()
    argerror(raises(function() local _ = f:read(ioq.buffer(4)) end), 0, "read")
    argerror(raises(function() local _ = ioq.open({}) end), 1, "open")
    ioq.run(function()
      local g = assert(ioq.open(name, "r"))
      g:close()
      argerror(raises(function() local _ = g:read(ioq.buffer(4)) end), 0, "read")
      argerror(raises(function() local _ = g:fsync() end), 0, "fsync")
    end)
    if not util.windows then
      local a, b = ioq.socketpair()
      argerror(raises(function() local _ = a:send(5 > 4) end), 1, "send")
      argerror(raises(function() local _ = a:recv("x") end), 1, "recv")
      a:close(); b:close()
    end
  end)

  it("#14 streams check their arguments and never rewind", function()
    local a, b = ioq.socketpair()
    argerror(raises(function() local _ = ioq.stream(a, 5) end), 2, "stream")
    argerror(raises(function() local _ = ioq.stream(true) end), 1, "stream")
    argerror(raises(function() local _ = ioq.stream(a, { timeout = -1 }) end), 2, "stream")
    local s = ioq.stream(a)
    assert(b:send("abcdef"):wait(1))
    assert.are.equal("ab", s:read(2))
    argerror(raises(function() local _ = s:read(-1) end), 1, "read")
    argerror(raises(function() local _ = s:read("x") end), 1, "read")
    argerror(raises(function() local _ = s:read(1.5) end), 1, "read")
    assert.are.equal("cd", s:read(2))
    argerror(raises(function() local _ = s.read_line(5) end), 0, "read_line")
    argerror(raises(function() local _ = s:write({}) end), 1, "write")
    a:close(); b:close()
  end)
end)

describe("#19 a cancel that loses the race", function()
  after_each(util.cleanup)

  it("#19 task:cancel after the recv received hands over the bytes", function()
    ioq.run(function()
      local q = ioq.current()
      local a, b = ioq.socketpair()
      assert.are.equal(6, b:send("hello!"):await(1))
      local buf = ioq.buffer(16)
      local t = ioq.spawn(function()
        local n, msg, err = a:recv(buf):await(1)
        local n2, _, err2 = ioq.sleep(0.5)  -- the cancel comes here
        return n, msg, err, n2, err2
      end)
      ioq.sleep(0)   -- t is waiting on its recv
      q:submit()     -- the kernel does the recv; nobody reaped it yet
      t:cancel()
      local n, _, err, n2, err2 = t:join(1)
      if n == 6 then
        assert.are.equal("hello!", buf:tostring(1, 6))
        assert.is_nil(n2)
        assert.are.equal(E.ECANCELED, err2)
      else  -- the cancel won: the bytes are still in the socket
        assert.are.equal(E.ECANCELED, err)
        assert.are.equal(6, a:recv(buf):await(1))
        assert.are.equal("hello!", buf:tostring(1, 6))
      end
      a:close(); b:close()
    end)
  end)

  it("#19 a cancel that came while the task was ready hands over a done handle's result", function()
    ioq.run(function()
      local h = ioq.current():nop()
      local t = ioq.spawn(function()
        while not h:done() do coroutine.yield() end
        coroutine.yield()  -- ready, not waiting, when the cancel comes
        local v = h:await(1)
        local v2, _, err2 = ioq.sleep(0.5)
        return v, v2, err2
      end)
      assert.is_true(h:await(1))
      t:cancel()
      assert.are.same({ true, nil, E.ECANCELED }, { t:join(1) })
    end)
  end)
end)

describe("a finalizer that uses the loop while the loop is in C", function()
  it("spawns tasks while the poll hands results over, and none is lost", function()
    -- A collector step inside the poll (making a "canceled" result) runs
    -- a finalizer that spawns tasks: the task records grow and the FIFO
    -- fills under the poll's feet. Every task must still run to its end
    -- (a lost one shows as a false deadlock), every await get its result.
    -- In a child Lua: a fresh state, its collector stepping at every
    -- allocation.
    local ok, _, out = util.run_lua([[
      local ioq = require "ioq"
      local armed, spawned, wrong = true, 0, 0
      local function arm()
        setmetatable({}, { __gc = function()
          if not armed then return end
          if ioq.current() then
            for _ = 1, 8 do
              spawned = spawned + 1
              ioq.spawn(function() ioq.sleep(0.001) end)
            end
          end
          arm()
        end })
      end
      collectgarbage("incremental", 10, 1000)
      local ok, err = pcall(ioq.run, function()
        local q = ioq.current()
        arm()
        for _ = 1, 2 do
          local hs, tasks = {}, {}
          for i = 1, 100 do
            local h = q:sleep(10)
            hs[i] = h
            tasks[i] = ioq.spawn(function()
              local _, msg = h:await()
              coroutine.yield()
              return msg
            end)
          end
          ioq.sleep(0)  -- all wait in C now
          for i = 1, 100 do hs[i]:cancel() end
          for i = 1, 100 do
            -- (A bound far above the run time: the collector steps at every
            -- allocation here, slow on a loaded machine. A lost task shows
            -- as the run's deadlock error, not as this timeout.)
            if tasks[i]:join(30) ~= "sleep: canceled" then wrong = wrong + 1 end
          end
        end
        armed = false
      end)
      armed = false
      print(ok, err, wrong, spawned > 0)
    ]])
    assert(ok, out)
    assert.are.equal("true\tnil\t0\ttrue\n", out)
  end)
end)
