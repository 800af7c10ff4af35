-- ioq.stream: buffered protocol reading over sockets and files.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

--- Runs fn(stream, send) over a socket pair; send(s) writes to the peer,
-- send(nil) closes it.
local function over_pair(opts, fn)
  ioq.run(function()
    local a, b = ioq.socketpair()
    local peer = b
    local function send(s)
      if s == nil then peer:close() else assert(peer:send(s):await()) end
    end
    local s <close> = ioq.stream(a, opts)
    fn(s, send)
    if not tostring(b):match("closed") then b:close() end
  end)
end

describe("ioq.stream", function()
  after_each(util.cleanup)

  it("reads lines split across reads, with and without \\r", function()
    over_pair({ size = 4 }, function(s, send)
      ioq.spawn(function()
        send("first li"); send("ne\r\nsecond\n"); send("\nlast without newline"); send(nil)
      end)
      assert.are.equal("first line", s:read_line())
      assert.are.equal("second", s:read_line())
      assert.are.equal("", s:read_line())
      assert.are.equal("last without newline", s:read_line())
      assert.are.same({ nil }, { s:read_line() })
    end)
  end)

  it("reads exact lengths and up to delimiters", function()
    over_pair({ size = 3 }, function(s, send)
      ioq.spawn(function() send("HEAD\r\n\r\nbody-of-ten0123"); send(nil) end)
      assert.are.equal("HEAD", s:read_until("\r\n\r\n"))
      assert.are.equal("body-of-te", s:read_exact(10))
      assert.are.equal("", s:read_exact(0))
      assert.are.same({ nil }, { s:read_exact(10) })
      assert.are.equal("n0123", s:read(100))  -- what came is still there
      assert.are.same({ nil }, { s:read() })
    end)
  end)

  it("refuses a record longer than max_line", function()
    over_pair({ max_line = 16 }, function(s, send)
      ioq.spawn(function() send(string.rep("x", 100) .. "\n") end)
      assert.are.same({ nil, "read_line: record too long", E.EMSGSIZE }, { s:read_line() })
    end)
  end)

  it("takes a record of max_line bytes, and refuses one more, however it came", function()
    for _, split in ipairs { false, true } do
      over_pair({ max_line = 16 }, function(s, send)
        local ok, long = string.rep("a", 16), string.rep("b", 17)
        ioq.spawn(function()
          if split then send(ok:sub(1, 5)); send(ok:sub(6) .. "\r\n\r") end
          send((split and "" or ok .. "\r\n\r") .. "\nrest")
        end)
        assert.are.equal(ok, s:read_until("\r\n\r\n"))
        assert.are.equal("rest", s:read(4))
        ioq.spawn(function() send(long .. "\r\n\r\n") end)
        assert.are.same({ nil, "read_until: record too long", E.EMSGSIZE },
          { s:read_until("\r\n\r\n") })
      end)
    end
  end)

  it("times out reads with the stream's timeout", function()
    over_pair({ timeout = 0.05 }, function(s)
      assert.are.same({ nil, "recv: timed out", E.ETIMEDOUT }, { s:read_line() })
    end)
  end)

  it("writes everything, also more than a socket buffer holds", function()
    local big = util.random_bytes(3 * 1024 * 1024, 11)
    ioq.run(function()
      local a, b = ioq.socketpair()
      local w = ioq.stream(a)
      local r = ioq.stream(b)
      local writer = ioq.spawn(function() assert(w:write_all(big)); a:shutdown("w") end)
      local got = assert(r:read_exact(#big))
      writer:join()
      assert.is_true(got == big)
      assert.are.same({ nil }, { r:read(1) })
      w:close(); r:close()
    end)
  end)

  it("works over files", function()
    local name = util.tmpfile()
    ioq.run(function()
      local f = assert(ioq.open(name, "w"))
      local s = ioq.stream(f)
      assert(s:write("alpha\n", "beta\n"))
      s:close()
      local r <close> = ioq.stream(assert(ioq.open(name)))
      assert.are.equal("alpha", r:read_line())
      assert.are.equal("beta", r:read_line())
      assert.is_nil(r:read_line())
    end)
  end)

  it("rejects bad arguments", function()
    local a, b = ioq.socketpair()
    local s = ioq.stream(a)
    assert.has_error(function() s:read_until("") end)
    assert.has_error(function() s:read_exact(-1) end)
    assert.has_error(function() s:write_all(42) end)
    assert.has_error(function() ioq.stream(nil) end)
    s:close(); b:close()
  end)
end)
