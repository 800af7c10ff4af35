-- A small busted-compatible runner, for Lua builds that busted itself
-- cannot run on (busted needs C modules: lfs, term, system). make
-- test-windows runs the very same spec files with it under Wine.
--
--   lua spec/support/runner.lua [-o summary] FILE...
--
-- It knows what the specs use: describe, it, pending (a test, or inside a
-- test to skip it with a reason), before_each, after_each, setup,
-- teardown, finally, and luassert's assert/spy/stub/mock/match, which are
-- pure Lua (found on package.path: Debian's lua-luassert and lua-say). Each
-- file runs insulated: modules it loads are unloaded after it. The last line
-- is busted's summary, "N successes / N failures / N errors / N pending".
local files = {}
do
  local i = 1
  while arg[i] do
    if arg[i] == "-o" then i = i + 1  -- busted's output option: one style
    else files[#files + 1] = arg[i] end
    i = i + 1
  end
end

local luassert = require "luassert"
local results = { success = 0, failure = 0, error = 0, pending = 0 }
local reports = {}

local PENDING = setmetatable({}, { __name = "pending" })

-- The tree of the file being loaded: blocks with hooks and children.
local function block(name, parent)
  return { name = name, parent = parent, children = {}, before = {}, after = {},
            setup = {}, teardown = {} }
end

local current        -- the block being defined
local running        -- the test being run: { finally = {} }

local function add(kind, name, fn, level)
  local info = debug.getinfo(level or 3, "Sl")
  current.children[#current.children + 1] = {
    kind = kind, name = name, fn = fn,
    where = info.short_src .. ":" .. info.currentline,
  }
end

local env = {}

function env.describe(name, fn)
  local b = block(name, current)
  local saved = current
  current.children[#current.children + 1] = { kind = "describe", block = b }
  current = b
  fn()
  current = saved
end

function env.it(name, fn)
  add("it", name, fn)
end

function env.pending(name, fn)
  if running then  -- inside a test: stop it, counted as pending
    error(setmetatable({ reason = name }, PENDING), 2)
  end
  add("pending", name, fn)
end

function env.before_each(fn) table.insert(current.before, fn) end
function env.after_each(fn) table.insert(current.after, fn) end
function env.setup(fn) table.insert(current.setup, fn) end
function env.teardown(fn) table.insert(current.teardown, fn) end
env.lazy_setup, env.strict_setup = env.setup, env.setup
env.lazy_teardown, env.strict_teardown = env.teardown, env.teardown

function env.finally(fn)
  assert(running, "finally called outside a test")
  table.insert(running.finally, fn)
end

env.assert = luassert
env.spy = require "luassert.spy"
env.stub = require "luassert.stub"
env.mock = require "luassert.mock"
env.match = require "luassert.match"

local function fullname(b, name)
  local parts = { name }
  while b and b.name do
    table.insert(parts, 1, b.name)
    b = b.parent
  end
  return table.concat(parts, " ")
end

local function trace(e)
  if getmetatable(e) == PENDING then return e end
  local msg = type(e) == "table" and e.message or e
  return debug.traceback(tostring(msg), 2)
end

local function hooks(b, field, reverse)
  local chain = {}
  while b do
    table.insert(chain, reverse and #chain + 1 or 1, b)
    b = b.parent
  end
  local list = {}
  for _, c in ipairs(chain) do
    for _, fn in ipairs(c[field]) do list[#list + 1] = fn end
  end
  return list
end

local function report(status, name, where, detail)
  results[status] = results[status] + 1
  if status ~= "success" then
    reports[#reports + 1] = { status = status, name = name, where = where,
                              detail = detail }
  end
  io.write(status == "success" and "+" or status == "pending" and "." or
           status == "failure" and "-" or "*")
  io.flush()
end

-- Each test runs under a watchdog (see spec/helper.lua), when the test
-- library has one: a hang names its test.
local watchdog
watchdog = function(...)  -- looked up once the helper set the paths
  local ok, t = pcall(require, "ioq_test")
  watchdog = ok and t.watchdog or function() end
  return watchdog(...)
end
local LIMIT = tonumber(os.getenv("IOQ_SPEC_TIMEOUT")) or 120

local function run_test(b, t)
  local name = fullname(b, t.name)
  if t.kind == "pending" then
    return report("pending", name, t.where, "")
  end
  watchdog(LIMIT, t.where .. ": " .. name)
  running = { finally = {} }
  local ok, err = true, nil
  for _, fn in ipairs(hooks(b, "before")) do
    ok, err = xpcall(fn, trace)
    if not ok then break end
  end
  if ok then ok, err = xpcall(t.fn, trace) end
  for _, fn in ipairs(running.finally) do
    local fok, ferr = xpcall(fn, trace)
    if ok and not fok then ok, err = false, ferr end
  end
  for _, fn in ipairs(hooks(b, "after", true)) do
    local aok, aerr = xpcall(fn, trace)
    if ok and not aok then ok, err = false, aerr end
  end
  running = nil
  watchdog(0)
  if ok then
    report("success", name, t.where)
  elseif getmetatable(err) == PENDING then
    report("pending", name, t.where, err.reason)
  else
    local failed = type(err) == "string" and err:find("assertion failed", 1, true)
    report(failed and "failure" or "error", name, t.where, tostring(err))
  end
end

local function run_block(b)
  for _, fn in ipairs(b.setup) do
    local ok, err = xpcall(fn, trace)
    if not ok then
      return report("error", fullname(b, "setup"), "", tostring(err))
    end
  end
  for _, c in ipairs(b.children) do
    if c.kind == "describe" then run_block(c.block) else run_test(b, c) end
  end
  for _, fn in ipairs(b.teardown) do
    local ok, err = xpcall(fn, trace)
    if not ok then report("error", fullname(b, "teardown"), "", tostring(err)) end
  end
end

local globals = {}
for k, v in pairs(env) do
  globals[k] = rawget(_G, k)
  _G[k] = v
end

-- The helper busted loads first (see .busted).
local helper = io.open("spec/helper.lua")
if helper then
  helper:close()
  dofile("spec/helper.lua")
end

local started = os.clock()
for _, file in ipairs(files) do
  local loaded = {}
  for k in pairs(package.loaded) do loaded[k] = true end
  local root = block(nil, nil)
  current = root
  local chunk, err = loadfile(file)
  local ok = chunk ~= nil
  if ok then ok, err = xpcall(chunk, trace) end
  if not ok then
    report("error", file, file, tostring(err))
  else
    run_block(root)
  end
  for k in pairs(package.loaded) do  -- insulate: the next file starts fresh
    if not loaded[k] then package.loaded[k] = nil end
  end
  collectgarbage()
end
for k, v in pairs(globals) do _G[k] = v end

io.write("\n")
for _, r in ipairs(reports) do
  local label = r.status == "pending" and "Pending" or
                r.status == "failure" and "Failure" or "Error"
  io.write(string.format("\n%s -> %s\n%s\n%s\n", label, r.where, r.name,
                         r.detail or ""))
end
io.write(string.format("\n%d successes / %d failures / %d errors / %d pending : %.3f seconds\n",
  results.success, results.failure, results.error, results.pending,
  os.clock() - started))
os.exit(results.failure + results.error == 0)
