-- Allocation-failure injection: every allocation of a scenario fails once,
-- in turn; each failure must be a Lua memory error, with nothing leaked
-- (the ASan run checks that) and nothing left broken.
local build = os.getenv("IOQ_CPATH") or "build"

describe("allocation failures", function()
  it("become 'not enough memory' errors at every allocation of a scenario", function()
    require("support.util").posix_only("the allocation-failure host, a Linux program")
    if os.getenv("IOQ_VALGRIND") then
      pending("thousands of runs are too slow under valgrind; the asan run covers this")
      return
    end
    local env = "IOQ_CPATH=" .. build .. " "
    if os.getenv("IOQ_BACKEND") then env = env .. "IOQ_BACKEND=" .. os.getenv("IOQ_BACKEND") .. " " end
    local p = io.popen(env .. build .. "/alloc_host spec/alloc/scenario.lua 2>&1")
    local out = p:read("a")
    local ok = p:close()
    local runs, memerrs, wrong = out:match("alloc: (%d+) runs, (%d+) memory errors, (%d+) wrong")
    assert.is_truthy(runs, out)
    assert.are.equal("0", wrong, out)
    assert.is_true(ok, out)
    -- Nearly every failure must surface (a few Lua absorbs on its own).
    assert.is_true(tonumber(runs) > 500, "only " .. runs .. " allocations")
    assert.is_true(tonumber(memerrs) >= tonumber(runs) * 0.9, out)
  end)
end)
