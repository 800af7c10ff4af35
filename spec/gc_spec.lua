-- The lifetime rules: pending ops keep what the kernel uses alive, however
-- the script drops its references, and however the state ends.
local ioq = require "ioq"
local util = require "support.util"

describe("lifetime", function()
  after_each(util.cleanup)

  it("survives dropping every handle and buffer, then collecting", function()
    local q <close> = ioq.queue()
    local data = util.random_bytes(64 * 1024, 3)
    local name = util.tmpfile(data)
    local f <close> = assert(io.open(name, "rb"))
    for i = 1, 300 do q:read(f, ioq.buffer(4096), (i * 997) % 60000) end
    q:submit()
    for _ = 1, 5 do collectgarbage() end
    while q:pending() > 0 do q:wait(); collectgarbage("step") end
    assert.are.equal(0, q:pending())
  end)

  it("delivers the right bytes to kept buffers across collections", function()
    local q <close> = ioq.queue()
    local data = util.random_bytes(64 * 1024, 4)
    local name = util.tmpfile(data)
    local jobs = {}
    do
      local f = assert(io.open(name, "rb"))
      for i = 1, 100 do
        local off = (i * 331) % 60000
        jobs[i] = { buf = ioq.buffer(512), off = off }
        q:read(f, jobs[i].buf, off)   -- handle dropped at once
      end
      f = nil  -- luacheck: ignore (the io file must survive through the ops)
    end
    for _ = 1, 5 do collectgarbage() end
    while q:pending() > 0 do q:wait() end
    for _, j in ipairs(jobs) do
      assert.are.equal(data:sub(j.off + 1, j.off + 512), j.buf:tostring())
    end
  end)

  it("survives a queue collected with ops in flight", function()
    local t = require "ioq_test"
    local r, w = t.pipe()
    do
      local q = ioq.queue()
      q:read(r, ioq.buffer(8))
      q:sleep(30)
      q:submit()
    end
    local t0 = ioq.now()
    for _ = 1, 3 do collectgarbage() end
    assert.is_true(ioq.now() - t0 < 5)
    t.close(r); t.close(w)
  end)

  it("closes the Lua state cleanly with ops in flight (child process)", function()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      local q = ioq.queue()
      local r = t.pipe()
      q:read(r, ioq.buffer(4096))          -- never completes
      q:sleep(60)
      for i = 1, 100 do q:nop() end
      local f = assert(io.open("/dev/zero", "rb"))
      for i = 1, 50 do q:read(f, ioq.buffer(65536), 0) end
      q:open("/dev/null")
      q:submit()
      os.exit(0, true)
    ]])
    assert.are.equal("", out)
    assert.is_true(ok, "exit code " .. tostring(code))
  end)

  it("closes the Lua state cleanly with unsent ops and a dropped queue", function()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local q = ioq.queue()
      q:open("/dev/null")
      q:write(1, "")
      q = nil
      os.exit(0, true)
    ]])
    assert.are.equal("", out)
    assert.is_true(ok, "exit code " .. tostring(code))
  end)

  it("leaks no descriptor from opens whose handles were dropped", function()
    local t = require "ioq_test"
    local before = t.fdcount()
    do
      local q <close> = ioq.queue()
      for _ = 1, 20 do q:open("/dev/null") end
      while q:pending() > 0 do q:wait() end
    end
    for _ = 1, 3 do collectgarbage() end
    assert.are.equal(before, t.fdcount())
  end)
end)
