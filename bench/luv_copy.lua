--- bench/luv_copy.lua: the luv (libuv) contender of the copy benchmark
-- (bench/run.sh copy): what examples/copy.lua does, written the way luv
-- code usually is: callbacks, no coroutines.
--
--   lua5.4 bench/luv_copy.lua SOURCE DEST
--
-- Copies SOURCE to DEST in 256 KiB chunks with up to 16 of them in flight
-- (the example's CHUNK and DEPTH): each chunk is read at its offset and
-- written to the same offset of DEST, then the slot takes the next chunk.
-- Ends with an fsync of DEST, as the example does. Prints one line:
--   copy bytes=1073741824 secs=1.234567 rate=869.6 (MiB/s)
local uv = require "luv"

local CHUNK = 256 * 1024
local DEPTH = 16

local source, dest = arg[1], arg[2]
if #arg ~= 2 then
  io.stderr:write("usage: lua5.4 bench/luv_copy.lua SOURCE DEST\n")
  os.exit(2)
end

local t0 = uv.hrtime()
local src = assert(uv.fs_open(source, "r", 0))
local dst = assert(uv.fs_open(dest, "w", tonumber("644", 8)))
local size = assert(uv.fs_fstat(src)).size
local next_offset, copied, active = 0, 0, 0

local function finish()
  assert(uv.fs_fsync(dst))
  assert(uv.fs_close(dst))
  assert(uv.fs_close(src))
end

local copy_next
--- Writes data at offset, continuing after a short write.
local function write_at(data, offset)
  uv.fs_write(dst, data, offset, function(err, n)
    assert(not err, err)
    copied = copied + n
    if n < #data then return write_at(data:sub(n + 1), offset + n) end
    copy_next()
  end)
end

-- One slot: take the next chunk, read it, write it, again; the last slot
-- to run dry syncs and closes.
function copy_next()
  if next_offset >= size then
    active = active - 1
    if active == 0 then finish() end
    return
  end
  local offset = next_offset
  next_offset = next_offset + CHUNK
  uv.fs_read(src, CHUNK, offset, function(err, data)
    assert(not err, err)
    if #data == 0 then return copy_next() end  -- the file shrank: nothing here
    write_at(data, offset)
  end)
end

active = DEPTH
for _ = 1, DEPTH do copy_next() end
uv.run()
local secs = (uv.hrtime() - t0) / 1e9
assert(copied == size, ("copied %d of %d bytes"):format(copied, size))
print(("copy bytes=%d secs=%.6f rate=%.1f"):format(copied, secs, copied / secs / 2^20))
