--- bench/luv_randread.lua: the luv (libuv) contender for the random-read
-- benchmarks of bench/run.sh: the same work as
-- `bench/ops.lua randread FILE N [direct]`, written the way luv code
-- usually is: callbacks, no coroutines.
--
--   lua5.4 bench/luv_randread.lua FILE N [direct]
--
-- N reads of 4 KiB at random aligned offsets of FILE, 64 always in flight:
-- every uv.fs_read callback checks its block and starts the next read.
-- libuv runs file reads on its thread pool (UV_THREADPOOL_SIZE, 4 unless
-- set), and uv.fs_read hands each block back as a new Lua string; both
-- are what a luv program pays, so both stay in.
--
-- With "direct" the file is opened with O_DIRECT. luv has no way to read
-- into a buffer of the caller's: fs_read reads into memory libuv
-- allocates, with malloc's alignment, which O_DIRECT refuses (EINVAL)
-- unless it happens to be block-aligned. The script reports that as its
-- failure rather than hiding it.
--
-- Prints one line like ops.lua does, e.g.
--   randread ops=2000000 secs=2.345678 rate=852630
-- so bench/run.sh can divide one rate by the other.
local uv = require "luv"

local DEPTH = 64
local BLOCK = 4096

local path = arg[1]
local n = math.tointeger(tonumber(arg[2] or ""))
local direct = arg[3] == "direct"
if not (#arg == 2 or (#arg == 3 and direct)) or not n or n <= 0 then
  io.stderr:write("usage: lua5.4 bench/luv_randread.lua FILE N [direct]\n")
  os.exit(2)
end

-- luv's constants have no O_DIRECT; its value depends on the architecture.
local function o_direct()
  local machine = uv.os_uname().machine
  if machine:match("^x86") or machine:match("^i%d86") or machine:match("^riscv")
     or machine == "s390x" then
    return 0x4000
  elseif machine:match("^arm") or machine:match("^aarch64") then
    return 0x10000
  end
  error("O_DIRECT's value on " .. machine .. " is not known here")
end

-- Opening and sizing are not what is measured: done synchronously.
local fd = assert(uv.fs_open(path, direct and o_direct() or "r", 0))
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
  if err and direct and err:match("^EINVAL") then
    io.stderr:write(("luv_randread: fs_read with O_DIRECT: %s after %d good reads "
      .. "(fs_read reads into a buffer libuv mallocs, not block-aligned)\n"):format(err, done))
    os.exit(1)
  end
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
