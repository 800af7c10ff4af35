-- ioq.process: child processes whose pipes and end go through the queue,
-- on every backend the run covers, Windows (under Wine) included. Each
-- spec compares with what the OS says (io.popen, /proc) where it can.
-- Wine has no POSIX tools, so there the children are this very lua.exe
-- running a script, or cmd.exe.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

-- Every spec that starts a child.
local function any()
  -- valgrind has no pidfd_open, so waits use the waiting thread; and it
  -- keeps its one lock through io_uring_enter, so that thread cannot run
  -- until the loop's wait times out (the epoll run covers memcheck).
  if os.getenv("IOQ_VALGRIND") and ioq.queue().backend == "io_uring" then
    pending("valgrind: no pidfd_open, and no thread runs during io_uring_enter")
  end
end

-- The specs that need POSIX: signals, /proc, sh.
local function posix(what)
  util.posix_only(what or "POSIX signals, /proc and sh")
  any()
end

-- The spec for ioq.process that runs Lua `code` (with this checkout's
-- ioq) in a child: this lua.exe on Windows, $LUA (or lua5.4) elsewhere;
-- `more` adds arguments and fields.
local LUA = util.windows and arg[-1] or os.getenv("LUA") or "lua5.4"
local function lua(code, more)
  local cpath = os.getenv("IOQ_CPATH") or "build"
  local spec = { LUA, util.tmpfile(string.format(
    "package.path = [[lua/?.lua;lua/?/init.lua;]] .. package.path\n" ..
    "package.cpath = [[%s/?.%s;]] .. package.cpath\n%s",
    cpath, util.windows and "dll" or "so", code)) }
  for k, v in pairs(more or {}) do
    if math.type(k) == "integer" then spec[#spec + 1] = v else spec[k] = v end
  end
  return spec
end

-- A child that runs until killed (30 s at most, should a spec fail).
local SPIN = "require('ioq').sleep(30)"

-- cat, in Lua: ioq reads and writes the handles themselves, where Lua's
-- io would turn Windows's text mode on them.
local CAT = [[
local ioq = require "ioq"
ioq.run(function()
  local inp, out = ioq.stream(io.stdin), ioq.stream(io.stdout)
  while true do
    local chunk = inp:read(65536)
    if not chunk then break end
    assert(out:write_all(chunk))
  end
end)
]]
local PIPES = { stdin = "pipe", stdout = "pipe" }

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
    any()
    if util.windows then  -- cmd.exe, found by name; popen reads text
      local pp = io.popen("dir /b C:\\windows")
      local want = pp:read("a")
      pp:close()
      ioq.run(function()
        local p = assert(ioq.process{ "cmd", "/c", "dir", "/b", "C:\\windows",
          stdout = "pipe" })
        local got = read_all(p.stdout)
        assert.are.equal(want, (got:gsub("\r\n", "\n")))
        assert.is_true(#want > 50)
        assert.are.same({ 0 }, { p:await(5) })
        p:close()
      end)
      return
    end
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
    any()
    if util.windows then  -- p:kill("TERM") ends it with 128 + 15
      ioq.run(function()
        local p = assert(ioq.process(lua("os.exit(7)")))
        local code, sig = p:await(5)
        assert.are.equal(7, code)
        assert.is_nil(sig)
        assert.are.equal(7, p.exit_code)
        p = assert(ioq.process(lua(SPIN)))
        assert.is_true(p:kill("TERM"))
        code, sig = p:await(5)
        assert.are.equal(128 + 15, code)
        assert.are.equal("TERM", sig)
        assert.are.equal("TERM", p.signal)
        assert.are.same({ 143, "TERM" }, { p:await(1) })
        -- An exit code a signal would give, without a kill, is just a code.
        p = assert(ioq.process(lua("os.exit(137)")))
        assert.are.same({ 137 }, { p:await(5) })
      end)
      return
    end
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
    any()
    if util.windows then
      -- The script is found in the cwd given, or not at all.
      local dir, base = util.tmpfile("io.write(os.getenv('FOO'), ':', " ..
        "os.getenv('BAR'), ':', tostring(os.getenv('TEMP')), ':', " ..
        "tostring(os.getenv('SYSTEMROOT') ~= nil))"):match("^(.*)\\([^\\]+)$")
      ioq.run(function()
        local p = assert(ioq.process{ LUA, base, env = { FOO = "x y", "BAR=1" },
          cwd = dir, stdout = "pipe" })
        -- SYSTEMROOT is added: without it Winsock cannot start.
        assert.are.equal("x y:1:nil:true", read_all(p.stdout))
        assert.are.equal(0, p:await(5))
        -- nil env: ours.
        p = assert(ioq.process(lua("io.write(os.getenv('TEMP'))", { stdout = "pipe" })))
        assert.are.equal(os.getenv("TEMP"), read_all(p.stdout))
        p:await(5)
      end)
      return
    end
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
    any()
    local data = util.random_bytes(300000, 7)
    ioq.run(function()
      local p = assert(ioq.process(util.windows and lua(CAT, PIPES) or
        { "cat", stdin = "pipe", stdout = "pipe" }))
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
    any()
    local name = util.tmpfile()
    if util.windows then
      ioq.run(function()
        local p = assert(ioq.process(lua("io.stdout:setvbuf('no') io.write('out') " ..
          "io.stderr:write('err')", { stdout = "pipe", stderr = "stdout" })))
        assert.are.equal("outerr", read_all(p.stdout))
        p:await(5)
        local f = assert(io.open(name, "w"))
        p = assert(ioq.process(lua("io.write('to-file', io.read('a')) " ..
          "io.stderr:write('gone')", { stdout = f, stderr = "null", stdin = "null" })))
        f:close()  -- the child has its own copy
        assert.are.equal(0, p:await(5))
        assert.are.equal("to-file", util.readfile(name))
      end)
      return
    end
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
    any()
    -- Wine's GetProcessHandleCount says 0: there the handles go uncounted.
    local before = not util.windows and fd_count()
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
    if before then
      -- A descriptor of something else may come and go meanwhile (seen
      -- once under ASan on a loaded machine): a leak stays, so look again.
      local after = fd_count()
      for _ = 1, 10 do
        if after == before then break end
        ioq.sleep(0.2)
        after = fd_count()
      end
      assert.are.equal(before, after)
    end
  end)

  it("a working directory that cannot be entered is named as the cause", function()
    any()
    util.posix_only("the cwd check of POSIX spawns")
    local p, msg, err = ioq.process{ "true", cwd = "/no/such/dir" }
    assert.is_nil(p)
    assert.are.equal(E.ENOENT, err)
    assert.are.equal("spawn: cwd /no/such/dir: No such file or directory", msg)
    p, msg, err = ioq.process{ "true", cwd = "/etc/passwd" }
    assert.is_nil(p)
    assert.are.equal(E.ENOTDIR, err)
    assert.matches("^spawn: cwd /etc/passwd: ", msg)
  end)

  it("misuse raises, naming the argument", function()
    assert.has_error(function() ioq.process("ls") end,
      "bad argument #1 to 'process' (table expected, got string)")
    assert.has_error(function() ioq.process{} end,
      "bad argument #1 to 'process' (the program to run expected at [1])")
    assert.has_error(function() ioq.process{ "ls", stdout = "pipes" } end)
    assert.has_error(function() ioq.process{ "ls", 3 } end,
      "bad argument #1 to 'process' ([2] must be a string, got number)")
    assert.has_error(function() ioq.process{ "ls", stdin = "stdout" } end)
  end)

  it("reads the spec raw: a proxy's __len and __index are not used", function()
    -- Strings made by __index were collected while C held them, and a
    -- huge __len overflowed the argument array.
    local proxy = setmetatable({}, {
      __len = function() return math.maxinteger // 4 end,
      __index = function() return "true" end,
    })
    assert.has_error(function() ioq.process(proxy) end,
      "bad argument #1 to 'process' (the program to run expected at [1])")
  end)

  it("a pipe end the child gets stays put when the script's 0 and 1 are closed", function()
    any()
    util.posix_only("closing descriptors in a shell")
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local p = assert(ioq.process{ "sh", "-c", "echo to-stderr >&2",
        stdout = "null", stderr = "pipe" })
      local q = ioq.queue()
      local b = ioq.buffer(100)
      local h = q:recv(p.stderr, b)
      h:wait(5)
      local n = h:result()
      io.stderr:write("got [", n and n > 0 and b:tostring(1, n) or "", "]\n")
    ]], nil, "sh -c 'exec \"$@\" 0<&- 1>&-' sh")
    assert.is_true(ok, tostring(code) .. out)
    assert.matches("got %[to%-stderr\n%]", out)
  end)

  it("a relative program is looked for in the cwd it runs in", function()
    any()
    util.posix_only("a shell script")
    local dir = util.tmpfile()
    os.remove(dir)
    assert(ioq.fs.mkdir(dir))
    local script = dir .. "/t.sh"
    assert(ioq.fs.writefile(script, "#!/bin/sh\necho from-cwd\n"))
    os.execute("chmod +x '" .. script .. "'")
    local p = assert(ioq.process{ "./t.sh", cwd = dir, stdout = "pipe" })
    local line = ioq.stream(p.stdout):read_line()
    assert.are.equal("from-cwd", line)
    assert.are.equal(0, (p:await()))
    p:close()
    os.remove(script)
    os.remove(dir)
  end)

  it("passes each argument as it is (quoted for the C runtime on Windows)", function()
    any()
    local args = { "a b", "", 'q"x\\', "c\\\\d", '\\"', "e f\\", "tab\there",
      "\\\\server\\share", "--x=1 2", "'single'", "%PATH%", "a\\\\\"b" }
    local want = {}
    for i, a in ipairs(args) do want[i] = #a .. ":" .. a .. ";" end
    ioq.run(function()
      local spec = lua("for i = 1, #arg do io.write(#arg[i], ':', arg[i], ';') end", args)
      spec.stdout = "pipe"
      local p = assert(ioq.process(spec))
      assert.are.equal(table.concat(want), read_all(p.stdout))
      assert.are.equal(0, p:await(5))
    end)
  end)

  it("a child that closes its pipes early: EPIPE on a write, the end on a read", function()
    any()
    ioq.run(function()
      local p = assert(ioq.process(util.windows
        and lua("io.stdin:close() io.stdout:close() require('ioq').sleep(0.1)", PIPES)
        or { "sh", "-c", "exec 0<&- 1>&-; sleep 0.1", stdin = "pipe", stdout = "pipe" }))
      assert.are.equal("", read_all(p.stdout))
      p:await(5)
      -- A named pipe's end on Windows: an ioq.file.
      local send = util.windows and p.stdin.write or p.stdin.send
      local n, msg, err = send(p.stdin, string.rep("x", 1 << 20)):await(5)
      assert.is_nil(n)
      assert.are.equal(E.EPIPE, err, msg)  -- and no SIGPIPE killed us
      p:close()
    end)
  end)

  it("runs 100 children at once", function()
    any()
    -- On Windows one script for all (the C runtime's text mode turns its
    -- "\n" into "\r\n").
    local child = util.windows and lua("io.write(arg[1], '\\n') os.exit(arg[1] % 7)")
    ioq.run(function()
      local tasks = {}
      for i = 1, 100 do
        tasks[i] = ioq.spawn(function()
          local p <close> = assert(ioq.process(child
            and { child[1], child[2], tostring(i), stdout = "pipe" }
            or { "sh", "-c", "echo $0; exit $(($0 % 7))", tostring(i), stdout = "pipe" }))
          local out = read_all(p.stdout):gsub("\r\n", "\n")
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
    any()
    ioq.run(function()
      local p = assert(ioq.process(util.windows
        and lua("io.stdout:setvbuf('no') io.write('started\\n') " .. SPIN, { stdout = "pipe" })
        or { "sh", "-c", "echo started; exec sleep 10", stdout = "pipe" }))
      local s = ioq.stream(p.stdout)
      assert.are.equal("started", (s:read_line():gsub("\r$", "")))
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
    if util.windows then
      pending("Windows has no zombies (closing the process handle is all), " ..
              "and Wine cannot count handles")
    end
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
    any()
    if util.windows then
      -- A C runtime file is inheritable, and while a child holds a copy
      -- the file cannot be removed (no FILE_SHARE_DELETE): removing it
      -- tells whether the child got one.
      local kept, passed = util.tmpfile(), util.tmpfile()
      ioq.run(function()
        local f = assert(io.open(kept, "w"))
        local p = assert(ioq.process(lua(SPIN)))
        f:close()
        assert.is_true(os.remove(kept))
        -- The check itself: a file that is passed is held.
        local g = assert(io.open(passed, "w"))
        local p2 = assert(ioq.process(lua(SPIN, { stdout = g })))
        g:close()
        assert.is_nil(os.remove(passed))
        p:kill()
        p2:kill()
        assert.are.equal(143, p:await(5))
        assert.are.equal(143, p2:await(5))
        assert.is_true(os.remove(passed))
      end)
      return
    end
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
    posix("POSIX signals")
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
    any()
    -- p:kill(0) says whether it runs (on Windows, /proc's state elsewhere).
    local function running(p)
      if util.windows then return p:kill(0) == true and p.exit_code == nil end
      return proc_state(p.pid):match("[RS]") ~= nil
    end
    ioq.run(function()
      local p = assert(ioq.process(util.windows and lua(SPIN) or { "sleep", "10" }))
      local v, msg, err = p:await(0.05)
      assert.is_nil(v)
      assert.are.equal("wait: timed out", msg)
      assert.are.equal(E.ETIMEDOUT, err)
      assert.is_true(running(p))
      local h = p:wait()
      ioq.spawn(function() ioq.sleep(0.02); h:cancel() end)
      v, msg, err = h:await(5)
      assert.is_nil(v)
      assert.are.equal(E.ECANCELED, err, msg)
      assert.is_true(running(p))
      assert.is_true(p:kill())
      assert.are.same({ 143, "TERM" }, { p:await(5) })
    end)
  end)

  it("waits outside a loop, and as a handle on a queue", function()
    any()
    local function exit(n)
      return util.windows and lua("os.exit(" .. n .. ")") or { "sh", "-c", "exit " .. n }
    end
    local p = assert(ioq.process(exit(3)))
    assert.are.equal(3, p:await(5))
    p = assert(ioq.process(exit(4)))
    local q <close> = ioq.queue()
    local h = q:wait_process(p)
    assert.are.equal("wait", h.op)
    assert.are.equal(4, h:wait(5))
    p:close()
    assert.has_error(function() q:wait_process(p) end)
  end)

  it("works without pidfds (a waiting thread instead)", function()
    posix("pidfds")
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
  it("on Windows: EOPNOTSUPP for a socket or file (IOQ_POLL waits for a process there)", function()
    if not util.windows then pending("Windows only") end
    local q <close> = ioq.queue()
    local a, b = ioq.socketpair()
    local f = assert(io.open(util.tmpfile("x")))
    for _, obj in ipairs({ a, f }) do
      local v, msg, err = q:poll(obj, "r"):wait(2)
      assert.is_nil(v)
      assert.are.equal("poll: Operation not supported", msg)
      assert.are.equal(E.EOPNOTSUPP, err)
    end
    f:close()
    a:close()
    b:close()
  end)

  it("says when a descriptor is readable or writable, with a timeout", function()
    posix("poll(2) (on IOCP, IOQ_POLL waits for a process handle)")
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
