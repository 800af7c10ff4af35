-- q:connect and q:sendto to a host name: the op looks the name up and
-- connects (or sends) on a worker thread, so the calling thread never
-- waits for a lookup or a connect; numeric addresses, "localhost" and "*"
-- go the direct way. Slow lookups and chosen addresses come from an
-- LD_PRELOAD shim (spec/support/slow_lookup.c), in a child Lua.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

local build = os.getenv("IOQ_CPATH") or "build"

-- A name of this host that the hosts file (or the system) resolves to an
-- IPv4 address, or nil.
local function host_name()
  if util.windows then
    local p = io.popen("hostname 2>NUL")
    local n = p and p:read("l")
    if p then p:close() end
    if not n or n == "" then return nil end
    local q <close> = ioq.queue()
    local l = q:resolve(n, 0, { family = "inet" }):wait(10)
    return l and l[1] and n or nil
  end
  local p = io.popen("hostname 2>/dev/null")
  local n = p:read("l")
  p:close()
  if not n or n == "" then return nil end
  local q <close> = ioq.queue()
  local l = q:resolve(n, 0, { family = "inet" }):wait(10)
  return l and l[1] and n or nil
end

-- A listening TCP socket on every IPv4 address, and its port.
local function listener(backlog)
  local lst = ioq.socket("tcp")
  assert(lst:bind("0.0.0.0", 0))
  assert(lst:listen(backlog))
  local _, port = lst:getsockname()
  return lst, port
end

-- A port nothing listens on.
local function closed_port()
  local s <close> = ioq.socket("tcp")
  assert(s:bind("0.0.0.0", 0))
  local _, port = s:getsockname()
  return port
end

-- Whether h ends within `secs` seconds, waiting on q without ending it
-- (h:wait(secs) would time the op out).
local function ends_within(q, h, secs)
  local deadline = ioq.now() + secs
  while not h:done() and ioq.now() < deadline do
    q:wait(deadline - ioq.now())
  end
  return h:done()
end

