-- The queue: many ops beyond the ring's size, waiting, submitting, closing.
local ioq = require "ioq"
local util = require "support.util"

describe("queue", function()
  after_each(util.cleanup)

  it("reports its backend and ioq lists the usable ones", function()
    local q <close> = ioq.queue()
    local names = ioq.backends()
    assert.is_true(#names >= 1)
    assert.is_truthy(({ io_uring = true, epoll = true })[q.backend])
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
    assert.are.same({ nil, "canceled", ioq.errno.ECANCELED }, { s:result() })
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

  it("rejects bad options", function()
    assert.has_error(function() ioq.queue { entries = 0 } end,
      "bad argument #1 to 'queue' (entries must be an integer in 1..32768)")
    assert.has_error(function() ioq.queue { entries = 1.5 } end)
    assert.has_error(function() ioq.queue { backend = "kqueue" } end,
      "bad argument #1 to 'queue' (unknown backend 'kqueue')")
    assert.has_error(function() ioq.queue(42) end)
  end)
end)
