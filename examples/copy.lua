#!/usr/bin/env lua5.4
-- examples/copy.lua: copy a file with many copies in flight, then check
-- the copy byte for byte.
--
--   lua5.4 examples/copy.lua [--buffers] [SOURCE [DEST]]
--
-- With no SOURCE it makes a 32 MiB file of pseudo-random bytes to copy. The
-- copy runs as a pool of tasks in ioq.run: each task takes the next free
-- chunk and copies it to the same offset of the destination, so up to
-- DEPTH chunks are in the kernel at once. By default each chunk is one
-- q:copy, which stays in the kernel (copy_file_range on a worker thread):
-- no byte comes up to Lua. With --buffers each task owns a buffer and
-- reads the chunk into it, then writes it out. Then it checksums both
-- files (Adler-32, through the queue) and prints what it did and which
-- backend did it. While it copies, a datasync of the copy every 64 MiB
-- gets the disk writing early, so the final fsync has little left to do.
local ioq = require "ioq"

local CHUNK = 256 * 1024
local DEPTH = 16
local KERNEL_CHUNK = 8 * 1024 * 1024  -- per q:copy: no buffer to bound it
local KERNEL_DEPTH = 4
-- A datasync of the destination after each SYNC_EVERY bytes, while the
-- copy goes on (see copied_some below).
local SYNC_EVERY = 64 * 1024 * 1024

--- Adler-32 of a string, continuing from (a, b).
local function adler32(s, a, b)
  local byte = string.byte
  local n = #s
  local i = 1
  while i <= n do
    local last = math.min(i + 3799, n)  -- keep b from overflowing a 32-bit modulus step
    for k = i, last do
      a = a + byte(s, k)
      b = b + a
    end
    a, b = a % 65521, b % 65521
    i = last + 1
  end
  return a, b
end

--- Checksums a file through the queue, DEPTH reads at a time.
local function checksum(path)
  local f <close> = assert(ioq.open(path))
  local bufs, handles = {}, {}
  local a, b, offset, total = 1, 0, 0, 0
  for i = 1, DEPTH do bufs[i] = ioq.buffer(CHUNK) end
  while true do
    for i = 1, DEPTH do
      handles[i] = f:read(bufs[i], offset + (i - 1) * CHUNK)
    end
    local done = false
    for i = 1, DEPTH do
      local n = assert(handles[i]:await())
      if n > 0 then
        a, b = adler32(bufs[i]:tostring(1, n), a, b)
        total = total + n
      end
      if n < CHUNK then done = true end
    end
    offset = offset + DEPTH * CHUNK
    if done then break end
  end
  return string.format("%08x", (b << 16) | a), total
end

local function make_source(path, size)
  local f = assert(io.open(path, "wb"))
  local x = 12345
  local block = {}
  for i = 1, 16384 do
    x = (x * 1103515245 + 12345) & 0x7fffffff
    block[i] = string.pack("<I4", x)
  end
  local s = table.concat(block)  -- 64 KiB
  for _ = 1, size // #s do f:write(s) end
  f:close()
end

local source, dest, buffers
for _, a in ipairs(arg) do
  if a == "--buffers" then buffers = true
  elseif not source then source = a
  else dest = a end
end
local made
if not source then
  source = os.tmpname()
  if package.config:sub(1, 1) == "\\" then  -- Windows: that names C:\, use %TEMP%
    source = (os.getenv("TEMP") or ".") .. "\\ioq-copy-" .. os.time()
  end
  make_source(source, 32 * 1024 * 1024)
  made = source
end
dest = dest or source .. ".copy"

ioq.run(function()
  local q = ioq.current()
  local src <close> = assert(ioq.open(source, "r"))
  local dst <close> = assert(ioq.open(dest, "w"))
  local size
  do
    local f <close> = assert(io.open(source, "rb"))
    size = f:seek("end")
  end
  local next_offset = 0
  local copied, reads = 0, 0
  local t0 = ioq.now()

  -- The page cache would hold the whole copy until the final fsync, which
  -- then waits for the disk to write all of it (0.3 s of a 1 GiB copy's
  -- 0.7 s on the machine of BENCHMARKS.md). A datasync every SYNC_EVERY
  -- bytes, one at a time in a task of its own while the copy goes on, has
  -- the disk write the first chunks while the next ones are copied.
  local synced, syncer = 0, nil
  local function copied_some(n)
    copied = copied + n
    if copied - synced >= SYNC_EVERY and not (syncer and not syncer:done()) then
      local mark = copied
      syncer = ioq.spawn(function()
        assert(dst:datasync():await())
        synced = mark
      end)
    end
  end

  -- Each worker takes the next chunk and copies it where it was, in the
  -- kernel: a copy moves fewer bytes than asked only at the end.
  local function kernel_worker()
    while next_offset < size do
      local offset = next_offset
      next_offset = next_offset + KERNEL_CHUNK
      local want = math.min(KERNEL_CHUNK, size - offset)
      local done = 0
      while done < want do
        local n = assert(q:copy(src, dst, want - done, offset + done, offset + done):await())
        reads = reads + 1
        if n == 0 then break end
        done = done + n
      end
      copied_some(done)
    end
  end

  -- Each worker takes the next chunk, reads it and writes it where it was.
  local function worker()
    local buf = ioq.buffer(CHUNK)
    while next_offset < size do
      local offset = next_offset
      next_offset = next_offset + CHUNK
      local n = assert(src:read(buf, offset):await())
      reads = reads + 1
      local written = 0
      while written < n do
        written = written + assert(q:write(dst, buf, offset + written, n - written):await())
      end
      copied_some(n)
    end
  end
  local workers = {}
  local depth = buffers and DEPTH or KERNEL_DEPTH
  for i = 1, depth do workers[i] = ioq.spawn(buffers and worker or kernel_worker) end
  for i = 1, depth do workers[i]:join() end
  if syncer then syncer:join() end
  assert(dst:fsync():await())
  local dt = ioq.now() - t0

  print(string.format("copied %s -> %s: %d bytes in %d %s, %d in flight, %.3f s (%.0f MiB/s)",
    source, dest, copied, reads, buffers and "reads" or "kernel copies", depth, dt,
    copied / dt / 2^20))
  local sum_src, n_src = checksum(source)
  local sum_dst, n_dst = checksum(dest)
  print(string.format("adler32 source %s (%d bytes), copy %s (%d bytes): %s",
    sum_src, n_src, sum_dst, n_dst, sum_src == sum_dst and n_src == n_dst and "match" or "MISMATCH"))
  print("backend: " .. q.backend .. " (ioq " .. ioq.version .. ")")
  if sum_src ~= sum_dst or n_src ~= n_dst then os.exit(1) end
end)

if made then
  os.remove(made)
  os.remove(dest)
end
