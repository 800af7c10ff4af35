#!/usr/bin/env lua5.4
-- examples/prefork.lua: uses every core for a server script. One Lua state
-- runs on one core, so this starts N worker processes of SCRIPT, which all
-- listen on the same port (SO_REUSEPORT: the kernel spreads connections
-- over them), restarts a worker that dies, and on SIGTERM or SIGINT stops
-- them all (SIGTERM to each, then waits) before it exits itself.
--
--   lua5.4 examples/prefork.lua N SCRIPT [ARGS...]
--   lua5.4 examples/prefork.lua 2 examples/http_hello.lua 8080
--
-- A worker is `lua5.4 examples/prefork.lua --worker SCRIPT ARGS...`: it
-- turns on "reuseport" on each socket before it binds, then runs SCRIPT
-- with its arguments, so the server script itself needs no change.
local ioq = require "ioq"

if arg[1] == "--worker" then
  local socket_methods = require("ioq.core").classes.socket
  local bind = socket_methods.bind
  function socket_methods.bind(s, ...)
    s:setoption("reuseport", true)
    return bind(s, ...)
  end
  local script = arg[2]
  local script_arg = table.move(arg, 3, #arg, 1, {})
  script_arg[0] = script
  _G.arg = script_arg
  return dofile(script)
end

local n = math.tointeger(tonumber(arg[1] or ""))
if not n or n < 1 or not arg[2] then
  io.stderr:write("usage: lua5.4 examples/prefork.lua N SCRIPT [ARGS...]\n")
  os.exit(2)
end
local lua = arg[-1] or "lua5.4"
local command = { lua, arg[0], "--worker", table.unpack(arg, 2) }

ioq.run(function()
  local signals <close> = ioq.signals("INT", "TERM")
  local stopping = false
  local workers = {}  -- slot -> process

  --- Keeps worker `slot` running: starts it, waits for its end, and
  -- starts it again (after a pause, so a script that fails at once does
  -- not spin) until the supervisor stops.
  local function keep(slot)
    while not stopping do
      local p, msg = ioq.process(command)
      if not p then
        io.stderr:write("prefork: ", msg, "\n")
      else
        workers[slot] = p
        local code, signal = p:await()
        workers[slot] = nil
        p:close()
        if not stopping then
          io.stderr:write(string.format("prefork: worker %d (pid %d) ended: %s; restarting\n",
            slot, p.pid, signal or code))
        end
      end
      if not stopping then ioq.sleep(0.5) end
    end
  end

  local keepers = {}
  for slot = 1, n do keepers[slot] = ioq.spawn(keep, slot) end
  io.stderr:write(string.format("prefork: %d workers of %s\n", n, arg[2]))

  signals:wait()
  stopping = true
  for _, p in pairs(workers) do p:kill("TERM") end
  for _, t in ipairs(keepers) do
    if not t:join(5) then  -- a worker that ignores SIGTERM
      t:cancel()
    end
  end
  for _, p in pairs(workers) do p:kill("KILL"); p:await(1) end
end)
