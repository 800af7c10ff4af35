--- bench/platform.lua: the ioq contenders of the stat, readdir and spawn
-- benchmarks (bench/run.sh), the same jobs as bench/fs_bench.c and
-- bench/luv_platform.lua. The backend is IOQ_BACKEND's.
--
--   lua5.4 bench/platform.lua stat DIR NDIRS NFILES N
--       N stats (q:stat(path), the table of each), round the files of
--       bench/fs_bench.c's tree, from 64 tasks in ioq.run, each awaiting
--       one stat after another
--   lua5.4 bench/platform.lua stat-raw DIR NDIRS NFILES N
--       the same with no coroutines: 64 handles always in flight, a new
--       q:stat for each one q:wait hands back
--   lua5.4 bench/platform.lua readdir DIR NDIRS N
--       N listings of whole directories (q:readdir(path): an array of
--       {name =, type =}), round the directories, from 8 tasks; the rate
--       is entries per second
--   lua5.4 bench/platform.lua readdir-iter DIR NDIRS N
--       the same through for name, type in ioq.fs.dir(path) (batches of
--       256 from an ioq.dir)
--   lua5.4 bench/platform.lua spawn PROG N CONC
--       N runs of PROG (no arguments, stdio inherited): CONC tasks, each
--       ioq.process{PROG}, p:await(), p:close() one after another
--
-- Prints one line like bench/ops.lua, e.g.
--   stat ops=400000 secs=1.234567 rate=324000
local ioq = require "ioq"

local STAT_DEPTH = 64
local READDIR_DEPTH = 8

local now = ioq.now

local function report(job, ops, secs)
  print(string.format("%s ops=%d secs=%.6f rate=%.0f", job, ops, secs, ops / secs))
end

local function count_arg(s)
  local n = math.tointeger(tonumber(s))
  if not n or n <= 0 then
    io.stderr:write("platform.lua: bad count '", tostring(s), "'\n")
    os.exit(2)
  end
  return n
end

--- The files of fs_bench's tree, named as it names them.
local function file_names(dir, ndirs, nfiles)
  local paths = {}
  for d = 0, ndirs - 1 do
    for f = 0, nfiles - 1 do
      paths[#paths + 1] = string.format("%s/d%d/f%04d", dir, d, f)
    end
  end
  return paths
end

local function dir_names(dir, ndirs)
  local dirs = {}
  for d = 0, ndirs - 1 do dirs[d + 1] = string.format("%s/d%d", dir, d) end
  return dirs
end

--- Runs `depth` tasks, each calling one(i) for its share of i in 1..n
-- (the next i not taken yet), and returns the seconds it took.
local function in_tasks(n, depth, one)
  local next_i = 0
  local t0 = now()
  ioq.run(function()
    local function worker()
      while next_i < n do
        next_i = next_i + 1
        one(next_i)
      end
    end
    for _ = 1, math.min(depth, n) do ioq.spawn(worker) end
  end)
  return now() - t0
end

local function job_stat(dir, ndirs, nfiles, n)
  local paths = file_names(dir, ndirs, nfiles)
  local total = #paths
  local q
  local secs = in_tasks(n, STAT_DEPTH, function(i)
    q = q or ioq.current()
    local st, msg = q:stat(paths[(i - 1) % total + 1]):await()
    if not st or st.type ~= "file" then error("stat: " .. tostring(msg or st.type)) end
  end)
  report("stat", n, secs)
end

local function job_stat_raw(dir, ndirs, nfiles, n)
  local paths = file_names(dir, ndirs, nfiles)
  local total = #paths
  local q = ioq.queue()
  local into = {}
  local issued, done = 0, 0
  local t0 = now()
  for _ = 1, math.min(STAT_DEPTH, n) do
    issued = issued + 1
    q:stat(paths[(issued - 1) % total + 1])
  end
  while done < n do
    local got = q:wait(nil, into)
    for i = 1, got do
      local st, msg = into[i]:result()
      if not st or st.type ~= "file" then error("stat: " .. tostring(msg or st.type)) end
      done = done + 1
      if issued < n then
        issued = issued + 1
        q:stat(paths[(issued - 1) % total + 1])
      end
    end
  end
  report("stat-raw", n, now() - t0)
  q:close()
end

local function job_readdir(dir, ndirs, n, iter)
  local dirs = dir_names(dir, ndirs)
  local entries = 0
  local q
  local secs = in_tasks(n, READDIR_DEPTH, function(i)
    local path = dirs[(i - 1) % #dirs + 1]
    if iter then
      for name, kind in assert(ioq.fs.dir(path)) do
        if name and kind then entries = entries + 1 end
      end
    else
      q = q or ioq.current()
      local list = assert(q:readdir(path):await())
      entries = entries + #list
    end
  end)
  report(iter and "readdir-iter" or "readdir", entries, secs)
end

local function job_spawn(prog, n, conc)
  local secs = in_tasks(n, conc, function()
    local p <close> = assert(ioq.process{ prog })
    local code, signal = p:await()
    if code ~= 0 then
      error(string.format("%s ended with %s %s", prog, tostring(code), tostring(signal)))
    end
  end)
  report("spawn", n, secs)
end

local job = arg[1]
if (job == "stat" or job == "stat-raw") and #arg == 5 then
  local f = job == "stat" and job_stat or job_stat_raw
  f(arg[2], count_arg(arg[3]), count_arg(arg[4]), count_arg(arg[5]))
elseif (job == "readdir" or job == "readdir-iter") and #arg == 4 then
  job_readdir(arg[2], count_arg(arg[3]), count_arg(arg[4]), job == "readdir-iter")
elseif job == "spawn" and #arg == 4 then
  job_spawn(arg[2], count_arg(arg[3]), count_arg(arg[4]))
else
  io.stderr:write("usage: lua5.4 bench/platform.lua stat|stat-raw DIR NDIRS NFILES N\n",
                  "       lua5.4 bench/platform.lua readdir|readdir-iter DIR NDIRS N\n",
                  "       lua5.4 bench/platform.lua spawn PROG N CONC\n")
  os.exit(2)
end
