-- Faults from the kernel's side: descriptor limits, descriptors closed and
-- reused under a pending op, fork with a live queue.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"

describe("kernel-side faults", function()
  after_each(util.cleanup)

  it("resolves opens and sockets to EMFILE at the descriptor limit", function()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local E = ioq.errno
      local q <close> = ioq.queue()
      local files = {}
      local err
      for _ = 1, 100 do
        local f, msg, e = q:open("/dev/null"):wait()
        if not f then err = e; assert(msg:match("^open: "), msg); break end
        files[#files + 1] = f
      end
      assert(err == E.EMFILE, "open: errno " .. tostring(err))
      local s, _, e2 = ioq.socket("tcp")
      assert(s == nil and e2 == E.EMFILE, "socket: errno " .. tostring(e2))
      local ok, qerr = pcall(ioq.queue)
      assert(not ok and qerr:match("Too many open files"), tostring(qerr))
      files[#files]:close()
      files[#files] = nil
      assert(q:open("/dev/null"):wait(), "no room after a close")
      print("emfile ok")
    ]], {}, "ulimit -n 24 &&")
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    assert.matches("emfile ok", out)
  end)

  it("never hands a pending read's data to a new owner of its descriptor number", function()
    local q <close> = ioq.queue()
    if q.backend == "epoll" then
      pending("epoll cannot follow a descriptor closed under a pending op (cancel first); see README")
      return
    end
    local r1, w1 = t.pipe()
    local old = ioq.buffer(16)
    local h = q:read(r1, old)
    q:submit()
    t.close(r1)                      -- the number r1 is free again...
    local r2, w2 = t.pipe()          -- ...and most likely taken right away
    assert.are.equal(5, q:write(w2, "fresh"):wait())
    local new = ioq.buffer(16)
    assert.are.equal(5, q:read(r2, new):wait(2))
    assert.are.equal("fresh", new:tostring(1, 5))
    if q.backend == "iocp" then      -- closing a handle cancels its I/O
      local n, _, err = h:wait(2)
      assert.is_true(n == 0 or err == ioq.errno.ECANCELED, tostring(err))
      assert.are.equal(string.rep("\0", 5), old:tostring(1, 5))
      t.close(r2); t.close(w1); t.close(w2)
      return
    end
    assert.is_false(h:done())        -- the old read still waits on the old pipe
    assert.are.equal(3, q:write(w1, "old"):wait())
    assert.are.equal(3, h:wait(2))
    assert.are.equal("old", old:tostring(1, 3))
    t.close(r2); t.close(w1); t.close(w2)
  end)

  it("waits on a reused descriptor number as on a fresh one", function()
    local q <close> = ioq.queue()
    local r1, w1 = t.pipe()
    local h = q:read(r1, ioq.buffer(4))
    q:write(w1, "x"):wait()
    assert.are.equal(1, h:wait(2))
    t.close(r1); t.close(w1)
    local r2, w2 = t.pipe()          -- same numbers, new pipe
    local buf = ioq.buffer(4)
    local h2 = q:read(r2, buf)
    q:submit()
    q:wait(0.01)
    assert.is_false(h2:done())
    q:write(w2, "y"):wait()
    assert.are.equal(1, h2:wait(2))
    t.close(r2); t.close(w2)
  end)

  it("keeps a forked child off its parent's queue", function()
    util.posix_only("fork")
    local q <close> = ioq.queue()
    local r, w = t.pipe()
    local pending_read = q:read(r, ioq.buffer(8))
    q:submit()
    local pid = t.fork()
    if pid == 0 then
      local code = 0
      local ok, err = pcall(function() q:nop():wait() end)
      if ok or not tostring(err):match("belongs to the process that created it") then code = 10 end
      local ok2 = pcall(function()
        local mine <close> = ioq.queue()
        assert(mine:nop():wait())
      end)
      if not ok2 then code = code + 20 end
      t.exit(code)
    end
    assert.are.equal(0, t.waitpid(pid))
    -- The parent's queue and its pending read are untouched.
    q:write(w, "after"):wait()
    assert.are.equal(5, pending_read:wait(2))
    assert.is_true(q:nop():wait())
    t.close(r); t.close(w)
  end)
end)
