#!/usr/bin/env lua5.4
-- bench/net/echo_luv.lua: the luv contender of `bench/run.sh echo`, a TCP
-- echo server doing what examples/echo_server.lua does, written the way
-- luv (libuv) code is usually written: callbacks, no coroutines.
--
--   lua5.4 bench/net/echo_luv.lua PORT
--
-- Listens on 127.0.0.1:PORT and sends back whatever each client sends.
-- Prints one line ending in "ready" when it listens; SIGINT or SIGTERM
-- closes every connection and ends the loop.
local uv = require "luv"

local port = math.tointeger(tonumber(arg[1] or ""))
if not port then
  io.stderr:write("usage: lua5.4 bench/net/echo_luv.lua PORT\n")
  os.exit(2)
end

local clients = {}  -- handle -> true, so a signal can close them all

local function drop(client)
  clients[client] = nil
  if not client:is_closing() then client:close() end
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))  -- libuv sets SO_REUSEADDR itself
assert(server:listen(1024, function(err)
  if err then
    io.stderr:write("listen: ", err, "\n")
    return
  end
  local client = uv.new_tcp()
  if not server:accept(client) then
    client:close()
    return
  end
  client:nodelay(true)  -- as the ioq example does
  clients[client] = true
  client:read_start(function(rerr, data)
    if rerr or not data then return drop(client) end  -- error, or EOF
    -- libuv queues what the kernel does not take at once; a failed
    -- write shows up as a read error or EOF next.
    client:write(data)
  end)
end))

local signals = {}
local function stop(name)
  local n = 0
  for client in pairs(clients) do
    drop(client)
    n = n + 1
  end
  print(("%s: closing %d connection(s)"):format(name, n))
  server:close()
  for _, s in ipairs(signals) do s:close() end
end
for _, name in ipairs { "sigint", "sigterm" } do
  local s = uv.new_signal()
  s:start(name, function() stop(name:upper()) end)
  signals[#signals + 1] = s
end

print(("luv echo server on 127.0.0.1 port %d (libuv %s), ready")
  :format(server:getsockname().port, uv.version_string()))
io.stdout:flush()
uv.run()
print("luv echo server stopped")
