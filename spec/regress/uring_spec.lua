-- Regressions of the io_uring backend (Reliability II, issue 12). Each
-- spec names the defect it pins; on other backends it is pending.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

local build = os.getenv("IOQ_CPATH") or "build"

local function has(list, word)
  for _, w in ipairs(list) do if w == word then return true end end
  return false
end

-- A queue on io_uring, or a pending test (other backends, Windows).
local function uring_queue(opts)
  util.posix_only("io_uring")
  local q = ioq.queue(opts)
  if q.backend ~= "io_uring" then
    q:close()
    pending("io_uring only; this run uses " .. q.backend)
  end
  return q
end

-- A FIFO nobody has open: opening it to write ("w" adds O_CREAT, which
-- io_uring hands to an io-wq worker at once) blocks until a reader comes.
local function fifo()
  local name = util.tmpfile()
  os.remove(name)
  assert(os.execute("mkfifo '" .. name .. "'"))
  return name
end

local function elapsed_since(t0)
  return ioq.now() - t0
end

describe("regress: io_uring backend", function()
  after_each(function()
    t.setenv("IOQ_URING_SETUP")
    util.cleanup()
  end)

  it("#3 a kernel without IORING_FEAT_EXT_ARG gets epoll, and timed waits work", function()
    util.posix_only("LD_PRELOAD")
    do
      local q <close> = ioq.queue()
      if q.backend ~= "io_uring" then
        pending("io_uring is not in use here (" .. q.backend .. ")")
      end
    end
    -- The shim goes after a preloaded sanitizer runtime, which must be first.
    local preload = (util.preload and util.preload .. " " or "") .. build .. "/no_ext_arg.so"
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local backends = table.concat(ioq.backends(), ",")
      assert(backends == "epoll", "backends: " .. backends)
      local q <close> = ioq.queue()
      assert(q.backend == "epoll", q.backend)
      -- The timed waits that used to read liburing's own timeout CQE as an op.
      assert(q:sleep(0.01):wait(1))
      local a, b = ioq.socketpair()
      local buf = ioq.buffer(8)
      local h = q:recv(a, buf)
      assert(q:wait(0.02) == 0)
      assert(q:send(b, "hi"):wait(1) == 2)
      assert(h:wait(1) == 2)
      local ok2, err = pcall(ioq.queue, { backend = "io_uring" })
      assert(not ok2 and err:find("Function not implemented"), tostring(err))
      print("backend: " .. q.backend)
    ]], { LD_PRELOAD = preload }, "env -u IOQ_BACKEND timeout 20")
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    assert.matches("backend: epoll", out)
  end)

  it("#6 a queue of one entry starts an op with a kernel-side timeout, and the ops behind it", function()
    local q <close> = uring_queue { entries = 1 }
    local t0 = ioq.now()
    local n = q:nop()
    assert.is_true(n:timeout(5))
    local behind = {}
    for i = 1, 5 do behind[i] = q:nop() end
    assert.is_true(n:wait(2))
    for i = 1, 5 do assert.is_true(behind[i]:wait(2)) end
    assert.is_true(elapsed_since(t0) < 1, "took " .. elapsed_since(t0) .. " s")
    -- A timed op that never completes on its own ends with ETIMEDOUT, on
    -- time, and a cancel still finds room in the one-entry ring.
    local a, b = ioq.socketpair()
    local r1 = q:recv(a, ioq.buffer(8))
    assert.is_true(r1:timeout(0.05))
    local r2 = q:recv(b, ioq.buffer(8))
    t0 = ioq.now()
    local v, msg, err = r1:wait(2)
    assert.is_nil(v)
    assert.are.equal(E.ETIMEDOUT, err, msg)
    assert.is_true(elapsed_since(t0) < 1, "took " .. elapsed_since(t0) .. " s")
    r2:cancel()
    assert.are.equal(E.ECANCELED, select(3, r2:wait(2)))
    a:close(); b:close()
  end)

  it("#7 a cancel ends an open blocked in an io-wq worker with ECANCELED", function()
    local q <close> = uring_queue()
    local h = q:open(fifo(), "w")
    q:submit()
    q:wait(0.05)  -- let a worker take it and block
    assert.is_false(h:done())
    assert.is_true(h:cancel())
    local t0 = ioq.now()
    local v, msg, err = h:wait(2)
    assert.is_nil(v)
    assert.are.equal(E.ECANCELED, err, msg)
    assert.is_true(elapsed_since(t0) < 1)
  end)

  it("#7 a kernel-side timeout ends an open blocked in an io-wq worker with ETIMEDOUT", function()
    local q <close> = uring_queue()
    local h = q:open(fifo(), "w")
    assert.is_true(h:timeout(0.1))
    local t0 = ioq.now()
    local v, msg, err = h:wait(3)
    assert.is_nil(v)
    assert.are.equal(E.ETIMEDOUT, err, msg)
    assert.is_true(elapsed_since(t0) < 1, "took " .. elapsed_since(t0) .. " s")
  end)

  it("#7 await(0.3) in a task ends an open blocked in a worker (no hang)", function()
    uring_queue():close()
    local name = fifo()
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      ioq.run(function()
        local t0 = ioq.now()
        local v, msg, err = ioq.current():open(]] .. string.format("%q", name) .. [[, "w"):await(0.3)
        assert(v == nil and err == ioq.errno.ETIMEDOUT, tostring(msg) .. " " .. tostring(err))
        assert(ioq.now() - t0 < 2)
        print("timed out: " .. msg)
      end)
    ]], {}, "timeout 10")
    assert.is_true(ok, "exit " .. tostring(code) .. ": " .. out)
    assert.matches("timed out", out)
  end)

  it("#7 no kernel-internal errno reaches a script from an interrupted op", function()
    local q <close> = uring_queue()
    local hs = {}
    for i = 1, 4 do hs[i] = q:open(fifo(), "w") end
    q:submit()
    q:wait(0.05)
    hs[1]:cancel()
    assert.is_true(hs[2]:timeout(0.01) == false)  -- already in flight
    q:close()  -- cancels the others, which workers are running
    for i = 1, 4 do
      local v, msg, err = hs[i]:result()
      assert.is_nil(v)
      assert.is_true(err < 512, msg)
      assert.are.equal(E.ECANCELED, err, msg)
    end
  end)

  -- Under SINGLE_ISSUER ("defer") the kernel itself turns the child away
  -- (EEXIST); without it ("coop", kernels before 6.0) only ioq does.
  it("#4 a forked child that closes its queue leaves the parent's buffer ring alone", function()
    util.posix_only("fork")
    for _, setup in ipairs { "coop", "defer" } do
      t.setenv("IOQ_URING_SETUP", setup)
      local q <close> = uring_queue()
      if not has(q:features(), "provided_buffers") then
        pending("no provided buffers on this kernel")
      end
      local a, b = ioq.socketpair()
      local r = q:recv_multi(a)
      assert(q:send(b, "one"):wait(1))
      local function next_view()
        local deadline = ioq.now() + 2
        while ioq.now() < deadline do
          local v = r:take()
          if v then return v end
          q:wait(0.1)
        end
      end
      local v = assert(next_view())
      assert.are.equal("one", v:tostring())
      v:close()
      local pid = t.fork()
      if pid == 0 then
        q:close()
        collectgarbage()
        t.exit(0)
      end
      assert.are.equal(0, t.waitpid(pid))
      -- The parent still receives into its pool.
      assert(q:send(b, "two"):wait(1))
      v = next_view()
      assert.is_not_nil(v, setup .. ": the receive starved after the child closed its queue")
      assert.are.equal("two", v:tostring())
      v:close()
      r:cancel()
      q:wait(0.1)
      a:close(); b:close()
    end
  end)
end)
