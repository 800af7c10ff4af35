-- Misuse raises an error naming the argument; failed I/O resolves to
-- fail, "op: message", errno.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

describe("bad input", function()
  local q, f, name
  before_each(function()
    q = ioq.queue()
    name = util.tmpfile("data")
    f = assert(io.open(name, "rb"))
  end)
  after_each(function() f:close(); q:close(); util.cleanup() end)

  it("raises for wrong types, naming the argument", function()
    local b = ioq.buffer(4)
    assert.has_error(function() q:read("nope", b) end,
      "bad argument #1 to 'read' (descriptor (integer, file or socket) expected, got string)")
    assert.has_error(function() q:read(f, "str") end,
      "bad argument #2 to 'read' (ioq.buffer expected, got string)")
    assert.has_error(function() q:write(f, 42) end,
      "bad argument #2 to 'write' (ioq.buffer or string expected, got number)")
    assert.has_error(function() q.read(nil, f, b) end)
    assert.has_error(function() q:sleep("x") end)
    assert.has_error(function() q:open(42 and {}) end)
    assert.has_error(function() ioq.core_does_not_exist() end)
  end)

  it("raises for bad offsets and lengths", function()
    local b = ioq.buffer(4)
    assert.has_error(function() q:read(f, b, -1) end,
      "bad argument #3 to 'read' (offset must be non-negative)")
    assert.has_error(function() q:read(f, b, 0.5) end,
      "bad argument #3 to 'read' (number has no integer representation)")
    assert.has_error(function() q:read(f, b, 0, -1) end,
      "bad argument #4 to 'read' (length must be non-negative)")
    assert.has_error(function() q:read(f, b, 0, 5) end,
      "bad argument #4 to 'read' (length exceeds the data size (4 bytes))")
    assert.has_error(function() q:write(f, "abc", 0, 4) end,
      "bad argument #4 to 'write' (length exceeds the data size (3 bytes))")
    assert.has_error(function() q:sleep(-1) end,
      "bad argument #1 to 'sleep' (seconds must be a non-negative number)")
    assert.has_error(function() q:wait(-1) end)
    assert.has_error(function() q:wait(nil, "x") end)
    assert.has_error(function() q:read(-3, b) end,
      "bad argument #1 to 'read' (descriptor must be a non-negative integer)")
    assert.has_error(function() q:open(name, "rw") end,
      "bad argument #2 to 'open' (invalid mode)")
    assert.has_error(function() q:open("a\0b") end,
      "bad argument #1 to 'open' (path contains a zero byte)")
    assert.are.equal(0, q:pending())  -- nothing half made
  end)

  it("raises for closed files and a closed queue", function()
    local b = ioq.buffer(4)
    local g = assert(io.open(name, "rb"))
    g:close()
    assert.has_error(function() q:read(g, b) end,
      "bad argument #1 to 'read' (attempt to use a closed file)")
    q:close()
    assert.has_error(function() q:read(f, b) end,
      "calling 'read' on bad self (queue is closed)")
    assert.is_false(b:busy())
  end)

  it("raises when a pending handle is asked for its result", function()
    local h = q:sleep(10)
    assert.has_error(function() h:result() end, "handle is pending: wait for it first")
    h:cancel()
  end)
end)

describe("failed I/O", function()
  local q
  before_each(function() q = ioq.queue() end)
  after_each(function() q:close(); util.cleanup() end)

  it("resolves a bad descriptor to EBADF", function()
    local n, msg, err = q:read(987654, ioq.buffer(4), 0):wait()
    assert.is_nil(n)
    assert.are.equal(E.EBADF, err)
    assert.are.equal("read: Bad file descriptor", msg)
  end)

  it("resolves a missing file to ENOENT", function()
    local file, msg, err = q:open("/no/such/dir/file"):wait()
    assert.is_nil(file)
    assert.are.equal(E.ENOENT, err)
    assert.are.equal("open: No such file or directory", msg)
  end)

  it("resolves a refused open to EACCES", function()
    local file, msg, err = q:open(util.denied_path(), "w"):wait()
    assert.is_nil(file)
    assert.are.equal(E.EACCES, err)
    assert.matches("^open: Permission denied", msg)
  end)

  it("resolves writing to a read-only descriptor to EBADF", function()
    local name = util.tmpfile("x")
    local f <close> = assert(io.open(name, "rb"))
    local _, _, err = q:write(f, "abc", 0):wait()
    assert.are.equal(E.EBADF, err)
  end)

  it("maps errno names to numbers and back", function()
    assert.are.equal("ECANCELED", E[E.ECANCELED])
    assert.are.equal("number", math.type(E.ETIMEDOUT) and "number")
  end)
end)
