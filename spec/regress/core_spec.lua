-- Regression specs for the binding (src/lioq_*.c): each pins a defect of
-- the Reliability II issue by its number, and failed before its fix.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

local function has_pool(q)
  return util.has_feature(q, "provided_buffers")
end

-- An object whose finalizer runs `fn`, left for the collector.
local function on_collect(fn)
  setmetatable({}, { __gc = fn })
end

-- Makes the collector take a small step at (nearly) every allocation, so
-- that a pending finalizer runs inside the next op call.
local function eager_gc(fn)
  collectgarbage("incremental", 0, 1000)
  local ok, err = pcall(fn)
  collectgarbage("incremental", 200, 100)
  collectgarbage()
  if not ok then error(err, 0) end
end

describe("regress: binding", function()
  after_each(util.cleanup)

  it("#1 q:stats() after q:close() on a queue that had a recv_multi", function()
    local q = ioq.queue()
    if not has_pool(q) then
      q:close()
      return pending("the " .. q.backend .. " backend has no receive pool")
    end
    local a, b = ioq.socketpair()
    local h = q:recv_multi(a)
    b:send("hi"):wait(1)
    local view = h:next(1)
    assert.are.equal("hi", view:tostring())
    q:close()
    collectgarbage()
    local st = q:stats()
    assert.are.equal(0, st.pending)
    assert.are.equal(0, st.pool_free)
    view:close()  -- goes back to a pool whose backend is gone
    assert.are.equal(0, q:stats().pool_free)
    a:close(); b:close()
  end)

  it("#2 a finalizer that closes the op's buffer inside the op call", function()
    local q <close> = ioq.queue()
    local name = util.tmpfile(string.rep("x", 4096))
    local f <close> = assert(ioq.open(name))
    local hit = 0
    eager_gc(function()
      for _ = 1, 3000 do
        local buf = ioq.buffer(64)
        on_collect(function() buf:close() end)
        local ok, h = pcall(q.read, q, f, buf, 0)
        if ok then
          local n = h:wait(5)
          assert.is_true(n == 64, "read gave " .. tostring(n))
        else
          hit = hit + 1
          assert.matches("buffer is closed", h)
        end
      end
    end)
    -- Whether the finalizer ran inside the call is up to the collector:
    -- what counts is that every call either worked or raised cleanly.
    assert.is_true(hit >= 0)
  end)

  it("#2 a finalizer that closes the queue inside the op call", function()
    local name = util.tmpfile(string.rep("x", 4096))
    eager_gc(function()
      for _ = 1, 3000 do
        local q = ioq.queue { entries = 8 }
        local f = assert(io.open(name, "rb"))
        on_collect(function() q:close() end)
        local buf = ioq.buffer(16)
        local ok, h = pcall(q.read, q, f, buf, 0)
        if ok then
          local n, msg = h:wait(5)
          -- closed with the read still in the queue: cancelled, or done
          assert.is_true(n == 16 or msg ~= nil)
        else
          assert.matches("queue is closed", h)
        end
        q:close()
        f:close()
      end
    end)
  end)

  it("#2 a finalizer that closes the socket inside a send", function()
    eager_gc(function()
      for _ = 1, 2000 do
        local q = ioq.queue { entries = 8 }
        local a, b = ioq.socketpair()
        on_collect(function() a:close() end)
        local ok, h = pcall(q.send, q, a, "x")
        if ok then h:wait(5) else assert.matches("closed socket", h) end
        q:close(); b:close()
        pcall(a.close, a)  -- the finalizer may have closed it already
      end
    end)
  end)

  it("#5 a wait on a pool whose views were dropped does not sleep forever", function()
    local q <close> = ioq.queue { recv_buffers = 2, recv_buffer_size = 16 }
    if not has_pool(q) then
      return pending("the " .. q.backend .. " backend has no receive pool")
    end
    local a, b = ioq.socketpair()
    local h = q:recv_multi(a)
    local got = {}
    for i = 1, 6 do
      b:send(string.rep(string.char(64 + i), 16)):wait(1)
      -- Take one chunk and drop the view without closing it: only the
      -- collector can give its buffer back.
      local v = h:next(2)
      assert.is_truthy(v, "chunk " .. i)
      got[#got + 1] = v:tostring()
      v = nil  -- luacheck: ignore
    end
    assert.are.equal(6, #got)
    -- Nothing pending in the kernel, and a wait with no limit returns.
    b:close()
    local v = h:next(2)
    while v do v = h:next(2) end
    a:close()
  end)

  it("#5 h:wait on a receive starved by views the script holds says ENOBUFS", function()
    local q <close> = ioq.queue { recv_buffers = 1, recv_buffer_size = 8 }
    if not has_pool(q) then
      return pending("the " .. q.backend .. " backend has no receive pool")
    end
    local a, b = ioq.socketpair()
    local h = q:recv_multi(a)
    b:send("12345678"):wait(1)
    local held = h:next(2)   -- holds the only buffer
    b:send("more"):wait(1)
    q:wait(0.05)
    assert.are.equal(0, q:wait())   -- returns: nothing can arrive
    local ok, msg, err = h:wait()
    assert.is_nil(ok)
    assert.are.equal(E.ENOBUFS, err)
    assert.matches("view", msg)
    held:close()
    assert.are.equal("more", h:next(2):tostring())
    h:cancel()
    a:close(); b:close()
  end)

  it("#9 closing a socket ends its pending recv and the peer sees the close", function()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local h = q:recv(a, ioq.buffer(16))
    q:submit()
    q:wait(0.02)
    assert.is_true(a:close())
    local n, _, err = h:wait(2)
    assert.is_nil(n)
    assert.are.equal(E.ECANCELED, err)
    assert.are.equal(0, q:recv(b, ioq.buffer(16)):wait(2))  -- end of stream
    b:close()
  end)

  it("#9 closing a listening socket ends its pending accept", function()
    local q <close> = ioq.queue()
    local l = ioq.socket("tcp")
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local _, port = l:getsockname()
    local h = q:accept(l)
    q:submit()
    q:wait(0.02)
    l:close()
    local s, _, err = h:wait(2)
    assert.is_nil(s)
    assert.are.equal(E.ECANCELED, err)
    local c = ioq.socket("tcp")
    local ok, _, cerr = q:connect(c, "127.0.0.1", port):wait(2)
    assert.is_nil(ok)
    assert.are.equal(E.ECONNREFUSED, cerr)
    c:close()
  end)

  it("#9 an op never acts on a descriptor that replaced its own", function()
    local q <close> = ioq.queue()
    for _ = 1, 20 do
      local a, b = ioq.socketpair()
      local buf = ioq.buffer(16)
      local h = q:recv(a, buf)      -- not yet sent to the kernel
      a:close(); b:close()
      local c, d = ioq.socketpair() -- likely the same descriptor numbers
      d:send("new"):wait(1)
      local n, _, err = h:wait(2)
      assert.is_nil(n)
      assert.are.equal(E.ECANCELED, err)
      assert.are.equal(3, q:recv(c, ioq.buffer(16)):wait(2))
      c:close(); d:close()
    end
  end)

  it("#9 closing a file under a pending write keeps the bytes", function()
    local q <close> = ioq.queue()
    local name = util.tmpfile()
    local f = assert(q:open(name, "w"):wait(2))
    local h = q:write(f, "last words\n", 0)
    assert.is_true(f:close())
    assert.are.equal(11, h:wait(2))
    assert.are.equal("last words\n", util.readfile(name))
  end)

  it("#12 q:close() hands unsent writes to the kernel instead of dropping them", function()
    local name = util.tmpfile()
    local q = ioq.queue()
    local f = assert(q:open(name, "w"):wait(2))
    local h = q:write(f, "not lost\n", 0)
    q:close()
    assert.are.equal(9, h:result())
    f:close()
    assert.are.equal("not lost\n", util.readfile(name))
  end)

  it("#12 a queue collected at exit still writes what it was given", function()
    local name = util.tmpfile()
    local ok, _, out = util.run_lua(string.format([[
      local ioq = require "ioq"
      local q = ioq.queue()
      local f = assert(q:open(%q, "w"):wait(2))
      q:write(f, "at exit\n", 0)
      q:send(select(2, ioq.socketpair()), "x")
    ]], name))
    assert.is_true(ok, out)
    assert.are.equal("at exit\n", util.readfile(name))
  end)

  it("#12 q:cancel_all('input') leaves writes and cancels reads", function()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local r = q:recv(a, ioq.buffer(8))
    local w = q:send(b, "out")
    assert.are.equal(1, q:cancel_all("input"))
    local _, _, err = r:wait(2)
    assert.are.equal(E.ECANCELED, err)
    assert.are.equal(3, w:wait(2))
    assert.has_error(function() q:cancel_all("some") end)
    a:close(); b:close()
  end)

  it("#14 a host with a zero byte is refused, not cut", function()
    local s = ioq.socket("udp")
    assert.has_error(function() s:bind("127.0.0.1\0junk", 0) end,
      "bad argument #1 to 'bind' (host contains a zero byte)")
    s:close()
  end)

  it("#16 a queue used from another thread raises a clear error", function()
    util.posix_only("threads from the test library")
    local t = require "ioq_test"
    local q = ioq.queue()
    local a, b = ioq.socketpair()
    local h = q:recv(a, ioq.buffer(8))
    q:submit()
    local ok, err = t.in_thread(function() return q:wait(0) end)
    assert.is_false(ok)
    assert.matches("thread that created it", err)
    ok, err = t.in_thread(function() return q:close() end)
    assert.is_false(ok)
    assert.matches("thread that created it", err)
    -- Still whole on its own thread.
    b:send("x"):wait(1)
    assert.are.equal(1, h:wait(2))
    q:close()
    a:close(); b:close()
  end)

  it("multishot accept goes on after a connection fails before accept", function()
    local q <close> = ioq.queue()
    local l = ioq.socket("tcp")
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local _, port = l:getsockname()
    if not util.has_feature(q, "multishot_accept") then
      l:close()
      return pending("no multishot accept on " .. q.backend)
    end
    local h = q:accept_multi(l)
    for _ = 1, 3 do
      local c = ioq.socket("tcp")
      assert(q:connect(c, "127.0.0.1", port):wait(2))
      c:setoption("linger", 0)
      c:close()  -- a reset, maybe before the accept
    end
    local c = ioq.socket("tcp")
    assert(q:connect(c, "127.0.0.1", port):wait(2))
    local n = 0
    while n < 4 do
      local s = h:take()
      if s then n = n + 1; s:close() else q:wait(1) end
    end
    assert.is_false(h:done())
    h:cancel()
    while not h:done() do q:wait(1) end
    c:close(); l:close()
  end)

  it("multishot accept pauses on EMFILE, hands over the error, and goes on", function()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local E = ioq.errno
      local q <close> = ioq.queue()
      local l = ioq.socket("tcp")
      assert(l:bind("127.0.0.1", 0))
      assert(l:listen())
      local _, port = l:getsockname()
      local h = q:accept_multi(l)
      if h:done() or select(3, h:take()) == E.EOPNOTSUPP then
        print("no multishot accept"); return
      end
      local c = ioq.socket("tcp")
      local files = {}
      while true do
        local f = io.open("/dev/null")
        if not f then break end
        files[#files + 1] = f
      end
      assert(q:connect(c, "127.0.0.1", port):wait(2))
      local s, msg, err
      for _ = 1, 50 do
        s, msg, err = h:take()
        if not (s == nil and err == E.EAGAIN) then break end
        q:wait(0.1)
      end
      assert(s == nil and err == E.EMFILE, "take: " .. tostring(msg))
      assert(not h:done(), "the accept ended on EMFILE")
      files[#files]:close()
      files[#files] = nil
      for _ = 1, 50 do
        s, msg, err = h:take()
        if not (s == nil and err == E.EAGAIN) then break end
        q:wait(0.1)
      end
      assert(s, "no connection after a descriptor came free: " .. tostring(msg))
      s:close()
      h:cancel()
      while not h:done() do q:wait(1) end
      print("paused ok")
    ]], {}, "ulimit -n 32 &&")
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    if out:match("no multishot accept") then
      return pending("no multishot accept on this backend")
    end
    assert.matches("paused ok", out)
  end)
end)
