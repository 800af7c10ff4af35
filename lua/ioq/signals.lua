--- ioq.signals: POSIX signals delivered through the queue. ioq.signals
-- blocks the named signals and reads them from a signalfd (ioq.core); its
-- wait is an ordinary read on the current queue, so a task awaits a signal
-- like any other op.
--
-- Holds no state beyond each signal set's own fields; touches nothing
-- else. It requires ioq.core, ioq.args and ioq.loop.
local core = require "ioq.core"
local args = require "ioq.args"
local loop = require "ioq.loop"

local pcall, setmetatable = pcall, setmetatable
local check_timeout, c_call = args.check_timeout, args.c_call
local current_queue, wait_for = loop.current_queue, loop.wait_for

local q_read = core.classes.queue.read

local Signals = {}
Signals.__index = Signals
Signals.__name = "ioq.signals"

local function check_signals(sigs, name)
  return args.check_self(sigs, Signals, name)  -- a tail call: the level stays right
end

--- ioq.signals(name, ...): delivers the named signals ("INT", "TERM",
-- ...) through the queue instead of their usual action, until sigs:close()
-- (or collection) gives each back as it was: sigs:wait([timeout]) (an
-- await) returns the name of the next one. Returns fail, msg, ENOSYS on
-- Windows.
local function signals(...)
  local ok, f, msg, err = pcall(core.signalfd, ...)
  if not ok then return c_call("signals", 0, ok, f) end
  if not f then return nil, msg, err end  -- Windows: ENOSYS
  return setmetatable({ file = f, buf = core.buffer(128) }, Signals)
end

function Signals:wait(timeout)
  check_signals(self, "wait")
  check_timeout(timeout, 1, "wait")
  local q = current_queue()
  local ok, h = pcall(q_read, q, self.file, self.buf)
  if not ok then return c_call("wait", 2, ok, h) end
  local n, msg, err = wait_for("wait", h, timeout)
  if not n then return nil, msg, err end
  return core.signame(string.unpack("<I4", self.buf:tostring(1, 4)))
end

function Signals:close()
  check_signals(self, "close")
  return self.file:close()
end

Signals.__close = Signals.close

return signals
