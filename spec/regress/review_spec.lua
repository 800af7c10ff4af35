-- Regression specs for what a review of the Reliability II and structure
-- work found (each failed before its fix).
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

describe("regress: review", function()
  after_each(util.cleanup)

  it("q:write on a socket whose peer is gone says EPIPE, never raises SIGPIPE", function()
    util.posix_only("SIGPIPE")
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      for _, be in ipairs(ioq.backends()) do
        local q = ioq.queue { backend = be }
        local a, b = ioq.socketpair()
        b:close()
        local n, msg, err = q:write(a, "x"):wait(2)
        assert(n == nil and err == ioq.errno.EPIPE, tostring(msg))
        a:close()
        q:close()
      end
      print("epipe ok")
    ]])
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    assert.matches("epipe ok", out)
  end)

  it("a handle that failed before it started cannot be resubmitted", function()
    local q <close> = ioq.queue()
    local s <close> = ioq.socket("udp")
    local h = q:sendto(s, "x", "no.such.host.invalid", 9)
    assert.is_nil((h:wait(5)))
    -- (a sendto to a name is the lookup's op, never resubmitted: its
    -- lookup failed, no sendto started)
    assert.has_error(function() h:resubmit() end,
      "calling 'resubmit' on bad self (only data transfers, fsync, nop and sleep can be resubmitted)")
  end)

  it("a short timeout of one awaiter leaves the op to the others", function()
    ioq.run(function()
      local a, b = ioq.socketpair()
      local h = a:recv(ioq.buffer(64))
      local other = ioq.spawn(function() return h:await(2) end)
      local v, msg, err = h:await(0.05)
      assert.is_nil(v)
      assert.are.same({ "recv: timed out", E.ETIMEDOUT }, { msg, err })
      assert(b:send("data"):await(1))
      assert.are.equal(4, (other:join(2)))
      a:close(); b:close()
    end)
  end)

  it("a canceled gather gives up the items it has not waited for yet", function()
    ioq.run(function()
      local q = ioq.current()
      local t = ioq.spawn(function()
        return ioq.gather(q:sleep(3), q:sleep(3), q:sleep(3))
      end)
      ioq.sleep(0.01)
      local t0 = ioq.now()
      t:cancel()
      local r1, r2, r3 = t:join(2)
      assert.is_true(ioq.now() - t0 < 1, "the gather went on")
      assert.are.equal(E.ECANCELED, r1[3])
      assert.are.same({ nil, "gather: canceled", E.ECANCELED }, { r2[1], r2[2], r2[3] })
      assert.are.equal(E.ECANCELED, r3[3])
    end)
  end)

  it("a wait in a nested coroutine lets the task that feeds it run", function()
    ioq.run(function()
      local a, b = ioq.socketpair()
      local h = a:recv(ioq.buffer(8))
      ioq.spawn(function() ioq.sleep(0.01); b:send("hi"):await(1) end)
      local gen = coroutine.wrap(function() return h:await(2) end)
      local t0 = ioq.now()
      assert.are.equal(2, gen())
      assert.is_true(ioq.now() - t0 < 1)
      a:close(); b:close()
    end)
  end)

  it("closing the running loop's queue from a task raises there, and the loop goes on", function()
    local res = { ioq.run(function()
      local ok, err = pcall(function() ioq.current():close() end)
      return ok, err, ioq.sleep(0.001)
    end) }
    assert.is_false(res[1])
    assert.matches("a running loop drives this queue", res[2])
    assert.is_true(res[3])
  end)

  it("ioq.first() with nothing to wait for raises", function()
    ioq.run(function()
      assert.has_error(function() ioq.first() end,
        "bad argument #1 to 'first' (ioq.task or ioq.handle expected, got no value)")
    end)
  end)

  it("accept_multi and recv_multi check their self", function()
    local sm = getmetatable(ioq.socket("tcp")).__index
    assert.has_error(function() sm.recv_multi(42) end,
      "calling 'recv_multi' on bad self (ioq.socket expected, got number)")
    assert.has_error(function() sm.accept_multi({}) end,
      "calling 'accept_multi' on bad self (ioq.socket expected, got table)")
  end)
end)
