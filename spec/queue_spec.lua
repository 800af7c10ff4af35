-- The queue: many ops beyond the ring's size, waiting, submitting, closing.
local ioq = require "ioq"
local util = require "support.util"

describe("queue", function()
  after_each(util.cleanup)

  it("reports its backend and ioq lists the usable ones", function()
    local q <close> = ioq.queue()
    local names = ioq.backends()
    assert.is_true(#names >= 1)
    assert.is_truthy(({ io_uring = true, epoll = true, iocp = true })[q.backend])
    assert.matches("^ioq.queue %(" .. q.backend, tostring(q))
    assert.matches("^%d+%.%d+%.%d+$", ioq.version)
  end)

  it("waits for nothing: q:wait with no op pending returns 0 at once", function()
    local q <close> = ioq.queue()
    assert.are.equal(0, q:wait())
    assert.are.equal(0, q:wait(5))
    assert.are.equal(0, q:pending())
  end)

  it("keeps 1,000 ops in flight on a 64-entry ring and loses none", function()
    local q <close> = ioq.queue { entries = 64 }
    local handles, seen = {}, {}
    for i = 1, 1000 do handles[i] = q:nop() end
    assert.are.equal(1000, q:pending())
    local into, total = {}, 0
    while q:pending() > 0 do
      local n = q:wait(nil, into)
      for i = 1, n do
        local h = into[i]
        assert.is_nil(seen[h], "a handle was reported twice")
        seen[h] = true
      end
      total = total + n
    end
    assert.are.equal(1000, total)
    for i = 1, 1000 do
      assert.is_true(handles[i]:done())
      assert.is_true(handles[i]:result())
      assert.is_true(seen[handles[i]])
    end
  end)

  it("loses no completion when the completion queue overflows", function()
    -- Each submit of 1,000 reads at once overruns a 4-entry ring's CQ.
    local q <close> = ioq.queue { entries = 4 }
    local name = util.tmpfile(string.rep("x", 4096))
    local f <close> = assert(io.open(name, "rb"))
    local hs = {}
    for i = 1, 1000 do hs[i] = q:read(f, ioq.buffer(16), i % 4096) end
    q:submit()
    local total = 0
    while q:pending() > 0 do total = total + q:wait() end
    assert.are.equal(1000, total)
    for i = 1, 1000 do
      assert.are.equal(math.min(16, 4096 - i % 4096), hs[i]:result())
    end
  end)

  it("submits on q:submit and counts what it handed over", function()
    local q <close> = ioq.queue()
    q:nop(); q:nop(); q:nop()
    assert.are.equal(3, q:submit())
    assert.are.equal(3, q:pending())
    local n = 0
    while n < 3 do n = n + q:wait() end
    assert.are.equal(0, q:pending())
  end)

  it("returns 0 from a timed wait when nothing finishes in time", function()
    local q <close> = ioq.queue()
    local h = q:sleep(5)
    local t0 = ioq.now()
    assert.are.equal(0, q:wait(0.05))
    local dt = ioq.now() - t0
    assert.is_true(dt >= 0.04 and dt < 2, "waited " .. dt)
    assert.are.equal(0, q:wait(0))
    h:cancel()
  end)

  it("close cancels and drains ops in flight, and is idempotent", function()
    local q = ioq.queue()
    local s = q:sleep(30)
    local buf = ioq.buffer(8)
    local t = require "ioq_test"
    local r, w = t.pipe()
    local rd = q:read(r, buf)   -- a pipe that stays silent
    q:submit()
    local t0 = ioq.now()
    q:close()
    assert.is_true(ioq.now() - t0 < 5)
    assert.is_true(s:done() and rd:done())
    assert.are.same({ nil, "sleep: canceled", ioq.errno.ECANCELED }, { s:result() })
    assert.are.equal(ioq.errno.ECANCELED, select(3, rd:result()))
    assert.is_false(buf:busy())
    q:close()
    assert.matches("closed", tostring(q))
    assert.has_error(function() q:nop() end, "calling 'nop' on bad self (queue is closed)")
    assert.has_error(function() q:wait() end)
    assert.are.equal(0, q:pending())
    t.close(r); t.close(w)
  end)

  it("closes through <close>", function()
    local h
    do
      local q <close> = ioq.queue()
      h = q:sleep(30)
    end
    assert.is_true(h:done())
    assert.are.equal(ioq.errno.ECANCELED, select(3, h:result()))
  end)

  it("retries a wait that a signal interrupts (EINTR)", function()
    util.posix_only("signals (SIGALRM)")
    if os.getenv("IOQ_VALGRIND") then
      pending("under valgrind a signal waits until the system call ends, so no EINTR")
      return
    end
    local t = require "ioq_test"
    local q <close> = ioq.queue()
    local before = t.alarms()
    t.arm_alarm(0.05)
    local h = q:sleep(0.3)
    local t0 = ioq.now()
    assert.is_true(h:wait())
    assert.is_true(ioq.now() - t0 >= 0.25)
    assert.are.equal(before + 1, t.alarms())
    t.arm_alarm(0.05)
    q:sleep(0.3)
    assert.are.equal(1, q:wait())
    assert.are.equal(before + 2, t.alarms())
  end)

  it("lets two queues use one socket, except on IOCP, which ties it to one", function()
    local q1 <close> = ioq.queue()
    local q2 <close> = ioq.queue()
    local a, b = assert(ioq.socketpair())
    finally(function() a:close(); b:close() end)
    assert.are.equal(1, q1:send(a, "x"):wait(2))  -- a is q1's now, on IOCP
    local buf1 = ioq.buffer(4)
    assert.are.equal(1, q1:recv(b, buf1):wait(2))
    local buf2 = ioq.buffer(4)
    local h = q2:recv(a, buf2)
    if q2.backend == "iocp" then  -- its completion could only reach q1
      local ok, msg, err = h:wait(2)
      assert.is_nil(ok)
      assert.are.equal(ioq.errno.EBUSY, err, msg)
      assert.are.equal(1, q1:send(a, "y"):wait(2))  -- still q1's to use
      return
    end
    assert.are.equal(2, q1:send(b, "yz"):wait(2))
    assert.are.equal(2, h:wait(2))
    assert.are.equal("yz", buf2:tostring(1, 2))
  end)

  it("rejects bad options", function()
    assert.has_error(function() ioq.queue { entries = 0 } end,
      "bad argument #1 to 'queue' (entries must be an integer in 1..32768)")
    assert.has_error(function() ioq.queue { entries = 1.5 } end)
    assert.has_error(function() ioq.queue { backend = "kqueue" } end,
      "bad argument #1 to 'queue' (unknown backend 'kqueue')")
    assert.has_error(function() ioq.queue(42) end)
  end)
end)

describe("h:resubmit", function()
  after_each(util.cleanup)

  it("runs a resolved read again at a new offset with the same handle", function()
    local q <close> = ioq.queue()
    local name = util.tmpfile("0123456789abcdef")
    local f <close> = assert(io.open(name, "rb"))
    local buf = ioq.buffer(4)
    local h = q:read(f, buf, 0)
    assert.are.equal(4, h:wait())
    assert.are.equal("0123", buf:tostring())
    assert.are.equal(h, h:resubmit(8))
    assert.is_true(buf:busy())
    assert.are.equal(4, h:wait())
    assert.are.equal("89ab", buf:tostring())
    h:resubmit()  -- same offset again
    assert.are.equal(4, h:wait())
    assert.are.equal("89ab", buf:tostring())
  end)

  it("reuses nops, sleeps and string writes; refuses what cannot be redone", function()
    local q <close> = ioq.queue()
    local n = q:nop()
    for _ = 1, 3 do
      assert.is_true(n:wait())
      n:resubmit()
    end
    assert.has_error(function() n:resubmit() end,
      "calling 'resubmit' on bad self (handle is pending)")
    assert.has_error(function() n:resubmit(5) end)
    n:wait()
    local name = util.tmpfile("")
    local f <close> = assert(io.open(name, "r+b"))
    local w = q:write(f, "ab", 0)
    w:wait()
    w:resubmit(4)
    w:wait()
    assert.are.equal("ab\0\0ab", util.readfile(name))
    local o = q:open(name)
    local file <close> = o:wait()
    assert.has_error(function() o:resubmit() end,
      "calling 'resubmit' on bad self (only data transfers, fsync, nop and sleep can be resubmitted)")
    local rd = q:read(file, ioq.buffer(2), 0)
    rd:wait()
    file:close()
    assert.has_error(function() rd:resubmit() end, "the handle's file is closed")
    q:close()
    assert.has_error(function() n:resubmit() end,
      "calling 'resubmit' on bad self (queue is closed)")
  end)

  it("refuses a buffer that another op owns now", function()
    local q <close> = ioq.queue()
    local t = require "ioq_test"
    local r, w = t.pipe()
    local buf = ioq.buffer(4)
    local name = util.tmpfile("data")
    local f <close> = assert(io.open(name, "rb"))
    local h = q:read(f, buf, 0)
    h:wait()
    local other = q:read(r, buf)
    assert.has_error(function() h:resubmit() end, "buffer in use by a pending operation")
    other:cancel()
    other:wait()
    t.close(r); t.close(w)
  end)
end)

describe("regression: require after package.loaded was reset", function()
  it("shares one set of classes, so old and new objects keep their methods", function()
    local old_q <close> = ioq.queue()
    package.loaded["ioq"], package.loaded["ioq.core"] = nil, nil
    local fresh = require "ioq"
    local new_q <close> = fresh.queue()
    assert.are.equal(getmetatable(old_q), getmetatable(new_q))
    local h = old_q:nop()
    assert.is_function(h.await)
    assert.is_true(h:await())
    package.loaded["ioq"] = ioq
  end)
end)
