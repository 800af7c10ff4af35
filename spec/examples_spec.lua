-- The programs in examples/ run as their headers say.
local util = require "support.util"

-- Lua with this checkout's module (and, under `make asan`, the sanitizer
-- runtime, which only the Lua processes get).
local LUA = "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='" ..
  (os.getenv("IOQ_CPATH") or "build") .. "/?.so;;' " ..
  (util.preload and "LD_PRELOAD='" .. util.preload .. "' " or "") ..
  (os.getenv("LUA") or "lua5.4")
if util.windows then  -- this very lua.exe, through cmd.exe (so no quotes first)
  LUA = arg[-1] .. ' -e "package.path=[[lua/?.lua;lua/?/init.lua;]]..package.path ' ..
    'package.cpath=[[' .. (os.getenv("IOQ_CPATH") or "build") .. '/?.dll;]]..package.cpath"'
end

local function free_port()
  local ioq = require "ioq"
  local s = assert(ioq.socket("tcp"))
  assert(s:bind("127.0.0.1", 0))
  local port = select(2, s:getsockname())
  s:close()
  return port
end

--- Starts a server example in the background; returns its pid, the file
-- its output goes to, and the ready line it printed.
local function start(script, args)
  local out = util.tmpfile("")
  local p = io.popen(string.format("%s examples/%s %s > %s 2>&1 & echo $!",
    LUA, script, args, out))
  local pid = p:read("l")
  p:close()
  local line
  for _ = 1, 200 do  -- up to 2 s for the ready line
    line = util.readfile(out):match("[^\n]*ready")
    if line then break end
    os.execute("sleep 0.01")
  end
  return pid, out, line
end

--- True once the process has exited (a zombie waiting for its reaper,
-- which is not us, counts as exited).
local function exited(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return true end
  local stat = f:read("a")
  f:close()
  return stat:match("^%d+ %b() (%u)") == "Z"
end

--- Sends SIGTERM and waits for the process to end; true if it did.
local function stop(pid)
  os.execute("kill -TERM " .. pid)
  for _ = 1, 300 do
    if exited(pid) then return true end
    os.execute("sleep 0.01")
  end
  os.execute("kill -KILL " .. pid)
  return false
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok == true, out
end

describe("examples", function()
  after_each(util.cleanup)

  it("copy.lua copies and checksums a file", function()
    local src = util.tmpfile(util.random_bytes(3 * 1024 * 1024 + 17, 2))
    local dst = util.tmpfile()
    local ok, out = sh(LUA .. " examples/copy.lua " .. src .. " " .. dst)
    assert.is_true(ok, out)
    assert.matches("match", out)
    assert.matches("backend: ", out)
    assert.is_true(util.readfile(src) == util.readfile(dst))
    assert.matches("kernel copies", out)
    os.remove(dst)
    ok, out = sh(LUA .. " examples/copy.lua --buffers " .. src .. " " .. dst)
    assert.is_true(ok, out)
    assert.matches("match", out)
    assert.matches(" reads, ", out)
    assert.is_true(util.readfile(src) == util.readfile(dst))
  end)

  it("echo_server.lua serves echo_client.lua and stops on SIGTERM", function()
    util.posix_only("SIGTERM and a POSIX shell to run servers in the background")
    local port = free_port()
    local pid, out, ready = start("echo_server.lua", port)
    assert.is_truthy(ready, util.readfile(out))
    assert.matches("port " .. port, ready)
    local ok, client = sh(LUA .. " examples/echo_client.lua " .. port .. " 20 50 300")
    assert.is_true(ok, client)
    assert.matches("1000 round trips of 300 bytes over 20 connections", client)
    assert.matches(", 0 wrong", client)
    assert.is_true(stop(pid))
    assert.matches("echo server stopped", util.readfile(out))
  end)

  it("http_hello.lua answers HTTP/1.1 with keep-alive and Connection: close", function()
    util.posix_only("SIGTERM and a POSIX shell to run servers in the background")
    local ioq = require "ioq"
    local port = free_port()
    local pid, out, ready = start("http_hello.lua", port)
    assert.is_truthy(ready, util.readfile(out))
    ioq.run(function()
      local c <close> = assert(ioq.socket("tcp"))
      assert(c:connect("127.0.0.1", port):await(2))
      local s = ioq.stream(c, { timeout = 5 })
      -- Two pipelined keep-alive requests, then one that closes.
      assert(s:write_all("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /again HTTP/1.1\r\nHost: x\r\n\r\n"))
      for _ = 1, 2 do
        local head = assert(s:read_until("\r\n\r\n"))
        assert.matches("^HTTP/1.1 200 OK", head)
        local len = tonumber(head:match("Content%-Length: (%d+)"))
        assert.are.equal("Hello, world\n", s:read_exact(len))
        assert.is_nil(head:match("Connection: close"))
      end
      assert(s:write_all("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
      local head = assert(s:read_until("\r\n\r\n"))
      assert.matches("Connection: close", head)
      assert.are.equal("Hello, world\n", s:read_exact(13))
      assert.are.same({ nil }, { s:read(1) })
    end)
    if os.execute("command -v curl >/dev/null 2>&1") then
      local ok, body = sh("curl -s --max-time 5 http://127.0.0.1:" .. port .. "/")
      assert.is_true(ok)
      assert.are.equal("Hello, world\n", body)
    end
    assert.is_true(stop(pid))
  end)

  it("tcp_proxy.lua forwards to an echo server", function()
    util.posix_only("SIGTERM and a POSIX shell to run servers in the background")
    local eport, pport = free_port(), free_port()
    local epid, eout, eready = start("echo_server.lua", eport)
    assert.is_truthy(eready, util.readfile(eout))
    local ppid, pout, pready = start("tcp_proxy.lua", pport .. " 127.0.0.1 " .. eport)
    assert.is_truthy(pready, util.readfile(pout))
    local ok, client = sh(LUA .. " examples/echo_client.lua " .. pport .. " 10 20 5000")
    assert.is_true(ok, client)
    assert.matches("200 round trips of 5000 bytes", client)
    assert.matches(", 0 wrong", client)
    assert.is_true(stop(ppid))
    assert.is_true(stop(epid))
  end)
end)
