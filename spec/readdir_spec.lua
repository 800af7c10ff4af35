-- q:readdir, q:opendir, ioq.fs.readdir, ioq.fs.dir: a directory's entries
-- in batches from a worker thread, compared with what `ls -A` lists.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno

local sep = util.windows and "\\" or "/"

-- A fresh directory with `n` files, a subdirectory and (POSIX) a symbolic
-- link, a FIFO and a socket; its path and the entries' types by name.
local function fixture(n)
  local dir = util.tmpfile()
  os.remove(dir)
  assert(os.execute((util.windows and "mkdir " or "mkdir -p ") .. dir))
  local want = {}
  for i = 1, n do
    local name = string.format("file %03d.txt", i)
    assert(io.open(dir .. sep .. name, "w")):close()
    want[name] = "file"
  end
  assert(os.execute("mkdir " .. dir .. sep .. "sub"))
  want.sub = "directory"
  if not util.windows then
    assert(os.execute("ln -s nowhere " .. dir .. "/link"))
    assert(os.execute("mkfifo " .. dir .. "/fifo"))
    local s = ioq.socket("unix")
    assert(s:bind(dir .. "/sock"))
    s:close()
    want.link, want.fifo, want.sock = "link", "fifo", "socket"
  end
  return dir, want
end

local function remove_tree(dir)
  os.execute((util.windows and "rmdir /s /q " or "rm -rf ") .. dir)
end

local function by_name(list)
  local t, n = {}, 0
  for _, e in ipairs(list) do
    assert.is_nil(t[e.name], "listed twice: " .. e.name)
    t[e.name] = e.type
    n = n + 1
  end
  return t, n
end

describe("q:readdir", function()
  local dir, want
  before_each(function() dir, want = fixture(40) end)
  after_each(function() remove_tree(dir); util.cleanup() end)

  it("lists every entry with its type, as the system does", function()
    local q <close> = ioq.queue()
    local got = by_name(assert(q:readdir(dir):wait(10)))
    assert.are.same(want, got)
    if not util.windows then  -- the truth from ls
      local p = io.popen("ls -A " .. dir)
      local names = {}
      for line in p:lines() do names[line] = true end
      p:close()
      for name in pairs(got) do assert.is_true(names[name], name) end
      for name in pairs(names) do assert.is_truthy(got[name], name) end
    end
  end)

  it("reads in batches from an ioq.dir, an empty batch at the end", function()
    local q <close> = ioq.queue()
    local d = assert(q:opendir(dir):wait(10))
    local all = {}
    while true do
      local batch = assert(q:readdir(d, 7):wait(10))
      assert.is_true(#batch <= 7)
      if #batch == 0 then break end
      for _, e in ipairs(batch) do all[#all + 1] = e end
    end
    assert.are.same({}, assert(q:readdir(d, 7):wait(10)))
    d:close()
    assert.are.same(want, (by_name(all)))
    assert.has_error(function() q:readdir(d) end,
      "bad argument #1 to 'readdir' (directory is closed)")
  end)

  it("bad input: clear errors, or raises for misuse", function()
    local q <close> = ioq.queue()
    local v, msg, err = q:readdir(dir .. sep .. "missing"):wait(10)
    assert.is_nil(v)
    assert.are.equal(E.ENOENT, err)
    assert.are.equal("readdir: " .. dir .. sep .. "missing: ", msg:sub(1, #dir + 19))
    v, msg, err = q:readdir(dir .. sep .. "file 001.txt"):wait(10)
    assert.is_nil(v)
    assert.are.equal(E.ENOTDIR, err, msg)
    local _
    v, _, err = q:opendir(dir .. sep .. "missing"):wait(10)
    assert.is_nil(v)
    assert.are.equal(E.ENOENT, err)
    assert.has_error(function() q:readdir(nil) end,
      "bad argument #1 to 'readdir' (string expected, got nil)")
    assert.has_error(function() q:readdir(dir .. "\0x") end,
      "bad argument #1 to 'readdir' (path contains a zero byte)")
    assert.has_error(function() q:readdir(dir, -1) end,
      "bad argument #2 to 'readdir' (max must be non-negative)")
    local d = assert(q:opendir(dir):wait(10))
    local h = q:readdir(d, 1)
    assert.has_error(function() q:readdir(d, 1) end,
      "bad argument #1 to 'readdir' (directory in use by a pending operation)")
    assert(h:wait(10))
    d:close()
  end)

  it("a canceled read gives ECANCELED or the listing; the dir reads on", function()
    local q <close> = ioq.queue()
    local d = assert(q:opendir(dir):wait(10))
    local h = q:readdir(d, 2)
    q:submit()
    h:cancel()
    local v, _, err = h:wait(10)
    if not v then assert.are.equal(E.ECANCELED, err) end
    assert(q:readdir(d):wait(10))
    d:close()
  end)
end)

describe("ioq.fs", function()
  local dir, want
  before_each(function() dir, want = fixture(600) end)
  after_each(function() remove_tree(dir); util.cleanup() end)

  it("readdir and the dir iterator agree, in a task and outside", function()
    assert.are.same(want, (by_name(assert(ioq.fs.readdir(dir)))))
    local seen = {}
    for name, type in assert(ioq.fs.dir(dir, 50)) do seen[name] = type end
    assert.are.same(want, seen)
    ioq.run(function()
      local inside = {}
      for name, type in assert(ioq.fs.dir(dir)) do inside[name] = type end
      assert.are.same(want, inside)
      local n = 0
      for _ in ioq.fs.dir(dir, 10) do  -- leaving early closes it
        n = n + 1
        if n == 15 then break end
      end
      assert.are.equal(15, n)
    end)
  end)

  it("a directory that does not open: fail, msg, errno", function()
    local it, msg, err = ioq.fs.dir(dir .. sep .. "missing")
    assert.is_nil(it)
    assert.are.equal(E.ENOENT, err)
    assert.matches("^opendir: ", msg)
    assert.has_error(function() ioq.fs.dir(dir, 0) end,
      "bad argument #2 to 'dir' (batch must be a positive integer)")
    assert.has_error(function() ioq.fs.readdir(nil) end,
      "bad argument #1 to 'readdir' (string expected, got nil)")
  end)
end)
