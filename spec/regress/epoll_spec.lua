-- Regressions of the epoll backend (issue 12): ops blocked in a worker,
-- blocking calls on the loop's thread, a Unix connect's EAGAIN, multishot
-- accept's errors, signals in workers, long waits, and what a cancel
-- leaves in the epoll set. Those whose behaviour is common run on
-- io_uring too.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

local function backend()
  local q <close> = ioq.queue()
  return q.backend
end

local function epoll_only(why)
  util.posix_only("the epoll backend")
  if backend() ~= "epoll" then
    pending("epoll only: " .. why)
  end
end

-- Runs `code` in a child Lua (a hang there is a failure here, not a hang).
local function child(code)
  util.posix_only("child processes")
  local ok, status, out = util.run_lua(code, nil, "timeout 20")
  assert.is_true(ok, "exit " .. tostring(status) .. ": " .. out)
  assert.matches("child ok", out)
end

-- A Unix listener on a fresh path whose backlog holds one connection,
-- which a first client fills. Returns the path, and what to close.
local function full_unix_listener()
  local path = util.tmpfile()
  os.remove(path)
  local server = assert(ioq.socket("unix"))
  assert(server:bind(path))
  assert(server:listen(0))
  return path, server
end

-- A socket pair whose first end has the number of another pair's end
-- that q drained (a short read) and that was then closed outside ioq,
-- so no op saw the close. Returns c, d, and the old end a (its number
-- gone), or nothing, the spec pending, where the number was not reused.
local function pair_under_drained_number(q)
  local a, b = ioq.socketpair()
  local n = a:fileno()
  local h = q:recv(a, ioq.buffer(16))
  q:submit()
  q:wait(0.01)
  assert(q:send(b, "x"):wait(2))
  assert.are.equal(1, h:wait(2))    -- a short read: a was drained
  t.close(n)                         -- closed outside ioq: no op sees it
  b:close()
  local c, d = ioq.socketpair()
  if c:fileno() ~= n then
    c:close(); d:close(); pcall(a.close, a)
    pending("the number was not reused here")
    return
  end
  return c, d, a
end

