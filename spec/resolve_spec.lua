-- q:resolve and ioq.resolve: name lookups on a worker thread, compared
-- with what the system says; and s:connect / s:sendto with a host name,
-- which look it up through the queue, never on the loop's thread.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

local function hosts_of(list)
  local set = {}
  for _, a in ipairs(list) do set[a.host] = a end
  return set
end

describe("q:resolve", function()
  after_each(util.cleanup)

  it("resolves localhost to the loopback address", function()
    local q <close> = ioq.queue()
    local list = assert(q:resolve("localhost", 8080):wait(10))
    assert.is_true(#list >= 1)
    local set = hosts_of(list)
    assert.is_truthy(set["127.0.0.1"] or set["::1"])
    for _, a in ipairs(list) do
      assert.are.equal(8080, a.port)
      assert.are.equal("stream", a.socktype)
      assert.are.equal(a.host:find(":") and "inet6" or "inet", a.family)
    end
  end)

  it("gives a numeric address back as it is, with the hints", function()
    local q <close> = ioq.queue()
    local list = assert(q:resolve("127.0.0.1", 53, { socktype = "dgram" }):wait(10))
    assert.are.equal(1, #list)
    assert.are.same({ host = "127.0.0.1", port = 53, family = "inet", socktype = "dgram" }, list[1])
    list = assert(q:resolve("::1", 0, { family = "inet6" }):wait(10))
    assert.are.equal("::1", list[1].host)
    assert.are.equal("inet6", list[1].family)
    list = assert(q:resolve("localhost", nil, { family = "inet" }):wait(10))
    for _, a in ipairs(list) do assert.are.equal("inet", a.family) end
  end)

  it("agrees with getent for this host's own name", function()
    util.posix_only("getent")
    local p = io.popen("hostname 2>/dev/null")
    local name = p:read("l")
    p:close()
    p = io.popen("getent ahostsv4 " .. (name or "") .. " 2>/dev/null")
    local truth = {}
    for line in p:lines() do truth[line:match("^(%S+)")] = true end
    p:close()
    if not name or not next(truth) then pending("this host's name does not resolve") end
    local q <close> = ioq.queue()
    local list = assert(q:resolve(name, 1, { family = "inet" }):wait(10))
    for _, a in ipairs(list) do assert.is_true(truth[a.host], a.host) end
  end)

  it("a name that does not exist: ENOENT with the lookup's message", function()
    local q <close> = ioq.queue()
    local v, msg, err = q:resolve("no-such-host.invalid"):wait(30)
    assert.is_nil(v)
    if err == E.EAGAIN then pending("no resolver reachable here") end
    assert.are.equal(E.ENOENT, err, msg)
    assert.matches("^resolve: cannot resolve 'no%-such%-host%.invalid': ", msg)
  end)

  it("raises on bad arguments, naming them", function()
    local q <close> = ioq.queue()
    assert.has_error(function() q:resolve(nil) end,
      "bad argument #1 to 'resolve' (string expected, got nil)")
    assert.has_error(function() q:resolve("a\0b") end,
      "bad argument #1 to 'resolve' (host contains a zero byte)")
    assert.has_error(function() q:resolve("") end,
      "bad argument #1 to 'resolve' (host is empty)")
    assert.has_error(function() q:resolve("localhost", 70000) end,
      "bad argument #2 to 'resolve' (port must be in 0..65535)")
    assert.has_error(function() q:resolve("localhost", 1, { family = "ipx" }) end,
      "bad argument #3 to 'resolve' (bad family 'ipx')")
    assert.has_error(function() q:resolve("localhost", 1, 5) end)
    assert.are.equal(0, q:pending())
  end)

  it("cancel and timeout: the op ends, a cancel that came in time wins", function()
    local q <close> = ioq.queue()
    local h = q:resolve("localhost")
    h:cancel()
    assert.are.equal(E.ECANCELED, select(3, h:wait(5)))
    h = q:resolve("localhost")
    h:timeout(1e-9)
    local v, _, err = h:wait(10)
    if not v then assert.are.equal(E.ETIMEDOUT, err) end
  end)
end)

describe("ioq.resolve", function()
  it("blocks outside a loop, awaits in a task", function()
    local list = assert(ioq.resolve("127.0.0.1", 7))
    assert.are.equal("127.0.0.1", list[1].host)
    local others = 0
    ioq.run(function()
      ioq.spawn(function() others = others + 1 end)
      local l = assert(ioq.resolve("localhost", 7, { timeout = 10 }))
      assert.is_true(#l >= 1)
    end)
    assert.are.equal(1, others)
    assert.has_error(function() ioq.resolve(42 < 0) end,
      "bad argument #1 to 'resolve' (string expected, got boolean)")
  end)
end)

describe("connect and sendto with a host name", function()
  it("look the name up through the queue", function()
    local q <close> = ioq.queue()
    local name = "localhost"
    local p = not util.windows and io.popen("hostname 2>/dev/null")
    if p then
      local n = p:read("l")
      p:close()
      local l = n and q:resolve(n, 0, { family = "inet" }):wait(10)
      if l and l[1] then name = n end
    end
    ioq.run(function()
      local lst <close> = ioq.socket("tcp")
      assert(lst:bind("0.0.0.0", 0))
      assert(lst:listen())
      local _, port = lst:getsockname()
      local s <close> = ioq.socket("tcp")
      assert.is_true(s:connect(name, port):await(10))
      local u <close> = ioq.socket("udp")
      local r <close> = ioq.socket("udp")
      assert(r:bind("0.0.0.0", 0))
      local _, uport = r:getsockname()
      assert.are.equal(2, u:sendto("hi", name, uport):await(10))
      local bad <close> = ioq.socket("tcp")
      local v, msg, err = bad:connect("no-such-host.invalid", port):await(30)
      assert.is_nil(v)
      assert.matches("^connect: cannot resolve 'no%-such%-host%.invalid'", msg)
      assert.is_true(err == E.ENOENT or err == E.EAGAIN, msg)
    end)
  end)
end)
