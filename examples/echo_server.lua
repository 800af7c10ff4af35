#!/usr/bin/env lua5.4
-- examples/echo_server.lua: a TCP echo server, one task per connection.
--
--   lua5.4 examples/echo_server.lua PORT [HOST]
--
-- Listens on HOST (default 127.0.0.1) and sends back whatever each client
-- sends. Prints one line when it is ready; stops cleanly on SIGINT or
-- SIGTERM (closing every connection first).
local ioq = require "ioq"

local port = math.tointeger(tonumber(arg[1] or ""))
local host = arg[2] or "127.0.0.1"
if not port then
  io.stderr:write("usage: lua5.4 examples/echo_server.lua PORT [HOST]\n")
  os.exit(2)
end

-- Sends back the n bytes of `chunk`; false if the client has gone.
local function echo(client, chunk, n)
  local sent = client:send(chunk):await()
  if not sent then return false end
  while sent < n do  -- a short send: the rest as a string
    local m = client:send(chunk:tostring(sent + 1, n)):await()
    if not m then return false end
    sent = sent + m
  end
  return true
end

-- Echo until the client closes (or the task is cancelled). A pooled
-- receive takes a buffer from the loop's pool only once bytes have come,
-- so a connection that waits holds none; the bytes go back straight from
-- that buffer (no Lua string per message), and closing it returns it to
-- the pool. The one receive is started again for each message
-- (h:resubmit), and then reuses the closed buffer object: nothing new is
-- made per message.
local function serve(client)
  local incoming = client:recv_pooled()
  while true do
    local n, got = incoming:await()
    if not n or n == 0 then return end
    do
      local chunk <close> = got
      if not echo(client, chunk, n) then return end
    end
    incoming:resubmit()
  end
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
  local server <close> = assert(ioq.socket(host:find(":", 1, true) and "tcp6" or "tcp"))
  assert(server:setoption("reuseaddr", true))
  assert(server:bind(host, port))
  assert(server:listen(1024))

  -- One multishot accept brings every connection (where the kernel has
  -- it; elsewhere accept_multi runs one accept per connection).
  local acceptor = ioq.spawn(function()
    local incoming = server:accept_multi()
    while true do
      local client, msg, err = incoming:next()
      if not client then
        if err == ioq.errno.ECANCELED then return end
        -- EMFILE and the like: the accept goes on once this is taken; one
        -- that ended for good is made again.
        io.stderr:write("accept: ", tostring(msg), "\n")
        ioq.sleep(0.01)
        if incoming:done() then incoming = server:accept_multi() end
      else
        client:setoption("nodelay", true)
        clients[client] = ioq.spawn(handle, client)
      end
    end
  end)

  print(string.format("echo server on %s port %d (%s backend), ready",
    host, select(2, server:getsockname()), ioq.current().backend))
  io.stdout:flush()

  if not signals then
    acceptor:join()  -- serves until the process is ended
    return
  end
  local sig = signals:wait()
  print("SIG" .. sig .. ": closing " .. (function()
    local n = 0
    for _ in pairs(clients) do n = n + 1 end
    return n
  end)() .. " connection(s)")
  acceptor:cancel()
  for _, task in pairs(clients) do task:cancel() end
end)
print("echo server stopped")
