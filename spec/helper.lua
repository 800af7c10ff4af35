-- Loaded by busted before any spec: point require at this checkout's
-- module (IOQ_CPATH names the build folder, so `make asan` can swap it in).
local build = os.getenv("IOQ_CPATH") or "build"
local windows = package.config:sub(1, 1) == "\\"
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = build .. (windows and "/?.dll;" or "/?.so;") .. package.cpath

-- Under `make asan` the sanitizer runtime is preloaded into this process.
-- Keep it out of the shell commands specs run (they are not ours to check),
-- and hand it back explicitly to the child Lua processes (spec/support/util).
local preload = os.getenv("LD_PRELOAD")
if preload then
  require("ioq_test").setenv("LD_PRELOAD")
  require("support.util").preload = preload
end

-- Every test runs under a watchdog: a spec that hangs ends the run with
-- its own name rather than stalling it. IOQ_SPEC_TIMEOUT sets the limit
-- in seconds; sanitizer and valgrind runs get more.
do
  local ok, t = pcall(require, "ioq_test")
  local busted = require "busted"
  if ok and t.watchdog then
    local limit = tonumber(os.getenv("IOQ_SPEC_TIMEOUT"))
      or (os.getenv("IOQ_VALGRIND") and 600) or (preload and 180) or 60
    local function fullname(element)
      local names = { element.name }
      local parent = busted.parent(element)
      while parent and parent.name and parent.descriptor ~= "file" do
        table.insert(names, 1, parent.name)
        parent = busted.parent(parent)
      end
      local where = element.trace and element.trace.short_src or "?"
      return where .. ": " .. table.concat(names, " ")
    end
    busted.subscribe({ "test", "start" }, function(element)
      t.watchdog(limit, fullname(element))
      return nil, true
    end)
    busted.subscribe({ "test", "end" }, function()
      t.watchdog(0)
      return nil, true
    end)
  end
end
