--- ioq.heap: a binary min-heap of records ordered by their `at` field, each
-- record knowing its place in `pos` (nil when it is not in the heap), so a
-- record can leave the heap in O(log n) and be pushed again later without
-- a new table. The loop's timers use it (lua/ioq/loop.lua).
--
-- Holds no state: every function takes the heap (a plain array) it works
-- on, and touches only that array and the records in it. Requires nothing.
local heap = {}

local function up(h, i)
  local t = h[i]
  local at = t.at
  while i > 1 do
    local parent = i // 2
    local p = h[parent]
    if p.at <= at then break end
    h[i] = p
    p.pos = i
    i = parent
  end
  h[i] = t
  t.pos = i
end

local function down(h, i)
  local n = #h
  local t = h[i]
  local at = t.at
  while true do
    local l = 2 * i
    if l > n then break end
    local c, cat = h[l], h[l].at
    if l < n then
      local r = h[l + 1]
      if r.at < cat then c, cat, l = r, r.at, l + 1 end
    end
    if cat >= at then break end
    h[i] = c
    c.pos = i
    i = l
  end
  h[i] = t
  t.pos = i
end

--- Puts record `t` (its `at` set) into heap `h`.
function heap.push(h, t)
  -- In this order a memory error (a new key, the heap growing) leaves
  -- the heap as it was: a record is in it only once it is all there.
  local pos = #h + 1
  t.pos = false
  h[pos] = t
  t.pos = pos
  up(h, pos)
end

--- Takes record `t` out of heap `h`; nothing if it is not in it.
function heap.remove(h, t)
  local i = t.pos
  if not i then return end
  t.pos = nil
  local last = #h
  local m = h[last]
  h[last] = nil
  if i ~= last then
    h[i] = m
    m.pos = i
    down(h, i)
    up(h, m.pos)
  end
end

--- Moves record `t`, in heap `h`, to its place after its `at` changed.
function heap.fix(h, t)
  up(h, t.pos)
  down(h, t.pos)
end

--- Rebuilds heap `h` with only the records for which keep(record) is
-- true; the others leave it (their `pos` nil). Allocates nothing.
function heap.filter(h, keep)
  local n, k = #h, 0
  for i = 1, n do
    local t = h[i]
    if keep(t) then
      k = k + 1
      h[k] = t
      t.pos = k
    else
      t.pos = nil
    end
  end
  for i = n, k + 1, -1 do h[i] = nil end
  for i = k // 2, 1, -1 do down(h, i) end
end

return heap
