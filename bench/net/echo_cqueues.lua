#!/usr/bin/env lua5.4
-- bench/net/echo_cqueues.lua: the cqueues contender of the echo benchmark
-- (bench/run.sh echo), a TCP echo server doing what
-- examples/echo_server.lua does, written the way cqueues code usually is:
-- one coroutine per connection on a cqueues controller, sockets that
-- yield when they would block.
--
--   lua5.4 bench/net/echo_cqueues.lua PORT
--
-- Listens on 127.0.0.1:PORT and sends back whatever each client sends.
-- Prints one line ending in "ready" when it listens; SIGINT or SIGTERM
-- ends it (exit status 0).
local cqueues = require "cqueues"
local socket = require "cqueues.socket"
local signal = require "cqueues.signal"

local port = math.tointeger(tonumber(arg[1] or ""))
if not port then
  io.stderr:write("usage: lua5.4 bench/net/echo_cqueues.lua PORT\n")
  os.exit(2)
end

-- A peer that resets its connection is the end of that connection, not an
-- error to raise out of the controller (cqueues raises by default).
local function quiet(_, _, why) return why end

local function serve(con)
  con:onerror(quiet)
  con:setmode("b", "bn")  -- binary both ways, writes unbuffered
  while true do
    -- A negative count: whatever is there, up to 16 KiB (the size of the
    -- ioq example's buffer).
    local data = con:xread(-16384, "b")
    if not data or not con:xwrite(data, "bn") then break end
  end
  con:close()
end

local cq = cqueues.new()
local server = socket.listen { host = "127.0.0.1", port = port, reuseaddr = true, nodelay = true }
server:onerror(quiet)
assert(server:listen())  -- binds now, so "ready" below is true

cq:wrap(function()
  for con in server:clients() do
    cq:wrap(serve, con)
  end
end)

-- Signals arrive through a signalfd the controller polls; they must be
-- blocked for the process first.
signal.block(signal.SIGINT, signal.SIGTERM)
local signals = signal.listen(signal.SIGINT, signal.SIGTERM)
cq:wrap(function()
  local signo = signals:wait()
  print(("%s: stopping"):format(signo == signal.SIGINT and "SIGINT" or "SIGTERM"))
  io.stdout:flush()
  os.exit(0)
end)

local _, host, bound = server:localname()
print(("cqueues echo server on %s port %d (cqueues %s), ready"):format(host, bound, cqueues.VERSION))
io.stdout:flush()
assert(cq:loop())
