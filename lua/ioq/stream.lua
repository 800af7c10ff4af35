--- ioq.stream: buffered reading and full writes over a socket or a file,
-- for line- and length-based protocols. Built on the queue's ops; inside
-- ioq.run every call suspends only its own task.
--
--   local s = ioq.stream(sock, { timeout = 5 })
--   local line = s:read_line()          -- nil alone at the end of the stream
--   local body = s:read_exact(n)
--   assert(s:write_all("HTTP/1.1 200 OK\r\n..."))
--
-- A stream over a socket holds no buffer while it waits: each read is a
-- pooled receive (q:recv_pooled), which takes a buffer from the queue's
-- pool only once data has arrived, and gives it back before the read
-- returns; the one receive handle is resubmitted for the next read, so a
-- read makes no new object. A stream over a file reads into a buffer of
-- its own.
--
-- Holds no state beyond each stream's own fields; touches nothing else.
-- It requires ioq.core, ioq.args and ioq.loop (whose h:await it uses).
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"
local pack = table.pack
local queue_methods = core.classes.queue
local q_recv_pooled, q_read = queue_methods.recv_pooled, queue_methods.read
local q_send, q_write = queue_methods.send, queue_methods.write
local handle_methods = core.classes.handle
-- (h:await is ioq.loop's, which it set when required above.)
local h_done, h_resubmit, h_await = handle_methods.done, handle_methods.resubmit, handle_methods.await
local b_split = core.classes.buffer.split

-- The fields a stream shares with every other until it sets its own: an
-- idle stream is a small table (a server may hold many thousands).
local Stream = {
  socket = false,  -- the object is an ioq.socket: reads are pooled receives
  size = 65536,
  buf = false,     -- a file's read buffer, made on its first read
  recv = false,    -- a socket's pooled receive, started again for each read
  recv_q = false,  -- the queue it is on (a stream may outlive a loop)
  eof = false,
  timeout = nil,
  max_line = 1024 * 1024,
}
Stream.__index = Stream
Stream.__name = "ioq.stream"


--- What a read gives when fill did not bring data: nil alone at the end of
-- the stream (as io.read says end of file), or nil, msg, errno.
local function nodata(ok, msg, err)
  if ok == false then return nil end
  return nil, msg, err
end
local E = core.errno
local argerror = args.argerror
local current_queue = loop.current_queue

local function is_socket(obj)
  local mt = getmetatable(obj)
  return mt ~= nil and mt.__name == "ioq.socket"
end

--- ioq.stream(obj [, opts]): obj is an ioq.socket or an ioq.file (or any
-- descriptor the queue accepts). opts: size (most bytes one s:read gives,
-- and the read buffer of a file; default 64 KiB), timeout (seconds per
-- read or write, default none), max_line (longest line or delimited
-- record, default 1 MiB).
local function new(obj, opts)
  local t = type(obj)
  if t ~= "userdata" and math.type(obj) ~= "integer" then
    argerror(1, "stream", "socket, file or descriptor expected, got " .. t)
  end
  if opts ~= nil and type(opts) ~= "table" then
    argerror(2, "stream", "options table expected, got " .. type(opts))
  end
  local self = setmetatable({
    obj = obj,
    data = "",       -- bytes read but not consumed are data:sub(pos)
    pos = 1,
  }, Stream)
  if is_socket(obj) then self.socket = true end
  if opts then
    local size = opts.size
    if size ~= nil and (math.type(size) ~= "integer" or size < 1) then
      argerror(2, "stream", "size must be a positive integer")
    end
    local timeout = opts.timeout
    if timeout ~= nil and not (type(timeout) == "number" and timeout >= 0) then
      argerror(2, "stream", "timeout must be a non-negative number")
    end
    local max_line = opts.max_line
    if max_line ~= nil and (math.type(max_line) ~= "integer" or max_line < 1) then
      argerror(2, "stream", "max_line must be a positive integer")
    end
    self.size, self.timeout, self.max_line = size, timeout, max_line
  end
  return self
end

--- Checks the self of method `name`: an open stream.
local function check(self, name)
  if getmetatable(self) ~= Stream then
    argerror(0, name, "ioq.stream expected, got " .. type(self), 3)
  end
  if self.obj == nil then argerror(0, name, "stream is closed", 3) end
end

-- The queue a stream's ops go on: the running loop's, or outside a loop
-- the private one that blocking calls use.
local queue = current_queue

--- Reads once more: a buffer holding the n bytes that came (a pool
-- buffer for a socket, to be closed by the caller; a file's own buffer),
-- and n. false at the end of the stream; or nil, msg, errno.
local function receive(self)
  if self.eof then return false end
  local n, buf, err
  if self.socket then
    local q, h = queue(), self.recv
    if h and self.recv_q == q and h_done(h) then
      h_resubmit(h)
    else
      h = q_recv_pooled(q, self.obj)
      self.recv, self.recv_q = h, q
    end
    n, buf, err = h_await(h, self.timeout)
  else
    local own = self.buf
    if not own then
      own = core.buffer(self.size)
      self.buf = own
    end
    n, buf, err = h_await(q_read(queue(), self.obj, own), self.timeout)
    if n then buf = own end
  end
  if not n then return nil, buf, err end
  if n == 0 then
    self.eof = true
    return false
  end
  return buf, n
end

--- Gives back the buffer receive() returned (a pool buffer goes back to
-- the pool; a file's own buffer stays).
local function release(self, buf)
  if self.socket then buf:close() end
end

--- Reads once more into the pending data. Returns true; false at the end
-- of the stream; or nil, msg, errno.
local function fill(self)
  local buf, n, err = receive(self)
  if not buf then return buf, n, err end
  local chunk = buf:tostring(1, n)
  release(self, buf)
  if self.pos > #self.data then
    self.data = chunk
  else
    self.data = self.data:sub(self.pos) .. chunk
  end
  self.pos = 1
  return true
end

local function available(self)
  return #self.data - self.pos + 1
end

local function take(self, n)
  local s = self.data:sub(self.pos, self.pos + n - 1)
  self.pos = self.pos + n
  return s
end

--- s:read_until(delim): the bytes before the next `delim` (which is
-- consumed); nil alone if the stream ends first (what came stays
-- readable); nil, "read_until: record too long", EMSGSIZE past max_line
-- (read_line names itself).
local function read_until(self, delim, name)
  local data, pos = self.data, self.pos
  local from = pos
  if pos > #data then
    -- Nothing pending (a new request, as a rule): cut the record out of
    -- the buffer the bytes came in, without a string of them all.
    local buf, n, err = receive(self)
    if not buf then return nodata(buf, n, err) end
    local s, rest = b_split(buf, delim, n, self.max_line)
    if s then
      release(self, buf)
      self.data, self.pos = rest, 1
      return s
    end
    -- Found too far on (then n > max_line, which the loop below
    -- refuses), or not at all: a match can only start at the end, where
    -- more bytes may finish it.
    self.data, self.pos = buf:tostring(1, n), 1
    release(self, buf)
    from = math.max(n - #delim + 2, 1)
  end
  while true do
    local i, j = self.data:find(delim, from, true)
    if i and i - self.pos > self.max_line then
      return nil, name .. ": record too long", E.EMSGSIZE
    elseif i then
      local s = self.data:sub(self.pos, i - 1)
      self.pos = j + 1
      return s
    end
    -- Too long only once no delimiter can still end a record of
    -- max_line bytes: the bytes past it may be a delimiter's start.
    if available(self) > self.max_line + #delim - 1 then
      return nil, name .. ": record too long", E.EMSGSIZE
    end
    -- Search again only where a new match could start.
    local rescan = math.max(available(self) - #delim + 2, 1)
    local ok, msg, err = fill(self)
    if not ok then return nodata(ok, msg, err) end
    from = rescan
  end
end

function Stream:read_until(delim)
  check(self, "read_until")
  if type(delim) ~= "string" or delim == "" then
    argerror(1, "read_until", "non-empty string expected")
  end
  return read_until(self, delim, "read_until")
end

--- s:read_line(): the next line without its "\n" (and a "\r" before it).
-- At the end of the stream a last line without "\n" is returned; then
-- nil alone.
function Stream:read_line()
  check(self, "read_line")
  local line, msg, err = read_until(self, "\n", "read_line")
  if line then
    if line:byte(-1) == 13 then line = line:sub(1, -2) end
    return line
  end
  if err == nil and available(self) > 0 then  -- the end, after a last line
    return take(self, available(self))
  end
  if err == nil then return nil end
  return nil, msg, err
end

--- s:read_exact(n): exactly n bytes; nil alone if the stream ends first
-- (the bytes that came stay readable).
function Stream:read_exact(n)
  check(self, "read_exact")
  if math.type(n) ~= "integer" or n < 0 then
    argerror(1, "read_exact", "non-negative integer expected")
  end
  if available(self) >= n then return take(self, n) end
  local parts, have = { self.data:sub(self.pos) }, available(self)
  self.data, self.pos = "", 1
  while have < n do
    local ok, msg, err = fill(self)
    if not ok then  -- put back what we took, for a later read
      self.data, self.pos = table.concat(parts) .. self.data, 1
      return nodata(ok, msg, err)
    end
    local want = n - have
    if #self.data > want then
      parts[#parts + 1] = self.data:sub(1, want)
      self.pos = want + 1
      have = n
    else
      parts[#parts + 1] = self.data
      have = have + #self.data
      self.data, self.pos = "", 1
    end
  end
  return table.concat(parts)
end

--- s:read([n]): what is buffered, or what one read brings, at most n bytes
-- (default: the buffer size); nil alone at the end.
function Stream:read(n)
  check(self, "read")
  if n == nil then
    n = self.size
  else
    n = math.tointeger(n)
    if not n or n < 0 then
      argerror(1, "read", "non-negative integer expected")
    end
  end
  if available(self) == 0 then
    local ok, msg, err = fill(self)
    if not ok then return nodata(ok, msg, err) end
  end
  return take(self, math.min(n, available(self)))
end

--- s:write_all(data): writes every byte (looping over short writes);
-- true, or nil, msg, errno.
function Stream:write_all(data)
  check(self, "write_all")
  if type(data) ~= "string" then
    argerror(1, "write_all", "string expected, got " .. type(data))
  end
  local q = queue()
  local rest = data
  while #rest > 0 do
    local h = (self.socket and q_send or q_write)(q, self.obj, rest)
    local n, msg, err = h_await(h, self.timeout)
    if not n then return nil, msg, err end
    if n == 0 then return nil, "write: no progress", E.EIO end
    rest = n < #rest and rest:sub(n + 1) or ""
  end
  return true
end

--- s:write(...): write_all of its arguments joined.
function Stream:write(...)
  check(self, "write")
  local parts = pack(...)
  for i = 1, parts.n do
    local t = type(parts[i])
    if t ~= "string" and t ~= "number" then
      argerror(i, "write", "string expected, got " .. t)
    end
  end
  return self:write_all(table.concat(parts, "", 1, parts.n))
end

--- s:close(): closes the socket or file under the stream.
function Stream:close()
  if getmetatable(self) ~= Stream then
    argerror(0, "close", "ioq.stream expected, got " .. type(self))
  end
  local obj = self.obj
  if obj == nil then return true end
  self.obj = nil
  if self.buf then self.buf:close() end
  if type(obj) == "userdata" then return obj:close() end
  return true
end

Stream.__close = Stream.close

return { new = new, Stream = Stream }
