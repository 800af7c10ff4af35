--- bench/ops.lua: per-op cost of ioq, the same jobs as bench/uring_bench.c.
--
--   lua5.4 bench/ops.lua nop N              N NOPs in batches of 64
--   lua5.4 bench/ops.lua nop-reuse N        the same 64 handles, resubmitted
--   lua5.4 bench/ops.lua nop-tasks N        the coroutine layer: 64 tasks in
--                                           ioq.run, each awaiting one NOP
--                                           after another (N/64 each)
--   lua5.4 bench/ops.lua nop-tasks-timed N  the same, each await with a 30 s
--                                           timeout that never fires (as a
--                                           stream read's)
--   lua5.4 bench/ops.lua randread FILE N    N buffered 4 KiB random reads,
--                                           64 always in flight, a new
--                                           handle per read
--   lua5.4 bench/ops.lua randread-reuse FILE N
--                                           the same, each handle put back
--                                           to work with h:resubmit(offset)
--   ... randread[-reuse] FILE N direct      the file opened with O_DIRECT
--                                           (the page cache bypassed)
--
-- Prints one line like uring_bench does, e.g.
--   nop ops=6400000 secs=1.234567 rate=5184000
-- so bench/run.sh can divide one rate by the other.
local ioq = require "ioq"

local DEPTH = 64
local BLOCK = 4096

-- Wall time (the monotonic clock), never os.clock: that is CPU time, and
-- misses time spent blocked in the kernel.
local now = ioq.now

local function report(job, ops, secs)
  print(string.format("%s ops=%d secs=%.6f rate=%.0f", job, ops, secs, ops / secs))
end

local function count_arg(s)
  local n = math.tointeger(tonumber(s))
  if not n or n <= 0 then
    io.stderr:write("ops.lua: bad count '", tostring(s), "'\n")
    os.exit(2)
  end
  return n
end

local function job_nop(n, reuse)
  local q = ioq.queue()
  local into = {}
  local done = 0
  local handles = {}
  local t0 = now()
  while done < n do
    local batch = math.min(DEPTH, n - done)
    for i = 1, batch do
      local h = handles[i]
      if h then
        h:resubmit()
      else
        h = q:nop()
        if reuse then handles[i] = h end
      end
    end
    local resolved = 0
    while resolved < batch do
      resolved = resolved + q:wait(nil, into)
    end
    done = done + batch
  end
  report(reuse and "nop-reuse" or "nop", n, now() - t0)
  q:close()
end

--- DEPTH tasks, each awaiting NOPs one after another: every pass of the
-- loop finds up to DEPTH new NOPs to submit at once, as the batch above.
local function job_nop_tasks(n, timeout)
  local name = timeout and "nop-tasks-timed" or "nop-tasks"
  local per_task = n // DEPTH
  if per_task * DEPTH ~= n then
    error(name .. ": N must be a multiple of " .. DEPTH)
  end
  local t0 = now()
  ioq.run(function()
    local q = ioq.current()
    local function worker()
      for _ = 1, per_task do
        assert(q:nop():await(timeout))
      end
    end
    for _ = 1, DEPTH do ioq.spawn(worker) end
  end)
  report(name, n, now() - t0)
end

local function job_randread(path, n, reuse, direct)
  local q = ioq.queue()
  local size = assert(io.open(path, "rb")):seek("end")
  local nblocks = size // BLOCK
  if nblocks == 0 then
    error(path .. " is smaller than " .. BLOCK .. " bytes")
  end
  -- ioq's buffers are page-aligned, as O_DIRECT wants them.
  local f = assert(q:open(path, direct and "rd" or "r"):wait())
  local bufs = {}
  for i = 1, DEPTH do
    bufs[i] = ioq.buffer(BLOCK)
  end
  -- A fixed seed keeps runs comparable; the generator is part of what a
  -- Lua program pays per op, so it stays inside the timed loop.
  math.randomseed(42)
  local random = math.random
  local into = {}
  local issued, done = 0, 0
  local t0 = now()
  for i = 1, math.min(DEPTH, n) do
    q:read(f, bufs[i], random(0, nblocks - 1) * BLOCK)
    issued = issued + 1
  end
  while done < n do
    local got = q:wait(nil, into)
    for i = 1, got do
      local h = into[i]
      local bytes, msg = h:result()
      if bytes ~= BLOCK then
        error("read: " .. tostring(msg or ("short read: " .. tostring(bytes))))
      end
      done = done + 1
      -- Put the buffer straight back to work, as uring_bench does.
      if issued < n then
        if reuse then
          h:resubmit(random(0, nblocks - 1) * BLOCK)
        else
          q:read(f, h.buffer, random(0, nblocks - 1) * BLOCK)
        end
        issued = issued + 1
      end
    end
  end
  report(reuse and "randread-reuse" or "randread", n, now() - t0)
  q:close()
  f:close()
end

local job = arg[1]
if (job == "nop" or job == "nop-reuse") and #arg == 2 then
  job_nop(count_arg(arg[2]), job == "nop-reuse")
elseif job == "nop-tasks" and #arg == 2 then
  job_nop_tasks(count_arg(arg[2]))
elseif job == "nop-tasks-timed" and #arg == 2 then
  job_nop_tasks(count_arg(arg[2]), 30)
elseif (job == "randread" or job == "randread-reuse") and
       (#arg == 3 or (#arg == 4 and arg[4] == "direct")) then
  job_randread(arg[2], count_arg(arg[3]), job == "randread-reuse", arg[4] == "direct")
else
  io.stderr:write("usage: lua5.4 bench/ops.lua nop|nop-reuse|nop-tasks|nop-tasks-timed N\n",
                  "       lua5.4 bench/ops.lua randread|randread-reuse FILE N [direct]\n")
  os.exit(2)
end
