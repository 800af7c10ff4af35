-- Loaded by busted before any spec: point require at this checkout's
-- module (IOQ_CPATH names the build folder, so `make asan` can swap it in).
local build = os.getenv("IOQ_CPATH") or "build"
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = build .. "/?.so;" .. package.cpath
