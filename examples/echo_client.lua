#!/usr/bin/env lua5.4
-- examples/echo_client.lua: drives an echo server and checks every byte.
--
--   lua5.4 examples/echo_client.lua PORT [CONNECTIONS [MESSAGES [SIZE [HOST]]]]
--
-- Opens CONNECTIONS (default 10) connections at once; each sends MESSAGES
-- (default 100) messages of SIZE (default 128) random bytes, one at a time,
-- and reads each echo back before the next. Prints the rate and exits
-- non-zero if any byte came back wrong.
local ioq = require "ioq"

local port = math.tointeger(tonumber(arg[1] or ""))
local conns = math.tointeger(tonumber(arg[2] or "10"))
local messages = math.tointeger(tonumber(arg[3] or "100"))
local size = math.tointeger(tonumber(arg[4] or "128"))
local host = arg[5] or "127.0.0.1"
if not (port and conns and messages and size) then
  io.stderr:write("usage: lua5.4 examples/echo_client.lua PORT [CONNECTIONS [MESSAGES [SIZE [HOST]]]]\n")
  os.exit(2)
end

local function payload(seed)
  local t = {}
  for i = 1, size do t[i] = string.char((seed * 31 + i * 7) % 256) end
  return table.concat(t)
end

local bad, done = 0, 0
local t0 = ioq.now()
ioq.run(function()
  local tasks = {}
  for c = 1, conns do
    tasks[c] = ioq.spawn(function()
      local s <close> = assert(ioq.socket(host:find(":", 1, true) and "tcp6" or "tcp"))
      assert(s:connect(host, port):await(5))
      s:setoption("nodelay", true)
      local stream = ioq.stream(s, { timeout = 10 })
      for m = 1, messages do
        local msg = payload(c * 1000 + m)
        assert(stream:write_all(msg))
        local back = assert(stream:read_exact(#msg))
        if back ~= msg then bad = bad + 1 end
        done = done + 1
      end
    end)
  end
  for c = 1, conns do tasks[c]:join() end
end)
local dt = ioq.now() - t0
print(string.format("%d round trips of %d bytes over %d connections in %.3f s: %.0f/s, %d wrong",
  done, size, conns, dt, done / dt, bad))
os.exit(bad == 0 and done == conns * messages)
