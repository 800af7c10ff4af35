-- Small helpers shared by the specs.
local util = {}

--- True under Windows (make test-windows runs these specs under Wine).
util.windows = package.config:sub(1, 1) == "\\"

--- Skips the running test on Windows, where `what` does not exist.
function util.posix_only(what)
  if util.windows then
    pending("needs " .. what .. ", which Windows does not have")
  end
end

local tmpfiles = {}
local tmpcount = 0

-- os.tmpname on Windows names a file in the drive's root; use %TEMP%.
local function tmpname()
  if not util.windows then return os.tmpname() end
  tmpcount = tmpcount + 1
  return string.format("%s\\ioq-spec-%d-%d-%d", os.getenv("TEMP") or ".",
    os.time(), math.random(1 << 30), tmpcount)
end

--- A fresh temporary file name holding `content` (if given); removed by
-- util.cleanup().
function util.tmpfile(content)
  local name = tmpname()
  tmpfiles[#tmpfiles + 1] = name
  if content then
    local f = assert(io.open(name, "wb"))
    assert(f:write(content))
    f:close()
  end
  return name
end

function util.cleanup()
  for i = #tmpfiles, 1, -1 do
    os.remove(tmpfiles[i])
    tmpfiles[i] = nil
  end
end

function util.readfile(name)
  local f = assert(io.open(name, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- `n` pseudo-random bytes, the same for the same seed (a 64-bit LCG).
function util.random_bytes(n, seed)
  local x = seed or 42
  local parts, chunk = {}, {}
  for i = 1, n do
    x = x * 6364136223846793005 + 1442695040888963407  -- wraps around
    chunk[#chunk + 1] = (x >> 56) & 0xff
    if #chunk == 4096 or i == n then
      parts[#parts + 1] = string.char(table.unpack(chunk))
      chunk = {}
    end
  end
  return table.concat(parts)
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Runs Lua `code` in a child lua5.4 with this checkout's module paths,
-- with `env` (a table) added to its environment and `wrapper` (a command
-- prefix) before it. Returns ok (exit status 0), the exit code, and
-- stdout+stderr.
function util.run_lua(code, env, wrapper)
  util.posix_only("a POSIX shell to start child processes")
  local script = util.tmpfile(code)
  local prefix = ""
  if util.preload then
    prefix = "LD_PRELOAD=" .. shell_quote(util.preload) .. " "
  end
  for k, v in pairs(env or {}) do
    prefix = prefix .. k .. "=" .. shell_quote(v) .. " "
  end
  local lua = os.getenv("LUA") or "lua5.4"
  -- The variables go through env(1) right before lua, so a wrapper (a
  -- shell builtin, or a program that execs) cannot drop them.
  local cmd = string.format("%senv %s%s -e %s %s 2>&1", wrapper and wrapper .. " " or "", prefix, lua,
    shell_quote("package.path='lua/?.lua;lua/?/init.lua;spec/?.lua;'..package.path;"
      .. "package.cpath='" .. (os.getenv("IOQ_CPATH") or "build") .. "/?.so;'..package.cpath"),
    shell_quote(script))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, _, code_ = p:close()
  return ok == true, code_, out
end

--- Whether queue q's backend uses optional feature `name` (q:features()).
function util.has_feature(q, name)
  for _, f in ipairs(q:features()) do
    if f == name then return true end
  end
  return false
end

--- A path that root, too, may not open for writing (sysfs refuses), or a
-- mode-000 file when not root.
function util.denied_path()
  local f = io.open("/sys/kernel/notes", "r")
  if f then
    f:close()
    return "/sys/kernel/notes"
  end
  local name = util.tmpfile("x")
  os.execute("chmod 000 " .. shell_quote(name))
  return name
end

return util
