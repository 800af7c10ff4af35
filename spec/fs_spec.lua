-- The file-system ops (q:stat ... q:copy, ioq.fs) on the backend under
-- test: results against what the system says (stat(1), readlink(1),
-- io.open), bad input, cancels and timeouts, descriptors never leaked.
local ioq = require "ioq"
local util = require "support.util"
local E = ioq.errno
local fs = ioq.fs

local windows = util.windows
local sep = windows and "\\" or "/"

--- A fresh directory (removed by rm -r / rmdir at the end of the test).
local dirs = {}
local function tmpdir()
  local d = util.tmpfile()
  os.remove(d)  -- os.tmpname made it a file
  assert(fs.mkdir(d))
  dirs[#dirs + 1] = d
  return d
end

local function cleanup_dirs()
  for i = #dirs, 1, -1 do
    if windows then
      os.execute('rmdir /s /q "' .. dirs[i] .. '" 2>nul')
    else
      os.execute("rm -rf '" .. dirs[i] .. "'")
    end
    dirs[i] = nil
  end
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

--- The open descriptors of this process (Linux).
local function fd_count()
  local n = 0
  for _ in sh("ls /proc/self/fd 2>/dev/null"):gmatch("%d+") do n = n + 1 end
  return n - 1  -- ls's own directory descriptor
end

describe("file-system ops", function()
  local q
  before_each(function() q = ioq.queue() end)
  after_each(function()
    q:close()
    cleanup_dirs()
    util.cleanup()
  end)

  describe("stat", function()
    it("gives what stat(1) says about a file", function()
      util.posix_only("stat(1)")
      local d = tmpdir()
      local p = d .. "/f"
      write(p, string.rep("x", 12345))
      local st = assert(q:stat(p):wait(5))
      local out = sh("stat -c '%s %i %d %h %u %g %a %b %o %Y %X %Z %F' '" .. p .. "'")
      local size, ino, dev, nlink, uid, gid, mode, blocks, blksize, mtime, atime, ctime, kind =
        out:match("^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (.-)%s*$")
      assert.are.equal(tonumber(size), st.size)
      assert.are.equal(tonumber(ino), st.ino)
      assert.are.equal(tonumber(dev), st.dev)
      assert.are.equal(tonumber(nlink), st.nlink)
      assert.are.equal(tonumber(uid), st.uid)
      assert.are.equal(tonumber(gid), st.gid)
      assert.are.equal(tonumber(mode, 8), st.mode)
      assert.are.equal(tonumber(blocks), st.blocks)
      assert.are.equal(tonumber(blksize), st.blksize)
      assert.are.equal(tonumber(mtime), math.floor(st.mtime))
      assert.are.equal(tonumber(atime), math.floor(st.atime))
      assert.are.equal(tonumber(ctime), math.floor(st.ctime))
      assert.are.equal("regular file", kind)
      assert.are.equal("file", st.type)
      assert.is_true(math.type(st.mtime) == "float")
      if st.birthtime then assert.is_true(st.birthtime <= st.mtime + 1) end
    end)

    it("gives a file's size as io.open sees it, and a directory's type", function()
      local d = tmpdir()
      local p = d .. sep .. "f"
      write(p, string.rep("y", 777))
      local st = assert(q:stat(p):wait(5))
      assert.are.equal(777, st.size)
      assert.are.equal("file", st.type)
      assert.are.equal("directory", assert(q:stat(d):wait(5)).type)
      assert.is_true(st.mode & 0x100 ~= 0)  -- the owner may read it
    end)

    it("f:stat() and q:fstat(f) describe the open file, also one made through the queue", function()
      local d = tmpdir()
      local p = d .. sep .. "f"
      write(p, "abc")
      local f <close> = assert(q:open(p, "r+"):wait(5))
      local a = assert(q:fstat(f):wait(5))
      local b = assert(q:stat(p):wait(5))
      assert.are.equal(3, a.size)
      assert.are.equal(b.ino, a.ino)
      local lf <close> = assert(io.open(p, "rb"))
      assert.are.equal(3, assert(q:fstat(lf):wait(5)).size)
      ioq.run(function()
        local g <close> = assert(ioq.open(p))
        assert.are.equal(3, assert(g:stat():await(5)).size)
      end)
    end)

    it("lstat describes a symbolic link, stat what it names; readlink gives what readlink(1) does", function()
      local d = tmpdir()
      local target = d .. sep .. "t"
      write(target, "12345")
      local link = d .. sep .. "l"
      local ok, msg, err = q:symlink("t", link):wait(5)
      if not ok and windows then
        pending("symbolic links here: " .. tostring(msg) .. " (" .. tostring(err) .. ")")
      end
      assert.is_true(ok, msg)
      local lst, lmsg = q:lstat(link):wait(5)
      local st, smsg = q:stat(link):wait(5)
      if windows and not (lst and st) then
        pending("Wine makes the link, then cannot open it: " .. (lmsg or smsg))
      end
      assert.are.equal("link", lst.type)
      assert.is_table(st, smsg)
      assert.are.equal("file", st.type)
      assert.are.equal(5, st.size)
      local got, rmsg, rerr = q:readlink(link):wait(5)
      if windows and rerr == E.ENOSYS then
        pending("readlink on Windows: " .. rmsg)
      end
      assert.are.equal("t", got)
      if not windows then
        assert.are.equal(sh("readlink '" .. link .. "'"):gsub("\n$", ""), got)
        local long = string.rep("n", 200) .. "/" .. string.rep("m", 200)
        assert(q:symlink(long, d .. "/long"):wait(5))
        assert.are.equal(long, q:readlink(d .. "/long"):wait(5))
      end
    end)

    it("a missing path is ENOENT, with the op (and, through ioq.fs, the path) in the message", function()
      local d = tmpdir()
      local missing = d .. sep .. "none"
      local v, msg, err = q:stat(missing):wait(5)
      assert.is_nil(v)
      assert.are.equal(E.ENOENT, err)
      assert.matches("^stat: ", msg)
      v, msg, err = fs.stat(missing)
      assert.is_nil(v)
      assert.are.equal(E.ENOENT, err)
      assert.is_truthy(msg:find("stat: " .. missing .. ": ", 1, true), msg)
      for _, name in ipairs { "lstat", "unlink", "rmdir", windows and "stat" or "readlink" } do
        v, msg, err = q[name](q, missing):wait(5)
        assert.is_nil(v, name)
        assert.are.equal(E.ENOENT, err, name .. ": " .. tostring(msg))
        assert.matches("^" .. (name == "lstat" and "stat" or name) .. ": ", msg)
      end
      v, msg, err = fs.readfile(missing)
      assert.is_nil(v)
      assert.are.equal(E.ENOENT, err)
      assert.is_truthy(msg:find(missing, 1, true), msg)
    end)
  end)

  describe("bad input", function()
    it("a path with a zero byte is an argument error naming it", function()
      assert.has_error(function() q:stat("a\0b") end,
        "bad argument #1 to 'stat' (path contains a zero byte)")
      assert.has_error(function() q:rename("a", "b\0") end,
        "bad argument #2 to 'rename' (path contains a zero byte)")
      assert.has_error(function() fs.unlink("x\0y") end,
        "bad argument #1 to 'unlink' (path contains a zero byte)")
      assert.are.equal(0, q:pending())
    end)

    it("wrong types name the argument", function()
      assert.has_error(function() q:stat({}) end,
        "bad argument #1 to 'stat' (string expected, got table)")
      assert.has_error(function() q:mkdir("d", "rwx") end,
        "bad argument #2 to 'mkdir' (number expected, got string)")
      assert.has_error(function() q:mkdir("d", -1) end,
        "bad argument #2 to 'mkdir' (invalid permissions)")
      assert.has_error(function() q:rename("a", "b", 5) end,
        "bad argument #3 to 'rename' (table expected, got number)")
      assert.has_error(function() q:truncate(io.stdout, -1) end,
        "bad argument #2 to 'truncate' (size must be non-negative)")
      assert.has_error(function() q:allocate(io.stdout, 0, 0) end,
        "bad argument #3 to 'allocate' (length must be positive)")
      assert.has_error(function() q:readv(io.stdin, "x") end,
        "bad argument #2 to 'readv' (table expected, got string)")
      assert.has_error(function() q:readv(io.stdin, {}) end,
        "bad argument #2 to 'readv' (empty list of buffers)")
      assert.has_error(function() q:readv(io.stdin, { ioq.buffer(1), "s" }) end,
        "bad argument #2 to 'readv' (item #2 is string, not an ioq.buffer)")
      assert.has_error(function() q:copy(io.stdin, io.stdout, -1) end,
        "bad argument #3 to 'copy' (length must be non-negative)")
      assert.has_error(function() q:close_file(io.stdout) end)
      assert.has_error(function() fs.rename("a", {}) end,
        "bad argument #2 to 'rename' (string expected, got table)")
      assert.has_error(function() fs.writefile("p", 5) end,
        "bad argument #2 to 'writefile' (string or ioq.buffer expected, got number)")
      assert.are.equal(0, q:pending())
    end)

    it("a directory where a file is expected, and a file where a directory is", function()
      local d = tmpdir()
      local file = d .. sep .. "f"
      write(file, "x")
      local _, _, err = q:rmdir(file):wait(5)
      assert.are.equal(E.ENOTDIR, err)
      _, _, err = q:mkdir(file .. sep .. "sub"):wait(5)
      if not windows then assert.are.equal(E.ENOTDIR, err) else assert.is_not_nil(err) end
      _, _, err = q:unlink(d):wait(5)
      if not windows then
        assert.is_true(err == E.EISDIR or err == E.EPERM, tostring(err))
      else
        assert.is_not_nil(err)
      end
      _, _, err = fs.readfile(d)
      assert.is_not_nil(err)
      if not windows then assert.are.equal(E.EISDIR, err) end
      local _, _, werr = fs.writefile(d, "data")
      assert.is_not_nil(werr)
      _, _, err = q:rmdir(d):wait(5)
      assert.is_true(err == E.ENOTEMPTY or err == E.EEXIST, tostring(err))
    end)
  end)

  describe("changes", function()
    it("mkdir, rename, link, unlink and rmdir do what they say", function()
      local d = tmpdir()
      local sub = d .. sep .. "sub"
      assert.is_true(q:mkdir(sub):wait(5))
      assert.are.equal(E.EEXIST, select(3, q:mkdir(sub):wait(5)))
      local a, b = sub .. sep .. "a", sub .. sep .. "b"
      write(a, "one")
      assert.is_true(q:rename(a, b):wait(5))
      assert.is_false(exists(a))
      assert.are.equal("one", util.readfile(b))
      write(a, "two")
      assert.is_true(q:rename(a, b):wait(5))  -- replaces b
      assert.are.equal("two", util.readfile(b))
      local ok, msg = q:link(b, a):wait(5)
      local err
      assert.is_true(ok, msg)
      assert.are.equal(2, assert(q:stat(b):wait(5)).nlink)
      ok, msg, err = q:rename(a, b, { noreplace = true }):wait(5)
      if not ok and (err == E.EINVAL or err == E.EOPNOTSUPP) then
        pending("RENAME_NOREPLACE on this file system: " .. msg)
      end
      -- a and b are one file: rename(2) of a name onto a link to the same
      -- file does nothing; use a distinct file for EEXIST
      write(a .. "x", "three")
      ok, msg, err = q:rename(a .. "x", b, { noreplace = true }):wait(5)
      assert.is_nil(ok)
      assert.are.equal(E.EEXIST, err, msg)
      assert.are.equal("two", util.readfile(b))
      assert.is_true(q:unlink(a):wait(5))
      assert.is_true(q:unlink(a .. "x"):wait(5))
      assert.is_true(q:unlink(b):wait(5))
      assert.is_true(q:rmdir(sub):wait(5))
      assert.is_false(exists(b))
      assert.are.equal(E.ENOENT, select(3, q:stat(sub):wait(5)))
    end)

    it("mkdir takes permission bits (less the umask)", function()
      util.posix_only("permission bits")
      local d = tmpdir()
      assert(q:mkdir(d .. "/p", tonumber("700", 8)):wait(5))
      assert.are.equal(tonumber("700", 8), assert(q:stat(d .. "/p"):wait(5)).mode)
    end)

    it("truncate, allocate and datasync change the size io.open sees", function()
      local d = tmpdir()
      local p = d .. sep .. "f"
      write(p, string.rep("z", 1000))
      local f <close> = assert(q:open(p, "r+"):wait(5))
      assert.is_true(q:truncate(f, 10):wait(5))
      assert.are.equal(string.rep("z", 10), util.readfile(p))
      assert.is_true(q:truncate(f, 20):wait(5))
      assert.are.equal(string.rep("z", 10) .. string.rep("\0", 10), util.readfile(p))
      local ok, msg, err = q:allocate(f, 0, 4096):wait(5)
      if not ok and (err == E.EOPNOTSUPP or err == E.ENOSYS) then
        pending("fallocate here: " .. msg)
      end
      assert.is_true(ok, msg)
      assert.are.equal(4096, assert(q:fstat(f):wait(5)).size)
      assert.are.equal(4096, #util.readfile(p))
      assert.is_true(q:datasync(f):wait(5))
      ioq.run(function()
        assert.is_true(f:truncate(0):await(5))
        assert.is_true(f:datasync():await(5))
      end)
      assert.are.equal("", util.readfile(p))
    end)
  end)

  describe("readv and writev", function()
    it("write strings and buffers in order and read them back into several buffers", function()
      local d = tmpdir()
      local p = d .. sep .. "v"
      local f <close> = assert(q:open(p, "w+"):wait(5))
      local b = ioq.buffer("BUF")
      local h = q:writev(f, { "hello ", b, " world" }, 0)
      assert.is_true(b:busy())
      assert.has_error(function() b:tostring() end)
      assert.are.equal(15, h:wait(5))
      assert.is_false(b:busy())
      assert.are.equal("hello BUF world", util.readfile(p))
      local x, y, z = ioq.buffer(4), ioq.buffer(5), ioq.buffer(100)
      h = q:readv(f, { x, y, z }, 1)
      assert.is_true(x:busy() and y:busy() and z:busy())
      assert.has_error(function() q:read(f, y) end)
      assert.has_error(function() q:readv(f, { z }) end)
      assert.are.equal(14, h:wait(5))
      assert.are.equal("ello", x:tostring())
      assert.are.equal(" BUF ", y:tostring())
      assert.are.equal("world", z:tostring(1, 5))
      assert.are.equal(0, q:readv(f, { x }, 15):wait(5))
    end)

    it("without an offset follow the file's position, and work as file methods in a task", function()
      local d = tmpdir()
      local p = d .. sep .. "v"
      ioq.run(function()
        local f <close> = assert(ioq.open(p, "w+"))
        assert.are.equal(3, f:writev({ "a", "bc" }):await(5))
        assert.are.equal(2, f:writev({ "de" }):await(5))
        local x = ioq.buffer(5)
        assert.are.equal(5, f:readv({ x }, 0):await(5))
        assert.are.equal("abcde", x:tostring())
      end)
      assert.are.equal("abcde", util.readfile(p))
    end)

    it("keeps its buffers alive and busy when the script drops them", function()
      local d = tmpdir()
      local p = d .. sep .. "v"
      write(p, string.rep("q", 64))
      local f <close> = assert(q:open(p, "r"):wait(5))
      local list = {}
      for i = 1, 8 do list[i] = ioq.buffer(8) end
      local h = q:readv(f, list, 0)
      list = nil  -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.are.equal(64, h:wait(5))
    end)
  end)

  describe("copy", function()
    it("copies in the kernel: the same bytes, at offsets, short at the end", function()
      local d = tmpdir()
      local data = util.random_bytes(300000, 3)
      local src, dst = d .. sep .. "s", d .. sep .. "d"
      write(src, data)
      local a <close> = assert(q:open(src, "r"):wait(5))
      local b <close> = assert(q:open(dst, "w+"):wait(5))
      assert.are.equal(#data, q:copy(a, b, #data, 0, 0):wait(5))
      assert.is_true(util.readfile(dst) == data)
      assert.are.equal(100, q:copy(a, b, 100, 1000, 10):wait(5))
      assert.is_true(util.readfile(dst):sub(11, 110) == data:sub(1001, 1100))
      assert.are.equal(50, q:copy(a, b, 1000, #data - 50, 0):wait(5))
      assert.are.equal(0, q:copy(a, b, 1000, #data, 0):wait(5))
    end)

    it("without offsets follows and moves both positions", function()
      local d = tmpdir()
      local src, dst = d .. sep .. "s", d .. sep .. "d"
      write(src, "0123456789")
      local a <close> = assert(q:open(src, "r"):wait(5))
      local b <close> = assert(q:open(dst, "w"):wait(5))
      assert.are.equal(4, q:copy(a, b, 4):wait(5))
      assert.are.equal(6, q:copy(a, b, 100):wait(5))
      assert.are.equal(0, q:copy(a, b, 100):wait(5))
      assert.are.equal("0123456789", util.readfile(dst))
    end)

    it("the destination may be closed while the copy runs: the op keeps its own descriptor", function()
      local d = tmpdir()
      local data = util.random_bytes(100000, 5)
      write(d .. sep .. "s", data)
      local a <close> = assert(q:open(d .. sep .. "s", "r"):wait(5))
      local b = assert(q:open(d .. sep .. "d", "w"):wait(5))
      local h = q:copy(a, b, #data, 0, 0)
      assert.is_true(b:close())
      assert.are.equal(#data, h:wait(5))
      assert.is_true(util.readfile(d .. sep .. "d") == data)
    end)

    it("is canceled, or times out, while it waits for data; nothing leaks", function()
      util.posix_only("a FIFO to block a copy on")
      local d = tmpdir()
      local fifo = d .. "/fifo"
      assert(os.execute("mkfifo '" .. fifo .. "'"))
      local before = fd_count()
      do
        local src <close> = assert(io.open(fifo, "r+"))  -- reads block: no data
        local dst <close> = assert(q:open(d .. "/out", "w"):wait(5))
        local h = q:copy(src, dst, 10)
        q:submit()
        assert.are.equal(0, q:wait(0.05))
        assert.is_false(h:done())
        assert.is_true(h:cancel())
        local v, msg, err = h:wait(5)
        assert.is_nil(v)
        assert.are.equal(E.ECANCELED, err)
        assert.are.equal("copy: canceled", msg)
        h = q:copy(src, dst, 10)
        assert.is_true(h:timeout(0.05))
        v, msg, err = h:wait(5)
        assert.is_nil(v)
        assert.are.equal(E.ETIMEDOUT, err, msg)
        assert.are.equal("copy: timed out", msg)
        ioq.run(function()
          local _, _, e = ioq.current():copy(src, dst, 10):await(0.05)
          assert.are.equal(E.ETIMEDOUT, e)
        end)
      end
      collectgarbage()
      assert.are.equal(before, fd_count())
    end)
  end)

  describe("cancel", function()
    it("an op canceled before it starts resolves ECANCELED and does nothing", function()
      local d = tmpdir()
      local p = d .. sep .. "x"
      local h = q:mkdir(p)
      assert.is_true(h:cancel())
      local v, msg, err = h:wait(5)
      assert.is_nil(v)
      assert.are.equal(E.ECANCELED, err)
      assert.are.equal("mkdir: canceled", msg)
      assert.are.equal(E.ENOENT, select(3, q:stat(p):wait(5)))
    end)
  end)

  describe("close_file", function()
    it("closes the file through the queue; the object is closed at once", function()
      local d = tmpdir()
      local p = d .. sep .. "c"
      local before = not windows and fd_count()
      local f = assert(q:open(p, "w"):wait(5))
      assert(q:write(f, "data"):wait(5))
      local h = q:close_file(f)
      assert.matches("closed", tostring(f))
      assert.has_error(function() q:write(f, "more") end)
      assert.is_true(h:wait(5))
      assert.are.equal("data", util.readfile(p))
      if before then assert.are.equal(before, fd_count()) end
      ioq.run(function()
        local g = assert(ioq.open(p))
        assert.is_true(g:close_async():await(5))
      end)
      if before then assert.are.equal(before, fd_count()) end
    end)

    it("waits for the ops pending on the file: the descriptor closes after the last one", function()
      util.posix_only("a FIFO and /proc/self/fd")
      local d = tmpdir()
      local fifo = d .. "/fifo"
      assert(os.execute("mkfifo '" .. fifo .. "'"))
      local before = fd_count()
      local f = assert(q:open(fifo, "r+"):wait(5))  -- reads wait: no writer
      local buf = ioq.buffer(16)
      local r = q:read(f, buf)
      q:submit()
      assert.are.equal(0, q:wait(0.02))
      local c = q:close_file(f)  -- cancels the read, then closes
      local _, _, err = r:wait(5)
      assert.are.equal(E.ECANCELED, err)
      assert.is_true(c:wait(5))
      assert.are.equal(before, fd_count())
    end)

    it("a close canceled before it starts still closes the descriptor", function()
      util.posix_only("/proc/self/fd")
      local d = tmpdir()
      local before = fd_count()
      local f = assert(q:open(d .. "/c", "w"):wait(5))
      local h = q:close_file(f)
      assert.is_true(h:cancel())
      local _, _, err = h:wait(5)
      assert.are.equal(E.ECANCELED, err)
      assert.are.equal(before, fd_count())
    end)
  end)

  describe("ioq.fs", function()
    it("blocks outside a loop and awaits in a task, the same results", function()
      local d = tmpdir()
      local p = d .. sep .. "f"
      assert.is_true(fs.writefile(p, "outside"))
      assert.are.equal("outside", fs.readfile(p))
      ioq.run(function()
        local other = ioq.spawn(function() ioq.sleep(0) end)
        assert.is_true(fs.writefile(p, "inside"))
        assert.are.equal("inside", fs.readfile(p))
        assert.are.equal(6, fs.stat(p).size)
        assert.is_true(fs.rename(p, p .. "2"))
        assert.is_true(fs.unlink(p .. "2"))
        other:join()
      end)
      assert.is_nil(fs.stat(p))
    end)

    it("readfile reads files of every size, empty and larger than its first read", function()
      local d = tmpdir()
      for _, n in ipairs { 0, 1, 65535, 65536, 200001 } do
        local data = util.random_bytes(n, n)
        local p = d .. sep .. "r" .. n
        write(p, data)
        assert.is_true(fs.readfile(p) == data, "size " .. n)
      end
    end)

    it("writefile atomic: the new content replaces the old whole, no temporary is left, the mode is kept",
      function()
      local d = tmpdir()
      local p = d .. sep .. "a"
      write(p, "old content")
      if not windows then os.execute("chmod 640 '" .. p .. "'") end
      local data = util.random_bytes(100000, 9)
      assert.is_true(fs.writefile(p, data, { atomic = true }))
      assert.is_true(util.readfile(p) == data)
      if not windows then
        assert.are.equal(tonumber("640", 8), fs.stat(p).mode)
        assert.are.equal("a\n", sh("ls -A '" .. d .. "'"))
      end
      assert.is_true(fs.writefile(d .. sep .. "new", ioq.buffer("from a buffer"), { atomic = true }))
      assert.are.equal("from a buffer", util.readfile(d .. sep .. "new"))
      local v, msg, err = fs.writefile(d .. sep .. "no" .. sep .. "x", "y", { atomic = true })
      assert.is_nil(v)
      assert.are.equal(E.ENOENT, err)
      assert.is_truthy(msg:find(d, 1, true), msg)
    end)

    it("leaks no descriptor across every op", function()
      util.posix_only("/proc/self/fd")
      local d = tmpdir()
      local before = fd_count()
      local p = d .. "/f"
      assert(fs.writefile(p, "0123456789", { atomic = true }))
      assert(fs.readfile(p))
      assert(fs.stat(p))
      assert(fs.symlink("f", d .. "/l"))
      assert(fs.readlink(d .. "/l"))
      assert(fs.link(p, d .. "/h"))
      assert(fs.rename(d .. "/h", d .. "/h2"))
      assert(fs.mkdir(d .. "/s"))
      assert(fs.rmdir(d .. "/s"))
      assert.is_nil(fs.readfile(d .. "/missing"))
      do
        local a <close> = assert(q:open(p, "r"):wait(5))
        local b <close> = assert(q:open(d .. "/c", "w"):wait(5))
        assert(q:copy(a, b, 10, 0, 0):wait(5))
        assert(q:readv(a, { ioq.buffer(4) }, 0):wait(5))
      end
      collectgarbage()
      assert.are.equal(before, fd_count())
    end)
  end)
end)
