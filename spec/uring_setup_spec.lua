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
