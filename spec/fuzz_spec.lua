-- A short run of the randomized fuzzer (make fuzz runs it for 10 minutes).
local fuzz = require "fuzz.fuzz"

describe("fuzzer", function()
  local seed = tonumber(os.getenv("IOQ_FUZZ_SEED") or "")
  local iters = tonumber(os.getenv("IOQ_FUZZ_ITERS") or "") or 1500
  for _, s in ipairs(seed and { seed } or { 1, 2, 3, 4 }) do
    it("keeps every invariant for seed " .. s .. " (" .. iters .. " steps)", function()
      assert.is_true(fuzz.run(s, iters) > 0)
    end)
  end
end)
