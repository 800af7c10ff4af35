-- Cancellation: it only asks, the handle still resolves exactly once, with
-- ECANCELED or with the op's real result, never both.
local ioq = require "ioq"
local util = require "support.util"
local t = require "ioq_test"
local E = ioq.errno

describe("cancel", function()
  local q
  before_each(function() q = ioq.queue() end)
  after_each(function() q:close(); util.cleanup() end)

  it("ends a long sleep quickly with ECANCELED", function()
    local h = q:sleep(10)
    q:submit()
    local t0 = ioq.now()
    assert.is_true(h:cancel())
    assert.are.same({ nil, "sleep: canceled", E.ECANCELED }, { h:wait() })
    assert.is_true(ioq.now() - t0 < 1)
    assert.is_false(h:cancel())  -- nothing left to cancel
  end)

  it("cancels an op that was never sent, and q:wait still reports it", function()
    local h = q:sleep(10)
    assert.is_true(h:cancel())
    local into = {}
    assert.are.equal(1, q:wait(nil, into))
    assert.are.equal(h, into[1])
    assert.are.equal(E.ECANCELED, select(3, h:result()))
  end)

  -- On Windows a pipe made without FILE_FLAG_OVERLAPPED is served by a
  -- pool thread, blocked in ReadFile until CancelSynchronousIo ends it;
  -- elsewhere sync_pipe is a plain pipe.
  it("cancels, times out and closes over reads blocked on a synchronous pipe", function()
    local r, w = (t.sync_pipe or t.pipe)()
    finally(function() t.close(r); t.close(w) end)
    local b = ioq.buffer(16)
    local h = q:read(r, b)
    q:submit()
    q:wait(0.05)
    assert.is_false(h:done())
    assert.is_true(h:cancel())
    assert.are.equal(E.ECANCELED, select(3, h:wait(2)))
    assert.is_false(b:busy())
    local h2 = q:read(r, b)
    h2:timeout(0.05)
    local t0 = ioq.now()
    assert.are.equal(E.ETIMEDOUT, select(3, h2:wait(2)))
    assert.is_true(ioq.now() - t0 < 1)
    local h3 = q:read(r, b)                  -- the pipe still works
    assert.are.equal(2, q:write(w, "ok"):wait(2))
    assert.are.equal(2, h3:wait(2))
    assert.are.equal("ok", b:tostring(1, 2))
    q:read(r, ioq.buffer(16))                -- left blocked: close must end it
    q:submit()
    local t1 = ioq.now()
    q:close()
    assert.is_true(ioq.now() - t1 < 1)
  end)

  it("frees a buffer when a read on a silent pipe is cancelled", function()
    local r, w = t.pipe()
    local b = ioq.buffer(16)
    local h = q:read(r, b)
    q:submit()
    h:cancel()
    assert.are.equal(E.ECANCELED, select(3, h:wait()))
    assert.is_false(b:busy())
    t.close(r); t.close(w)
  end)

  it("returns the real result when the cancel loses the race", function()
    local name = util.tmpfile(string.rep("z", 8192))
    local f <close> = assert(io.open(name, "rb"))
    local canceled, finished = 0, 0
    for round = 1, 50 do
      local hs = {}
      local expect = {}
      for i = 1, 20 do
        local kind = i % 3
        if kind == 0 then
          hs[i], expect[i] = q:nop(), true
        elseif kind == 1 then
          hs[i], expect[i] = q:read(f, ioq.buffer(100), i * 10), 100
        else  -- short sleeps: some end before their cancel, some do not
          hs[i], expect[i] = q:sleep((i % 5) * 0.0004), true
        end
      end
      q:submit()
      if round % 2 == 0 then q:wait(0) end
      for i = 1, 20, 2 do hs[i]:cancel() end
      local seen = {}
      local into = {}
      while q:pending() > 0 do
        for k = 1, q:wait(nil, into) do
          assert.is_nil(seen[into[k]], "resolved twice")
          seen[into[k]] = true
        end
      end
      for i = 1, 20 do
        local v, msg, err = hs[i]:result()
        if v == nil then
          assert.are.equal(E.ECANCELED, err)
          assert.are.equal(hs[i].op .. ": canceled", msg)
          canceled = canceled + 1
        else
          assert.are.equal(expect[i], v)
          finished = finished + 1
        end
      end
    end
    assert.is_true(canceled > 0 and finished > 0)
  end)

  it("times out h:wait on a silent pipe with ETIMEDOUT, after the kernel let go", function()
    local r, w = t.pipe()
    local b = ioq.buffer(16)
    local h = q:read(r, b)
    local t0 = ioq.now()
    assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { h:wait(0.05) })
    local dt = ioq.now() - t0
    assert.is_true(dt >= 0.04 and dt < 2, "took " .. dt)
    assert.is_true(h:done())
    assert.is_false(b:busy())
    assert.are.same({ nil, "read: timed out", E.ETIMEDOUT }, { h:result() })
    t.close(r); t.close(w)
  end)

  it("keeps the real result when the op finishes before its timeout", function()
    local r, w = t.pipe()
    local b = ioq.buffer(16)
    q:write(w, "ping"):wait()
    assert.are.equal(4, q:read(r, b):wait(5))
    assert.are.equal("ping", b:tostring(1, 4))
    assert.is_true(q:nop():wait(0))
    t.close(r); t.close(w)
  end)
end)
