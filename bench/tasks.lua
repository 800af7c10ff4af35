--- bench/tasks.lua: what the coroutine layer costs per await.
--
--   lua5.4 bench/tasks.lua [N] [REPS]
--
-- Runs, alternately and REPS times (default 3), N (default 100000):
--   raw    NOPs through q:nop() / q:wait(), 64 at a time
--   tasks  N tasks in ioq.run, each doing one ioq.current():nop():await()
--   seq    one after another: q:nop():wait() outside a loop, then
--          q:nop():await() in one task: the difference is what an await
--          costs over a plain wait
-- and prints the medians.
local ioq = require "ioq"

local N = math.tointeger(tonumber(arg[1] or 100000))
local REPS = math.tointeger(tonumber(arg[2] or 3))
assert(N and N > 0 and REPS and REPS > 0, "usage: lua5.4 bench/tasks.lua [N] [REPS]")

local function raw(n)
  local q <close> = ioq.queue()
  local t0 = ioq.now()
  local done = 0
  while done < n do
    local batch = math.min(64, n - done)
    for _ = 1, batch do q:nop() end
    local got = 0
    while got < batch do got = got + q:wait() end
    done = done + batch
  end
  return n / (ioq.now() - t0)
end

local function tasks(n)
  local t0 = ioq.now()
  ioq.run(function()
    local q = ioq.current()
    local function one() return q:nop():await() end
    for _ = 1, n do ioq.spawn(one) end
  end)
  return n / (ioq.now() - t0)
end

local function sequential(n)
  local q <close> = ioq.queue()
  local t0 = ioq.now()
  for _ = 1, n do q:nop():wait() end
  local plain = (ioq.now() - t0) / n
  local awaited
  ioq.run({ queue = q }, function()
    local t1 = ioq.now()
    for _ = 1, n do q:nop():await() end
    awaited = (ioq.now() - t1) / n
  end)
  return plain, awaited
end

local function median(t)
  table.sort(t)
  local m = #t // 2
  return #t % 2 == 1 and t[m + 1] or (t[m] + t[m + 1]) / 2
end

local r, k, sp, sa = {}, {}, {}, {}
for i = 1, REPS do
  r[i] = raw(N)
  k[i] = tasks(N)
  sp[i], sa[i] = sequential(N)
  collectgarbage()
end
local raw_rate, task_rate = median(r), median(k)
print(string.format("raw nops     %10.0f ops/s", raw_rate))
print(string.format("tasks        %10.0f tasks/s (spawn + nop():await() + end)", task_rate))
print(string.format("per task     %10.0f ns more than a raw nop",
  (1 / task_rate - 1 / raw_rate) * 1e9))
print(string.format("per await    %10.0f ns more than h:wait() (%.0f ns against %.0f ns per nop)",
  (median(sa) - median(sp)) * 1e9, median(sa) * 1e9, median(sp) * 1e9))
print(string.format("(medians of %d runs, N=%d)", REPS, N))
