-- Where io_uring is switched off, ioq falls back to epoll on its own.
local util = require "support.util"

local build = os.getenv("IOQ_CPATH") or "build"

describe("backend selection", function()
  after_each(util.cleanup)

  it("falls back to epoll when a seccomp filter makes io_uring_setup fail", function()
    local name = util.tmpfile("through epoll")
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local backends = ioq.backends()
      assert(#backends == 1 and backends[1] == "epoll", table.concat(backends, ","))
      local q <close> = ioq.queue()
      assert(q.backend == "epoll", q.backend)
      local f = assert(io.open(]] .. string.format("%q", name) .. [[, "rb"))
      local buf = ioq.buffer(64)
      local n = assert(q:read(f, buf, 0):wait())
      assert(buf:tostring(1, n) == "through epoll")
      ioq.run({ queue = q }, function()
        local a, b = ioq.socketpair()
        assert(a:send("ping"):await())
        assert(b:recv(buf):await(1) == 4)
        assert(ioq.sleep(0.01))
      end)
      -- Asking for io_uring by name fails clearly.
      local ok2, err = pcall(ioq.queue, { backend = "io_uring" })
      assert(not ok2 and err:find("Operation not permitted"), err)
      print("backend: " .. q.backend)
    ]], {}, "env -u IOQ_BACKEND " .. build .. "/no_uring")
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    assert.matches("backend: epoll", out)
  end)

  it("takes IOQ_BACKEND to force a backend for the whole process", function()
    for _, want in ipairs(require("ioq").backends()) do
      local ok, _, out = util.run_lua([[
        local q = require("ioq").queue()
        print("backend: " .. q.backend)
      ]], { IOQ_BACKEND = want })
      assert.is_true(ok, out)
      assert.matches("backend: " .. want, out)
    end
    local ok, _, out = util.run_lua([[ require("ioq").queue() ]], { IOQ_BACKEND = "nope" })
    assert.is_false(ok)
    assert.matches("unknown backend 'nope'", out)
  end)
end)
