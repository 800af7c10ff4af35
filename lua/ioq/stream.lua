--- ioq.stream: buffered reading and full writes over a socket or a file,
-- for line- and length-based protocols. Built on the queue's ops; inside
-- ioq.run every call suspends only its own task.
--
--   local s = ioq.stream(sock, { timeout = 5 })
--   local line = s:read_line()          -- nil, "end of stream" at EOF
--   local body = s:read_exact(n)
--   assert(s:write_all("HTTP/1.1 200 OK\r\n..."))
local ioq = require "ioq"

local Stream = {}
Stream.__index = Stream
Stream.__name = "ioq.stream"

local EOS = "end of stream"
local E = ioq.errno

local function is_socket(obj)
  local mt = getmetatable(obj)
  return mt ~= nil and mt.__name == "ioq.socket"
end

--- ioq.stream(obj [, opts]): obj is an ioq.socket or an ioq.file (or any
-- descriptor the queue accepts). opts: size (read buffer, default 64 KiB),
-- timeout (seconds per read or write, default none), max_line (longest
-- line or delimited record, default 1 MiB).
local function new(obj, opts)
  opts = opts or {}
  if obj == nil then error("bad argument #1 to 'stream' (socket or file expected)", 2) end
  local size = opts.size or 65536
  if math.type(size) ~= "integer" or size < 1 then
    error("bad argument #2 to 'stream' (size must be a positive integer)", 2)
  end
  return setmetatable({
    obj = obj,
    socket = is_socket(obj),
    buf = ioq.buffer(size),
    data = "",       -- bytes read but not consumed are data:sub(pos)
    pos = 1,
    eof = false,
    timeout = opts.timeout,
    max_line = opts.max_line or 1024 * 1024,
  }, Stream)
end

local function queue()
  return ioq.current() or ioq._blocking_queue()
end

--- Reads once more into the pending data. Returns true, or nil, msg[, errno].
local function fill(self)
  if self.eof then return nil, EOS end
  local q = queue()
  local h = self.socket and q:recv(self.obj, self.buf) or q:read(self.obj, self.buf)
  local n, msg, err = h:await(self.timeout)
  if not n then return nil, msg, err end
  if n == 0 then
    self.eof = true
    return nil, EOS
  end
  local chunk = self.buf:tostring(1, n)
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
-- consumed); nil, "end of stream" if the stream ends first (what came
-- stays readable); nil, "record too long", EMSGSIZE past max_line.
function Stream:read_until(delim)
  if type(delim) ~= "string" or delim == "" then
    error("bad argument #1 to 'read_until' (non-empty string expected)", 2)
  end
  local from = self.pos
  while true do
    local i, j = self.data:find(delim, from, true)
    if i and i - self.pos > self.max_line then
      return nil, "record too long", E.EMSGSIZE
    elseif i then
      local s = self.data:sub(self.pos, i - 1)
      self.pos = j + 1
      return s
    end
    if available(self) > self.max_line then
      return nil, "record too long", E.EMSGSIZE
    end
    -- Search again only where a new match could start.
    local rescan = math.max(available(self) - #delim + 2, 1)
    local ok, msg, err = fill(self)
    if not ok then return nil, msg, err end
    from = rescan
  end
end

--- s:read_line(): the next line without its "\n" (and a "\r" before it).
-- At the end of the stream a last line without "\n" is returned; then
-- nil, "end of stream".
function Stream:read_line()
  local line, msg, err = self:read_until("\n")
  if line then
    if line:byte(-1) == 13 then line = line:sub(1, -2) end
    return line
  end
  if msg == EOS and available(self) > 0 then
    return take(self, available(self))
  end
  return nil, msg, err
end

--- s:read_exact(n): exactly n bytes; nil, "end of stream" if it ends first
-- (the bytes that came stay readable).
function Stream:read_exact(n)
  if math.type(n) ~= "integer" or n < 0 then
    error("bad argument #1 to 'read_exact' (non-negative integer expected)", 2)
  end
  if available(self) >= n then return take(self, n) end
  local parts, have = { self.data:sub(self.pos) }, available(self)
  self.data, self.pos = "", 1
  while have < n do
    local ok, msg, err = fill(self)
    if not ok then  -- put back what we took, for a later read
      self.data, self.pos = table.concat(parts) .. self.data, 1
      return nil, msg, err
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
-- (default: the buffer size); nil, "end of stream" at the end.
function Stream:read(n)
  n = n or #self.buf
  if available(self) == 0 then
    local ok, msg, err = fill(self)
    if not ok then return nil, msg, err end
  end
  return take(self, math.min(n, available(self)))
end

--- s:write_all(data): writes every byte (looping over short writes);
-- true, or nil, msg, errno.
function Stream:write_all(data)
  if type(data) ~= "string" then
    error("bad argument #1 to 'write_all' (string expected, got " .. type(data) .. ")", 2)
  end
  local q = queue()
  local rest = data
  while #rest > 0 do
    local h = self.socket and q:send(self.obj, rest) or q:write(self.obj, rest)
    local n, msg, err = h:await(self.timeout)
    if not n then return nil, msg, err end
    if n == 0 then return nil, "write: no progress", E.EIO end
    rest = n < #rest and rest:sub(n + 1) or ""
  end
  return true
end

--- s:write(...): write_all of its arguments joined.
function Stream:write(...)
  return self:write_all(table.concat({ ... }))
end

--- s:close(): closes the socket or file under the stream.
function Stream:close()
  local obj = self.obj
  if obj == nil then return true end
  self.obj = nil
  self.buf:close()
  if type(obj) == "userdata" then return obj:close() end
  return true
end

Stream.__close = Stream.close

return { new = new, Stream = Stream }
