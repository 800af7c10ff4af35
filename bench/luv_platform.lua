--- bench/luv_platform.lua: the luv (libuv) contenders of the stat,
-- readdir and spawn benchmarks (bench/run.sh): the jobs of
-- bench/platform.lua, written the way luv code usually is: callbacks, no
-- coroutines, the same number in flight. libuv runs fs requests on its
-- thread pool (UV_THREADPOOL_SIZE, 4 by default, as ioq's epoll workers).
--
--   lua5.4 bench/luv_platform.lua stat DIR NDIRS NFILES N
--       N uv.fs_stat(path, cb), 64 in flight, round the files
--   lua5.4 bench/luv_platform.lua readdir DIR NDIRS N
--       N listings, uv.fs_scandir(path, cb) then uv.fs_scandir_next(req)
--       to the end of each, 8 in flight; the rate is entries per second
--   lua5.4 bench/luv_platform.lua spawn PROG N CONC
--       N uv.spawn(PROG, {stdio = {0, 1, 2}}, on_exit) (stdio inherited,
--       as ioq's default), CONC running at once; each handle closed in
--       its exit callback
--
-- Prints one line like bench/platform.lua, e.g.
--   stat ops=400000 secs=1.234567 rate=324000
local uv = require "luv"

local STAT_DEPTH = 64
local READDIR_DEPTH = 8

local function now() return uv.hrtime() / 1e9 end

local function report(job, ops, secs)
  print(string.format("%s ops=%d secs=%.6f rate=%.0f", job, ops, secs, ops / secs))
end

local function count_arg(s)
  local n = math.tointeger(tonumber(s))
  if not n or n <= 0 then
    io.stderr:write("luv_platform.lua: bad count '", tostring(s), "'\n")
    os.exit(2)
  end
  return n
end

--- Keeps `depth` requests going: start(i, done) begins request i and
-- calls done() when it is over; the next one starts from there.
local function keep_going(n, depth, start)
  local issued, finished = 0, 0
  local function done()
    finished = finished + 1
    if issued < n then
      issued = issued + 1
      start(issued, done)
    end
  end
  local t0 = now()
  for _ = 1, math.min(depth, n) do
    issued = issued + 1
    start(issued, done)
  end
  uv.run()
  assert(finished == n, "the loop ended early")
  return now() - t0
end

local function job_stat(dir, ndirs, nfiles, n)
  local paths = {}
  for d = 0, ndirs - 1 do
    for f = 0, nfiles - 1 do
      paths[#paths + 1] = string.format("%s/d%d/f%04d", dir, d, f)
    end
  end
  local total = #paths
  local secs = keep_going(n, STAT_DEPTH, function(i, done)
    uv.fs_stat(paths[(i - 1) % total + 1], function(err, st)
      if err or st.type ~= "file" then error("fs_stat: " .. tostring(err or st.type)) end
      done()
    end)
  end)
  report("stat", n, secs)
end

local function job_readdir(dir, ndirs, n)
  local entries = 0
  local secs = keep_going(n, READDIR_DEPTH, function(i, done)
    local path = string.format("%s/d%d", dir, (i - 1) % ndirs)
    uv.fs_scandir(path, function(err, req)
      if err then error("fs_scandir: " .. err) end
      while true do
        local name, kind = uv.fs_scandir_next(req)
        if not name then
          if kind then error("fs_scandir_next: " .. kind) end
          break
        end
        entries = entries + 1
      end
      done()
    end)
  end)
  report("readdir", entries, secs)
end

local function job_spawn(prog, n, conc)
  local opts = { args = {}, stdio = { 0, 1, 2 } }
  local secs = keep_going(n, conc, function(_, done)
    local handle, pid
    handle, pid = uv.spawn(prog, opts, function(code, signal)
      handle:close()
      if code ~= 0 or signal ~= 0 then
        error(string.format("%s ended with %d, signal %d", prog, code, signal))
      end
      done()
    end)
    if not handle then error("spawn: " .. tostring(pid)) end
  end)
  report("spawn", n, secs)
end

local job = arg[1]
if job == "stat" and #arg == 5 then
  job_stat(arg[2], count_arg(arg[3]), count_arg(arg[4]), count_arg(arg[5]))
elseif job == "readdir" and #arg == 4 then
  job_readdir(arg[2], count_arg(arg[3]), count_arg(arg[4]))
elseif job == "spawn" and #arg == 4 then
  job_spawn(arg[2], count_arg(arg[3]), count_arg(arg[4]))
else
  io.stderr:write("usage: lua5.4 bench/luv_platform.lua stat DIR NDIRS NFILES N\n",
                  "       lua5.4 bench/luv_platform.lua readdir DIR NDIRS N\n",
                  "       lua5.4 bench/luv_platform.lua spawn PROG N CONC\n")
  os.exit(2)
end
