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
