-- io_uring ring setup: the best flags the kernel has, and clean fallbacks.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

local function has(list, word)
  for _, w in ipairs(list) do if w == word then return true end end
  return false
end

describe("io_uring setup", function()
  after_each(function()
    t.setenv("IOQ_URING_SETUP")
    util.cleanup()
  end)

  it("uses single issuer and deferred task running when the kernel has them", function()
    local q <close> = ioq.queue()
    if q.backend ~= "io_uring" then
      pending("the io_uring backend is not in use here (" .. q.backend .. ")")
      return
    end
    local features = q:features()
    local major, minor = io.open("/proc/sys/kernel/osrelease"):read("l"):match("^(%d+)%.(%d+)")
    if tonumber(major) * 100 + tonumber(minor) < 601 then
      pending("kernel older than 6.1 has no IORING_SETUP_DEFER_TASKRUN")
      return
    end
    assert.is_true(has(features, "single_issuer"), table.concat(features, " "))
    assert.is_true(has(features, "defer_taskrun"), table.concat(features, " "))
  end)

  it("registers its ring fd where it can; queues past the 16 a thread may register work too", function()
    collectgarbage()  -- earlier specs' queues give their registrations back
    local probe <close> = ioq.queue()
    if probe.backend ~= "io_uring" then
      pending("the io_uring backend is not in use here (" .. probe.backend .. ")")
      return
    end
    local major, minor = io.open("/proc/sys/kernel/osrelease"):read("l"):match("^(%d+)%.(%d+)")
    if tonumber(major) * 100 + tonumber(minor) < 518 then
      pending("kernel older than 5.18 has no registered ring fds")
      return
    end
    assert.is_true(has(probe:features(), "registered_ring"), table.concat(probe:features(), " "))
    local qs, registered = {}, 0
    for i = 1, 20 do
      qs[i] = ioq.queue()
      if has(qs[i]:features(), "registered_ring") then registered = registered + 1 end
    end
    assert.is_true(registered >= 1 and registered <= 15, "registered: " .. registered)
    for i = 20, 1, -1 do
      local h = qs[i]:nop()
      assert.is_true(h:wait(1))
      assert.is_true(qs[i]:sleep(0.001):wait(1))
      qs[i]:close()
    end
    t.setenv("IOQ_URING_NO_RINGFD", "1")
    local plain <close> = ioq.queue()
    t.setenv("IOQ_URING_NO_RINGFD")
    assert.is_false(has(plain:features(), "registered_ring"))
    assert.is_true(plain:nop():wait(1))
  end)

  for _, level in ipairs { "defer", "coop", "submit_all", "plain" } do
    it("works the same with the '" .. level .. "' setup", function()
      t.setenv("IOQ_URING_SETUP", level)
      local q <close> = ioq.queue { entries = 8 }
      if q.backend ~= "io_uring" then
        pending("the io_uring backend is not in use here")
        return
      end
      local features = q:features()
      if level == "plain" then assert.is_false(has(features, "submit_all")) end
      if level == "coop" then assert.is_false(has(features, "defer_taskrun")) end
      local data = util.random_bytes(10000, 5)
      local name = util.tmpfile(data)
      local f <close> = assert(io.open(name, "rb"))
      local bufs, hs = {}, {}
      for i = 1, 50 do
        bufs[i] = ioq.buffer(100)
        hs[i] = q:read(f, bufs[i], i * 100)
      end
      for _ = 1, 100 do q:nop() end
      local s = q:sleep(10)
      while q:pending() > 1 do q:wait() end
      for i = 1, 50 do
        assert.are.equal(100, hs[i]:result())
        assert.are.equal(data:sub(i * 100 + 1, i * 100 + 100), bufs[i]:tostring())
      end
      s:cancel()
      assert.are.equal(E.ECANCELED, select(3, s:wait()))
      assert.are.same({ nil, "sleep: timed out", E.ETIMEDOUT }, { q:sleep(5):wait(0.01) })
    end)
  end
end)