-- A listener whose backlog is full, so that the next connect to it waits
-- (its SYN is dropped), with the sockets that filled it; or nil where the
-- system refuses such connects instead.
local function full_listener(q)
  local lst, port = listener(0)
  local filled = {}
  for _ = 1, 16 do
    local s = ioq.socket("tcp")
    filled[#filled + 1] = s
    local h = q:connect(s, "127.0.0.1", port)
    if not ends_within(q, h, 0.3) then
      h:cancel()
      h:wait(5)
      return lst, port, filled
    end
  end
  lst:close()
  for _, s in ipairs(filled) do s:close() end
  return nil
end

local function close_all(list)
  for _, s in ipairs(list) do s:close() end
end

-- Runs `code` in a child Lua with the lookup shim preloaded.
local function with_shim(code, env)
  util.posix_only("LD_PRELOAD")
  local shim = build .. "/slow_lookup.so"
  -- Without it the names below go to the real resolver, and wait for it.
  assert(io.open(shim), shim .. " is not built (make " .. shim .. ")"):close()
  local preload = (util.preload and util.preload .. " " or "") .. shim
  local e = { LD_PRELOAD = preload }
  for k, v in pairs(env or {}) do e[k] = v end
  local ok, status, out = util.run_lua(code, e, "timeout 60")
  assert.is_true(ok, "exit " .. tostring(status) .. ": " .. out)
  return out
end

describe("q:connect and q:sendto to a host name", function()
  after_each(util.cleanup)

  it("connect to localhost and to a name from the hosts file", function()
    local q <close> = ioq.queue()
    local lst <close>, port = listener()
    local s <close> = ioq.socket("tcp")
    local h = q:connect(s, "localhost", port)
    assert.are.equal("connect", h.op)
    assert.is_true(h:wait(10))
    local name = host_name()
    if not name then pending("this host's name does not resolve") end
    local s2 <close> = ioq.socket("tcp")
    h = q:connect(s2, name, port)
    assert.are.equal("connect", h.op)
    assert.is_true(h:wait(10))
    local peer, pport = s2:getpeername()
    assert.are.equal(port, pport)
    assert.is_truthy(peer:find("^%d+%.%d+%.%d+%.%d+$"), peer)
    -- the connection is real: the listener has it (after s's)
    local first <close> = assert(q:accept(lst):wait(10))
    assert.is_truthy(first)
    local c <close> = assert(q:accept(lst):wait(10))
    assert.are.equal(5, q:send(s2, "hello"):wait(10))
    local buf = ioq.buffer(8)
    assert.are.equal(5, q:recv(c, buf):wait(10))
    assert.are.equal("hello", buf:tostring(1, 5))
  end)

  it("sendto a name: the byte count, and the datagram arrives", function()
    local name = host_name() or "localhost"
    local q <close> = ioq.queue()
    local r <close> = ioq.socket("udp")
    assert(r:bind("0.0.0.0", 0))
    local _, port = r:getsockname()
    local u <close> = ioq.socket("udp")
    local buf = ioq.buffer(16)
    local h = q:sendto(u, "datagram", name, port)
    assert.are.equal("sendto", h.op)
    assert.are.equal(8, h:wait(10))
    assert.are.equal(8, q:recvfrom(r, buf):wait(10))
    assert.are.equal("datagram", buf:tostring(1, 8))
    -- a buffer is sent as the direct op sends it: all of it
    local data = ioq.buffer(3)
    data:set("abc")
    assert.are.equal(3, q:sendto(u, data, name, port):wait(10))
    assert.are.equal(3, q:recvfrom(r, buf):wait(10))
    assert.are.equal("abc", buf:tostring(1, 3))
  end)

  it("a name that does not exist: ENOENT with the lookup's message", function()
    local q <close> = ioq.queue()
    local s <close> = ioq.socket("tcp")
    local v, msg, err = q:connect(s, "no-such-host.invalid", 80):wait(30)
    assert.is_nil(v)
    if err == E.EAGAIN then pending("no resolver reachable here") end
    assert.are.equal(E.ENOENT, err, msg)
    assert.matches("^connect: cannot resolve 'no%-such%-host%.invalid': .", msg)
    local u <close> = ioq.socket("udp")
    v, msg, err = q:sendto(u, "x", "no-such-host.invalid", 53):wait(30)
    assert.is_nil(v)
    assert.are.equal(E.ENOENT, err, msg)
    assert.matches("^sendto: cannot resolve 'no%-such%-host%.invalid': .", msg)
  end)

  it("a name whose port is closed: ECONNREFUSED", function()
    local name = host_name()
    if not name then pending("this host's name does not resolve") end
    local q <close> = ioq.queue()
    local s <close> = ioq.socket("tcp")
    local v, msg, err = q:connect(s, name, closed_port()):wait(30)
    assert.is_nil(v)
    assert.are.equal(E.ECONNREFUSED, err, msg)
    assert.matches("^connect: ", msg)
  end)

  it("cancel and timeout while connecting, and a close of the socket", function()
    local name = host_name()
    if not name then pending("this host's name does not resolve") end
    local q <close> = ioq.queue()
    local lst, port, filled = full_listener(q)
    if not lst then pending("connects to a full listener are refused here, none waits") end
    local s <close> = ioq.socket("tcp")
    local h = q:connect(s, name, port)
    assert.is_false(ends_within(q, h, 0.3))  -- still connecting
    local t0 = ioq.now()
    h:cancel()
    local v, msg, err = h:wait(5)
    assert.is_nil(v)
    assert.are.equal(E.ECANCELED, err, msg)
    assert.are.equal("connect: canceled", msg)
    assert.is_true(ioq.now() - t0 < 2)
    local s2 <close> = ioq.socket("tcp")
    h = q:connect(s2, name, port)
    h:timeout(0.2)
    v, msg, err = h:wait(5)
    assert.is_nil(v)
    assert.are.equal(E.ETIMEDOUT, err, msg)
    assert.are.equal("connect: timed out", msg)
    -- closing the socket ends the op; its descriptor goes once it has
    local s3 = ioq.socket("tcp")
    h = q:connect(s3, name, port)
    assert.is_false(ends_within(q, h, 0.2))
    assert(s3:close())
    v, msg, err = h:wait(5)
    assert.is_nil(v)
    assert.are.equal(E.ECANCELED, err, msg)
    assert.are.equal(0, q:pending())
    close_all(filled)
    lst:close()
  end)

  it("s:bind looks a name up on the calling thread; a scoped IPv6 address is numeric", function()
    local name = host_name()
    if not name then pending("this host's name does not resolve") end
    local s <close> = ioq.socket("tcp")
    assert.is_true(s:bind(name, 0))
    local v, msg, err = ioq.socket("tcp"):bind("no-such-host.invalid", 0)
    assert.is_nil(v)
    if err == E.EAGAIN then pending("no resolver reachable here") end
    assert.are.equal(E.ENOENT, err, msg)
    assert.matches("^bind: cannot resolve 'no%-such%-host%.invalid': .", msg)
    -- a scope names an interface: a bind there fails (or not) as the
    -- kernel says, never as a lookup
    local s6 <close> = ioq.socket("udp6")
    if s6 then
      v, msg = s6:bind("fe80::1%1", 0)
      assert.is_falsy(not v and msg:find("cannot resolve", 1, true), msg)
    end
  end)

  it("raises on bad arguments as the direct op does", function()
    local q <close> = ioq.queue()
    local s <close> = ioq.socket("tcp")
    assert.has_error(function() q:connect(s, "name.invalid", 70000) end,
      "bad argument #3 to 'connect' (port must be in 0..65535)")
    assert.has_error(function() q:connect(s, "name.invalid") end,
      "bad argument #3 to 'connect' (number expected, got nil)")
    assert.has_error(function() q:connect(s, "a\0b", 1) end,
      "bad argument #2 to 'connect' (host contains a zero byte)")
    local u <close> = ioq.socket("udp")
    assert.has_error(function() q:sendto(u, 5, "name.invalid", 1) end,
      "bad argument #2 to 'sendto' (ioq.buffer or string expected, got number)")
    local closed = ioq.socket("tcp")
    closed:close()
    assert.has_error(function() q:connect(closed, "name.invalid", 1) end,
      "bad argument #1 to 'connect' (attempt to use a closed socket)")
    local busy = ioq.buffer(4)
    local a, b = ioq.socketpair()
    local r = q:recv(a, busy)
    assert.has_error(function() q:sendto(u, busy, "name.invalid", 1) end)
    b:close()
    r:wait(5)
    a:close()
    q:close()
    assert.has_error(function() q:connect(s, "name.invalid", 1) end,
      "calling 'connect' on bad self (queue is closed)")
  end)
end)

describe("lookups of connect and sendto (lookup shim)", function()
  after_each(util.cleanup)

  it("numeric addresses, localhost and * look nothing up; a name once, on a worker", function()
    local log = util.tmpfile("")
    local out = with_shim([[
      local ioq = require "ioq"
      local q <close> = ioq.queue()
      local lst = ioq.socket("tcp")
      assert(lst:bind("127.0.0.1", 0)); assert(lst:listen())
      local _, port = lst:getsockname()
      for _, host in ipairs { "127.0.0.1", "localhost", "127.1" } do
        assert(q:connect(ioq.socket("tcp"), host, port):wait(10) == true, host)
      end
      local u = ioq.socket("udp")
      assert(q:sendto(u, "x", "127.0.0.1", port):wait(10) == 1)
      local v6 = ioq.socket("udp6")
      local _, _, err = q:sendto(v6, "x", "::1", port):wait(10)
      _, _, err = q:sendto(v6, "x", "fe80::1%lo", port):wait(10)
      assert(err ~= ioq.errno.ENOENT)
      print("numeric done")
      assert(q:connect(ioq.socket("tcp"), "127.0.0.1.fast.test", port):wait(10) == true)
      print("named done")
    ]], { SLOW_LOOKUP_LOG = log })
    assert.matches("named done", out)
    assert.are.equal("127.0.0.1.fast.test\n", util.readfile(log))
  end)

  it("tries each address in turn; fails with the last one's error", function()
    local out = with_shim([[
      local ioq = require "ioq"
      local q <close> = ioq.queue()
      local lst = ioq.socket("tcp")
      assert(lst:bind("127.0.0.1", 0)); assert(lst:listen())
      local _, port = lst:getsockname()
      local s = ioq.socket("tcp")
      assert(q:connect(s, "127.0.0.2+127.0.0.1.fast.test", port):wait(10) == true)
      local peer, pport = s:getpeername()
      assert(peer == "127.0.0.1" and pport == port, tostring(peer))
      local v, msg, err = q:connect(ioq.socket("tcp"), "127.0.0.2+127.0.0.3.fast.test", port):wait(10)
      assert(v == nil and err == ioq.errno.ECONNREFUSED, msg)
      assert(msg == "connect: Connection refused", msg)
      -- the same through the loop's s:connect, which awaits the op
      ioq.run(function()
        local s2 = ioq.socket("tcp")
        assert(s2:connect("127.0.0.2+127.0.0.1.fast.test", port):await(10) == true)
      end)
      print("ok")
    ]])
    assert.matches("ok", out)
  end)

  it("cancel and timeout while looking up", function()
    local out = with_shim([[
      local ioq = require "ioq"
      local E = ioq.errno
      local q <close> = ioq.queue()
      local t0 = ioq.now()
      local h = q:connect(ioq.socket("tcp"), "127.0.0.1.slow.test", 9)
      assert(ioq.now() - t0 < 0.2, "the constructor waited for the lookup")
      assert(q:wait(0.1) == 0 and not h:done())
      h:cancel()
      local v, msg, err = h:wait(5)
      assert(v == nil and err == E.ECANCELED and msg == "connect: canceled", msg)
      h = q:sendto(ioq.socket("udp"), "x", "127.0.0.1.slow.test", 9)
      h:timeout(0.1)
      v, msg, err = h:wait(5)
      assert(v == nil and err == E.ETIMEDOUT and msg == "sendto: timed out", msg)
      assert(q:pending() == 0)
      print("ok")
    ]], { SLOW_LOOKUP_MS = "400" })
    assert.matches("ok", out)
  end)

  it("q:close lets an unawaited sendto to a name finish, as other sends", function()
    local out = with_shim([[
      local ioq = require "ioq"
      local r = ioq.socket("udp")
      assert(r:bind("127.0.0.1", 0))
      local _, port = r:getsockname()
      local q = ioq.queue()
      local h = q:sendto(ioq.socket("udp"), "kept", "127.0.0.1.slow.test", port)
      q:submit()
      q:close()  -- while the lookup still runs
      assert(h:result() == 4, select(2, h:result()))
      local rq <close> = ioq.queue()
      local buf = ioq.buffer(16)
      local n = rq:recv(r, buf):wait(5) and buf:tostring(1, 4)
      assert(n == "kept", tostring(n))
      print("ok")
    ]], { SLOW_LOOKUP_MS = "200" })
    assert.matches("ok", out)
  end)

  it("the loop runs other tasks while a connect looks its name up", function()
    local out = with_shim([[
      local ioq = require "ioq"
      local lst = ioq.socket("tcp")
      assert(lst:bind("127.0.0.1", 0)); assert(lst:listen())
      local _, port = lst:getsockname()
      local ticks, done = 0, false
      ioq.run(function()
        ioq.spawn(function()
          while not done do ticks = ticks + 1; ioq.sleep(0.02) end
        end)
        local s = ioq.socket("tcp")
        assert(s:connect("127.0.0.1.slow.test", port):await(10) == true)
        local u = ioq.socket("udp")
        assert(u:sendto("x", "127.0.0.1.slow.test", port):await(10) == 1)
        done = true
      end)
      print("ticks " .. ticks)
    ]], { SLOW_LOOKUP_MS = "300" })
    local ticks = tonumber(out:match("ticks (%d+)"))
    assert.is_true(ticks >= 10, out)
  end)
end)
