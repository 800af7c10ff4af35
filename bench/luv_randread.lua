--- bench/luv_randread.lua: the luv (libuv) contender for the randread job
-- of bench/run.sh: the same work as `bench/ops.lua randread FILE N`,
-- written the way luv code usually is: callbacks, no coroutines.
--
--   lua5.4 bench/luv_randread.lua FILE N
--
-- N reads of 4 KiB at random aligned offsets of FILE, 64 always in flight:
-- every uv.fs_read callback checks its block and starts the next read.
-- libuv runs file reads on its thread pool (UV_THREADPOOL_SIZE, 4 unless
-- set), and uv.fs_read hands each block back as a new Lua string; both
-- are what a luv program pays, so both stay in.
--
-- Prints one line like ops.lua does, e.g.
--   randread ops=2000000 secs=2.345678 rate=852630
-- so bench/run.sh can divide one rate by the other.
local uv = require "luv"

local DEPTH = 64
local BLOCK = 4096

local path = arg[1]
local n = math.tointeger(tonumber(arg[2] or ""))
if #arg ~= 2 or not n or n <= 0 then
  io.stderr:write("usage: lua5.4 bench/luv_randread.lua FILE N\n")
  os.exit(2)
end

-- Opening and sizing are not what is measured: done synchronously.
local fd = assert(uv.fs_open(path, "r", 0))
local nblocks = assert(uv.fs_fstat(fd)).size // BLOCK
if nblocks == 0 then
  error(path .. " is smaller than " .. BLOCK .. " bytes")
end

-- The same seed and generator as ops.lua, inside the timed part as there.
math.randomseed(42)
local random = math.random
local issued, done = 0, 0

local on_read
local function issue()
  issued = issued + 1
  uv.fs_read(fd, BLOCK, random(0, nblocks - 1) * BLOCK, on_read)
end

function on_read(err, data)
  if err or #data ~= BLOCK then
    error("read: " .. tostring(err or ("short read: " .. #data)))
  end
  done = done + 1
  if issued < n then issue() end
end

-- uv.hrtime is the monotonic clock in nanoseconds: wall time, as ops.lua.
local t0 = uv.hrtime()
for _ = 1, math.min(DEPTH, n) do issue() end
uv.run()  -- returns once the last callback has run: nothing is left active
local secs = (uv.hrtime() - t0) / 1e9
assert(done == n, "the loop ended with reads outstanding")
uv.fs_close(fd)
print(string.format("randread ops=%d secs=%.6f rate=%.0f", n, secs, n / secs))
