-- pogo.sandbox: loading user files (config, specs, policy, hooks).
--
-- A user file is a text chunk named after its path, run in an environment
-- of its own under the runtime's budget. Reading a global that does not
-- exist is an error naming the file and line, not a silent nil.

local runtime = require "pogo.core.runtime"

local M = {}

M.MAX_FILE_SIZE = 4 * 1024 * 1024

-- What user files may use. No io, no os.execute, no require, no load:
-- a config is data, and hooks reach the world through pogo.*.
local SAFE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
  "tonumber", "tostring", "type", "xpcall", "rawequal", "rawget", "rawlen",
  "rawset", "setmetatable", "getmetatable", "_VERSION",
}
local SAFE_LIBS = { "string", "table", "math", "utf8" }

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- A finalizer runs whenever the collector reaches its object, outside any
-- budget: `while true do end` in one would freeze the agent for good.
-- (Lua marks an object for finalization only when its metatable has __gc
-- as it is set, so checking here is enough.)
local function no_gc_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in user files", 2)
  end
  return setmetatable(t, mt)
end

--- The base environment for user files: safe globals plus `extra`.
function M.base(extra)
  local env = {}
  for _, name in ipairs(SAFE) do env[name] = _G[name] end
  env.setmetatable = no_gc_setmetatable
  for _, name in ipairs(SAFE_LIBS) do env[name] = copy(_G[name]) end
  env.os = { getenv = os.getenv, time = os.time, clock = os.clock, date = os.date }
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

--- A fresh environment whose reads fall back to `base` and fail loudly.
function M.strict(base)
  return setmetatable({}, {
    __index = function(_, name)
      local v = base[name]
      if v == nil then
        -- Level 2: blame the line of user code that read the global.
        error(("undefined global '%s'"):format(tostring(name)), 2)
      end
      return v
    end,
  })
end

--- Reads a whole file, refusing what cannot be a Lua source we want.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local src = f:read(M.MAX_FILE_SIZE + 1)
  f:close()
  if src == nil then return "" end
  if #src > M.MAX_FILE_SIZE then
    return nil, ("%s: larger than %d bytes"):format(path, M.MAX_FILE_SIZE)
  end
  return src
end

local function first_line(msg)
  return (tostring(msg):match("^[^\n]*"))
end

--- Calls fn(...) for the file at path under `budget` seconds: its chunk,
--- or whatever reads the values it returned (their metamethods are the
--- file's code). Returns true, results... | nil, a message naming the
--- file, traceback.
function M.call(path, budget, fn, ...)
  local res = table.pack(runtime.call(budget, fn, ...))
  if not res[1] then
    local msg = first_line(res[2])
    if msg:sub(1, #path) ~= path then msg = path .. ": " .. msg end
    return nil, msg, res[2]
  end
  return table.unpack(res, 1, res.n)
end

--- Compiles and runs `src` as the chunk `path` in `env` under `budget`
--- seconds. Returns true, value | nil, message, traceback.
function M.run(src, path, env, budget)
  if src:sub(1, 1) == "\27" then
    return nil, path .. ": binary chunks are not accepted"
  end
  local chunk, err = load(src, "@" .. path, "t", env)
  if not chunk then return nil, err end
  local ok, value, tb = M.call(path, budget, chunk)
  if not ok then return nil, value, tb end
  return true, value
end

--- Loads the file at path: M.read (unless the caller already read it and
--- passes opts.src) + M.run with a strict environment over M.base(extra).
--- Returns true, value, source | nil, message, traceback. With opts.read,
--- returns true, read(value, source)... instead: reading what the file
--- returned may run its metamethods, which are the file's code, so read
--- runs under the file's budget too.
function M.load(path, opts)
  opts = opts or {}
  local src, err = opts.src, nil
  if not src then src, err = M.read(path) end
  if not src then return nil, err end
  local env = M.strict(M.base(opts.env))
  local ok, value, tb = M.run(src, path, env, opts.budget)
  if not ok then return nil, value, tb end
  if opts.read then return M.call(path, opts.budget, opts.read, value, src) end
  return true, value, src
end

return M
