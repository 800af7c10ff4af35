--- spec/fuzz/fuzz.lua: random sequences of ioq calls, with invariants.
--
--   lua5.4 spec/fuzz/fuzz.lua [SECONDS]      (make fuzz: seeds until time is up)
--   IOQ_FUZZ_SEED=n IOQ_FUZZ_ITERS=n ...     one reproducible run
--
-- Each step picks an action at random: receive or send on a socket pair,
-- read or write blocks of a temporary file, cancel, drop handles, collect
-- garbage, wait with random timeouts, resubmit, pass wrong arguments, close
-- a descriptor while an op on it is in flight, close the queue with ops in
-- flight. Checked all along:
--   - a handle resolves once: h:result() never changes once done, and no
--     handle shows up twice in q:wait's `into`;
--   - the bytes that arrive on the socket pair are exactly the bytes whose
--     sends succeeded, in order; a file block read back is the block last
--     written there;
--   - misuse raises and leaves nothing pending;
--   - at the end the process has the descriptors it had at the start.
-- Sanitizer and valgrind runs (make asan, make valgrind) watch the memory.
local ioq = require "ioq"
local t = require "ioq_test"

local M = {}

local BLOCK = 512

local function check(cond, seed, step, what)
  if not cond then
    error(string.format("fuzz seed %d step %d: %s", seed, step, what), 2)
  end
end