describe("epoll regressions", function()
  after_each(function()
    if t.arm_alarm then t.arm_alarm(0) end  -- (POSIX only)
    util.cleanup()
  end)

  it("#7 a cancel, a timeout and q:close end opens of a FIFO with no peer", function()
    util.posix_only("FIFOs")
    local path = util.tmpfile()
    os.remove(path)
    child(string.format([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      local E = ioq.errno
      local path = %q
      assert(t.mkfifo(path))
      local q = ioq.queue()
      local function ends(h, want, what)
        local t0 = ioq.now()
        local r = table.pack(h:wait(3))
        assert(r[1] == nil and r[3] == want, what .. ": " .. tostring(r[1]) ..
               ", " .. tostring(r[2]) .. ", " .. tostring(r[3]))
        assert(ioq.now() - t0 < 1, what .. " took " .. (ioq.now() - t0))
      end
      -- "w": io_uring opens a FIFO for reading at once, without a writer
      -- (its first try is non-blocking); opening it to write waits for a
      -- reader on every backend.
      local h = q:open(path, "w")
      q:submit()
      q:wait(0.05)
      assert(not h:done(), "an open of a FIFO with no reader ended")
      assert(h:cancel())
      ends(h, E.ECANCELED, "cancel")
      local h2 = q:open(path, "w")
      h2:timeout(0.1)
      ends(h2, E.ETIMEDOUT, "timeout")
      -- more than the workers: some run, some wait for a worker
      local hs = {}
      for i = 1, 6 do hs[i] = q:open(path, "w") end
      q:submit()
      q:wait(0.05)
      for i = 6, 1, -1 do assert(hs[i]:cancel()) end
      for i = 1, 6 do ends(hs[i], E.ECANCELED, "cancel #" .. i) end
      -- the FIFO and the workers still work
      local hr, hw = q:open(path, "r"), q:open(path, "w")
      local fr, fw = assert(hr:wait(3)), assert(hw:wait(3))
      assert(q:write(fw, "fifo"):wait(3) == 4)
      local buf = ioq.buffer(8)
      assert(q:read(fr, buf):wait(3) == 4)
      fr:close(); fw:close()
      -- close ends what is still blocked
      q:open(path, "w"); q:open(path, "w")
      q:submit()
      q:wait(0.05)
      local t0 = ioq.now()
      q:close()
      assert(ioq.now() - t0 < 1, "close took " .. (ioq.now() - t0))
      os.remove(path)
      print("child ok")
    ]], path))
  end)

  it("#7 #8 a connect on a socket in blocking mode is a worker's, and a cancel ends it", function()
    util.posix_only("Unix sockets")
    local path = util.tmpfile()
    os.remove(path)
    child(string.format([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      local E = ioq.errno
      local path = %q
      local server <close> = assert(ioq.socket("unix"))
      assert(server:bind(path))
      assert(server:listen(0))
      local q <close> = ioq.queue()
      local first <close> = assert(ioq.socket("unix"))
      assert(q:connect(first, path):wait(2))           -- the backlog is full now
      local c <close> = assert(ioq.socket("unix"))
      assert(t.set_blocking(c:fileno(), true))
      local h = q:connect(c, path)
      local t0 = ioq.now()
      q:submit()
      assert(ioq.now() - t0 < 0.5, "q:submit blocked " .. (ioq.now() - t0))
      q:wait(0.05)
      if h:done() then error("a connect to a full backlog ended: " .. tostring(h:result())) end
      assert(h:cancel())
      local r = table.pack(h:wait(3))
      assert(r[3] == E.ECANCELED, tostring(r[1]) .. ", " .. tostring(r[2]) .. ", " .. tostring(r[3]))
      assert(ioq.now() - t0 < 1.5)
      -- once there is room, a blocking connect goes through
      local c2 <close> = assert(ioq.socket("unix"))
      assert(t.set_blocking(c2:fileno(), true))
      local h2 = q:connect(c2, path)
      q:submit()
      local peer = assert(q:accept(server):wait(2))
      assert(h2:wait(3))
      peer:close()
      os.remove(path)
      print("child ok")
    ]], path))
  end)

  it("#8 reads, writes and accepts on sockets in blocking mode never block q:submit", function()
    util.posix_only("blocking sockets")
    local alarms = t.alarms()
    t.arm_alarm(3)  -- before the fix: the blocked call fails with EINTR then
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    finally(function() a:close(); b:close() end)
    assert(t.set_blocking(a:fileno(), true))
    local buf = ioq.buffer(16)
    local h = q:read(a:fileno(), buf)
    local t0 = ioq.now()
    q:submit()
    assert.is_true(ioq.now() - t0 < 0.5, "q:submit blocked in a read")
    assert.is_false(h:done())
    assert.are.equal(2, q:send(b, "hi"):wait(2))
    assert.are.equal(2, h:wait(2))
    assert.are.equal("hi", buf:tostring(1, 2))
    -- a write bigger than the socket's buffer: what fits, at once
    local big = string.rep("w", 8 << 20)
    t0 = ioq.now()
    local n = assert(q:write(a:fileno(), big):wait(2))
    assert.is_true(n > 0 and n < #big, "wrote " .. n)
    assert.is_true(ioq.now() - t0 < 0.5, "the write blocked")
    assert.is_true(t.is_blocking(a:fileno()))   -- left as it was
    -- an accept on a listener in blocking mode, no client yet
    local server <close> = assert(ioq.socket("tcp"))
    assert(server:bind("127.0.0.1", 0))
    assert(server:listen())
    assert(t.set_blocking(server:fileno(), true))
    local port = select(2, server:getsockname())
    local ha = q:accept(server)
    t0 = ioq.now()
    q:submit()
    assert.is_true(ioq.now() - t0 < 0.5, "q:submit blocked in an accept")
    local c <close> = assert(ioq.socket("tcp"))
    assert(q:connect(c, "127.0.0.1", port):wait(2))
    local peer <close> = assert(ha:wait(2))
    assert.are.equal(1, q:send(peer, "x"):wait(2))
    assert.are.equal(alarms, t.alarms())
  end)

  it("#15 a Unix connect to a full backlog fails with EAGAIN", function()
    util.posix_only("Unix sockets")
    local path, server = full_unix_listener()
    finally(function() server:close() end)
    local q <close> = ioq.queue()
    local clients, errs = {}, {}
    for i = 1, 4 do
      clients[i] = assert(ioq.socket("unix"))
      local ok, _, err = q:connect(clients[i], path):wait(2)
      if not ok then errs[#errs + 1] = err end
    end
    for _, c in ipairs(clients) do c:close() end
    os.remove(path)
    assert.is_true(#errs > 0, "every connect to a backlog of 0 succeeded")
    for _, err in ipairs(errs) do assert.are.equal(E.EAGAIN, err) end
  end)

  it("multishot accept goes on past ECONNABORTED", function()
    epoll_only("seccomp cannot make io_uring's accept fail")
    child([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      local E = ioq.errno
      local q <close> = ioq.queue()
      local server <close> = assert(ioq.socket("tcp"))
      assert(server:bind("127.0.0.1", 0))
      assert(server:listen())
      local port = select(2, server:getsockname())
      assert(t.fail_syscall("accept", E.ECONNABORTED))
      local h = assert(q:accept_multi(server))
      local c <close> = assert(ioq.socket("tcp"))
      assert(q:connect(c, "127.0.0.1", port):wait(2))
      q:wait(0.2)
      if h:done() then error("the multishot accept ended: " .. tostring(select(2, h:result()))) end
      assert(h:cancel())
      local r = table.pack(h:wait(2))
      assert(r[3] == E.ECANCELED, tostring(r[2]))
      print("child ok")
    ]])
  end)

  it("#13 worker threads take no signal meant for the loop", function()
    child([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      local q <close> = ioq.queue()
      local name = os.tmpname()
      local f <close> = assert(q:open(name, "w"):wait(2))   -- starts the workers
      assert(q:write(f, "x", 0):wait(2) == 1)
      os.remove(name)
      t.block_alarm(true)             -- as ioq.signals does, in this thread
      t.arm_alarm(0.05)
      q:sleep(0.2):wait(1)
      assert(t.alarms() == 0, "a worker thread took the SIGALRM")
      assert(t.alarm_pending(), "SIGALRM is not pending")
      t.block_alarm(false)
      assert(t.alarms() == 1)
      print("child ok")
    ]])
  end)

  -- A guard more than a regression: before the fix the int overflowed
  -- (to 0 here: a short spin, then -1, a wait without its deadline), which
  -- the queue's own loop mostly hid.
  it("a long wait neither overflows epoll_wait's milliseconds nor spins (kernels before 5.11)", function()
    epoll_only("epoll_wait's milliseconds")
    child([[
      local ioq = require "ioq"
      local t = require "ioq_test"
      assert(t.fail_syscall("epoll_pwait2", ioq.errno.ENOSYS))
      local q <close> = ioq.queue()
      local p = assert(io.popen("sleep 0.3; echo x"))
      local h = q:read(p, ioq.buffer(8))
      q:submit()
      -- 2^32 ms less half a millisecond: 0 ms once cut to an int
      local c0 = os.clock()
      assert(q:wait(4294967.2955) == 1)
      local cpu = os.clock() - c0
      assert(cpu < 0.1, "the wait spun: " .. cpu .. " s of CPU")
      assert(h:result() == 2)
      p:close()
      -- a wait shorter than a millisecond sleeps a little, not at all
      local hs = q:sleep(0.05)
      local n, t0 = 0, ioq.now()
      while not hs:done() do q:wait(0.0001); n = n + 1 end
      assert(n < 200, n .. " waits of 0.1 ms in 50 ms")
      assert(ioq.now() - t0 < 0.1)
      print("child ok")
    ]])
  end)

  it("#9 a cancel leaves nothing armed for a descriptor number reused after close", function()
    epoll_only("what stays in the epoll set")
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local keep = t.dup(a:fileno())  -- the open file outlives a's number
    local h = q:recv(a, ioq.buffer(8))
    q:submit()
    q:wait(0.02)
    assert.is_true(h:cancel())
    assert.are.equal(E.ECANCELED, select(3, h:wait(1)))
    a:close()
    b:close()                       -- the file under `keep` now hangs up
    local c0 = os.clock()
    q:sleep(0.2):wait(1)
    local cpu = os.clock() - c0
    t.close(keep)
    assert.is_true(cpu < 0.1, "the loop spun: " .. cpu .. " s of CPU")
  end)
  -- Registrations stay (edge-triggered) and a watch remembers that its
  -- descriptor was drained: these are the hazards of that design.

  it("a new socket under a drained socket's number is waited on afresh, data first", function()
    util.posix_only("descriptor numbers reused after close(2)")
    local q <close> = ioq.queue()
    local c, d, a = pair_under_drained_number(q)
    if not c then return end
    assert(q:send(d, "fresh"):wait(2)) -- there before the receive starts
    local buf = ioq.buffer(16)
    assert.are.equal(5, q:recv(c, buf):wait(2))
    assert.are.equal("fresh", buf:tostring(1, 5))
    c:close(); d:close()
    pcall(a.close, a)
  end)

  it("a file that comes back to its number after another used it is served", function()
    util.posix_only("dup(2) and descriptor numbers")
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local n = a:fileno()
    local keep = t.dup(n)              -- the first file outlives its number
    local h = q:recv(a, ioq.buffer(16))
    q:submit()
    q:wait(0.01)
    assert(q:send(b, "1"):wait(2))
    assert.are.equal(1, h:wait(2))
    t.close(n)
    local c, d = ioq.socketpair()
    if c:fileno() ~= n then
      t.close(keep); b:close(); c:close(); d:close(); pcall(a.close, a)
      pending("the number was not reused here")
      return
    end
    -- Data for the first file: its registration, alive in `keep`, reports
    -- under the watch of n, which now serves c. It must reach no one.
    assert(q:send(b, "2"):wait(2))
    q:sleep(0.01):wait(1)
    local hc = q:recv(c, ioq.buffer(16))
    q:submit()
    q:wait(0.02)
    assert.is_false(hc:done())
    assert(q:send(d, "3"):wait(2))
    assert.are.equal(1, hc:wait(2))
    local again = q:recv(c, ioq.buffer(16))  -- finds c empty, then is canceled
    q:submit()
    q:wait(0.01)
    again:cancel()
    assert.are.equal(E.ECANCELED, select(3, again:wait(1)))
    c:close(); d:close()
    -- The first file comes back to n, its "2" long reported.
    local back = t.dup(keep)
    if back ~= n then
      t.close(back); t.close(keep); b:close(); pcall(a.close, a)
      pending("the number was taken meanwhile")
      return
    end
    local buf = ioq.buffer(16)
    assert.are.equal(1, q:read(back, buf):wait(2))
    assert.are.equal("2", buf:tostring(1, 1))
    t.close(back); t.close(keep); b:close()
    pcall(a.close, a)
  end)

  it("a socket and its duplicate each get their data, waiting at once", function()
    util.posix_only("dup(2) of a socket")
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local dup = t.dup(a:fileno())
    local ha = q:recv(a, ioq.buffer(16))
    local hd = q:read(dup, ioq.buffer(16))  -- a raw number: read is recv here
    q:submit()
    q:wait(0.02)
    assert(q:send(b, "one"):wait(2))
    local t0 = ioq.now()
    while not (ha:done() or hd:done()) and ioq.now() - t0 < 2 do q:wait(0.01) end
    q:wait(0.02)
    assert.is_true(ha:done() ~= hd:done(), "one of the two, not both")
    assert(q:send(b, "two"):wait(2))
    assert.are.equal(3, ha:wait(2))
    assert.are.equal(3, hd:wait(2))
    t.close(dup); a:close(); b:close()
  end)

  it("a multishot receive takes everything already there, past its turn's limit", function()
    local q <close> = ioq.queue{ recv_buffers = 64, recv_buffer_size = 64 }
    local a, b = ioq.socketpair()
    local data = string.rep("0123456789abcdef", 4 * 40)  -- 40 buffers' worth
    assert.are.equal(#data, q:send(b, data):wait(2))
    local h = q:recv_multi(a)
    local got = {}
    while #table.concat(got) < #data do
      local buf, msg = h:next(2)
      assert(buf, msg)
      got[#got + 1] = buf:tostring()
      buf:close()
    end
    assert.are.equal(data, table.concat(got))
    h:cancel()
    a:close(); b:close()
  end)

  it("a receive on a socket the peer closed after its last bytes ends with 0", function()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local h = q:recv(a, ioq.buffer(16))
    q:submit()
    q:wait(0.01)
    assert(q:send(b, "last"):wait(2))
    b:close()                          -- the end comes with (or right after) the bytes
    q:sleep(0.02):wait(1)
    assert.are.equal(4, h:wait(2))
    assert.are.equal(0, q:recv(a, ioq.buffer(16)):wait(2))
    a:close()
  end)
  it("an op on a new file under an old number is served while the loop never sleeps", function()
    util.posix_only("descriptor numbers reused after close(2)")
    local q <close> = ioq.queue()
    local c, d, a = pair_under_drained_number(q)
    if not c then return end
    assert(q:send(d, "fresh"):wait(2))
    local hc = q:recv(c, ioq.buffer(16))
    -- Another pair brings a report at every pass, so the loop never sleeps.
    local e, f = ioq.socketpair()
    local t0, passes = ioq.now(), 0
    while not hc:done() and ioq.now() - t0 < 2 do
      local he = q:recv(e, ioq.buffer(4))
      q:submit()
      q:send(f, "p")
      assert.are.equal(1, he:wait(1))
      passes = passes + 1
    end
    assert.are.equal(5, hc:wait(0))
    assert.is_true(passes < 50, passes .. " passes")
    c:close(); d:close(); e:close(); f:close()
    pcall(a.close, a)
  end)

  it("a receive queued behind one that stopped at TCP urgent data gets the rest", function()
    util.posix_only("send(2) with MSG_OOB")
    local q1 <close> = ioq.queue()
    local q2 <close> = ioq.queue()
    local l <close> = assert(ioq.socket("tcp"))
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen())
    local c <close> = assert(ioq.socket("tcp"))
    assert(q2:connect(c, "127.0.0.1", select(2, l:getsockname())):wait(2))
    local s <close> = assert(q1:accept(l):wait(2))
    local b1, b2 = ioq.buffer(16), ioq.buffer(16)
    local h1, h2 = q1:recv(s, b1), q1:recv(s, b2)
    q1:submit()  -- both wait before anything arrives
    assert(q2:send(c, "abc"):wait(2))
    t.send_oob(c:fileno(), "X")
    assert(q2:send(c, "def"):wait(2))
    -- A read stops at the urgent mark: the first gets the bytes before it,
    -- and the second must not wait for an edge that will not come. (Which
    -- receive gets which part differs between backends.)
    local n1, n2 = h1:wait(2), h2:wait(2)
    assert(n1 and n2, "a receive did not get the bytes past the mark")
    local got = { b1:tostring(1, n1), b2:tostring(1, n2) }
    table.sort(got)
    assert.are.same({ "abc", "def" }, got)
  end)

  it("a receive that waits for a report is served while a task's ops keep finishing at once", function()
    local a, b = ioq.socketpair()
    local got_at, stop = nil, false
    ioq.run(function()
      local q = ioq.current()
      local t0 = ioq.now()
      ioq.spawn(function()
        while not stop and ioq.now() - t0 < 3 do q:nop():await() end
      end)
      ioq.spawn(function()
        assert.are.equal(2, q:recv(a, ioq.buffer(16)):await())
        got_at = ioq.now() - t0
        stop = true
      end)
      ioq.spawn(function()
        ioq.sleep(0.1)
        assert(q:send(b, "hi"):await())
      end)
    end)
    a:close(); b:close()
    assert.is_true(got_at < 1, "the receive got its data after " .. got_at .. " s")
  end)

  it("accepts waiting on a listener in blocking mode hold one worker, not every one", function()
    util.posix_only("blocking-mode sockets")
    local q <close> = ioq.queue()
    local server <close> = assert(ioq.socket("tcp"))
    assert(server:bind("127.0.0.1", 0))
    assert(server:listen())
    assert(t.set_blocking(server:fileno(), true))  -- as another library may leave it
    local hs = {}
    for i = 1, 6 do hs[i] = q:accept(server) end
    q:submit()
    q:wait(0.05)
    local c <close> = assert(ioq.socket("tcp"))
    assert(q:connect(c, "127.0.0.1", select(2, server:getsockname())):wait(2))
    local t0 = ioq.now()
    while ioq.now() - t0 < 0.3 do q:wait(0.01) end
    local done = 0
    for i = 1, 6 do if hs[i]:done() then done = done + 1 end end
    assert.are.equal(1, done)
    -- Workers are left for the rest: a file read, say.
    local f <close> = assert(ioq.open(util.tmpfile("data"), "r"))
    assert.are.equal(4, q:read(f, ioq.buffer(64), 0):wait(1))
    for i = 1, 6 do hs[i]:cancel() end
    for i = 1, 6 do pcall(hs[i].wait, hs[i], 2) end
  end)
end)
