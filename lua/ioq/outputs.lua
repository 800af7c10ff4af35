--- ioq.outputs: the output ops (writes, sends, fsyncs, shutdowns) that
-- failed while nobody awaited them, kept for the report at the end of the
-- run unless the script looks at the handle's result meanwhile ("claims"
-- it). The loop (lua/ioq/loop.lua) notes them as they resolve and claims
-- a handle whenever a wait or h:result hands its result over.
--
-- Holds the current run's records, in upvalues; touches nothing else
-- (reads only the op and length fields of a handle). Requires ioq.core.
local core = require "ioq.core"
local ECANCELED, note_handle = core.errno.ECANCELED, core.note_handle
local pairs, setmetatable, tostring, type = pairs, setmetatable, tostring, type
local format = string.format

local unclaimed = setmetatable({}, { __mode = "k" })  -- handle -> record (weak,
                           -- so a handle the script dropped can go)
local unclaimed_n = 0      -- records not claimed yet (0: claim has nothing to do)
local lost, lost_more = {}, 0  -- the first records in order; how many more
local LOST_KEPT = 20

local OUTPUT = { write = true, send = true, sendto = true, fsync = true, shutdown = true }

local outputs = {}

--- Notes h, an op that resolved with nobody waiting for it with result
-- v, msg, err, if it is an output that failed: the script is told at the
-- end of the run unless it looks at the handle by then. A cancel during
-- the run is the script's own doing (its h:cancel()). `closing` is true
-- while the run's end lets outputs finish, and "cut" once the linger time
-- ran out and they were cancelled: an output that ends then is reported
-- even with a byte count, since a cancelled send may have sent only part
-- of its data.
function outputs.note(h, closing, v, msg, err)
  local op = h.op
  if not OUTPUT[op] then return end
  -- A byte count short of what was asked for lost the rest.
  local short = type(v) == "number" and op ~= "fsync" and v < h.length
  if closing ~= "cut" and not short and
     (v ~= nil or (err == ECANCELED and not closing)) then
    return
  end
  if short and closing ~= "cut" then
    msg = format("%s: only %d of %d bytes went out", op, v, h.length)
  end
  if closing == "cut" then
    msg = op .. ": not done when the linger time of the run's end ran out; cancelled" ..
      (v ~= nil and " after " .. tostring(v) .. " bytes" or "")
  end
  local record = { msg = msg, err = err }
  if #lost < LOST_KEPT then
    lost[#lost + 1] = record
  else
    record.extra = true
    lost_more = lost_more + 1
  end
  unclaimed[h] = record
  unclaimed_n = unclaimed_n + 1
  note_handle(h, true)  -- so that the C h:result claims it
end

--- The script looks at h's result: it is no longer unclaimed.
function outputs.claim(h)
  if unclaimed_n == 0 then return end
  local record = unclaimed[h]
  if record then
    unclaimed[h] = nil
    unclaimed_n = unclaimed_n - 1
    note_handle(h, false)
    record.claimed = true
    if record.extra then lost_more = lost_more - 1 end
  end
end

--- Starts afresh (a new run); returns the records so far (a list of
-- { msg =, err =, claimed = }) and how many more failed.
function outputs.reset()
  local records, more = lost, lost_more
  for h in pairs(unclaimed) do note_handle(h, false) end
  unclaimed, lost, lost_more = setmetatable({}, { __mode = "k" }), {}, 0
  unclaimed_n = 0
  return records, more
end

return outputs
