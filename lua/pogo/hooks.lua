-- pogo.hooks: running user hooks, isolated.
--
-- A hook comes from a child's spec (spec.hooks.on_exit) or from the node's
-- hooks file (a file returning { on_exit = function(child, status) ... }),
-- which applies to every child. Each runs under the budget; an error or a
-- loop is logged with the hook, the child and the traceback, and nothing
-- else happens: the child is unaffected.

local runtime = require "pogo.core.runtime"
local log = require "pogo.log"
local sandbox = require "pogo.sandbox"

local L = log.sub("hooks")

local M = {}

M.NAMES = {
  on_start = true, on_ready = true, on_exit = true, on_restart = true,
  on_give_up = true, on_stop = true, on_node_up = true, on_node_down = true,
  on_placement_change = true,
}

M.budget = 0.25
M.global = {}           -- hooks from the hooks file
M.failures = 0          -- hooks that raised or ran out of budget

--- Checks what a hooks file returned. Returns true | nil, err.
function M.validate(value, path)
  if type(value) ~= "table" then
    return nil, ("%s: a hooks file must return a table of functions, got %s"):format(path, type(value))
  end
  for k, v in pairs(value) do
    if not M.NAMES[k] then
      return nil, ("%s: unknown hook '%s'"):format(path, tostring(k))
    end
    if type(v) ~= "function" then
      return nil, ("%s: hook '%s' must be a function, got %s"):format(path, k, type(v))
    end
  end
  return true
end

--- Loads a hooks file. Returns the table | nil, err. All or nothing.
function M.load(path)
  local value
  local ok, valid, err = sandbox.load(path, { budget = M.budget, env = { pogo = require "pogo" },
    read = function(v) value = v return M.validate(v, path) end })
  if not ok then return nil, valid end
  if not valid then return nil, err end
  return value
end

local function call(fn, name, who, ...)
  local res = table.pack(runtime.call(M.budget, fn, ...))
  if not res[1] then
    M.failures = M.failures + 1
    L.error("%s of %s failed: %s", name, who, tostring(res[2]))
    return false
  end
  return true
end

--- Runs hook `name` of the spec (if any), then the global one (if any).
--- `who` names the owner in error lines ("child 'web'").
function M.run(name, spec_hooks, who, ...)
  local own = spec_hooks and spec_hooks[name]
  if own then call(own, name, who, ...) end
  local global = M.global[name]
  if global then call(global, name, who, ...) end
end

return M
