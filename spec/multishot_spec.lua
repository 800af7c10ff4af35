-- Multishot accept and provided-buffer receive (and their emulation where
-- the kernel or the backend has neither).
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

local function listener()
  local s = assert(ioq.socket("tcp"))
  assert(s:setoption("reuseaddr", true))
  assert(s:bind("127.0.0.1", 0))
  assert(s:listen(4096))
  return s, select(2, s:getsockname())
end

-- Each spec runs twice: natively, and with the multishot ops turned off
-- (IOQ_NO_MULTISHOT=1), where s:accept_multi and s:recv_multi emulate.
for _, mode in ipairs { "native", "emulated" } do
  describe("multishot (" .. mode .. ")", function()
    before_each(function()
      if mode == "emulated" then t.setenv("IOQ_NO_MULTISHOT", "1") end
    end)
    after_each(function()
      t.setenv("IOQ_NO_MULTISHOT")
      util.cleanup()
    end)

    -- Where each feature is: a backend without it here must be one of
    -- the others (an io_uring on an older kernel, say).
    local where = {
      multishot_accept = "io_uring on Linux 5.19+ and epoll have it",
      provided_buffers = "io_uring on Linux 6.0+, epoll and IOCP have it",
    }
    local function check_native(q, feature)
      if mode == "native" and not util.has_feature(q, feature) then
        pending(q.backend .. " here has no " .. feature .. " (" .. where[feature] .. ")")
        return false
      end
      if mode == "emulated" then
        assert.is_false(util.has_feature(q, feature))
      end
      return true
    end

    it("accepts 1,000 connections from one accept_multi", function()
      ioq.run(function()
        if not check_native(ioq.current(), "multishot_accept") then return end
        local server <close>, port = listener()
        local incoming = server:accept_multi()
        local accepted = 0
        local acceptor = ioq.spawn(function()
          for c in incoming:each() do
            accepted = accepted + 1
            c:close()
          end
        end)
        local clients = {}
        for i = 1, 1000 do
          clients[i] = ioq.spawn(function()
            local c <close> = assert(ioq.socket("tcp"))
            assert(c:connect("127.0.0.1", port):await(10))
          end)
        end
        for i = 1, 1000 do clients[i]:join() end
        local deadline = ioq.now() + 10
        while accepted < 1000 and ioq.now() < deadline do ioq.sleep(0.01) end
        incoming:cancel()
        acceptor:join()
        assert.are.equal(1000, accepted)
        assert.is_true(incoming:done())
        assert.are.same({ nil, "accept: canceled", E.ECANCELED }, { incoming:next() })
      end)
    end)

    it("receives every byte through a small pool that runs dry", function()
      -- 8 buffers of 256 bytes for 10 connections sending 60 KB each, and a
      -- reader that holds its buffers for a while: the pool must run dry.
      local q <close> = ioq.queue { recv_buffers = 8, recv_buffer_size = 256 }
      ioq.run({ queue = q }, function()
        if not check_native(q, "provided_buffers") then return end
        local server <close>, port = listener()
        local incoming = server:accept_multi()
        local received = {}
        local readers = {}
        local acceptor = ioq.spawn(function()
          for c in incoming:each() do
            readers[#readers + 1] = ioq.spawn(function()
              local chunks, held = {}, {}
              local id
              for view in c:recv_multi():each() do
                chunks[#chunks + 1] = view:tostring()
                held[#held + 1] = view
                if #held == 4 then  -- keep buffers out of the ring a while
                  ioq.sleep(0.001)
                  for _, v in ipairs(held) do v:close() end
                  held = {}
                end
              end
              for _, v in ipairs(held) do v:close() end
              local data = table.concat(chunks)
              id = tonumber(data:sub(1, 4))
              received[id] = data
              c:close()
            end)
          end
        end)
        local sent = {}
        local writers = {}
        for i = 1, 10 do
          writers[i] = ioq.spawn(function()
            local data = string.format("%04d", i) .. util.random_bytes(60000, i)
            sent[i] = data
            local c <close> = assert(ioq.socket("tcp"))
            assert(c:connect("127.0.0.1", port):await(10))
            assert(ioq.stream(c):write_all(data))
          end)
        end
        for i = 1, 10 do writers[i]:join() end
        local deadline = ioq.now() + 10
        while #readers < 10 and ioq.now() < deadline do ioq.sleep(0.01) end
        for _, r in ipairs(readers) do r:join() end
        incoming:cancel()
        acceptor:join()
        for i = 1, 10 do
          assert.is_true(received[i] == sent[i], "connection " .. i .. " lost bytes")
        end
        if mode == "native" then
          local st = q:stats()
          assert.is_true(st.starvations > 0, "the pool never ran dry")
          assert.are.equal(8, st.pool_buffers)
          assert.are.equal(8, st.pool_free)  -- every buffer came back
        end
      end)
    end)

    it("ends a receive stream at the peer's close, and on cancel", function()
      ioq.run(function()
        local a, b = ioq.socketpair()
        local r = a:recv_multi()
        assert(b:send("abc"):await())
        local v = assert(r:next(2))
        assert.are.equal("abc", v:tostring())
        v:close()
        assert.are.same({ nil, "recv: timed out", E.ETIMEDOUT }, { r:next(0.02) })
        b:close()
        assert.are.same({ nil }, { r:next(2) })
        local c, d = ioq.socketpair()
        local r2 = c:recv_multi()
        ioq.spawn(function() ioq.sleep(0.01); r2:cancel() end)
        local _, msg, err = r2:next(2)
        assert.are.equal("recv: canceled", msg)
        assert.are.equal(E.ECANCELED, err)
        a:close(); c:close(); d:close()
      end)
    end)
  end)
end

describe("multishot lifetime", function()
  it("closes a queue with multishot ops in flight and views still held", function()
    local view
    do
      local q <close> = ioq.queue()
      if not util.has_feature(q, "provided_buffers") then
        pending(q.backend .. " here has no provided buffers (io_uring before Linux 6.0)")
        return
      end
      local a, b = ioq.socketpair()
      local r = q:recv_multi(a)
      q:send(b, "kept"):wait()
      while true do  -- take first: h:wait above may have brought it already
        local v = r:take()
        if v then view = v break end
        q:wait()
      end
      q:accept_multi(assert(ioq.socket("tcp")))  -- armed on a non-listener: fails
      q:send(b, "never taken"):wait()
      q:wait(0.01)
      a:close(); b:close()
    end
    -- The queue is gone; the view still reads its bytes.
    assert.are.equal("kept", view:tostring())
    view:close()
    collectgarbage(); collectgarbage()
  end)

  it("drops untaken connections when a multishot handle is collected", function()
    local before = t.fdcount()
    ioq.run(function()
      local server <close>, port = listener()
      local incoming = server:accept_multi()
      for _ = 1, 5 do
        local c <close> = assert(ioq.socket("tcp"))
        assert(c:connect("127.0.0.1", port):await(5))
      end
      ioq.sleep(0.02)
      incoming:cancel()
      incoming = nil  -- luacheck: ignore
    end)
    collectgarbage(); collectgarbage()
    assert.are.equal(before, t.fdcount())
  end)
end)
