--- ioq.args: how every public Lua function of ioq checks its arguments and
-- reports misuse. Each raises, at its caller, the message Lua's C functions
-- give: bad argument #n to 'name' (what is wrong); argument 0 is the self
-- of a method call.
--
-- Holds no state and touches nothing: plain functions, used by every other
-- module of lua/ioq/. Requires nothing.
local error, getmetatable, tonumber, tostring, type =
  error, getmetatable, tonumber, tostring, type
local format = string.format

local args = {}

--- Raises that error `level` frames up from the function calling argerror
-- (2, the default: that function's caller).
function args.argerror(n, name, msg, level)
  if n == 0 then
    msg = format("calling '%s' on bad self (%s)", name, msg)
  else
    msg = format("bad argument #%d to '%s' (%s)", n, name, msg)
  end
  error(msg, (level or 2) + 1)
end
local argerror = args.argerror

--- Checks an optional timeout: nil or a non-negative number (not NaN).
-- For use right inside a public function (`level`: 3, or more for a
-- function called by it).
function args.check_timeout(v, n, name, level)
  if v ~= nil and not (type(v) == "number" and v >= 0) then
    argerror(n, name, "timeout must be a non-negative number, got " ..
      (type(v) == "number" and tostring(v) or type(v)), level or 3)
  end
end

function args.is_handle(h)
  local mt = type(h) == "userdata" and getmetatable(h)
  return mt and mt.__name == "ioq.handle" or false
end
local is_handle = args.is_handle

--- For use right inside a method: its self must be a handle (`level` as
-- for check_timeout).
function args.check_handle(h, name, level)
  if not is_handle(h) then
    argerror(0, name, "ioq.handle expected, got " .. type(h), level or 3)
  end
end

--- For use right inside a method of a Lua class: its self must have the
-- class's metatable (whose __name names it).
function args.check_self(obj, class, name)
  if getmetatable(obj) ~= class then
    argerror(0, name, class.__name .. " expected, got " .. type(obj), 3)
  end
end

function args.is_queue(q)
  local mt = type(q) == "userdata" and getmetatable(q)
  return mt and mt.__name == "ioq.queue" or false
end

--- What a public Lua function that handed its arguments to a C function
-- returns: `return c_call(name, shift, pcall(cfn, ...))`. On an error the
-- C function's argument numbers (it was called without a method name, so
-- they count from its first argument) are turned into the caller's, by
-- taking off `shift` (the arguments the caller did not pass itself, its
-- self counting as #0), and the error is raised at the caller. Called in
-- a tail call, so level 2 is the public function's caller.
function args.c_call(name, shift, ok, ...)
  if ok then return ... end
  return args.c_raise(name, shift, (...), 2)  -- (a tail call too)
end

--- c_call's error: raises error `e` of a C function at `level` (the level
-- of error(): 2 is c_raise's caller's caller in a tail call).
function args.c_raise(name, shift, e, level)
  if type(e) ~= "string" then error(e, 0) end
  local n, why = e:match("^bad argument #(%d+) to '[^']*' (%b())$")
  if n then
    n = tonumber(n) - shift
    if n <= 0 then
      e = format("calling '%s' on bad self %s", name, why)
    else
      e = format("bad argument #%d to '%s' %s", n, name, why)
    end
  end
  error(e, level)
end

return args
