-- The work spec/alloc_spec.lua runs under allocation failures: queues,
-- buffers, file and socket ops, multishot, tasks. It must be deterministic:
-- the same allocations in the same order on every run.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("IOQ_CPATH") or "build") .. "/?.so;" .. package.cpath
local ioq = require "ioq"

local q <close> = ioq.queue { entries = 8 }
local f <close> = assert(io.open("/dev/zero", "rb"))
local bufs = {}
for i = 1, 4 do bufs[i] = ioq.buffer(64 * i) end
for i = 1, 4 do q:read(f, bufs[i], 0) end
q:nop(); q:sleep(0.0001)
local a, b = ioq.socketpair()
q:send(a, "hello")
local r = q:recv(b, ioq.buffer(16))
while q:pending() > 0 do q:wait() end
assert(r:result() == 5)
local h = q:nop()
h:wait()
h:resubmit()
q:open("/dev/null"):wait()
local into = {}
q:sleep(10):cancel()
q:wait(0, into)
ioq.run({ queue = q }, function()
  local t = ioq.spawn(function() return ioq.sleep(0.0001) end)
  local s = ioq.stream(a)
  assert(s:write_all("line\n"))
  local line = ioq.stream(b):read_line()
  assert(line == "line")
  t:join()
end)
a:close(); b:close()
