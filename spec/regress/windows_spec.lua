-- Regressions found on Windows (IOCP, run under Wine), items 17 to 23 of
-- the Reliability II issue. Each runs on every backend where the behaviour
-- it pins applies; a hang before the fix is bounded by driving the queue
-- with short waits (h:wait would wait for a cancel's packet that never
-- comes).
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

-- Drives q until h resolves or `secs` pass; whether it resolved.
local function settle(q, h, secs)
  local t0 = ioq.now()
  q:submit()
  while not h:done() and ioq.now() - t0 < secs do
    q:wait(0.05)
  end
  return h:done()
end

describe("windows regressions", function()
  local q
  before_each(function() q = ioq.queue() end)
  after_each(function() q:close(); util.cleanup() end)

  it("#17 recv and recvfrom of a datagram larger than the buffer give the bytes that fit", function()
    local s <close> = ioq.socket("udp")
    assert(s:bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    local c <close> = ioq.socket("udp")
    local msg = string.rep("0123456789", 10)
    for round = 1, 40 do
      local b = ioq.buffer(10)
      local recv = round % 2 == 0 and q.recv or q.recvfrom
      local h
      if round % 4 < 2 then  -- the datagram waits: the call fails at once
        assert.are.equal(100, q:sendto(c, msg, "127.0.0.1", port):wait(2))
        h = recv(q, s, b)
      else                   -- the call waits: the packet brings it
        h = recv(q, s, b)
        q:submit()
        assert.are.equal(100, q:sendto(c, msg, "127.0.0.1", port):wait(2))
      end
      assert.is_true(settle(q, h, 2), "round " .. round)
      assert.are.equal(10, (h:result()))
      assert.are.equal("0123456789", b:tostring())
    end
  end)

  it("#18 an op on a handle value another queue tied after a close is EBUSY, never lost", function()
    local q2 <close> = ioq.queue()
    local a, b = ioq.socketpair()
    assert.are.equal(1, q:send(a, "x"):wait(2))  -- tied to q's port
    local value = a:fileno()
    a:close(); b:close()
    local keep, c = {}, nil                        -- the value comes back
    for _ = 1, 32 do
      local x, y = ioq.socketpair()
      keep[#keep + 1] = x; keep[#keep + 1] = y
      if x:fileno() == value then c = x elseif y:fileno() == value then c = y end
      if c then break end
    end
    finally(function() for _, s in ipairs(keep) do s:close() end end)
    if not c then
      pending("no new socket got the closed one's handle value")
      return
    end
    assert.are.equal(1, q2:send(c, "y"):wait(2))  -- q2 uses it first
    local h = q:send(c, "z")
    local done = settle(q, h, 1)
    if not done then       -- its packet went to q2's port: let q2 hand it back
      q2:sleep(0.2):wait() -- (q2:wait alone reaps nothing: q2 has no op)
      settle(q, h, 2)
    end
    assert.is_true(done, "the send completed on another queue's port")
    if q.backend == "iocp" then
      assert.are.equal(E.EBUSY, select(3, h:result()))
    else                   -- a descriptor has no queue of its own here
      assert.are.equal(1, (h:result()))
    end
  end)

  it("#20 a file opened with \"a\" appends every write, whatever offset it names", function()
    local name = util.tmpfile("hello")
    local f = assert(q:open(name, "a"):wait(2))
    assert.are.equal(1, q:write(f, "X", 0):wait(2))
    assert.are.equal(1, q:write(f, "Y", 2):wait(2))
    assert.are.equal(1, q:write(f, "Z"):wait(2))
    f:close()
    assert.are.equal("helloXYZ", util.readfile(name))
    f = assert(q:open(name, "a+"):wait(2))         -- reads where asked
    local b = ioq.buffer(5)
    assert.are.equal(5, q:read(f, b, 0):wait(2))
    assert.are.equal("hello", b:tostring())
    assert.are.equal(1, q:write(f, "W", 0):wait(2))
    f:close()
    assert.are.equal("helloXYZW", util.readfile(name))
  end)

  -- IOCP serves synchronous pipes from the system thread pool, which has
  -- at most 500 threads; elsewhere the same reads wait in the kernel.
  it("#21 with the thread pool full of blocked reads, a queued read still times out and cancels", function()
    local n = q.backend == "iocp" and 500 or 100
    local pipe = t.sync_pipe or t.pipe
    local handles = {}
    finally(function()
      q:close()              -- ends the blocked reads first
      for _, fd in ipairs(handles) do t.close(fd) end
    end)
    for _ = 1, n do
      local r, w = pipe()
      handles[#handles + 1] = r; handles[#handles + 1] = w
      q:read(r, ioq.buffer(1))
    end
    q:submit()
    q:wait(0.3)              -- the pool takes them all up
    local r, w = pipe()
    handles[#handles + 1] = r; handles[#handles + 1] = w
    local h = q:read(r, ioq.buffer(1))
    h:timeout(0.1)
    assert.is_true(settle(q, h, 3), "a read behind a full pool never timed out")
    assert.are.equal(E.ETIMEDOUT, select(3, h:result()))
    local h2 = q:read(r, ioq.buffer(1))
    q:submit()
    h2:cancel()
    assert.is_true(settle(q, h2, 3), "a read behind a full pool was never cancelled")
    assert.are.equal(E.ECANCELED, select(3, h2:result()))
  end)

  it("#22 closing a socket ends its pending recv and send with ECANCELED", function()
    local a, b = ioq.socketpair()
    finally(function() b:close() end)
    local hr = q:recv(a, ioq.buffer(16))
    local big = string.rep("x", 1 << 20)
    local hs
    for _ = 1, 64 do         -- until a send stays pending: the peer reads nothing
      hs = q:send(a, big)
      if not settle(q, hs, 0.1) then break end
    end
    assert.is_false(hs:done())
    assert.is_true(a:close())
    assert.is_true(settle(q, hr, 2), "the recv outlived its socket")
    assert.is_true(settle(q, hs, 2), "the send outlived its socket")
    assert.are.equal(E.ECANCELED, select(3, hr:result()))
    assert.are.equal(E.ECANCELED, select(3, hs:result()))
  end)

  it("#23 reuseport: set where the system has it, else fail with EOPNOTSUPP", function()
    local s <close> = ioq.socket("tcp")
    local ok, msg, err = s:setoption("reuseport", true)
    if util.windows then
      assert.is_nil(ok)
      assert.are.equal(E.EOPNOTSUPP, err)
      assert.matches("setoption", msg)
    else
      assert.is_true(ok, msg)
    end
  end)

  -- The issue asked for recv(buf, 0) to give 0 at once "as on Linux", but
  -- recv(2) of 0 bytes on a Linux stream socket waits for data (both
  -- Linux backends do): IOCP's 0-byte WSARecv already did the same. What
  -- differed is read(2), which gives 0 at once on Linux.
  it("#23 a 0-byte read gives 0 at once, on every backend", function()
    local r, w = t.pipe()
    finally(function() t.close(r); t.close(w) end)
    local h = q:read(r, ioq.buffer(8), nil, 0)
    assert.is_true(settle(q, h, 0.5), "a 0-byte read waited for data")
    assert.are.equal(0, (h:result()))
  end)

  it("#23 a 0-byte recv on a stream waits for data, as recv(2) does, and takes nothing", function()
    local l <close> = ioq.socket("tcp")
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local _, port = l:getsockname()
    local c <close> = ioq.socket("tcp")
    local ha = q:accept(l)
    assert.is_true(q:connect(c, "127.0.0.1", port):wait(2))
    local s <close> = assert(ha:wait(2))
    local buf = ioq.buffer(8)
    local h = q:recv(c, buf, 0)
    assert.is_false(settle(q, h, 0.1))
    assert.are.equal(2, q:send(s, "hi"):wait(2))
    assert.is_true(settle(q, h, 2))
    assert.are.equal(0, (h:result()))
    assert.are.equal(2, q:recv(c, buf):wait(2))
    assert.are.equal("hi", buf:tostring(1, 2))
  end)

  it("#23 a connection reset before accept took it is ECONNRESET (or accepted), not EIO", function()
    local l <close> = ioq.socket("tcp")
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local _, port = l:getsockname()
    local c = ioq.socket("tcp")
    assert.is_true(q:connect(c, "127.0.0.1", port):wait(2))
    assert(c:setoption("linger", 0))
    c:close()                -- a reset, while the connection waits in the backlog
    local h = q:accept(l)
    assert.is_true(settle(q, h, 2), "accept did not end")
    local s, _, err = h:result()
    if s then
      s:close()              -- Linux hands the reset connection over
    else
      assert.is_true(err == E.ECONNRESET or err == E.ECONNABORTED, tostring(err))
    end
  end)
end)
