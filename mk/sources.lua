-- mk/sources.lua PLATFORM: prints the C sources of ioq.core for PLATFORM
-- (linux, windows), as rockspec/ioq-scm-1.rockspec lists them, so that the
-- Makefile and LuaRocks build from one list. The rockspec runs in an empty
-- table: it only assigns fields.
local platform = assert(arg[1], "usage: lua mk/sources.lua linux|windows")
local here = arg[0]:match("^(.*)/mk/sources%.lua$") or "."
local spec = {}
local chunk = assert(loadfile(here .. "/rockspec/ioq-scm-1.rockspec", "t", spec))
chunk()
local p = assert(spec.build.platforms[platform], "no such platform: " .. platform)
print(table.concat(p.modules["ioq.core"].sources, " "))
