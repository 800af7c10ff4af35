-- Regression specs for ioq.signals (issue 12, item 13): the signals a
-- script watches must not leak into the rest of the process or into the
-- programs it starts.
local ioq = require "ioq"
local util = require "support.util"

local function mypid()
  local f = assert(io.open("/proc/self/stat"))
  local line = f:read("l")
  f:close()
  return tonumber(line:match("^(%d+)"))
end

-- A signal mask line of /proc/self/status (SigBlk, SigIgn, SigCgt), as
-- the hex string the kernel prints. /proc/self is the main thread, where
-- busted runs the specs.
local function status(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s*(%x+)")
    if v then return v end
  end
  error("no " .. field .. " in /proc/self/status")
end

-- The same lines as a program started by io.popen sees them.
local function child_status()
  local p = assert(io.popen("grep -E '^Sig(Blk|Ign|Cgt)' /proc/self/status"))
  local out = p:read("a")
  p:close()
  return out
end

-- Sends a signal from another process. Through io.popen, not os.execute:
-- system() ignores INT and QUIT in the caller while the child runs.
local function kill(sig, pid)
  local p = assert(io.popen("kill -" .. sig .. " " .. pid))
  p:read("a")
  assert(p:close())
end

-- Every name a signals object has queued, until it has been quiet for
-- `quiet` seconds.
local function drain(sigs, quiet)
  local seen = {}
  while true do
    local name = sigs:wait(quiet)
    if not name then return seen end
    seen[#seen + 1] = name
  end
end

local function posix_signals()
  util.posix_only("POSIX signals")
end

describe("regress: signals", function()
  it("#13 after sigs:close() a program started by os.execute or io.popen dies of SIGTERM", function()
    posix_signals()
    local sigs = assert(ioq.signals("TERM", "INT"))
    sigs:close()
    local ok, how, code = os.execute("kill -TERM $$")
    assert.are.same({ nil, "signal", 15 }, { ok, how, code })
    local p = assert(io.popen("kill -TERM $$; echo survived"))
    assert.are.equal("", p:read("a"))
    ok, how, code = p:close()
    assert.are.same({ nil, "signal", 15 }, { ok, how, code })
  end)

  it("#13 a program started while a signals object is open gets default dispositions and mask", function()
    posix_signals()
    local before = child_status()
    local sigs <close> = assert(ioq.signals("TERM", "INT", "USR1", "CHLD"))
    assert.are.equal(before, child_status())
    local ok, how, code = os.execute("kill -TERM $$")
    assert.are.same({ nil, "signal", 15 }, { ok, how, code })
    -- The child's signal was its own: the script's object saw nothing of
    -- it (CHLD aside, which the child's end rightly raises here).
    for _, name in ipairs(drain(sigs, 0.05)) do
      assert.are.equal("CHLD", name)
    end
  end)

  it("#13 closing the last signals object leaves the process's mask and handlers as before", function()
    posix_signals()
    if os.getenv("IOQ_VALGRIND") then
      pending("under valgrind /proc shows valgrind's own signal state, not the program's")
      return
    end
    local blk, cgt = status("SigBlk"), status("SigCgt")
    local a = assert(ioq.signals("INT", "TERM", "USR2"))
    local b = assert(ioq.signals("TERM"))
    a:close()
    b:close()
    assert.are.equal(blk, status("SigBlk"))
    assert.are.equal(cgt, status("SigCgt"))
    -- Collected rather than closed: the same.
    do local _ = assert(ioq.signals("HUP", "USR2")) end
    collectgarbage()
    collectgarbage()
    assert.are.equal(blk, status("SigBlk"))
    assert.are.equal(cgt, status("SigCgt"))
  end)

  it("#13 closing a signals object gives a handler the script had back", function()
    posix_signals()
    local t = require "ioq_test"
    t.arm_alarm(0)  -- installs its counting SIGALRM handler, arms nothing
    local sigs = assert(ioq.signals("ALRM"))
    local before = t.alarms()
    kill("ALRM", mypid())
    assert.are.equal("ALRM", sigs:wait(1))
    assert.are.equal(before, t.alarms())
    sigs:close()
    kill("ALRM", mypid())
    assert.are.equal(before + 1, t.alarms())
  end)

  it("#13 a signals object made after a script's own handler takes the signal and gives it back", function()
    posix_signals()
    local t = require "ioq_test"
    local a = assert(ioq.signals("ALRM"))
    t.arm_alarm(0)  -- the script's handler replaces ioq's
    local before = t.alarms()
    local b = assert(ioq.signals("ALRM"))
    kill("ALRM", mypid())
    assert.are.equal("ALRM", a:wait(1))
    assert.are.equal("ALRM", b:wait(1))
    assert.are.equal(before, t.alarms())
    b:close()
    a:close()
    kill("ALRM", mypid())
    assert.are.equal(before + 1, t.alarms())
  end)

  it("#13 two signals objects watching INT each receive one raise", function()
    posix_signals()
    local a <close> = assert(ioq.signals("INT"))
    local b <close> = assert(ioq.signals("TERM", "INT"))
    kill("INT", mypid())
    assert.are.equal("INT", a:wait(1))
    assert.are.equal("INT", b:wait(1))
    assert.is_nil(a:wait(0.05))
    assert.is_nil(b:wait(0.05))
  end)

  it("#13 a signal raised many times is not lost, nor does it crowd out another", function()
    posix_signals()
    local sigs <close> = assert(ioq.signals("USR1", "USR2"))
    local pid = mypid()
    -- Nobody reads while eight processes send 200 USR1s each, then one
    -- USR2. A pipe holds 16 records: were they not coalesced, USR1 would
    -- fill it and USR2 would be dropped.
    -- (Bounded: a shell that inherited a blocked SIGCHLD hangs in `wait`.)
    local p = assert(io.popen("timeout -s KILL 5 sh -c 'for i in 1 2 3 4 5 6 7 8; do kill -USR1 "
      .. string.rep(pid .. " ", 200) .. "& done; wait; kill -USR2 " .. pid .. "'"))
    p:read("a")
    assert(p:close())
    local seen = {}
    for _, name in ipairs(drain(sigs, 0.1)) do
      seen[name] = (seen[name] or 0) + 1
    end
    assert.is_true((seen.USR1 or 0) >= 1)
    assert.are.equal(1, seen.USR2)
  end)

  it("#13 a forked child's signals are its own: its SIGTERM ends it, not its parent's watch", function()
    posix_signals()
    local t = require "ioq_test"
    local sigs <close> = assert(ioq.signals("TERM"))
    local pid = t.fork()
    if pid == 0 then
      -- Survival is the failure: the signal went elsewhere, or nowhere.
      pcall(kill, "TERM", mypid())
      t.exit(0)
    end
    assert.are.equal(-1, t.waitpid(pid))  -- did not exit: killed
    assert.is_nil(sigs:wait(0.1))
  end)

  it("#13 a signal that a worker thread takes still reaches the loop", function()
    posix_signals()
    -- The script makes the backend start its workers (epoll: threads
    -- that run file ops) before it watches USR1; the kernel may then
    -- hand USR1 to any of them.
    local ok, code, out = util.run_lua([[
      local ioq = require "ioq"
      local f = assert(io.open("/proc/self/stat"))
      local pid = f:read("l"):match("^(%d+)")
      local q = ioq.queue()
      local buf = ioq.buffer(64)
      assert(q:read(f, buf, 0):wait(2))
      local sigs <close> = assert(ioq.signals("USR1"))
      for _ = 1, 20 do
        assert(os.execute("kill -USR1 " .. pid))
        assert(sigs:wait(2) == "USR1")
        assert(q:read(f, buf, 0):wait(2))
      end
      f:close()
      print("all delivered")
    ]])
    assert.is_true(ok, out)
    assert.are.equal(0, code)
    assert.matches("all delivered", out)
  end)
end)
