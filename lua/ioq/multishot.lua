--- ioq.multishot: s:accept_multi() and s:recv_multi(), one handle giving
-- an item per h:next(); and s:recv_pooled(), one receive into a buffer of
-- the same pool. Where the backend has a multishot op it is used;
-- where it has none (EOPNOTSUPP), an emulated handle starts a plain op per
-- item and offers the same interface (next, each, cancel, done). Also
-- h:each(), the iterator of either kind.
--
-- Holds no state beyond each emulated handle's own fields. It adds
-- accept_multi, recv_multi and recv_pooled to ioq.socket and each to
-- ioq.handle; it requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local error, getmetatable, ipairs, pcall, setmetatable, type =
  error, getmetatable, ipairs, pcall, setmetatable, type
local E = core.errno
local check_timeout, check_handle, c_call =
  args.check_timeout, args.check_handle, args.c_call
local fail_canceled, current_queue, wait_for =
  loop.fail_canceled, loop.current_queue, loop.wait_for

local handle_methods = core.classes.handle
local queue_methods = core.classes.queue
local socket_methods = core.classes.socket
local h_cancel = handle_methods.cancel

local Emulated = {}
Emulated.__index = Emulated
Emulated.__name = "ioq.multishot"

local function check_emulated(h, name)
  return args.check_self(h, Emulated, name)  -- a tail call: the level stays right
end

function Emulated:next(timeout)
  check_emulated(self, "next")
  check_timeout(timeout, 1, "next")
  if self.ended then
    if self.err then return nil, self.msg, self.err end
    return nil  -- the end of the stream, as often as it is asked
  end
  if self.h then
    -- One op at a time, and (for receives) one buffer: a second task
    -- waits its turn rather than sharing the op.
    error("next: another next() waits on this handle already", 2)
  end
  if self.cancelled then
    self.ended, self.msg, self.err = true, self.kind .. ": canceled", E.ECANCELED
    return nil, self.msg, self.err
  end
  self.h = self.start()
  local v, msg, err = wait_for("next", self.h, timeout)
  self.h = nil
  if v == 0 and self.kind == "recv" then  -- the peer closed
    self.ended = true
    return nil
  end
  if v and self.kind == "recv" then return core.buffer(self.buf:tostring(1, v)) end
  if not v and err ~= E.ETIMEDOUT then self.ended, self.msg, self.err = true, msg, err end
  if not v and self.cancelled then return fail_canceled(self.kind) end
  return v, msg, err
end

--- The iterator of h:each() for either kind of multishot handle: every
-- item until it ends (an error then is raised; the end of the stream and
-- a cancel end the loop).
local function items_of(h)
  return function()
    local v, msg, err = h:next()
    if v then return v end
    if err and err ~= E.ECANCELED then error(msg, 2) end
    return nil
  end
end

--- for item in h:each() do ... end
function handle_methods.each(h)
  check_handle(h, "each")
  return items_of(h)
end

function Emulated:each()
  check_emulated(self, "each")
  return items_of(self)
end

function Emulated:cancel()
  check_emulated(self, "cancel")
  self.cancelled = true
  if self.h then return h_cancel(self.h) end
  if not self.ended then
    self.ended, self.msg, self.err = true, self.kind .. ": canceled", E.ECANCELED
  end
  return true
end

function Emulated:done()
  check_emulated(self, "done")
  return self.ended == true
end

--- The native multishot handle of q:<kind>_multi(s), or, where the backend
-- has none (its features do not list it), an emulation starting one `start_one(q, buf)` op
-- per item (a receive gets its own buffer, made only here).
-- The queue feature that says a backend has the multishot op of a kind.
local NATIVE = { accept = "multishot_accept", recv = "provided_buffers" }
local features = setmetatable({}, { __mode = "k" })  -- queue -> set

local function has_native(q, kind)
  local set = features[q]
  if not set then
    set = {}
    for _, name in ipairs(q:features()) do set[name] = true end
    features[q] = set
  end
  return set[NATIVE[kind]] == true
end

local function multishot(kind, s, start_one)
  local name = kind .. "_multi"
  local mt = type(s) == "userdata" and getmetatable(s)
  if not (mt and mt.__name == "ioq.socket") then
    args.argerror(0, name, "ioq.socket expected, got " .. type(s))
  end
  local q = current_queue()
  if has_native(q, kind) then
    return c_call(name, 2, pcall(queue_methods[name], q, s))
  end
  local buf = kind == "recv" and core.buffer(16384) or nil
  return setmetatable({ kind = kind, buf = buf,
                        start = function() return start_one(q, buf) end }, Emulated)
end

--- s:accept_multi(): a stream of incoming connections: h:next() or
-- h:each() give a socket each, until h:cancel(). One multishot accept in
-- the kernel where it can; one accept per connection elsewhere.
function socket_methods.accept_multi(s)
  return multishot("accept", s, function(q) return q:accept(s) end)
end

--- s:recv_multi(): a stream of received chunks, each a buffer (close it,
-- or let it be collected, to give it back). One multishot receive into
-- the queue's provided buffers where it can; one recv per chunk elsewhere.
function socket_methods.recv_multi(s)
  return multishot("recv", s, function(q, buf) return q:recv(s, buf) end)
end

--- s:recv_pooled(): one receive on the running loop's queue that takes a
-- buffer from the queue's pool only once data has arrived, so a socket
-- waiting for data holds no buffer. Its handle resolves to n and a buffer
-- of the n bytes (close it, or let it be collected, to give it back), or
-- to 0 alone when the peer has closed. Where the backend has no pool, the
-- receive uses a buffer of its own.
local q_recv_pooled = queue_methods.recv_pooled
function socket_methods.recv_pooled(s)
  return c_call("recv_pooled", 2, pcall(q_recv_pooled, current_queue(), s))
end

return true
