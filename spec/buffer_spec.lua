-- Buffers: sizes, slicing, and the rule that a pending op owns its buffer.
local ioq = require "ioq"
local util = require "support.util"

describe("buffer", function()
  after_each(util.cleanup)

  it("is zeroed when made from a size, and copies a string", function()
    local b = ioq.buffer(16)
    assert.are.equal(16, #b)
    assert.are.equal(string.rep("\0", 16), b:tostring())
    local s = ioq.buffer("hello\0world")
    assert.are.equal(11, #s)
    assert.are.equal("hello\0world", s:tostring())
    assert.are.equal(0, #ioq.buffer(0))
    assert.are.equal("", ioq.buffer(""):tostring())
  end)

  it("slices with string.sub's rules", function()
    local b = ioq.buffer("abcdefgh")
    local s = "abcdefgh"
    for _, ij in ipairs { { 1, 3 }, { -3, -1 }, { 0, 2 }, { 5, 100 }, { 6, 2 },
                           { -100, 2 }, { 3 }, { -2 }, { 9, 9 } } do
      assert.are.equal(s:sub(ij[1], ij[2]), b:tostring(ij[1], ij[2]))
    end
  end)

  it("splits at a delimiter: the bytes before and after it, up to j", function()
    local s = "GET / HTTP/1.1\r\n\r\nbody\0tail"
    local b = ioq.buffer(s .. "garbage")
    for _, case in ipairs {
      { "\r\n\r\n", #s }, { "\r\n\r\n", 19 }, { "\r\n\r\n", 18 }, { "\r\n\r\n", -8 },
      { "\r\n\r\n", -1000 }, { "\r\n\r\n", 1000 }, { "G", 1 }, { "l", #s }, { "zz" },
    } do
      local d, j = case[1], case[2]
      local hay = s .. "garbage"
      hay = hay:sub(1, j or -1)
      local i, e = hay:find(d, 1, true)
      local want = i and { hay:sub(1, i - 1), hay:sub(e + 1) } or { nil }
      assert.are.same(want, { b:split(d, j) }, d .. " " .. tostring(j))
    end
    -- max: the most bytes allowed before the delimiter
    assert.are.same({ "GET / HTTP/1.1", "body\0tail" }, { b:split("\r\n\r\n", #s, 14) })
    assert.are.same({ nil }, { b:split("\r\n\r\n", #s, 13) })
    assert.are.same({ "", "ET" }, { b:split("G", 3, 0) })
    assert.has_error(function() b:split("") end)
    assert.has_error(function() b:split("x", 1, -1) end)
    b:close()
    assert.has_error(function() b:split("x") end)
  end)

  it("sets and fills bytes in place", function()
    local b = ioq.buffer(8)
    b:set("abc")
    b:set("XY", 7)
    assert.are.equal("abc\0\0\0XY", b:tostring())
    b:fill(46, 4, 6)
    assert.are.equal("abc...XY", b:tostring())
    assert.has_error(function() b:set("toolong", 3) end,
      "bad argument #1 to 'set' (string does not fit in the buffer)")
    assert.has_error(function() b:set("a", 0) end)
    assert.has_error(function() b:fill(256) end)
  end)

  it("is busy while an op owns it: reads, changes and a second op raise", function()
    local q <close> = ioq.queue()
    local t = require "ioq_test"
    local r, w = t.pipe()
    local b = ioq.buffer(8)
    local h = q:read(r, b)
    assert.is_true(b:busy())
    assert.matches("busy", tostring(b))
    assert.has_error(function() b:tostring() end,
      "calling 'tostring' on bad self (buffer in use by a pending operation)")
    assert.has_error(function() b:set("x") end)
    assert.has_error(function() b:fill(0) end)
    assert.has_error(function() q:read(r, b) end,
      "bad argument #2 to 'read' (buffer in use by a pending operation)")
    assert.has_error(function() q:write(w, b) end,
      "bad argument #2 to 'write' (buffer in use by a pending operation)")
    assert.are.equal(8, #b)  -- the size is no secret
    assert.are.equal(3, q:write(w, "abc"):wait())
    assert.are.equal(3, h:wait())
    assert.is_false(b:busy())
    assert.are.equal("abc", b:tostring(1, 3))
    t.close(r); t.close(w)
  end)

  it("can be closed early, also with <close>, even while an op uses it", function()
    local q <close> = ioq.queue()
    local name = util.tmpfile("0123456789")
    local f <close> = assert(io.open(name, "rb"))
    local h
    do
      local b <close> = ioq.buffer(10)
      h = q:read(f, b, 0)
    end
    -- The op keeps the bytes alive; the buffer object is closed.
    assert.are.equal(10, h:wait())
    assert.has_error(function() h.buffer:tostring() end,
      "calling 'tostring' on bad self (buffer is closed)")
    local b = ioq.buffer(4)
    b:close(); b:close()
    assert.matches("closed", tostring(b))
  end)

  it("rejects bad sizes", function()
    assert.has_error(function() ioq.buffer(-1) end,
      "bad argument #1 to 'buffer' (size must be non-negative)")
    assert.has_error(function() ioq.buffer(1.5) end)
    assert.has_error(function() ioq.buffer({}) end)
    assert.has_error(function() ioq.buffer(math.maxinteger) end)
  end)
end)
