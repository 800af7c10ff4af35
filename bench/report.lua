--- bench/report.lua: turns the measurements of bench/run.sh into the
-- results page and the chart's data.
--
--   lua5.4 bench/report.lua RESULTS META OUT.md CHART.dat
--
-- RESULTS has one tab-separated line per contender: benchmark, contender,
-- median (empty when n/a), the samples, why it is n/a, and the extras of
-- its rounds ("key=value;..."). META has "key<TAB>value" lines about the
-- machine and the run. What each benchmark is, its contenders' names, the
-- baselines its ratios are taken against and its targets are below; the
-- numbers all come from RESULTS.

local BENCHES = {
  {
    id = "nop", title = "NOP submit+complete, batch 64", unit = "ops/s",
    rows = {
      { "c", "C", "C liburing (bench/uring_bench.c)" },
      { "ioq", "ioq raw", "ioq raw handles: q:nop() per op, q:wait()" },
      { "ioq-reuse", "ioq resubmit", "ioq raw handles, reused with h:resubmit()" },
      { "ioq-tasks", "ioq coroutines", "ioq coroutines: 64 tasks, q:nop():await()" },
    },
    vs = { "c" },
    targets = { { "ioq", "c", 0.25 }, { "ioq-reuse", "c", 0.25 } },
    chart = { { "ioq", "c" }, { "ioq-reuse", "c" }, { "ioq-tasks", "c" } },
  },
  {
    id = "randread", title = "4 KiB random reads, cached 256 MiB file, QD 64", unit = "reads/s",
    rows = {
      { "c", "C", "C liburing (bench/uring_bench.c)" },
      { "fio", "fio", "fio --ioengine=io_uring --invalidate=0" },
      { "ioq", "ioq", "ioq: q:read() per read" },
      { "ioq-reuse", "ioq resubmit", "ioq: h:resubmit(offset) per read" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll (worker threads), h:resubmit" },
      { "luv", "luv", "luv uv.fs_read (libuv thread pool)" },
    },
    vs = { "c", "fio", "luv" },
    targets = {
      { "ioq", "c", 0.75 }, { "ioq", "luv", 2 },
      { "ioq-reuse", "c", 0.75 }, { "ioq-reuse", "luv", 2 },
    },
    chart = { { "ioq", "c" }, { "ioq", "fio" }, { "ioq", "luv" }, { "ioq-reuse", "c" },
              { "ioq-reuse", "luv" } },
  },
  {
    id = "direct", title = "4 KiB random reads, O_DIRECT file, QD 64", unit = "reads/s",
    rows = {
      { "fio-uring", "fio io_uring", "fio --ioengine=io_uring --direct=1" },
      { "fio-psync", "fio psync", "fio --ioengine=psync --direct=1, 64 threads" },
      { "c", "C", "C liburing (bench/uring_bench.c), O_DIRECT" },
      { "ioq", "ioq", "ioq: q:read() per read, file opened with mode \"rd\"" },
      { "luv", "luv", "luv uv.fs_read, file opened with O_DIRECT" },
    },
    vs = { "fio-uring", "fio-psync", "c", "luv" },
    targets = { { "ioq", "fio-uring", 0.9 }, { "ioq", "luv", 3 } },
    chart = { { "ioq", "fio-uring" }, { "ioq", "fio-psync" }, { "ioq", "c" }, { "ioq", "luv" } },
  },
  {
    id = "copy", title = "Sequential copy of a file, then fsync", unit = "MiB/s",
    rows = {
      { "cp", "cp", "cp SRC DST && sync DST (coreutils)" },
      { "ioq", "ioq", "ioq: examples/copy.lua (16 x 256 KiB in flight)" },
      { "luv", "luv", "luv: bench/luv_copy.lua (16 x 256 KiB in flight)" },
    },
    vs = { "cp", "luv" },
    targets = { { "ioq", "cp", 0.9 } },
    chart = { { "ioq", "cp" }, { "ioq", "luv" } },
  },
  {
    id = "echo", title = "TCP echo, 100 connections, 128 B ping-pong, loopback", unit = "round trips/s",
    rows = {
      { "c", "C", "C liburing echo server (bench/net/echo_uring.c)" },
      { "ioq", "ioq", "ioq: examples/echo_server.lua" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: examples/echo_server.lua" },
      { "luv", "luv", "luv: bench/net/echo_luv.lua" },
      { "cqueues", "cqueues", "cqueues: bench/net/echo_cqueues.lua" },
    },
    vs = { "c", "luv", "cqueues" },
    targets = { { "ioq", "c", 0.8 }, { "ioq", "luv", 1.5 } },
    chart = { { "ioq", "c" }, { "ioq", "luv" }, { "ioq", "cqueues" }, { "ioq-epoll", "c" } },
  },
  {
    id = "http", title = "HTTP hello, wrk -t1 -c100, keep-alive", unit = "requests/s",
    rows = {
      { "nginx", "nginx", "nginx, 1 worker, `return 200` from its config" },
      { "ioq", "ioq", "ioq: examples/http_hello.lua" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: examples/http_hello.lua" },
      { "luv", "luv", "luv: bench/net/http_luv.lua" },
    },
    vs = { "luv", "nginx" },
    targets = { { "ioq", "luv", 1.5 } },
    chart = { { "ioq", "luv" }, { "ioq", "nginx" }, { "ioq-epoll", "luv" } },
  },
}

-- Labels for the run's facts, in the order shown.
local META_LABELS = {
  { "date", "Date" }, { "mode", "Mode" }, { "rounds", "Rounds" }, { "took", "Took" },
  { "machine", "Machine" }, { "os", "System" }, { "load", "Load average" },
  { "lua", "Lua" }, { "ioq", "ioq" }, { "liburing", "liburing" }, { "gcc", "Compiler" },
  { "fio", "fio" }, { "luv", "lua-luv" }, { "cqueues", "lua-cqueues" }, { "nginx", "nginx" },
  { "wrk", "wrk" }, { "gnuplot", "gnuplot" }, { "files", "Test files" }, { "sizes", "Sizes" },
  { "servers", "Servers" }, { "missing", "Missing" },
}

local results_path, meta_path, out_path, chart_path = table.unpack(arg)
if not chart_path then
  io.stderr:write("usage: lua5.4 bench/report.lua RESULTS META OUT.md CHART.dat\n")
  os.exit(2)
end

local function split(s, sep)
  local fields = {}
  for field in (s .. sep):gmatch("(.-)" .. sep) do fields[#fields + 1] = field end
  return fields
end

local function median(values)
  table.sort(values)
  local n = #values
  if n == 0 then return nil end
  return n % 2 == 1 and values[(n + 1) // 2] or (values[n // 2] + values[n // 2 + 1]) / 2
end

-- results[bench][contender] = { median =, samples = {...}, why =, extras = {key = median} }
local results = {}
for line in io.lines(results_path) do
  local f = split(line, "\t")
  local bench, name = f[1], f[2]
  local samples = {}
  for v in (f[4] or ""):gmatch("%S+") do samples[#samples + 1] = tonumber(v) end
  local by_key = {}
  for key, v in (f[6] or ""):gmatch("([%w_]+)=([%d.]+)") do
    by_key[key] = by_key[key] or {}
    table.insert(by_key[key], tonumber(v))
  end
  local extras = {}
  for key, values in pairs(by_key) do extras[key] = median(values) end
  results[bench] = results[bench] or {}
  results[bench][name] = { median = tonumber(f[3]), samples = samples,
                           why = f[5] ~= "" and f[5] or nil, extras = extras }
end

local meta, meta_order = {}, {}
for line in io.lines(meta_path) do
  local key, value = line:match("^([^\t]+)\t(.*)$")
  if key and value ~= "" then
    meta[key] = value
    meta_order[#meta_order + 1] = key
  end
end

--- A rate for the table: whole numbers, one decimal below 1000.
local function rate(v)
  if v >= 1000 then return string.format("%.0f", v) end
  return string.format("%.1f", v)
end

--- A rate in three significant digits, for the rounds column.
local function short(v)
  if v >= 1e6 then return string.format("%.2fM", v / 1e6) end
  if v >= 1e5 then return string.format("%.0fk", v / 1e3) end
  return string.format("%.0f", v)
end

local function row_of(bench, id)
  for _, r in ipairs(bench.rows) do
    if r[1] == id then return { id = r[1], short = r[2], label = r[3] } end
  end
  error("no contender " .. id .. " in " .. bench.id)
end

-- ratio(bench, a, b): a's median over b's, or nil and why not.
local function ratio(bench, a, b)
  local ra, rb = results[bench.id][a], results[bench.id][b]
  if not ra or not rb then return nil, "not run" end
  if not ra.median then return nil, row_of(bench, a).short .. " n/a" end
  if not rb.median then return nil, row_of(bench, b).short .. " n/a" end
  return ra.median / rb.median
end

local function target_of(bench, a, b)
  for _, t in ipairs(bench.targets) do
    if t[1] == a and t[2] == b then return t[3] end
  end
end

local function target_text(bench, t)
  local a, b = row_of(bench, t[1]), row_of(bench, t[2])
  if t[3] >= 1 then
    return string.format("%s >= %gx %s", a.short, t[3], b.short)
  end
  return string.format("%s >= %d%% of %s", a.short, math.floor(t[3] * 100 + 0.5), b.short)
end

local out = {}
local function put(...) out[#out + 1] = table.concat({ ... }) end

put("# ioq benchmark results")
put("")
put("Written by `make bench` (bench/run.sh); BENCHMARKS.md says what each benchmark ",
    "measures and how to read this. Each contender ran once per round, in rotating order; ",
    "the figures are medians of the rounds, and every ratio is between two medians of the same run.")
put("")
for _, pair in ipairs(META_LABELS) do
  local key, label = pair[1], pair[2]
  if meta[key] then put("- ", label, ": ", meta[key]) end
end
for _, key in ipairs(meta_order) do  -- facts this page has no label for yet
  local known = false
  for _, pair in ipairs(META_LABELS) do known = known or pair[1] == key end
  if not known then put("- ", key, ": ", meta[key]) end
end

-- The targets first: the page's answer.
put("")
put("## Targets")
put("")
put("| benchmark | target | measured | |")
put("|---|---|---:|---|")
local ran = {}
for _, bench in ipairs(BENCHES) do
  if results[bench.id] then
    ran[#ran + 1] = bench
    for _, t in ipairs(bench.targets) do
      local r, why = ratio(bench, t[1], t[2])
      local verdict = not r and ("n/a: " .. why) or (r >= t[3] and "met" or "**missed**")
      put("| ", bench.title, " | ", target_text(bench, t), " | ",
          r and string.format("%.2f", r) or "-", " | ", verdict, " |")
    end
  end
end
put("")
put("![ratios of ioq to each baseline](", (out_path:match("([^/]+)%.md$") or "latest"), ".png)")

-- One table per benchmark.
for _, bench in ipairs(ran) do
  local res = results[bench.id]
  put("")
  put("## ", bench.title)
  put("")
  put("Higher is better; ", bench.unit, ", median of the rounds.")
  put("")
  local head, rule = { "| contender | ", bench.unit, " | rounds" }, { "|---|---:|---" }
  for _, b in ipairs(bench.vs) do
    head[#head + 1] = " | vs " .. row_of(bench, b).short
    rule[#rule + 1] = "|---:"
  end
  head[#head + 1] = " | note |"
  rule[#rule + 1] = "|---|"
  put(table.concat(head))
  put(table.concat(rule))
  for _, r in ipairs(bench.rows) do
    local row = row_of(bench, r[1])
    local m = res[row.id]
    if m then
      local cells = { "| ", row.label, " | " }
      if m.median then
        local rounds = {}
        for i, v in ipairs(m.samples) do rounds[i] = short(v) end
        cells[#cells + 1] = rate(m.median) .. " | " .. table.concat(rounds, " ")
      else
        cells[#cells + 1] = "n/a | -"
      end
      for _, b in ipairs(bench.vs) do
        local x = m.median and ratio(bench, row.id, b)
        local cell = x and string.format("%.2f", x) or "-"
        local t = x and target_of(bench, row.id, b)
        if t then cell = cell .. (x >= t and " (met)" or " (**missed**)") end
        cells[#cells + 1] = " | " .. cell
      end
      local notes = {}
      if m.why then notes[#notes + 1] = "n/a: " .. m.why end
      if m.extras.server_cpu then
        notes[#notes + 1] = string.format("CPU: server %.0f%%, client %.0f%%",
          m.extras.server_cpu, m.extras.client_cpu or 0)
      end
      cells[#cells + 1] = " | " .. table.concat(notes, "; ") .. " |"
      put(table.concat(cells))
    end
  end
end

local f = assert(io.open(out_path, "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()

-- The chart: one bar per (ioq contender, baseline) pair. Columns: label,
-- ratio (NaN when n/a), target (NaN when none), status (0 no target,
-- 1 met, 2 missed, 3 n/a), text above the bar, and that text's height
-- (above the bar or its target's dash, whichever is higher; 0 for n/a).
local chart = assert(io.open(chart_path, "w"))
for _, bench in ipairs(ran) do
  for _, pair in ipairs(bench.chart) do
    local r = ratio(bench, pair[1], pair[2])
    local t = target_of(bench, pair[1], pair[2])
    local status = not r and 3 or not t and 0 or r >= t and 1 or 2
    chart:write(string.format("%s: %s / %s\t%s\t%s\t%d\t%s\t%.3f\n", bench.id,
      row_of(bench, pair[1]).short, row_of(bench, pair[2]).short,
      r and string.format("%.3f", r) or "NaN", t and string.format("%g", t) or "NaN", status,
      r and string.format("%.2f", r) or "n/a", r and math.max(r, t or 0) or 0))
  end
end
chart:close()
