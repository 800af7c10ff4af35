-- Reads and writes through the queue return exactly the bytes the file has.
local ioq = require "ioq"
local util = require "support.util"

describe("file reads and writes", function()
  local q
  before_each(function() q = ioq.queue() end)
  after_each(function() q:close(); util.cleanup() end)

  local function drain()
    while q:pending() > 0 do q:wait() end
  end

  it("reads the same bytes as io.open at many random offsets at once", function()
    local data = util.random_bytes(1024 * 1024, 7)
    local name = util.tmpfile(data)
    local f <close> = assert(io.open(name, "rb"))
    local jobs = {}
    for i = 1, 200 do
      local off = (i * 7919 * 4096 + i * 13) % (#data - 100)
      local len = 1 + (i * 104729) % 20000
      local buf = ioq.buffer(len)
      jobs[i] = { h = q:read(f, buf, off), buf = buf, off = off, len = len }
    end
    assert.is_true(q:pending() == 200)
    drain()
    for _, j in ipairs(jobs) do
      local want = data:sub(j.off + 1, j.off + j.len)
      local n = assert(j.h:result())
      assert.are.equal(#want, n)
      assert.is_true(j.buf:tostring(1, n) == want, "bytes differ at offset " .. j.off)
    end
  end)

  it("returns the short count at the end of the file, and 0 past it", function()
    local name = util.tmpfile("0123456789")
    local f <close> = assert(io.open(name, "rb"))
    local buf = ioq.buffer(64)
    assert.are.equal(4, q:read(f, buf, 6):wait())
    assert.are.equal("6789", buf:tostring(1, 4))
    assert.are.equal(0, q:read(f, buf, 10):wait())
    assert.are.equal(0, q:read(f, buf, 1000):wait())
  end)

  it("reads from the current position when no offset is given", function()
    local name = util.tmpfile("abcdefghij")
    local f <close> = assert(io.open(name, "rb"))
    local buf = ioq.buffer(4)
    assert.are.equal(4, q:read(f, buf):wait())
    assert.are.equal("abcd", buf:tostring())
    assert.are.equal(4, q:read(f, buf):wait())
    assert.are.equal("efgh", buf:tostring())
    assert.are.equal(2, q:read(f, buf):wait())
    assert.are.equal("ij", buf:tostring(1, 2))
  end)

  it("keeps an ioq file's position: reads and writes without an offset follow each other", function()
    local name = util.tmpfile()
    do
      local f <close> = assert(q:open(name, "w+"):wait())
      assert.are.equal(3, q:write(f, "abc"):wait())
      assert.are.equal(7, q:write(f, "defghij"):wait())
      local buf = ioq.buffer(4)
      assert.are.equal(0, q:read(f, buf):wait())        -- at the end now
      assert.are.equal(4, q:read(f, buf, 2):wait())     -- an offset moves nothing
      assert.are.equal("cdef", buf:tostring())
      assert.are.equal(0, q:read(f, buf):wait())
    end
    assert.are.equal("abcdefghij", util.readfile(name))
    local f <close> = assert(q:open(name, "r"):wait())
    local buf = ioq.buffer(4)
    local h = q:read(f, buf)
    assert.are.equal(4, h:wait())
    assert.are.equal("abcd", buf:tostring())
    h:resubmit()                                        -- the next 4 bytes
    assert.are.equal(4, h:wait())
    assert.are.equal("efgh", buf:tostring())
    assert.are.equal(2, q:read(f, buf):wait())          -- short: 2 of 4
    assert.are.equal("ij", buf:tostring(1, 2))
    assert.are.equal(0, q:read(f, buf):wait())          -- and no further
  end)

  it("appends every write to a file opened with mode 'a'", function()
    local name = util.tmpfile("abc")
    do
      local f <close> = assert(q:open(name, "a"):wait())
      assert.are.equal(2, q:write(f, "de"):wait())
      assert.are.equal(1, q:write(f, "f"):wait())
    end
    assert.are.equal("abcdef", util.readfile(name))
  end)

  it("honours the length argument of a read", function()
    local name = util.tmpfile("abcdefghij")
    local f <close> = assert(io.open(name, "rb"))
    local buf = ioq.buffer("XXXXXXXX")
    assert.are.equal(3, q:read(f, buf, 2, 3):wait())
    assert.are.equal("cdeXXXXX", buf:tostring())
  end)

  it("writes strings and buffers at offsets and reads them back", function()
    local name = util.tmpfile("")
    local f <close> = assert(io.open(name, "r+b"))
    assert.are.equal(5, q:write(f, "hello", 0):wait())
    assert.are.equal(5, q:write(f, ioq.buffer("world"), 10):wait())
    assert.are.equal(2, q:write(f, "abcdef", 5, 2):wait())
    assert.is_true(q:fsync(f):wait())
    assert.are.equal("helloab\0\0\0world", util.readfile(name))
  end)

  it("writes 1,000 blocks concurrently to the right places", function()
    local name = util.tmpfile("")
    local f <close> = assert(io.open(name, "r+b"))
    local expect = {}
    for i = 0, 999 do
      local block = string.format("%07d\n", i)
      expect[i + 1] = block
      q:write(f, block, i * #block)
    end
    drain()
    assert.are.equal(table.concat(expect), util.readfile(name))
  end)

  it("opens files through the queue and closes them", function()
    local name = util.tmpfile("some bytes")
    local file = assert(q:open(name):wait())
    assert.are.equal("ioq.file", getmetatable(file).__name)
    local fd = file:fileno()
    assert.is_true(fd >= 0)
    local buf = ioq.buffer(32)
    assert.are.equal(10, q:read(file, buf, 0):wait())
    assert.are.equal("some bytes", buf:tostring(1, 10))
    assert.is_true(file:close())
    assert.has_error(function() file:fileno() end)
    assert.has_error(function() q:read(file, buf) end,
      "bad argument #1 to 'read' (attempt to use a closed file)")
  end)

  it("opens with io.open's modes and a permission mask", function()
    local name = util.tmpfile()
    os.remove(name)
    do
      local file <close> = assert(q:open(name, "w", tonumber("600", 8)):wait())
      assert.are.equal(3, q:write(file, "abc"):wait())
      assert.are.equal(3, q:write(file, "def"):wait())
    end
    assert.are.equal("abcdef", util.readfile(name))
    do
      local file <close> = assert(q:open(name, "a"):wait())
      q:write(file, "ghi"):wait()
    end
    assert.are.equal("abcdefghi", util.readfile(name))
    if not util.windows then  -- Windows has a read-only flag, not modes
      local p = io.popen("stat -c %a " .. name)
      assert.are.equal("600", p:read("l"))
      p:close()
    end
    local _, msg, err = q:open(name, "wx"):wait()
    assert.are.equal(ioq.errno.EEXIST, err)
    assert.matches("^open: ", msg)
  end)

  it("accepts integer descriptors", function()
    local name = util.tmpfile("12345")
    local file <close> = assert(q:open(name):wait())
    local buf = ioq.buffer(5)
    assert.are.equal(5, q:read(file:fileno(), buf, 0):wait())
    assert.are.equal("12345", buf:tostring())
  end)
end)
