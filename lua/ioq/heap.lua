--- ioq.heap: a binary min-heap of records ordered by their `at` field, each
-- record knowing its place in `pos` (nil when it is not in the heap), so a
-- record can leave the heap in O(log n) and be pushed again later without
-- a new table. The loop's timers use it (lua/ioq/loop.lua).
--
-- Holds no state: every function takes the heap (a plain array) it works
-- on, and touches only that array and the records in it. Requires nothing.
local heap = {}

local function swap(h, i, j)
  h[i], h[j] = h[j], h[i]
  h[i].pos, h[j].pos = i, j
end

local function up(h, i)
  while i > 1 do
    local parent = i // 2
    if h[parent].at <= h[i].at then break end
    swap(h, i, parent)
    i = parent
  end
end

local function down(h, i)
  local n = #h
  while true do
    local l, small = 2 * i, i
    if l <= n and h[l].at < h[small].at then small = l end
    if l + 1 <= n and h[l + 1].at < h[small].at then small = l + 1 end
    if small == i then return end
    swap(h, i, small)
    i = small
  end
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
  if i ~= last then
    h[i] = h[last]
    h[i].pos = i
    h[last] = nil
    down(h, i)
    up(h, i)
  else
    h[last] = nil
  end
end

return heap
