-- The error contract (README, "Errors: one contract"): a script sees a
-- value; nil, "<op>: <text>", errno for an I/O failure (errno a real one,
-- named in ioq.errno); nil alone at the end of a stream; or a raised
-- "bad argument #N to '<its own call>' (...)" for misuse. One spec per
-- kind of outcome, on every backend the run covers.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

-- An I/O failure: nil, a message that starts with the op, a named errno.
local function failure(op, want, ...)
  local n = select("#", ...)
  local v, msg, err = ...
  assert.are.equal(3, n, "a failure is three values")
  assert.is_nil(v)
  assert.are.equal("string", type(msg))
  assert.are.equal(op .. ": ", msg:sub(1, #op + 2), msg)
  assert.are.equal(want, err, msg)
  assert.is_string(E[err], "errno " .. tostring(err) .. " has no name")
end

describe("the error contract", function()
  after_each(util.cleanup)

  it("a value: the op's result", function()
    local q <close> = ioq.queue()
    assert.is_true(q:nop():wait(1))
  end)

  it("an I/O failure: nil, '<op>: <text>', errno", function()
    local q <close> = ioq.queue()
    failure("open", E.ENOENT, q:open("/no/such/dir/file"):wait(2))
  end)

  it("a canceled op names itself", function()
    local q <close> = ioq.queue()
    local h = q:sleep(10)
    q:submit()
    h:cancel()
    failure("sleep", E.ECANCELED, h:wait(2))
  end)

  it("a timed-out op names itself", function()
    local q <close> = ioq.queue()
    failure("sleep", E.ETIMEDOUT, q:sleep(10):wait(0.01))
  end)

  it("in a loop: await, join and a canceled task name what they waited for", function()
    ioq.run(function()
      failure("sleep", E.ETIMEDOUT, ioq.current():sleep(10):await(0.01))
      local t = ioq.spawn(function() return ioq.sleep(10) end)
      failure("join", E.ETIMEDOUT, t:join(0.01))
      t:cancel()
      failure("sleep", E.ECANCELED, t:join(2))
    end)
  end)

  it("end of stream: a byte count of 0 from raw ops, nil alone from streams", function()
    ioq.run(function()
      local a, b = ioq.socketpair()
      b:close()
      assert.are.equal(0, a:recv(ioq.buffer(8)):await(2))
      local s = ioq.stream(a)
      assert.are.same(table.pack(nil), table.pack(s:read(4)))
      a:close()
      local name = util.tmpfile("")
      local f = assert(ioq.open(name))
      assert.are.equal(0, f:read(ioq.buffer(8), 0):await(2))
      local fs = ioq.stream(f)
      assert.are.same(table.pack(nil), table.pack(fs:read_line()))
      f:close()
    end)
  end)

  it("end of stream on a multishot receive: nil alone", function()
    ioq.run(function()
      local a, b = ioq.socketpair()
      local h = a:recv_multi()
      assert(b:send("x"):await(1))
      local v = h:next(2)
      assert.are.equal("x", v:tostring())
      v:close()
      b:close()
      assert.are.same(table.pack(nil), table.pack(h:next(2)))
      a:close()
    end)
  end)

  it("a multishot receive where the backend has none still gives a handle", function()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local h = q:recv_multi(a)
    assert.are.equal("userdata", type(h))
    h:cancel()
    local v, msg, err = h:wait(2)
    if v == nil and err == E.EOPNOTSUPP then
      failure("recv_multi", E.EOPNOTSUPP, v, msg, err)
    end
    a:close(); b:close()
  end)

  it("nothing taken yet from a multishot handle: nil, msg, EAGAIN", function()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local h = q:recv_multi(a)
    q:submit()
    if not h:done() then
      failure("recv", E.EAGAIN, h:take())
    end
    h:cancel()
    a:close(); b:close()
  end)

  it("a failed name lookup: nil, '<op>: cannot resolve ...', a named errno", function()
    local q <close> = ioq.queue()
    local s <close> = ioq.socket("tcp")
    local v, msg, err = q:connect(s, "no.such.host.invalid", 80):wait(5)
    assert.is_nil(v)
    assert.matches("^connect: cannot resolve", msg)
    assert.is_true(err == E.ENOENT or err == E.EAGAIN, tostring(err))
  end)

  it("misuse raises, naming the caller's own call and argument", function()
    local q <close> = ioq.queue()
    assert.has_error(function() q:read("x", ioq.buffer(1)) end,
      "bad argument #1 to 'read' (descriptor (integer, file or socket) expected, got string)")
    ioq.run(function()
      local f <close> = assert(ioq.open(util.tmpfile("abc")))
      assert.has_error(function() f:read(5) end,
        "bad argument #1 to 'read' (ioq.buffer expected, got number)")
    end)
  end)
end)
