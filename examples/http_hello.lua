#!/usr/bin/env lua5.4
-- examples/http_hello.lua: a minimal HTTP/1.1 server answering "Hello, world".
--
--   lua5.4 examples/http_hello.lua PORT [HOST]
--
-- Keep-alive as HTTP/1.1 wants it: a connection stays open for the next
-- request unless the client sends "Connection: close" (or speaks HTTP/1.0
-- without "Connection: keep-alive"). Pipelined requests are answered in
-- order. Every response carries a correct Content-Length. Prints one line
-- when ready; stops cleanly on SIGINT or SIGTERM.
--
--   curl -v http://127.0.0.1:8080/
--   wrk -t1 -c100 -d10s http://127.0.0.1:8080/
local ioq = require "ioq"

local port = math.tointeger(tonumber(arg[1] or ""))
local host = arg[2] or "127.0.0.1"
if not port then
  io.stderr:write("usage: lua5.4 examples/http_hello.lua PORT [HOST]\n")
  os.exit(2)
end

local BODY = "Hello, world\n"

local function response(status, body, close)
  return string.format("HTTP/1.1 %s\r\nServer: ioq\r\nContent-Type: text/plain\r\n" ..
    "Content-Length: %d\r\n%s\r\n%s", status, #body,
    close and "Connection: close\r\n" or "", body)
end

local OK = response("200 OK", BODY, false)
local OK_CLOSE = response("200 OK", BODY, true)
local BAD = response("400 Bad Request", "bad request\n", true)

--- Serves requests on one connection until it should close.
local function serve(client)
  local s = ioq.stream(client, { timeout = 30, max_line = 16384 })
  while true do
    local head = s:read_until("\r\n\r\n")
    if not head then return end  -- closed, timed out, or cancelled
    local method, version = head:match("^(%u+) %S+ HTTP/(%d%.%d)")
    if not method then
      s:write_all(BAD)
      return
    end
    local fields = head:lower()  -- header names are case-insensitive
    local at = fields:find("\nconnection:", 1, true)
    local connection = at and fields:match("^[ \t]*([^\r\n]*)", at + 12) or ""
    local close = connection == "close" or (version == "1.0" and connection ~= "keep-alive")
    -- A request body (rare for hello-world clients) is read and dropped.
    at = fields:find("\ncontent-length:", 1, true)
    local length = at and tonumber(fields:match("^[ \t]*(%d+)", at + 16))
    if length and length > 0 and not s:read_exact(length) then return end
    if not s:write_all(close and OK_CLOSE or OK) or close then return end
  end
end

local clients = {}  -- socket -> its task, so a signal can stop them all

-- A connection's task: serves it, then closes it.
local function handle(client)
  local c <close> = client
  serve(c)
  clients[client] = nil
end

ioq.run(function()
  -- nil on Windows, which has no signals to wait for: Ctrl-C ends it there
  local signals <close> = ioq.signals("INT", "TERM")
  local server <close> = assert(ioq.socket(host:find(":", 1, true) and "tcp6" or "tcp"))
  assert(server:setoption("reuseaddr", true))
  assert(server:bind(host, port))
  assert(server:listen(1024))

  local acceptor = ioq.spawn(function()
    while true do
      local client, msg, err = server:accept():await()
      if not client then
        if err == ioq.errno.ECANCELED then return end
        io.stderr:write("accept: ", msg, "\n")
        ioq.sleep(0.01)
      else
        client:setoption("nodelay", true)
        clients[client] = ioq.spawn(handle, client)
      end
    end
  end)

  print(string.format("http hello on http://%s:%d/ (%s backend), ready",
    host, select(2, server:getsockname()), ioq.current().backend))
  io.stdout:flush()
  if not signals then
    acceptor:join()  -- serves until the process is ended
    return
  end
  local sig = signals:wait()
  print("SIG" .. sig .. ": stopping")
  acceptor:cancel()
  for _, task in pairs(clients) do task:cancel() end
end)
print("http hello stopped")
