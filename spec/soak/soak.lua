--- spec/soak/soak.lua: an echo server under bounded load for a long time;
-- its memory and descriptor count must stay flat.
--
--   lua5.4 spec/soak/soak.lua [SECONDS [PORT]]     (make soak: 600 s)
--
-- Starts examples/echo_server.lua as a child process, then runs a load
-- client here: 50 tasks, each opening a connection, echoing 1-20 messages
-- of 1-4,000 bytes (checked byte for byte), and closing it, again and
-- again. Every 10 s it samples the server's resident memory (VmRSS) and
-- open descriptors. After a warm-up third of the run, the average of the
-- last third must stay within 10% (+512 KiB) of the middle third's for
-- memory, and within 2 for descriptors (each sample catches some of the 50
-- connections opening or closing, so single samples wobble). Prints the
-- samples and a verdict; exits non-zero on a leak or a wrong byte.
local ioq = require "ioq"

local seconds = tonumber(arg[1]) or 600
local port = tonumber(arg[2]) or 19801
local lua = os.getenv("LUA") or "lua5.4"

local pidf = io.popen(string.format(
  "%s examples/echo_server.lua %d > /tmp/ioq-soak-server.log 2>&1 & echo $!", lua, port))
local pid = pidf:read("l")
pidf:close()

local function sample()
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local rss = tonumber(f:read("a"):match("VmRSS:%s*(%d+)"))
  f:close()
  local p = io.popen("ls /proc/" .. pid .. "/fd | wc -l")
  local fds = tonumber(p:read("l"))
  p:close()
  return rss, fds
end

local samples, wrong, rounds, bytes = {}, 0, 0, 0
local ok, err = pcall(ioq.run, function()
  local t_end = ioq.now() + seconds
  for _ = 1, 200 do  -- wait for the server (up to 2 s)
    local s = assert(ioq.socket("tcp"))
    local up = s:connect("127.0.0.1", port):await(1)
    s:close()
    if up then break end
    ioq.sleep(0.01)
  end
  local function client(id)
    local seed = id
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed % n + 1
    end
    while ioq.now() < t_end do
      local s <close> = assert(ioq.socket("tcp"))
      assert(s:connect("127.0.0.1", port):await(5))
      local st = ioq.stream(s, { timeout = 10 })
      for _ = 1, rnd(20) do
        local msg = string.rep(string.char(rnd(256) - 1), rnd(4000))
        assert(st:write_all(msg))
        local back = assert(st:read_exact(#msg))
        if back ~= msg then wrong = wrong + 1 end
        bytes = bytes + #msg
      end
      rounds = rounds + 1
    end
  end
  local tasks = {}
  for i = 1, 50 do tasks[i] = ioq.spawn(client, i) end
  local sampler = ioq.spawn(function()
    while ioq.now() < t_end do
      local rss, fds = sample()
      samples[#samples + 1] = { t = #samples * 10, rss = rss, fds = fds }
      print(string.format("%5d s  rss %7d KiB  fds %4d  connections %7d", (#samples - 1) * 10,
        rss or -1, fds or -1, rounds))
      io.stdout:flush()
      ioq.sleep(math.min(10, math.max(t_end - ioq.now(), 0.01)))
    end
  end)
  for i = 1, 50 do tasks[i]:join() end
  sampler:join()
end)
os.execute("kill -TERM " .. pid)
if not ok then
  print("soak: load failed: " .. tostring(err))
  os.exit(1)
end

--- The average rss and fds of samples[i..j].
local function average(i, j)
  local rss, fds, n = 0, 0, 0
  for k = math.max(i, 1), j do
    rss, fds, n = rss + samples[k].rss, fds + samples[k].fds, n + 1
  end
  return rss / math.max(n, 1), fds / math.max(n, 1)
end

local third = math.max(#samples // 3, 1)
local mid_rss, mid_fds = average(third + 1, 2 * third)
local end_rss, end_fds = average(2 * third + 1, #samples)
local leak = end_rss > mid_rss * 1.10 + 512 or end_fds > mid_fds + 2
print(string.format(
  "soak: %d s, %d connections, %d bytes echoed, %d wrong; average rss %.0f -> %.0f KiB," ..
  " fds %.1f -> %.1f (middle third -> last third): %s",
  seconds, rounds, bytes, wrong, mid_rss, end_rss, mid_fds, end_fds,
  (leak or wrong > 0) and "FAILED" or "flat"))
os.exit(not leak and wrong == 0)
