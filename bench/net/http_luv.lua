#!/usr/bin/env lua5.4
-- bench/net/http_luv.lua: the luv contender for examples/http_hello.lua in
-- `bench/run.sh http`: the same HTTP/1.1 "Hello, world" server, written the
-- way luv (libuv) code is usually written: callbacks, no coroutines.
--
--   lua5.4 bench/net/http_luv.lua PORT
--
-- Same behaviour as the ioq example, so wrk measures the same work:
-- byte-identical responses (headers included, even "Server: ioq"), keep-
-- alive unless "Connection: close" (or HTTP/1.0 without "keep-alive"),
-- pipelined requests answered in order, a request body of Content-Length
-- bytes read and dropped before the answer, a head longer than 16 KiB or
-- 30 s without progress closes the connection, a malformed request line
-- gets 400 and a close. Prints one line ending in "ready" when it listens;
-- stops cleanly on SIGINT or SIGTERM.
local uv = require "luv"

local port = math.tointeger(tonumber(arg[1] or ""))
if not port then
  io.stderr:write("usage: lua5.4 bench/net/http_luv.lua PORT\n")
  os.exit(2)
end

local BODY = "Hello, world\n"
local MAX_HEAD = 16384     -- the example's max_line
local IDLE_MS = 30 * 1000  -- the example's per-read timeout

local function response(status, body, close)
  return string.format("HTTP/1.1 %s\r\nServer: ioq\r\nContent-Type: text/plain\r\n" ..
    "Content-Length: %d\r\n%s\r\n%s", status, #body,
    close and "Connection: close\r\n" or "", body)
end

local OK = response("200 OK", BODY, false)
local OK_CLOSE = response("200 OK", BODY, true)
local BAD = response("400 Bad Request", "bad request\n", true)

local clients = {}  -- handle -> its close function, for a signal

--- Serves one connection: parses what arrives, answers in order.
local function serve(client)
  local data, pos = "", 1  -- bytes received and not parsed: data:sub(pos)
  local body_left = 0      -- bytes of a request body still to drop
  local owed               -- the answer to send once that body is in
  local closing = false    -- the last answer is out: close after writing
  local reading = false
  local timer = uv.new_timer()
  local on_read

  local function close()
    if client:is_closing() then return end
    clients[client] = nil
    timer:close()
    client:close()
  end
  clients[client] = close

  local function read(on)
    if on ~= reading then
      reading = on
      if on then client:read_start(on_read) else client:read_stop() end
    end
  end

  -- libuv writes at once when the kernel takes it all; when it does not,
  -- reading stops until the rest is out (the ioq example reads the next
  -- request only after its answer is sent, so a pipelining client that
  -- does not read its answers is held back the same way).
  local function on_written(err)
    if err then return close() end
    if not closing and client:get_write_queue_size() == 0 then read(true) end
  end

  local function send(out)
    if #out > 0 then
      -- The last answer closes the connection when it is out, not before.
      client:write(#out == 1 and out[1] or out, closing and close or on_written)
    elseif closing then
      return close()
    end
    if closing or client:get_write_queue_size() > 0 then read(false) end
  end

  -- Answers every complete request in data; returns the answers.
  local function parse()
    local out = {}
    while not closing do
      if body_left > 0 then
        local take = math.min(body_left, #data - pos + 1)
        pos, body_left = pos + take, body_left - take
        if body_left > 0 then break end
        out[#out + 1] = owed
        closing = owed ~= OK
      else
        local i, j = data:find("\r\n\r\n", pos, true)
        if not i then
          if #data - pos + 1 > MAX_HEAD then return nil end  -- too long
          break
        end
        if i - pos > MAX_HEAD then return nil end
        local head = data:sub(pos, i - 1)
        pos = j + 1
        local method, version = head:match("^(%u+) %S+ HTTP/(%d%.%d)")
        if not method then
          out[#out + 1], closing = BAD, true
          break
        end
        local fields = head:lower()  -- header names are case-insensitive
        local at = fields:find("\nconnection:", 1, true)
        local connection = at and fields:match("^[ \t]*([^\r\n]*)", at + 12) or ""
        local close_after = connection == "close" or (version == "1.0" and connection ~= "keep-alive")
        at = fields:find("\ncontent-length:", 1, true)
        local length = at and tonumber(fields:match("^[ \t]*(%d+)", at + 16))
        owed = close_after and OK_CLOSE or OK
        if length and length > 0 then
          body_left = length
        else
          out[#out + 1], closing = owed, close_after
        end
      end
    end
    -- Keep only the unparsed rest (usually nothing).
    if pos > #data then data, pos = "", 1 else data, pos = data:sub(pos), 1 end
    return out
  end

  on_read = function(err, chunk)
    if err or not chunk then return close() end  -- error, or EOF
    timer:again()
    data = pos > #data and chunk or data .. chunk
    local out = parse()
    if not out then return close() end
    send(out)
  end

  timer:start(IDLE_MS, IDLE_MS, close)
  read(true)
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))  -- libuv sets SO_REUSEADDR itself
assert(server:listen(1024, function(err)
  if err then
    io.stderr:write("listen: ", err, "\n")
    return
  end
  local client = uv.new_tcp()
  if not server:accept(client) then
    client:close()
    return
  end
  client:nodelay(true)  -- as the ioq example does
  serve(client)
end))

local signals = {}
local function stop(name)
  print(name .. ": stopping")
  for _, close in pairs(clients) do close() end
  server:close()
  for _, s in ipairs(signals) do s:close() end
end
for _, name in ipairs { "sigint", "sigterm" } do
  local s = uv.new_signal()
  s:start(name, function() stop(name:upper()) end)
  signals[#signals + 1] = s
end

print(("luv http hello on http://127.0.0.1:%d/ (libuv %s), ready")
  :format(server:getsockname().port, uv.version_string()))
io.stdout:flush()
uv.run()
print("luv http hello stopped")
