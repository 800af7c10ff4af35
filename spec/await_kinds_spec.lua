-- Every kind of handle gives the same values through the loop's await
-- (its C fast path, and the Lua path a timeout takes) as through h:wait
-- outside a loop. Pins a merge defect: the C runner pushes a result with
-- the handle elsewhere than at stack index 1, and the result pushers of
-- calls, pooled receives and process waits read index 1.
local ioq = require "ioq"
local util = require "support.util"

local windows = util.windows

--- The ops to check: name = function(q) -> handle, and a check of values.
local function cases(dir, file)
  return {
    resolve = { function(q) return q:resolve("127.0.0.1", 80) end,
      function(list) assert.equal("127.0.0.1", list[1].host); assert.equal(80, list[1].port) end },
    readdir = { function(q) return q:readdir(dir) end,
      function(list) assert.equal(1, #list); assert.equal("f", list[1].name) end },
    opendir = { function(q) return q:opendir(dir) end,
      function(d) assert.truthy(tostring(d):match("^ioq.dir")); d:close() end },
    stat = { function(q) return q:stat(file) end,
      function(st) assert.equal(5, st.size); assert.equal("file", st.type) end },
    recv_pooled = { function(q)
        local a, b = ioq.socketpair()
        q:send(a, "hello")
        return q:recv_pooled(b)
      end,
      function(n, buf) assert.equal(5, n); assert.equal("hello", buf:tostring()) end },
    process = { function(q)
        local argv = windows and { arg[-1], "-e", "os.exit(3)" } or { "sh", "-c", "exit 3" }
        local p = assert(ioq.process(argv))
        return q:wait_process(p)
      end,
      function(code) assert.equal(3, code) end },
  }
end

describe("await of every kind of handle", function()
  local dir, file
  before_each(function()
    dir = util.tmpfile()
    os.remove(dir)
    assert(ioq.fs.mkdir(dir))
    file = dir .. (windows and "\\" or "/") .. "f"
    local f = assert(io.open(file, "wb")); f:write("hello"); f:close()
  end)
  after_each(function()
    os.remove(file)
    os.remove(dir)
  end)

  for _, timeout in ipairs { false, 5 } do
    for name in pairs(cases("", "")) do
      it(name .. (timeout and " with a timeout" or "") .. " in a task gives what h:wait gives", function()
        if name == "process" and os.getenv("IOQ_VALGRIND")
            and ioq.queue().backend == "io_uring" then
          -- as in process_spec: the waiting thread cannot run there
          pending("valgrind: no pidfd_open, and no thread runs during io_uring_enter")
        end
        local make, check = cases(dir, file)[name][1], cases(dir, file)[name][2]
        -- outside a loop
        local q = ioq.queue()
        local h = make(q)
        q:submit()
        h:wait(5)
        check(h:result())
        q:close()
        -- in a task
        local got
        ioq.run(function()
          local hh = make(ioq.current())
          if timeout then
            got = table.pack(hh:await(timeout))
          else
            got = table.pack(hh:await())
          end
        end)
        assert.truthy(got[1], got[2])
        check(table.unpack(got, 1, got.n))
      end)
    end
  end
end)
