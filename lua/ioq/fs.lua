--- ioq.fs: file-system calls as loop-level functions. Each starts its op
-- on the running loop's queue and awaits it (the task yields, the others
-- run); outside a loop it blocks on a private queue. Failures are fail,
-- msg, errno, as the ops' handles give them.
--
-- Holds no state; requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local error, pcall = error, pcall
local argerror, c_call = args.argerror, args.c_call
local current_queue, wait_for = loop.current_queue, loop.wait_for
local queue_methods = core.classes.queue

local M = {}

---------------------------------------------------------------- directories
-- (q:opendir, q:readdir in src/lioq_call.c)

local q_opendir, q_readdir = queue_methods.opendir, queue_methods.readdir

--- ioq.fs.readdir(path [, max]): the entries of a directory, an array of
-- {name =, type =} (type: "file", "directory", "link", "fifo", "socket",
-- "char", "block", "unknown"), without "." and "..".
function M.readdir(path, max)
  local ok, h = pcall(q_readdir, current_queue(), path, max)
  if not ok then return c_call("readdir", 1, ok, h) end
  return wait_for("readdir", h)
end

--- ioq.fs.opendir(path): an ioq.dir to read in batches with
-- ioq.fs.readdir(dir, max) (or q:readdir); dir:close() closes it.
function M.opendir(path)
  local ok, h = pcall(q_opendir, current_queue(), path)
  if not ok then return c_call("opendir", 1, ok, h) end
  return wait_for("opendir", h)
end

--- for name, type in ioq.fs.dir(path [, batch]) do ... end: the entries
-- of a big directory, fetched `batch` (default 256) at a time, so no more
-- than that is held at once. A directory that does not open gives fail,
-- msg, errno (so `for n, t in assert(ioq.fs.dir(p))` reads well); a
-- failure while reading raises. The directory closes at the end of the
-- listing, or when the loop is left early (it is the for's closing value).
function M.dir(path, batch)
  if batch ~= nil and not (math.type(batch) == "integer" and batch > 0) then
    argerror(2, "dir", "batch must be a positive integer")
  end
  local d, msg, err = M.opendir(path)
  if not d then return nil, msg, err end
  local list, i, done = {}, 0, false
  local function next_entry()
    i = i + 1
    if i > #list then
      if done then return nil end
      local got, emsg = wait_for("dir", q_readdir(current_queue(), d, batch or 256))
      if not got then
        d:close()
        error(emsg, 2)
      end
      if #got == 0 then
        done = true
        d:close()
        return nil
      end
      list, i = got, 1
    end
    local e = list[i]
    return e.name, e.type
  end
  return next_entry, nil, nil, d
end

return M
