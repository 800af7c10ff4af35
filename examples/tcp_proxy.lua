#!/usr/bin/env lua5.4
-- examples/tcp_proxy.lua: forwards a local port to another address.
--
--   lua5.4 examples/tcp_proxy.lua PORT TARGET_HOST TARGET_PORT [HOST]
--
-- Each client gets its own connection to the target; two tasks copy bytes
-- each way. When one side stops sending, the proxy shuts down that
-- direction on the other side (a half-close passes through), and the
-- connection ends when both directions are done. Prints one line when
-- ready; stops cleanly on SIGINT or SIGTERM.
local ioq = require "ioq"

local port = math.tointeger(tonumber(arg[1] or ""))
local target_host = arg[2]
local target_port = math.tointeger(tonumber(arg[3] or ""))
local host = arg[4] or "127.0.0.1"
if not (port and target_host and target_port) then
  io.stderr:write("usage: lua5.4 examples/tcp_proxy.lua PORT TARGET_HOST TARGET_PORT [HOST]\n")
  os.exit(2)
end

local function family(h) return h:find(":", 1, true) and "tcp6" or "tcp" end

--- Copies from `from` to `to` until `from` ends, then half-closes `to`.
-- A pooled receive takes a buffer from the loop's pool only once bytes
-- have come (an idle connection holds none), and the bytes go out
-- straight from it; closing it gives it back. The receive is started
-- again for each chunk (h:resubmit), reusing the closed buffer object.
local function pump(from, to)
  local incoming = from:recv_pooled()
  while true do
    local n, got = incoming:await()
    if not n or n == 0 then break end
    do
      local chunk <close> = got
      local sent = 0
      while sent < n do
        local m = to:send(sent == 0 and chunk or chunk:tostring(sent + 1, n)):await()
        if not m then return end
        sent = sent + m
      end
    end
    incoming:resubmit()
  end
  to:shutdown("w")
end

local function serve(client)
  local upstream <close> = assert(ioq.socket(family(target_host)))
  local ok, msg = upstream:connect(target_host, target_port):await(10)
  if not ok then
    io.stderr:write("proxy: ", msg, "\n")
    return
  end
  client:setoption("nodelay", true)
  upstream:setoption("nodelay", true)
  local up = ioq.spawn(pump, client, upstream)
  local down = ioq.spawn(pump, upstream, client)
  local _, err = pcall(function() up:join(); down:join() end)
  if err then up:cancel(); down:cancel() end
end

local clients = {}  -- socket -> its task, so a signal can stop them all

-- A connection's task: serves it, then closes it.
local function handle(client)
  local c <close> = client
  serve(c)
  clients[client] = nil
end

ioq.run(function()
  -- nil on Windows, which has no signals to wait for: Ctrl-C ends it there
  local signals <close> = ioq.signals("INT", "TERM")
  local server <close> = assert(ioq.socket(family(host)))
  assert(server:setoption("reuseaddr", true))
  assert(server:bind(host, port))
  assert(server:listen(1024))

  local acceptor = ioq.spawn(function()
    while true do
      local client, msg, err = server:accept():await()
      if not client then
        if err == ioq.errno.ECANCELED then return end
        io.stderr:write("accept: ", msg, "\n")
        ioq.sleep(0.01)
      else
        clients[client] = ioq.spawn(handle, client)
      end
    end
  end)

  print(string.format("tcp proxy %s:%d -> %s:%d (%s backend), ready", host,
    select(2, server:getsockname()), target_host, target_port, ioq.current().backend))
  io.stdout:flush()
  if not signals then
    acceptor:join()  -- serves until the process is ended
    return
  end
  local sig = signals:wait()
  print("SIG" .. sig .. ": stopping")
  acceptor:cancel()
  for _, task in pairs(clients) do task:cancel() end
end)
print("tcp proxy stopped")
