--- ioq.fs: the file system through the queue (files, paths, directories). Each function starts its op
-- on the running loop's queue and awaits it (the task yields), or, outside
-- a loop, on a private queue, and blocks until it ends: as ioq.open does.
-- Failures are nil, "<op>: <path>: <text>", errno.
--
-- It also adds to ioq.file the methods f:stat, f:truncate, f:allocate,
-- f:datasync, f:close_async, f:readv and f:writev, which return a handle
-- (the op on the loop's queue), as f:read does. Holds no state; requires
-- ioq.core, ioq.args, ioq.loop and ioq.objects.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"
local objects = require "ioq.objects"

local error, getmetatable, ipairs, pairs, pcall, select, type, tostring =
  error, getmetatable, ipairs, pairs, pcall, select, type, tostring
local argerror, c_call = args.argerror, args.c_call
local current_queue, wait_for = loop.current_queue, loop.wait_for

local queue_methods = core.classes.queue
local file_methods = core.classes.file
local E = core.errno

local M = {}

---------------------------------------------------------------- file methods

--- Starts op `name` on the running loop's queue, or outside a loop on a
-- private one, where it is handed to the kernel at once (as the file and
-- socket methods of ioq.objects do).
local start = objects.start

local file_ops = {
  -- method name = the queue's op
  stat = queue_methods.fstat,
  truncate = queue_methods.truncate,
  allocate = queue_methods.allocate,
  datasync = queue_methods.datasync,
  close_async = queue_methods.close_file,
  readv = queue_methods.readv,
  writev = queue_methods.writev,
}

--- f:stat(), f:truncate(size), f:allocate(offset, length [, mode]),
-- f:datasync(), f:close_async(), f:readv(bufs [, offset]),
-- f:writev(data [, offset]): each returns a handle.
for name, fn in pairs(file_ops) do
  file_methods[name] = function(f, a, b, c)
    return start(name, fn, f, a, b, c)
  end
end

---------------------------------------------------------------- the calls

--- What an op on `path` gives: its value alone, or its failure with the
-- path in the message.
local function on_path(path, v, msg, err)
  if v ~= nil then return v end
  if type(msg) == "string" then
    local op, rest = msg:match("^([%w_]+): (.*)$")
    if op then msg = op .. ": " .. tostring(path) .. ": " .. rest end
  end
  return nil, msg, err
end

--- Starts q:<name>(...) on the current queue: pcall's answer. On an error
-- the caller raises it with c_call, in a tail call, so that it names the
-- caller's caller.
local function begin(name, a, b, c, d, e)
  return pcall(queue_methods[name], current_queue(), a, b, c, d, e)
end

--- fs.stat(path), fs.lstat(path): the stat table (see README);
-- fs.readlink(path): the link's content; fs.unlink(path), fs.rmdir(path):
-- true.
for _, name in ipairs { "stat", "lstat", "readlink", "unlink", "rmdir" } do
  M[name] = function(path)
    local ok, h = begin(name, path)
    if not ok then return c_call(name, 1, ok, h) end
    return on_path(path, wait_for(name, h))
  end
end

--- fs.mkdir(path [, perm]): true.
function M.mkdir(path, perm)
  local ok, h = begin("mkdir", path, perm)
  if not ok then return c_call("mkdir", 1, ok, h) end
  return on_path(path, wait_for("mkdir", h))
end

--- fs.rename(from, to [, opts]), fs.link(from, to): true; messages name
-- `from`. fs.symlink(target, path): true; messages name `path`.
function M.rename(from, to, opts)
  local ok, h = begin("rename", from, to, opts)
  if not ok then return c_call("rename", 1, ok, h) end
  return on_path(from, wait_for("rename", h))
end

function M.link(from, to)
  local ok, h = begin("link", from, to)
  if not ok then return c_call("link", 1, ok, h) end
  return on_path(from, wait_for("link", h))
end

function M.symlink(target, path)
  local ok, h = begin("symlink", target, path)
  if not ok then return c_call("symlink", 1, ok, h) end
  return on_path(path, wait_for("symlink", h))
end

--- fs.copy(src, dst, length [, src_offset [, dst_offset]]): the bytes
-- copied, in the kernel where it can.
function M.copy(src, dst, length, src_off, dst_off)
  local ok, h = begin("copy", src, dst, length, src_off, dst_off)
  if not ok then return c_call("copy", 1, ok, h) end
  return wait_for("copy", h)
end

---------------------------------------------------------------- whole files

local open = objects.open
local READ_CHUNK = 65536

--- fs.readfile(path): the file's bytes, as one string.
function M.readfile(path)
  if type(path) ~= "string" then
    argerror(1, "readfile", "string expected, got " .. type(path))
  end
  local f, msg, err = open(path, "r")
  if not f then return on_path(path, nil, msg, err) end
  local st = f:stat():await()
  -- One read of the whole file, and one more that says it has ended.
  local size = st and st.size > 0 and st.size + 1 or READ_CHUNK
  local buf = core.buffer(size)
  local parts, offset = {}, 0
  while true do
    local n
    n, msg, err = f:read(buf, offset):await()
    if not n then f:close(); return on_path(path, nil, msg, err) end
    if n == 0 then break end
    parts[#parts + 1] = buf:tostring(1, n)
    offset = offset + n
  end
  buf:close()
  f:close()
  return table.concat(parts)
end

--- Writes all of `data` (a string) to f from offset 0.
local function write_all(f, data)
  local put = 0
  while put < #data do
    local chunk = put == 0 and data or data:sub(put + 1)
    local n, msg, err = f:write(chunk, put):await()
    if not n then return nil, msg, err end
    put = put + n
  end
  return true
end

local is_windows = package.config:sub(1, 1) == "\\"

--- The directory a path is in, and its last part.
local function split(path)
  local dir, base = path:match("^(.*)[/\\]([^/\\]*)$")
  if not dir then return ".", path end
  if dir == "" then dir = "/" end
  return dir, base
end

--- Makes sure the directory's entries (a rename into it) are on disk:
-- fsync on the directory, where the system can open one (not Windows).
local function sync_dir(dir)
  if is_windows then return true end
  local d = open(dir, "r")
  if not d then return true end  -- cannot open it: nothing more to do
  local ok, msg, err = d:fsync():await()
  d:close()
  if not ok and err ~= E.EINVAL and err ~= E.EBADF then
    return nil, msg, err
  end
  return true
end

--- fs.writefile(path, data [, opts]): writes the string (or the bytes of
-- a buffer) as the whole file, true. With opts.atomic the data goes to a
-- new file in the same directory, which is fsynced and then renamed over
-- `path` (whose permission bits it takes), and the directory is fsynced:
-- a reader sees the old file or the new one, never a part, even after a
-- crash. opts.perm: the permission bits of a new file (0666 less umask).
function M.writefile(path, data, opts)
  if type(path) ~= "string" then
    argerror(1, "writefile", "string expected, got " .. type(path))
  end
  if type(data) ~= "string" then
    local mt = getmetatable(data)
    if not (mt and mt.__name == "ioq.buffer") then
      argerror(2, "writefile", "string or ioq.buffer expected, got " .. type(data))
    end
    data = data:tostring()
  end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(3, "writefile", "table expected, got " .. type(opts))
  end
  local atomic = opts and opts.atomic
  local perm = opts and opts.perm
  if not atomic then
    local f, msg, err = open(path, "w", perm)
    if not f then return on_path(path, nil, msg, err) end
    local ok
    ok, msg, err = write_all(f, data)
    local closed, cmsg, cerr = f:close()
    if not ok then return on_path(path, nil, msg, err) end
    if not closed then return on_path(path, nil, cmsg, cerr) end
    return true
  end
  local dir, base = split(path)
  if perm == nil then
    local st = M.stat(path)
    perm = st and st.mode or 438  -- 0666
  end
  local sep = is_windows and "\\" or "/"
  local tmp, f, msg, err
  for _ = 1, 16 do
    tmp = string.format("%s%s.%s.%d%06d.tmp", dir, sep, base, os.time(),
      math.random(0, 999999))
    f, msg, err = open(tmp, "wx", perm)
    if f or err ~= E.EEXIST then break end
  end
  if not f then return on_path(tmp, nil, msg, err) end
  local ok
  ok, msg, err = write_all(f, data)
  if ok then ok, msg, err = f:fsync():await() end
  local closed, cmsg, cerr = f:close()
  if ok and not closed then ok, msg, err = nil, cmsg, cerr end
  if not ok then msg = select(2, on_path(tmp, nil, msg, err)) end
  if ok then ok, msg, err = M.rename(tmp, path) end  -- names tmp
  if not ok then
    M.unlink(tmp)
    return nil, msg, err
  end
  return sync_dir(dir)
end


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
