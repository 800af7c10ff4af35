-- Pooled receives (s:recv_pooled, q:recv_pooled): a buffer from the
-- queue's pool only once data has arrived, so an idle socket holds none;
-- and buf:find, with which a stream cuts records where the bytes came in.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

-- Each spec that receives runs twice: with the backend's pool, and with
-- the pool turned off (IOQ_NO_MULTISHOT=1), where the receive uses a
-- buffer of its own and must give the same results.
for _, mode in ipairs { "pool", "no pool" } do
  describe("pooled receive (" .. mode .. ")", function()
    before_each(function()
      if mode == "no pool" then t.setenv("IOQ_NO_MULTISHOT", "1") end
    end)
    after_each(function()
      t.setenv("IOQ_NO_MULTISHOT")
      util.cleanup()
    end)

    local function check_pool(q)
      if mode == "pool" and not util.has_feature(q, "provided_buffers") then
        pending(q.backend .. " here has no provided buffers (io_uring before Linux 5.19)")
      end
    end

    it("resolves to n and a buffer of the n bytes, then 0 at the end", function()
      local q <close> = ioq.queue { recv_buffers = 4, recv_buffer_size = 64 }
      check_pool(q)
      local a, b = ioq.socketpair()
      local h = q:recv_pooled(a)
      assert.are.equal(0, q:wait(0.02))  -- nothing came: still pending
      assert.is_false(h:done())
      assert(q:send(b, "hello"):wait(2))
      local n, buf = h:wait(2)
      assert.are.equal(5, n)
      assert.are.equal(5, #buf)
      assert.are.equal("hello", buf:tostring())
      assert.are.equal(buf, select(2, h:result()))  -- the same buffer again
      assert.are.equal(buf, h.buffer)
      buf:close()
      b:close()
      assert.are.same({ 0 }, { q:recv_pooled(a):wait(2) })
    end)

    it("takes a pool buffer only when data comes, and gives it back on close", function()
      local q <close> = ioq.queue { recv_buffers = 4, recv_buffer_size = 64 }
      check_pool(q)
      if mode == "no pool" then pending("no pool to count") end
      local a, b = ioq.socketpair()
      local hs = {}
      for i = 1, 8 do hs[i] = q:recv_pooled(a) end  -- more than the pool has
      q:wait(0.02)
      local st = q:stats()
      assert.are.equal(4, st.pool_buffers)
      assert.are.equal(4, st.pool_free)  -- waiting receives hold none
      for i = 1, 8 do hs[i]:cancel() end
      for i = 1, 8 do assert.are.equal(E.ECANCELED, select(3, hs[i]:wait(2))) end
      assert(q:send(b, string.rep("x", 100)):wait(2))  -- more than one buffer
      local n1, v1 = q:recv_pooled(a):wait(2)
      local n2, v2 = q:recv_pooled(a):wait(2)
      assert.are.equal(64, n1)
      assert.are.equal(36, n2)
      assert.are.equal(2, q:stats().pool_free)
      v1:close(); v2:close()
      assert.are.equal(4, q:stats().pool_free)
    end)

    it("waits for a buffer when the pool is empty, and goes on once one is back", function()
      local q <close> = ioq.queue { recv_buffers = 1, recv_buffer_size = 8 }
      check_pool(q)
      if mode == "no pool" then pending("no pool to empty") end
      local a, b = ioq.socketpair()
      assert(q:send(b, "0123456789"):wait(2))
      local n, held = q:recv_pooled(a):wait(2)
      assert.are.equal(8, n)
      local h = q:recv_pooled(a)
      q:wait(0.05)
      assert.is_false(h:done())  -- data is there, but no buffer
      assert.is_true(q:stats().starvations >= 1)
      held:close()
      local n2, v2 = h:wait(2)
      assert.are.equal(2, n2)
      assert.are.equal("89", v2:tostring())
    end)

    it("times out and cancels like any receive, holding nothing after", function()
      ioq.run(function()
        local a, b = ioq.socketpair()
        assert.are.same({ nil, "recv: timed out", E.ETIMEDOUT },
                        { a:recv_pooled():await(0.02) })
        local task = ioq.spawn(function() return a:recv_pooled():await() end)
        ioq.sleep(0.01)
        task:cancel()
        assert.are.same({ nil, "recv: canceled", E.ECANCELED }, { task:join() })
        assert(b:send("after"):await())
        local n, buf = a:recv_pooled():await(2)
        assert.are.equal(5, n)
        assert.are.equal("after", buf:tostring())
        buf:close()
      end)
    end)

    it("resubmits, reusing the buffer of the last result once it is closed", function()
      local q <close> = ioq.queue { recv_buffers = 4, recv_buffer_size = 64 }
      check_pool(q)
      local a, b = ioq.socketpair()
      local h = q:recv_pooled(a)
      assert.has_error(function() h:resubmit() end,
        "calling 'resubmit' on bad self (handle is pending)")
      assert(q:send(b, "one"):wait(2))
      local n, first = h:wait(2)
      assert.are.equal(3, n)
      first:close()
      assert.are.equal(h, h:resubmit())
      assert.is_false(h:done())
      assert(q:send(b, "second"):wait(2))
      local n2, again = h:wait(2)
      assert.are.equal(6, n2)
      assert.are.equal("second", again:tostring())
      if mode == "pool" then
        assert.are.equal(first, again)  -- the closed view, lent anew
      end
      -- A buffer still open stays the script's: the next result is another.
      h:resubmit()
      assert(q:send(b, "third"):wait(2))
      local _, third = h:wait(2)
      assert.are_not.equal(again, third)
      assert.are.equal("second", again:tostring())
      assert.are.equal("third", third:tostring())
      again:close()
      -- One closed while a send still uses its bytes is not reused either.
      h:resubmit()
      assert(q:send(b, "fourth"):wait(2))
      local _, fourth = h:wait(2)
      assert.are_not.equal(third, fourth)
      third:close()
      local hs = q:send(b, fourth)
      fourth:close()
      h:resubmit()
      assert.are.equal(6, (hs:wait(2)))
      local n5, fifth = h:wait(2)
      assert.are.equal(6, n5)
      assert.are.equal("fourth", fifth:tostring())
      assert.are_not.equal(fourth, fifth)
      fifth:close()
      if mode == "pool" then assert.are.equal(4, q:stats().pool_free) end
      b:close()
      assert.are.same({ 0 }, { h:resubmit():wait(2) })
      assert.are.same({ 0 }, { h:resubmit():wait(2) })
    end)

    it("keeps datagram boundaries, one datagram per receive", function()
      local q <close> = ioq.queue { recv_buffers = 4, recv_buffer_size = 64 }
      check_pool(q)
      local a <close> = assert(ioq.socket("udp"))
      local b <close> = assert(ioq.socket("udp"))
      assert(a:bind("127.0.0.1", 0))
      local host, port = a:getsockname()
      local h = q:recv_pooled(a)
      assert(q:sendto(b, "one", host, port):wait(2))
      assert(q:sendto(b, "three", host, port):wait(2))
      local n, v = h:wait(2)
      assert.are.same({ 3, "one" }, { n, v:tostring() })
      v:close()
      local n2, v2 = h:resubmit():wait(2)
      assert.are.same({ 5, "three" }, { n2, v2:tostring() })
      v2:close()
      local w = q:recv_pooled(a)  -- waits (on IOCP holding its buffer)
      assert.are.equal(0, q:wait(0.02))
      w:cancel()
      assert.are.equal(E.ECANCELED, select(3, w:wait(2)))
      if mode == "pool" then assert.are.equal(4, q:stats().pool_free) end
    end)

    it("refuses bad arguments", function()
      local q <close> = ioq.queue()
      local a = ioq.socketpair()
      assert.has_error(function() q:recv_pooled(42) end)
      a:close()
      assert.has_error(function() q:recv_pooled(a) end)
      ioq.run(function()
        assert.has_error(function() a.recv_pooled(nil) end)
      end)
    end)

    it("h:resubmit while a finalizer it runs resubmits the same handle: queued once", function()
      -- Making the new view can run a finalizer; one that resubmitted h
      -- got it queued, then the outer call queued it again. In a child
      -- Lua: the collector's timing there is the script's alone.
      local ok, code, out = util.run_lua([[
        local ioq = require "ioq"
        local q = ioq.queue()
        local a, b = ioq.socketpair()
        local h = q:recv_pooled(a)
        assert(q:send(b, "x"):wait(2))
        local _, v = h:wait(2)  -- kept open: the next resubmit makes a view
        collectgarbage("incremental", 0, 100)  -- every allocation steps the GC
        local inner, outer_err
        for _ = 1, 20000 do
          local inside = false
          setmetatable({}, { __gc = function()
            if inside and pcall(h.resubmit, h) then inner = true end
          end })
          inside = true
          local ok, e = pcall(h.resubmit, h)
          inside = false
          if not ok then outer_err = e end
          if inner or not ok then break end
          v:close()
          assert(q:send(b, "y"):wait(2))
          _, v = h:wait(2)
        end
        collectgarbage("incremental", 200, 100)
        if not inner then print("no finalizer ran inside"); return end
        assert(q:pending() == 1, "pending " .. q:pending())
        assert(q:send(b, "zz"):wait(2))
        assert(h:wait(2))
        assert(q:pending() == 0, "pending " .. q:pending())
        print("outer: " .. tostring(outer_err))
      ]], mode == "no pool" and { IOQ_NO_MULTISHOT = "1" } or nil, "timeout 30")
      assert.is_true(ok, tostring(code) .. ": " .. out)
      if out:match("no finalizer ran inside") then
        pending("no finalizer ran inside h:resubmit in 20000 tries")
      end
      assert.matches("outer: .*handle is pending", out)
    end)

    it("keeps buffers a script dropped from leaking (collected views go back)", function()
      local q <close> = ioq.queue { recv_buffers = 2, recv_buffer_size = 16 }
      check_pool(q)
      if mode == "no pool" then pending("no pool to count") end
      local a, b = ioq.socketpair()
      for _ = 1, 10 do
        assert(q:send(b, "ping"):wait(2))
        local h = q:recv_pooled(a)
        assert.are.equal(4, (h:wait(2)))  -- the buffer is never asked for
      end
      collectgarbage(); collectgarbage()
      assert.are.equal(2, q:stats().pool_free)
    end)
  end)
end

describe("buf:find", function()
  it("finds plain bytes within i..j as string.find(s, d, i, true) does", function()
    local s = "GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\r\n\r\n"
    local b = ioq.buffer(s)
    for _, case in ipairs {
      { "\r\n\r\n" }, { "\r\n\r\n", 26 }, { "\r\n\r\n", 27 }, { "x" }, { "nope" },
      { "b", -8 }, { "GET", 2 }, { "G" }, { "\n", 1, 15 }, { "\n", 1, 16 },
    } do
      local d, i, j = case[1], case[2] or 1, case[3] or #s
      local want = { s:sub(1, j):find(d, i, true) }
      assert.are.same(want, { b:find(d, i, j) }, d .. " " .. i .. " " .. j)
    end
    assert.are.same({ nil }, { ioq.buffer(""):find("a") })
  end)

  it("raises for an empty pattern, a busy or closed buffer", function()
    local b = ioq.buffer("abc")
    assert.has_error(function() b:find("") end,
      "bad argument #1 to 'find' (non-empty string expected)")
    b:close()
    assert.has_error(function() b:find("a") end)
  end)
end)
