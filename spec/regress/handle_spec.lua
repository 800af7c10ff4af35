-- Regression specs for the op constructors' fast paths (issue 14, speed):
-- the class checks by metatable address must accept and refuse exactly
-- what the general checks do, and must not lose track of an object whose
-- class has a metatable of its own.
local ioq = require "ioq"
local core = require "ioq.core"
local util = require "support.util"
local E = ioq.errno

describe("regress: op constructors' class checks", function()
  after_each(util.cleanup)

  it("a read on a signals file is pending on it: closing the file ends the read", function()
    util.posix_only("signals files")
    for _, backend in ipairs(ioq.backends()) do
      local q <close> = ioq.queue { backend = backend }
      local f = assert(core.signalfd("USR2"))
      local h = q:read(f, ioq.buffer(4))
      q:submit()
      f:close()
      assert.are.same({ nil, "read: canceled", E.ECANCELED }, { h:wait(2) })
    end
  end)

  it("the arguments are checked as before, with the same messages", function()
    local q <close> = ioq.queue()
    local name = util.tmpfile("abcd")
    local f = assert(q:open(name, "r"):wait())
    local buf = ioq.buffer(4)
    local closed = ioq.buffer(4)
    closed:close()
    assert.has_error(function() q:read(f, closed) end, "bad argument #2 to 'read' (buffer is closed)")
    assert.has_error(function() q:read(f, {}) end)
    assert.has_error(function() q:read({}, buf) end)
    assert.has_error(function() q.read(f, f, buf) end)
    local h = q:read(f, buf)
    assert.has_error(function() q:read(f, buf) end)  -- busy
    assert.are.equal(4, h:wait(1))
    assert.are.equal(buf, h.buffer)
    assert.is_nil(q:write(f, "xy", 0).buffer)
    q:wait(1)
    f:close()
    assert.has_error(function() q:read(f, buf) end,
      "bad argument #1 to 'read' (attempt to use a closed file)")
    local a, b = ioq.socketpair()
    b:close()
    assert.has_error(function() q:recv(b, buf) end,
      "bad argument #1 to 'recv' (attempt to use a closed socket)")
    assert.has_error(function() q:recv(f, buf) end)  -- a file is no socket
    assert.has_error(function() q:send(f, "x") end)
    a:close()
  end)

  it("every queue of a backend shares the class's method closures", function()
    local q <close> = ioq.queue()
    assert.are.equal(core.classes.queue.read, q.read)
    assert.are.equal(core.classes.queue.submit, q.submit)
  end)
end)