--- The byte at position i (1-based) of the endless test stream.
local function stream_bytes(from, n)
  local b = {}
  for i = 0, n - 1 do b[#b + 1] = (from + i) * 7 % 251 end
  return string.char(table.unpack(b))
end

local function block_bytes(index, version)
  return string.rep(string.char((index * 31 + version * 7) % 256), BLOCK)
end

--- One run: `iters` steps from `seed`. Returns the number of ops made.
function M.run(seed, iters)
  local rng_state = seed
  local function rnd(n)  -- 1..n, from our own generator (reproducible)
    rng_state = (rng_state * 6364136223846793005 + 1442695040888963407)
    return (rng_state >> 33) % n + 1
  end
  local fd0 = t.fdcount()
  local tmpname = os.tmpname()
  local tmp = assert(io.open(tmpname, "w+b"))
  local q
  local tracked = {}      -- handle -> { result = {...} once done }
  local seen = {}         -- handle -> true once reported by q:wait
  local into = {}
  local ops = 0
  -- the socket pair and its streams
  local a, b
  local sent, received = 0, 0   -- bytes of the stream sent / checked
  local send_h, recv_h, recv_buf
  local send_len
  -- the file: index -> version written (and the in-flight op, one per block)
  local blocks, block_ops = {}, {}

  local function new_queue()
    local entries = ({ 4, 16, 64, 256 })[rnd(4)]
    q = ioq.queue { entries = entries }
  end

  local function new_pair()
    a, b = ioq.socketpair()
    sent, received = 0, 0
    send_h, recv_h = nil, nil
  end

  local function track(h)
    ops = ops + 1
    tracked[h] = { }
    return h
  end

  -- Settles what a resolved handle means for the invariants.
  local function settle(step)
    for h, rec in pairs(tracked) do
      if h:done() then
        local r = table.pack(h:result())
        if rec.result then
          check(r.n == rec.result.n and r[1] == rec.result[1] and r[3] == rec.result[3],
                seed, step, "a resolved handle changed its result")
        else
          rec.result = r
          if h == recv_h then
            local n = r[1]
            if n and n > 0 then
              check(recv_buf:tostring(1, n) == stream_bytes(received, n), seed, step,
                    "socket bytes differ from what was sent")
              received = received + n
            end
            recv_h = nil
          elseif h == send_h then
            local n = r[1]
            if n then
              check(n <= send_len, seed, step, "send reported more than it had")
              sent = sent + n
            end
            send_h = nil
          elseif rec.block then
            local i = rec.block
            if rec.kind == "write" and r[1] == BLOCK then
              blocks[i] = rec.version
            elseif rec.kind == "read" and r[1] == BLOCK and blocks[i] and rec.expect == blocks[i] then
              check(rec.buf:tostring() == block_bytes(i, blocks[i]), seed, step,
                    "file block read back differs")
            end
            block_ops[i] = nil
          end
        end
      end
    end
  end

  new_queue()
  new_pair()
  local trace = os.getenv("IOQ_FUZZ_TRACE")
  for step = 1, iters do
    local action = rnd(16)
    if trace then io.stderr:write(step, " ", action, "\n") end
    if action == 1 and not recv_h then          -- receive on the pair
      recv_buf = (recv_buf and rnd(2) == 1 and not recv_buf:busy()) and recv_buf
                 or ioq.buffer(rnd(300))
      recv_h = track(q:recv(b, recv_buf))
    elseif action == 2 and not send_h then      -- send the next stretch
      send_len = rnd(400)
      send_h = track(q:send(a, stream_bytes(sent, send_len)))
    elseif action == 3 then                     -- write a file block
      local i = rnd(8)
      if not block_ops[i] then
        local version = rnd(1000)
        local h = track(q:write(tmp, block_bytes(i, version), i * BLOCK))
        tracked[h].block, tracked[h].kind, tracked[h].version = i, "write", version
        block_ops[i] = h
      end
    elseif action == 4 then                     -- read a file block
      local i = rnd(8)
      if not block_ops[i] then
        local buf = ioq.buffer(BLOCK)
        local h = track(q:read(tmp, buf, i * BLOCK))
        tracked[h].block, tracked[h].kind, tracked[h].buf = i, "read", buf
        tracked[h].expect = blocks[i]
        block_ops[i] = h
      end
    elseif action == 5 then                     -- ops whose handles we drop
      for _ = 1, rnd(5) do
        local k = rnd(3)
        if k == 1 then q:nop()
        elseif k == 2 then q:sleep(rnd(5) * 0.0005)
        else q:read(tmp, ioq.buffer(64), rnd(4000)) end
      end
    elseif action == 6 then                     -- cancel something
      for h, rec in pairs(tracked) do
        if not rec.result and rnd(3) == 1 then h:cancel() end
      end
    elseif action == 7 then                     -- collect garbage
      if rnd(4) == 1 then collectgarbage() else collectgarbage("step") end
    elseif action == 8 or action == 9 then      -- wait for some
      local n = q:wait(rnd(3) == 1 and 0 or rnd(5) * 0.001, into)
      for k = 1, n do
        check(not seen[into[k]], seed, step, "a handle was reported twice")
        seen[into[k]] = true
        into[k] = nil
      end
    elseif action == 10 then                    -- h:wait with a timeout
      for h, rec in pairs(tracked) do
        if not rec.result then h:wait(rnd(3) * 0.001); break end
      end
    elseif action == 11 then                    -- wrong arguments
      local before = q:pending()
      local bad = {
        function() q:read(tmp, "not a buffer") end,
        function() q:read(-1, ioq.buffer(1)) end,
        function() q:write(tmp, "x", -5) end,
        function() q:recv(b, ioq.buffer(4), 99) end,
        function() q:sleep(-1) end,
        function() q:send({}, "x") end,
      }
      check(not pcall(bad[rnd(#bad)]), seed, step, "misuse did not raise")
      check(q:pending() == before, seed, step, "misuse left an op behind")
    elseif action == 12 then                    -- resubmit a finished nop
      local h = track(q:nop())
      h:wait()
      settle(step)
      tracked[h] = nil
      h:resubmit()
      track(h)
    elseif action == 13 and rnd(8) == 1 then    -- close the pair mid-flight
      a:close(); b:close()
      -- What was in flight ends with some result; its bytes no longer count.
      -- (io_uring holds the socket until the op ends, which it soon does;
      -- epoll lost sight of it with the close, so a cancel ends it there.)
      local deadline = ioq.now() + 0.05
      while (send_h and not send_h:done()) or (recv_h and not recv_h:done()) do
        if ioq.now() > deadline then
          if send_h then send_h:cancel() end
          if recv_h then recv_h:cancel() end
        end
        q:wait(0.01)
      end
      if recv_h then tracked[recv_h] = nil end
      if send_h then tracked[send_h] = nil end
      settle(step)
      new_pair()
    elseif action == 14 and rnd(20) == 1 then   -- close the queue in flight
      q:close()
      for h in pairs(tracked) do
        check(h:done(), seed, step, "close left a handle pending")
      end
      if recv_h then tracked[recv_h] = nil end
      if send_h then tracked[send_h] = nil end
      settle(step)
      for i in pairs(block_ops) do block_ops[i] = nil end
      blocks = {}  -- writes that ended in the close may or may not be there
      new_queue()
      a:close(); b:close()
      new_pair()
    end
    settle(step)
  end
  -- A receive may still wait for bytes nobody will send: end the stream,
  -- so it sees the end; everything else ends by itself. Bounded anyway.
  a:shutdown("w")
  local deadline = ioq.now() + 10
  while q:pending() > 0 and ioq.now() < deadline do q:wait(0.1) end
  check(q:pending() == 0, seed, iters + 1, "ops still pending after 10 s")
  settle(iters + 1)
  for h in pairs(tracked) do
    check(h:done(), seed, iters + 1, "a handle never resolved")
  end
  check(received <= sent, seed, iters + 1, "received more than was sent")
  q:close()
  a:close(); b:close()
  tmp:close()
  os.remove(tmpname)
  tracked = nil  -- luacheck: ignore (dropped so the collector can run)
  collectgarbage(); collectgarbage()
  check(t.fdcount() == fd0, seed, iters + 1,
        string.format("descriptors: %d at the start, %d at the end", fd0, t.fdcount()))
  return ops
end

if arg and arg[0] and arg[0]:match("fuzz%.lua$") then
  -- make fuzz: run seeds until the time is up, or one seed if given.
  local seconds = tonumber(arg[1]) or 600
  local seed = tonumber(os.getenv("IOQ_FUZZ_SEED") or "")
  local iters = tonumber(os.getenv("IOQ_FUZZ_ITERS") or "") or 5000
  local t0, runs, ops = ioq.now(), 0, 0
  if seed then
    ops = M.run(seed, iters)
    runs = 1
  else
    seed = os.time()
    while ioq.now() - t0 < seconds do
      ops = ops + M.run(seed + runs, iters)
      runs = runs + 1
    end
  end
  print(string.format("fuzz: %d runs of %d steps (seeds %d..%d), %d ops, %.0f s, backend %s: ok",
    runs, iters, seed, seed + runs - 1, ops, ioq.now() - t0, ioq.queue().backend))
end

return M
