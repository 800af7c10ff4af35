-- ioq.process: child processes whose pipes and end go through the queue,
-- on every backend the run covers. Each spec compares with what the OS
-- says (io.popen, /proc) where it can.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

local function posix()
  util.posix_only("fork/exec processes (CreateProcessW is not done yet)")
  -- valgrind has no pidfd_open, so waits use the waiting thread; and it
  -- keeps its one lock through io_uring_enter, so that thread cannot run
  -- until the loop's wait times out (the epoll run covers memcheck).
  if os.getenv("IOQ_VALGRIND") and ioq.queue().backend == "io_uring" then
    pending("valgrind: no pidfd_open, and no thread runs during io_uring_enter")
  end
end

-- Everything a stream gives until the end.
local function read_all(obj)
  local s = ioq.stream(obj)
  local parts = {}
  while true do
    local chunk, msg, err = s:read(65536)
    if chunk == nil then
      assert(msg == nil, msg)
      break
    end
    parts[#parts + 1] = chunk
    if err then break end
  end
  return table.concat(parts)
end

local function getpid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return pid
end

-- Our open descriptors (io.popen's own pipe among them, each time), once
-- what is garbage is collected and the reaper thread (two descriptors of
-- its own, made on first use) is running.
local function count_fds()
  local n = 0
  local p = io.popen("ls /proc/" .. getpid() .. "/fd")
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

local gone

local function fd_count()
  local p = ioq.process{ "sleep", "0.01" }
  local pid = p.pid
  p:close()
  collectgarbage()
  collectgarbage()
  assert(gone(pid))
  -- The reaper closes the pidfds of the children it reaps, the waiting
  -- threads their pipes: wait until the count holds still.
  local n, last = count_fds(), -1
  for _ = 1, 50 do
    if n == last then break end
    ioq.sleep(0.1)
    last, n = n, count_fds()
  end
  return n
end

-- The state letter of /proc/<pid>/stat (R, S, Z...), or nil once gone.
local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s and s:match("%) (%a)")  -- nil: it went while we read
end

-- Waits (up to 5 s) until pid is gone from /proc: reaped by someone.
function gone(pid)
  local deadline = ioq.now() + 5
  while proc_state(pid) ~= nil do
    if ioq.now() > deadline then return false, proc_state(pid) end
    ioq.sleep(0.01)
  end
  return true
end

describe("ioq.process", function()
  after_each(util.cleanup)

  it("gives the output io.popen gives for the same command", function()
    posix()
    local cmd = "ls -la /usr/bin | head -50; echo done"
    local pp = io.popen(cmd)
    local want = pp:read("a")
    pp:close()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", cmd, stdout = "pipe" })
      assert.are.equal(want, read_all(p.stdout))
      assert.are.same({ 0 }, { p:await(5) })
      p:close()
    end)
  end)

  it("reports exit codes and the signal that ended a child", function()
    posix()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", "exit 7" })
      local code, sig = p:await(5)
      assert.are.equal(7, code)
      assert.is_nil(sig)
      assert.are.equal(7, p.exit_code)
      p = assert(ioq.process{ "sh", "-c", "kill -TERM $$; sleep 5" })
      code, sig = p:await(5)
      assert.are.equal(128 + 15, code)
      assert.are.equal("TERM", sig)
      assert.are.equal("TERM", p.signal)
      -- A wait after the end gives the same answer.
      assert.are.same({ 143, "TERM" }, { p:await(1) })
    end)
  end)

  it("runs with the environment and working directory given", function()
    posix()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", 'echo "$FOO:$BAR:$HOME"; pwd',
        env = { FOO = "x y", "BAR=1", PATH = os.getenv("PATH") }, cwd = "/tmp",
        stdout = "pipe" })
      assert.are.equal("x y:1:\n/tmp\n", read_all(p.stdout))
      assert.are.equal(0, p:await(5))
      -- nil env: ours.
      p = assert(ioq.process{ "sh", "-c", 'echo "$HOME"', stdout = "pipe" })
      assert.are.equal((os.getenv("HOME") or "") .. "\n", read_all(p.stdout))
      p:await(5)
    end)
  end)

  it("round-trips data through stdin and stdout pipes", function()
    posix()
    local data = util.random_bytes(300000, 7)
    ioq.run(function()
      local p = assert(ioq.process{ "cat", stdin = "pipe", stdout = "pipe" })
      local writer = ioq.spawn(function()
        local s = ioq.stream(p.stdin)
        assert(s:write_all(data))
        p.stdin:close()  -- cat's end of file
      end)
      assert.is_true(read_all(p.stdout) == data)
      writer:join(5)
      assert.are.equal(0, p:await(5))
    end)
  end)

  it("merges stderr into stdout, and redirects to files and null", function()
    posix()
    local name = util.tmpfile()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", "echo out; echo err >&2",
        stdout = "pipe", stderr = "stdout" })
      assert.are.equal("out\nerr\n", read_all(p.stdout))
      p:await(5)
      local f = assert(io.open(name, "w"))
      p = assert(ioq.process{ "sh", "-c", "echo to-file; echo gone >&2",
        stdout = f, stderr = "null", stdin = "null" })
      f:close()  -- the child has its own copy
      assert.are.equal(0, p:await(5))
      assert.are.equal("to-file\n", util.readfile(name))
    end)
  end)

  it("a program that does not exist: nil, 'spawn: ...', ENOENT, nothing leaked", function()
    posix()
    local before = fd_count()
    for _ = 1, 20 do
      local p, msg, err = ioq.process{ "no-such-program-ioq", stdout = "pipe",
        stdin = "pipe" }
      assert.is_nil(p)
      assert.are.equal(E.ENOENT, err)
      assert.matches("^spawn: no%-such%-program%-ioq: No such file or directory", msg)
      p, msg, err = ioq.process{ "/no/such/dir/prog" }
      assert.is_nil(p)
      assert.are.equal(E.ENOENT, err, msg)
    end
    assert.are.equal(before, fd_count())
  end)

  it("misuse raises, naming the argument", function()
    posix()
    assert.has_error(function() ioq.process("ls") end,
      "bad argument #1 to 'process' (table expected, got string)")
    assert.has_error(function() ioq.process{} end,
      "bad argument #1 to 'process' (the program to run expected at [1])")
    assert.has_error(function() ioq.process{ "ls", stdout = "pipes" } end)
    assert.has_error(function() ioq.process{ "ls", 3 } end,
      "bad argument #1 to 'process' ([2] must be a string, got number)")
    assert.has_error(function() ioq.process{ "ls", stdin = "stdout" } end)
  end)

  it("a child that closes its pipes early: EPIPE on a write, the end on a read", function()
    posix()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", "exec 0<&- 1>&-; sleep 0.1",
        stdin = "pipe", stdout = "pipe" })
      assert.are.equal("", read_all(p.stdout))
      p:await(5)
      local n, msg, err = p.stdin:send(string.rep("x", 1 << 20)):await(5)
      assert.is_nil(n)
      assert.are.equal(E.EPIPE, err, msg)  -- and no SIGPIPE killed us
      p:close()
    end)
  end)

  it("runs 100 children at once", function()
    posix()
    ioq.run(function()
      local tasks = {}
      for i = 1, 100 do
        tasks[i] = ioq.spawn(function()
          local p <close> = assert(ioq.process{ "sh", "-c", "echo $0; exit $(($0 % 7))", tostring(i),
            stdout = "pipe" })
          local out = read_all(p.stdout)
          return out, p:await(10)
        end)
      end
      for i = 1, 100 do
        local out, code = tasks[i]:join(20)
        assert.are.equal(i .. "\n", out)
        assert.are.equal(i % 7, code)
      end
    end)
  end)

  it("a child killed while the script reads its output", function()
    posix()
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", "echo started; exec sleep 10",
        stdout = "pipe" })
      local s = ioq.stream(p.stdout)
      assert.are.equal("started", s:read_line())
      local reader = ioq.spawn(function() return s:read(100) end)
      ioq.sleep(0.05)
      assert.is_true(p:kill("KILL"))
      assert.is_nil((reader:join(5)))  -- the end of the stream
      assert.are.same({ 137, "KILL" }, { p:await(5) })
      local ok, msg, err = p:kill()
      assert.is_nil(ok)
      assert.are.equal(E.ESRCH, err, msg)
    end)
  end)

  it("dropped process objects leave no zombie", function()
    posix()
    local pids = {}
    do
      for i = 1, 10 do
        -- Some end at once, some after the object is gone.
        local p = assert(ioq.process{ "sleep", i % 2 == 0 and "0" or "0.2",
          stdout = "pipe" })
        pids[i] = p.pid
      end
    end
    collectgarbage()
    collectgarbage()
    for _, pid in ipairs(pids) do
      assert(gone(pid), "child " .. pid .. " was not reaped")
    end
    -- Closed but not awaited, too.
    local p = assert(ioq.process{ "sleep", "0.1" })
    local pid = p.pid
    p:close()
    assert.is_true(gone(pid))
  end)

  it("inherits no descriptor the script did not pass", function()
    posix()
    local leaky = assert(io.open(util.tmpfile("x")))  -- not close-on-exec
    ioq.run(function()
      local p = assert(ioq.process{ "sh", "-c", "ls /proc/$$/fd", stdout = "pipe" })
      local fds = {}
      for fd in read_all(p.stdout):gmatch("%d+") do fds[#fds + 1] = tonumber(fd) end
      table.sort(fds)
      assert.are.same({ 0, 1, 2 }, fds)
      p:await(5)
      p:close()
    end)
    leaky:close()
  end)

  it("starts children with an empty signal mask and default dispositions", function()
    posix()
    local sigs = assert(ioq.signals("TERM", "USR1"))  -- handled here
    ioq.run(function()
      local p = assert(ioq.process{ "cat", "/proc/self/status", stdout = "pipe" })
      local status = read_all(p.stdout)
      p:await(5)
      -- The standard signals (1-31): glibc keeps 32 and 33 for itself, and
      -- sigaction cannot set them.
      local function standard(field)
        return tonumber(status:match(field .. ":%s*(%x+)"), 16) & 0x7fffffff
      end
      assert.are.equal(0, standard("SigBlk"))
      assert.are.equal(0, standard("SigIgn"))
      assert.are.equal(0, standard("SigCgt"))
    end)
    sigs:close()
  end)

  it("a timeout or cancel of the wait leaves the child running", function()
    posix()
    ioq.run(function()
      local p = assert(ioq.process{ "sleep", "10" })
      local v, msg, err = p:await(0.05)
      assert.is_nil(v)
      assert.are.equal("wait: timed out", msg)
      assert.are.equal(E.ETIMEDOUT, err)
      assert.matches("[RS]", proc_state(p.pid))
      local h = p:wait()
      ioq.spawn(function() ioq.sleep(0.02); h:cancel() end)
      v, msg, err = h:await(5)
      assert.is_nil(v)
      assert.are.equal(E.ECANCELED, err, msg)
      assert.matches("[RS]", proc_state(p.pid))
      assert.is_true(p:kill())
      assert.are.same({ 143, "TERM" }, { p:await(5) })
    end)
  end)

  it("waits outside a loop, and as a handle on a queue", function()
    posix()
    local p = assert(ioq.process{ "sh", "-c", "exit 3" })
    assert.are.equal(3, p:await(5))
    p = assert(ioq.process{ "sh", "-c", "exit 4" })
    local q <close> = ioq.queue()
    local h = q:wait_process(p)
    assert.are.equal("wait", h.op)
    assert.are.equal(4, h:wait(5))
    p:close()
    assert.has_error(function() q:wait_process(p) end)
  end)

  it("works without pidfds (a waiting thread instead)", function()
    posix()
    local ok, _, out = util.run_lua([[
      local ioq = require "ioq"
      ioq.run(function()
        local p = assert(ioq.process{ "sh", "-c", "echo hi; exit 5", stdout = "pipe" })
        assert(ioq.stream(p.stdout):read_line() == "hi")
        assert(p:await(5) == 5)
        local q = assert(ioq.process{ "sleep", "10" })
        assert(select(3, q:await(0.05)) == ioq.errno.ETIMEDOUT)
        q:kill("KILL")
        assert(q:await(5) == 137)
        local pid = ioq.process{ "sleep", "0.1" }.pid
        collectgarbage(); collectgarbage()
        local deadline = ioq.now() + 5
        while io.open("/proc/" .. pid .. "/stat") do
          assert(ioq.now() < deadline, "not reaped")
          ioq.sleep(0.02)
        end
      end)
      print("ok")
    ]], { IOQ_NO_PIDFD = "1" })
    assert(ok and out:match("ok"), out)
  end)
end)

describe("q:poll", function()
  it("says when a descriptor is readable or writable, with a timeout", function()
    posix()
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    assert.are.equal("w", q:poll(a, "w"):wait(2))
    local v, msg, err = q:poll(a, "r"):wait(0.05)
    assert.is_nil(v)
    assert.are.equal("poll: timed out", msg)
    assert.are.equal(E.ETIMEDOUT, err)
    local h = q:poll(a, "r")
    q:submit()
    assert(q:write(b, "x"):wait(2))
    assert.are.equal("r", h:wait(2))
    h = q:poll(b, "r")
    q:submit()
    h:cancel()
    assert.are.equal(E.ECANCELED, select(3, h:wait(2)))
    assert.has_error(function() q:poll(a, "x") end)
    a:close()
    b:close()
  end)
end)
