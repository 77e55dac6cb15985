-- specs/helper.lua - lets unit specs run the Lua library without the C core.
--
--   local helper = require "helper"
--   local core = helper.stub_core { sys = { hostname = function() return "h1" end } }
--   local config = helper.fresh "pogo.config"     -- required over the stubs
--
-- Every pogo.core.* module is replaced by a plain-Lua fake; fields given to
-- stub_core override the fakes. helper.logged holds every log line written.

local M = {}

M.logged = {}

local function fakes()
  local levels = { debug = 1, info = 2, warn = 3, error = 4 }
  local level = "info"
  local budget_stack = {}
  return {
    runtime = {
      version = "0.0.0-spec",
      -- The real one also enforces the budget; specs only need the shape.
      call = function(budget, fn, ...)
        budget_stack[#budget_stack + 1] = budget
        local res = table.pack(xpcall(fn, debug.traceback, ...))
        budget_stack[#budget_stack] = nil
        return table.unpack(res, 1, res.n)
      end,
      budget = function() return budget_stack[#budget_stack] end,
    },
    log = {
      write = function(lvl, subsys, msg)
        M.logged[#M.logged + 1] = { level = lvl, subsys = subsys, msg = msg }
      end,
      enabled = function(lvl) return levels[lvl] >= levels[level] end,
      setup = function(t) level = t.level or level; return true end,
      level = function() return level end,
    },
    sys = {
      hostname = function() return "spec-host" end,
      pid = function() return 4242 end,
      uid = function() return 1000 end,
      monotonic = os.clock,
      realpath = function(p) return p end,
      stat = function() return nil, "ENOENT: stubbed", "ENOENT" end,
      dir = function() return {} end,
      mkdir = function() return true end,
      unlink = function() return true end,
      isatty = function() return false end,
    },
    loop = {
      timers = {},
      now = os.time,
      timer = function() error("loop.timer is not stubbed in this spec") end,
      signal = function() return { close = function() end } end,
      run = function() end,
      stop = function() end,
    },
    control = {
      listen = function() error("control.listen is not stubbed in this spec") end,
      connect = function() return nil, "ENOENT: stubbed", "ENOENT" end,
    },
    codec = {
      encode = function() error("codec is C only") end,
      decode = function() error("codec is C only") end,
    },
  }
end

--- Installs fake C modules (with overrides) and forgets every loaded pogo
--- module, so the next require sees the fakes. Returns the fakes.
function M.stub_core(overrides)
  M.logged = {}
  local core = fakes()
  for name, fields in pairs(overrides or {}) do
    for k, v in pairs(fields) do core[name][k] = v end
  end
  for name in pairs(package.loaded) do
    if name == "pogo" or name:match("^pogo%.") then package.loaded[name] = nil end
  end
  for name, mod in pairs(core) do
    package.loaded["pogo.core." .. name] = mod
  end
  return core
end

--- Requires a module afresh (after stub_core).
function M.fresh(name)
  package.loaded[name] = nil
  return require(name)
end

--- Writes text to a temporary file; returns its path.
function M.tmpfile(text, suffix)
  local path = os.tmpname() .. (suffix or ".lua")
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

return M
