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
--
-- Every ratio reads "higher is better": a rate's is contender / baseline;
-- a CPU time per request's (the servers' extra "cpu_us") is baseline /
-- contender, so 1.2 means the contender needs 1/1.2 of the baseline's CPU
-- per request. A target is { contender, baseline, ratio } on the rates,
-- the same with kind = "cpu" on the CPU per request, or { contender,
-- max = V } for a benchmark whose figure is lower-is-better (memory).
-- Targets with issue = 14 are those of the speed issue, issue = 15 the
-- platform issue's (file system, processes).

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
    targets = {
      { "ioq", "c", 0.30, issue = 14 }, { "ioq-reuse", "c", 0.25 },
      { "ioq-tasks", "ioq", 0.6, issue = 14 },
    },
    chart = { { "ioq", "c" }, { "ioq-reuse", "c" }, { "ioq-tasks", "c" }, { "ioq-tasks", "ioq" } },
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
      { "ioq", "c", 0.80, issue = 14 }, { "ioq", "luv", 2 },
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
      { "cp", "cp", "cp SRC DST && sync DST (coreutils: copy_file_range)" },
      { "ioq", "ioq", "ioq: examples/copy.lua (in the kernel: q:copy, 4 x 8 MiB in flight, "
                        .. "a datasync every 64 MiB)" },
      { "luv", "luv", "luv: bench/luv_copy.lua (read+write, 16 x 256 KiB in flight)" },
    },
    vs = { "cp", "luv" },
    targets = { { "ioq", "cp", 1.0, issue = 15 } },
    chart = { { "ioq", "cp" }, { "ioq", "luv" } },
  },
  {
    id = "stat", title = "stat of 8,000 cached files, 64 in flight", unit = "stats/s",
    rows = {
      { "c", "C", "C statx loop, one at a time (bench/fs_bench.c)" },
      { "ioq", "ioq", "ioq: 64 tasks, q:stat(path):await()" },
      { "ioq-raw", "ioq raw", "ioq raw handles: 64 q:stat in flight, q:wait()" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll (worker threads), 64 tasks" },
      { "luv", "luv", "luv uv.fs_stat, 64 callbacks in flight (libuv thread pool)" },
    },
    vs = { "c", "luv" },
    targets = {
      { "ioq", "luv", 1.0, issue = 15 }, { "ioq-raw", "luv", 1.0, issue = 15 },
      { "ioq-epoll", "luv", 1.0, issue = 15 },
    },
    chart = { { "ioq", "luv" }, { "ioq-raw", "luv" }, { "ioq-epoll", "luv" }, { "ioq", "c" } },
  },
  {
    id = "readdir", title = "Directory listing, 1,000 entries each, 8 in flight", unit = "entries/s",
    rows = {
      { "c", "C", "C opendir/readdir loop, one at a time (bench/fs_bench.c)" },
      { "ioq", "ioq", "ioq: 8 tasks, q:readdir(path):await() (an array of {name, type})" },
      { "ioq-iter", "ioq dir", "ioq: 8 tasks, for name, type in ioq.fs.dir(path)" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: 8 tasks, q:readdir(path):await()" },
      { "luv", "luv", "luv uv.fs_scandir + uv.fs_scandir_next, 8 callbacks in flight" },
    },
    vs = { "c", "luv" },
    targets = {
      -- None for ioq.fs.dir: it holds one batch at a time, for directories
      -- too big to hold, and pays an op per batch for that.
      { "ioq", "luv", 1.0, issue = 15 }, { "ioq-epoll", "luv", 1.0, issue = 15 },
    },
    chart = { { "ioq", "luv" }, { "ioq-iter", "luv" }, { "ioq-epoll", "luv" }, { "ioq", "c" } },
  },
  {
    id = "spawn", title = "Spawn and wait for /bin/true, 16 at once", unit = "processes/s",
    rows = {
      { "c", "C", "C posix_spawn + waitpid (bench/fs_bench.c)" },
      { "ioq", "ioq", "ioq: 16 tasks, ioq.process{prog}, p:await()" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: 16 tasks, ioq.process{prog}, p:await()" },
      { "luv", "luv", "luv uv.spawn, 16 exit callbacks in flight" },
    },
    vs = { "c", "luv" },
    targets = {
      { "ioq", "luv", 1.0, issue = 15 }, { "ioq-epoll", "luv", 1.0, issue = 15 },
    },
    chart = { { "ioq", "luv" }, { "ioq-epoll", "luv" }, { "ioq", "c" } },
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
    vs = { "c", "luv", "cqueues", "ioq" },
    cpu = true,
    targets = {
      { "ioq", "c", 0.9, issue = 14 }, { "ioq", "c", 0.9, kind = "cpu", issue = 14 },
      { "ioq", "luv", 1.2, issue = 14 }, { "ioq", "luv", 1.2, kind = "cpu", issue = 14 },
      { "ioq-epoll", "ioq", 0.95, issue = 14 },
      { "ioq-epoll", "ioq", 0.95, kind = "cpu", issue = 14 },
    },
    chart = { { "ioq", "c" }, { "ioq", "luv" }, { "ioq", "cqueues" }, { "ioq-epoll", "ioq" },
              { "ioq", "c", kind = "cpu" }, { "ioq", "luv", kind = "cpu" },
              { "ioq-epoll", "ioq", kind = "cpu" } },
  },
  {
    id = "http", title = "HTTP hello, wrk -t1 -c100, keep-alive", unit = "requests/s",
    rows = {
      { "nginx", "nginx", "nginx, 1 worker, `return 200` from its config" },
      { "nginx-lua", "nginx+Lua", "nginx, 1 worker, Lua handler (ngx_lua `content_by_lua_block`)" },
      { "ioq", "ioq", "ioq: examples/http_hello.lua" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: examples/http_hello.lua" },
      { "luv", "luv", "luv: bench/net/http_luv.lua" },
    },
    vs = { "luv", "nginx-lua", "nginx", "ioq" },
    cpu = true,
    targets = {
      { "ioq", "luv", 1.3, issue = 14 }, { "ioq", "luv", 1.3, kind = "cpu", issue = 14 },
      { "ioq", "nginx-lua", 1.2, issue = 14 },
      { "ioq", "nginx-lua", 1.2, kind = "cpu", issue = 14 },
      { "ioq", "nginx", 0.8, kind = "cpu", issue = 14 },
      { "ioq-epoll", "ioq", 0.95, issue = 14 },
      { "ioq-epoll", "ioq", 0.95, kind = "cpu", issue = 14 },
    },
    chart = { { "ioq", "luv" }, { "ioq", "nginx-lua" }, { "ioq", "nginx" }, { "ioq-epoll", "ioq" },
              { "ioq", "luv", kind = "cpu" }, { "ioq", "nginx-lua", kind = "cpu" },
              { "ioq", "nginx", kind = "cpu" }, { "ioq-epoll", "ioq", kind = "cpu" } },
  },
  {
    id = "idle", title = "Memory per idle connection, echo servers",
    unit = "KiB per connection", lower = true,
    rows = {
      { "c", "C", "C liburing echo server (bench/net/echo_uring.c)" },
      { "ioq", "ioq", "ioq: examples/echo_server.lua" },
      { "ioq-epoll", "ioq epoll", "ioq on epoll: examples/echo_server.lua" },
      { "luv", "luv", "luv: bench/net/echo_luv.lua" },
    },
    vs = { "c", "luv" },
    targets = { { "ioq", max = 2, issue = 14 }, { "ioq-epoll", max = 2, issue = 14 } },
    chart = {},  -- its own panel: the figures themselves, not ratios
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

-- The figure a ratio is taken of: the median rate, or the median CPU time
-- per request (kind "cpu").
local function figure(m, kind)
  if kind == "cpu" then return m.extras.cpu_us end
  return m.median
end

-- ratio(bench, a, b, kind): a over b, higher is better (see the top); nil
-- and why not when one of them is missing.
local function ratio(bench, a, b, kind)
  local ra, rb = results[bench.id][a], results[bench.id][b]
  if not ra or not rb then return nil, "not run" end
  local fa, fb = ra.median and figure(ra, kind), rb.median and figure(rb, kind)
  local what = kind == "cpu" and " CPU time n/a" or " n/a"
  if not fa then return nil, row_of(bench, a).short .. what end
  if not fb then return nil, row_of(bench, b).short .. what end
  if kind == "cpu" then
    if fa <= 0 then return nil, row_of(bench, a).short .. " used no measurable CPU" end
    return fb / fa
  end
  return fa / fb  -- for a lower-is-better figure: "x of the baseline"
end

local function target_of(bench, a, b, kind)
  for _, t in ipairs(bench.targets) do
    if t[1] == a and t[2] == b and (t.kind or "rate") == (kind or "rate") then return t[3] end
  end
end

local function target_text(bench, t)
  local a = row_of(bench, t[1])
  if t.max then return string.format("%s <= %g %s", a.short, t.max, bench.unit) end
  local b = row_of(bench, t[2])
  local text
  if t[3] >= 1 then
    text = string.format("%s >= %gx %s", a.short, t[3], b.short)
  else
    text = string.format("%s >= %d%% of %s", a.short, math.floor(t[3] * 100 + 0.5), b.short)
  end
  return text .. (t.kind == "cpu" and ", CPU per request" or "")
end

-- evaluate(bench, t): the measured figure of a target, whether it is met,
-- and why it is n/a.
local function evaluate(bench, t)
  if t.max then
    local m = results[bench.id][t[1]]
    if not m then return nil, nil, "not run" end
    if not m.median then return nil, nil, row_of(bench, t[1]).short .. " n/a" end
    return m.median, m.median <= t.max
  end
  local r, why = ratio(bench, t[1], t[2], t.kind)
  if not r then return nil, nil, why end
  return r, r >= t[3]
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
put("Ratios read higher is better: for rates contender / baseline, for CPU time per ",
    "request baseline / contender (1.2x luv means 1/1.2 of luv's CPU per request). ",
    "\"#14\" marks the speed issue's targets, \"#15\" the platform issue's.")
put("")
put("| benchmark | target | measured | | |")
put("|---|---|---:|---|---|")
local ran = {}
for _, bench in ipairs(BENCHES) do
  if results[bench.id] then
    ran[#ran + 1] = bench
    for _, t in ipairs(bench.targets) do
      local r, met, why = evaluate(bench, t)
      local verdict = not r and ("n/a: " .. why) or (met and "met" or "**missed**")
      put("| ", bench.title, " | ", target_text(bench, t), " | ",
          r and string.format("%.2f", r) or "-", " | ", verdict, " | ",
          t.issue and ("#" .. t.issue) or "", " |")
    end
  end
end
put("")
put("![ratios of ioq to each baseline](", (out_path:match("([^/]+)%.md$") or "latest"), ".png)")

local function cpu_cell(us)
  if not us then return "-" end
  return string.format(us >= 10 and "%.1f" or "%.2f", us)
end

-- One table per benchmark.
for _, bench in ipairs(ran) do
  local res = results[bench.id]
  put("")
  put("## ", bench.title)
  put("")
  if bench.lower then
    put("Lower is better; ", bench.unit, ", median of the rounds; \"x C\" is the ",
        "contender's figure over the baseline's.")
  else
    put("Higher is better; ", bench.unit, ", median of the rounds.")
  end
  if bench.cpu then
    put("CPU µs/req: the server's CPU time (utime + stime of its processes, from ",
        "/proc/PID/stat over the measured window) per request, median of the rounds; ",
        "\"CPU vs X\" is X's CPU per request over this one's (higher is better).")
  end
  put("")
  local head, rule = { "| contender | ", bench.unit, " | rounds" }, { "|---|---:|---" }
  for _, b in ipairs(bench.vs) do
    head[#head + 1] = (bench.lower and " | x " or " | vs ") .. row_of(bench, b).short
    rule[#rule + 1] = "|---:"
  end
  if bench.cpu then
    head[#head + 1] = " | CPU µs/req"
    rule[#rule + 1] = "|---:"
    for _, b in ipairs(bench.vs) do
      head[#head + 1] = " | CPU vs " .. row_of(bench, b).short
      rule[#rule + 1] = "|---:"
    end
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
        for i, v in ipairs(m.samples) do rounds[i] = bench.lower and string.format("%.2f", v) or short(v) end
        cells[#cells + 1] = (bench.lower and string.format("%.2f", m.median) or rate(m.median)) ..
          " | " .. table.concat(rounds, " ")
      else
        cells[#cells + 1] = "n/a | -"
      end
      local function ratio_cells(kind)
        for _, b in ipairs(bench.vs) do
          local x = m.median and b ~= row.id and ratio(bench, row.id, b, kind)
          local cell = x and string.format("%.2f", x) or "-"
          local t = x and target_of(bench, row.id, b, kind)
          if t then cell = cell .. (x >= t and " (met)" or " (**missed**)") end
          cells[#cells + 1] = " | " .. cell
        end
      end
      ratio_cells("rate")
      if bench.cpu then
        cells[#cells + 1] = " | " .. cpu_cell(m.median and m.extras.cpu_us)
        ratio_cells("cpu")
      end
      local notes = {}
      if m.why then notes[#notes + 1] = "n/a: " .. m.why end
      if m.extras.server_cpu then
        notes[#notes + 1] = m.extras.client_cpu
          and string.format("CPU: server's %.0f%%, client's %.0f%%", m.extras.server_cpu,
                            m.extras.client_cpu)
          or string.format("server used %.0f%% of a CPU", m.extras.server_cpu)
      end
      if m.extras.server_own then
        notes[#notes + 1] = string.format("server process %.0f%%", m.extras.server_own)
      end
      if m.extras.rss0_kib then
        notes[#notes + 1] = string.format("RSS %.1f MiB idle, %.1f MiB with the connections",
          m.extras.rss0_kib / 1024, m.extras.rss1_kib / 1024)
      end
      for _, t in ipairs(bench.targets) do
        if t.max and t[1] == row.id and m.median then
          notes[#notes + 1] = string.format("target <= %g: %s", t.max,
            m.median <= t.max and "met" or "**missed**")
        end
      end
      cells[#cells + 1] = " | " .. table.concat(notes, "; ") .. " |"
      put(table.concat(cells))
    end
  end
end

local f = assert(io.open(out_path, "w"))
f:write(table.concat(out, "\n"), "\n")
f:close()

-- The chart: one bar per (ioq contender, baseline) pair, rates and CPU
-- per request. Columns: label, ratio (NaN when n/a), target (NaN when
-- none), status (0 no target, 1 met, 2 missed, 3 n/a), text above the
-- bar, and that text's height (above the bar or its target's dash,
-- whichever is higher; 0 for n/a).
local chart = assert(io.open(chart_path, "w"))
for _, bench in ipairs(ran) do
  for _, pair in ipairs(bench.chart) do
    local r = ratio(bench, pair[1], pair[2], pair.kind)
    local t = target_of(bench, pair[1], pair[2], pair.kind)
    local status = not r and 3 or not t and 0 or r >= t and 1 or 2
    chart:write(string.format("%s%s: %s / %s\t%s\t%s\t%d\t%s\t%.3f\n", bench.id,
      pair.kind == "cpu" and " CPU/req" or "",
      row_of(bench, pair[1]).short, row_of(bench, pair[2]).short,
      r and string.format("%.3f", r) or "NaN", t and string.format("%g", t) or "NaN", status,
      r and string.format("%.2f", r) or "n/a", r and math.max(r, t or 0) or 0))
  end
end
chart:close()

-- The idle-memory panel, when that benchmark ran: one bar per server, in
-- its unit, with the same columns (the target is the absolute one).
local idle_path = chart_path:gsub("%.dat$", "") .. "-idle.dat"
os.remove(idle_path)
for _, bench in ipairs(ran) do
  if bench.lower then
    local g = assert(io.open(idle_path, "w"))
    for _, r in ipairs(bench.rows) do
      local m = results[bench.id][r[1]]
      if m then
        local t
        for _, tt in ipairs(bench.targets) do
          if tt.max and tt[1] == r[1] then t = tt.max end
        end
        local v = m.median
        local status = not v and 3 or not t and 0 or v <= t and 1 or 2
        g:write(string.format("%s\t%s\t%s\t%d\t%s\t%.3f\n", r[2],
          v and string.format("%.3f", v) or "NaN", t and string.format("%g", t) or "NaN",
          status, v and string.format("%.1f", v) or "n/a", v and math.max(v, t or 0) or 0))
      end
    end
    g:close()
  end
end
