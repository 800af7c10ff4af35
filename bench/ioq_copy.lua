--- bench/ioq_copy.lua: the ioq contender of the copy benchmark
-- (bench/run.sh copy): examples/copy.lua itself, stopped once the copy is
-- done and synced.
--
--   lua5.4 bench/ioq_copy.lua SOURCE DEST
--
-- The example goes on to checksum both files with Adler-32 written in Lua,
-- which takes about a minute per GiB here: that is the example checking
-- itself, not copying, and the benchmark checks its copies with cmp(1)
-- instead. So this runs the example unchanged and ends the process right
-- after the example prints its "copied ..." line, which it does after the
-- final fsync.
local script = debug.getinfo(1, "S").source:match("^@(.*)bench/ioq_copy%.lua$")
local example = (script or "./") .. "examples/copy.lua"

if #arg ~= 2 then
  io.stderr:write("usage: lua5.4 bench/ioq_copy.lua SOURCE DEST\n")
  os.exit(2)
end

local print_line = print
local function stop_after_copy(...)
  print_line(...)
  if tostring((...)):match("^copied ") then
    os.exit(0)  -- exit() flushes stdout; the kernel reclaims the ring
  end
end

local chunk = assert(loadfile(example, "t", setmetatable({ print = stop_after_copy },
  { __index = _G, __newindex = _G })))
chunk(arg[1], arg[2])
error("examples/copy.lua ended without printing its 'copied' line")
