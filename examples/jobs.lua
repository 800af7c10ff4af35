#!/usr/bin/env lua5.4
-- examples/jobs.lua: runs shell commands concurrently, at most LIMIT at a
-- time, and prints each one's output and exit status in the order given.
--
--   lua5.4 examples/jobs.lua LIMIT "command" ["command" ...]
--   lua5.4 examples/jobs.lua 4 "sleep 1; echo a" "echo b >&2" "exit 3"
local ioq = require "ioq"

local limit = math.tointeger(tonumber(arg[1] or ""))
if not limit or limit < 1 or #arg < 2 then
  io.stderr:write("usage: lua5.4 examples/jobs.lua LIMIT COMMAND...\n")
  os.exit(2)
end

--- Runs one command; returns its output (stdout and stderr together) and
-- its exit status (and the signal that ended it, if one did).
local function run_job(command)
  local p, msg = ioq.process{ "sh", "-c", command, stdout = "pipe", stderr = "stdout" }
  if not p then return msg .. "\n", 127 end
  local out = {}
  local s = ioq.stream(p.stdout)
  while true do
    local chunk = s:read(65536)
    if not chunk then break end
    out[#out + 1] = chunk
  end
  local code, signal = p:await()
  p:close()
  return table.concat(out), code, signal
end

ioq.run(function()
  local results, running, next_job = {}, 0, 2
  local slot_free = nil  -- the task waiting for a free slot, if any
  local workers = {}
  -- One task per job; the loop below starts one only while fewer than
  -- `limit` run.
  while next_job <= #arg do
    while running >= limit do
      slot_free = ioq.spawn(ioq.sleep, 3600)
      slot_free:join()
    end
    local i, command = next_job - 1, arg[next_job]
    next_job = next_job + 1
    running = running + 1
    workers[#workers + 1] = ioq.spawn(function()
      results[i] = table.pack(run_job(command))
      running = running - 1
      if slot_free then slot_free:cancel() end
    end)
  end
  for _, t in ipairs(workers) do t:join() end
  for i = 1, #arg - 1 do
    local out, code, signal = results[i][1], results[i][2], results[i][3]
    io.write(string.format("== [%d] %s: exit %d%s\n", i, arg[i + 1], code,
      signal and " (" .. signal .. ")" or ""), out)
  end
end)
