-- pogo.check: `pogo check` - validate user files without running anything
-- beyond the file itself (under the budget, in the sandbox).

local config = require "pogo.config"
local sandbox = require "pogo.sandbox"
local sys = require "pogo.core.sys"

local M = {}

local validators = {}

function validators.config(value, path, src)
  local cfg, err = config.validate(value, { path = path, src = src })
  if not cfg then return nil, err end
  return true
end

function validators.spec(value, path, src)
  local spec = require "pogo.spec"
  local list = type(value) == "table" and value[1] ~= nil and value or { value }
  local seen = {}
  for i, t in ipairs(list) do
    local s, err = spec.normalise(t, { path = path, src = src, index = i })
    if not s then return nil, err end
    if seen[s.id] then
      return nil, ("%s: child '%s' is defined twice"):format(path, s.id)
    end
    seen[s.id] = true
  end
  return true
end

function validators.policy(value, path)
  if type(value) == "function" then return true end
  if type(value) == "table" and type(value.place) == "function" then return true end
  return nil, ("%s: a placement policy must return a function or a table with a 'place' function, got %s")
    :format(path, type(value))
end

function validators.hooks(value, path)
  return require("pogo.hooks").validate(value, path)
end

--- Guesses what a file is from what it returns.
function M.guess(value)
  if type(value) == "function" then return "policy" end
  if type(value) ~= "table" then return "config" end
  if value.id ~= nil or value.cmd ~= nil or type(value[1]) == "table" then return "spec" end
  if type(value.place) == "function" then return "policy" end
  for k, v in pairs(value) do
    if type(k) == "string" and k:match("^on_") and type(v) == "function" then return "hooks" end
  end
  return "config"
end

--- Checks one file. Returns kind | nil, message.
function M.file(path, kind)
  if kind and not validators[kind] then
    return nil, ("unknown kind '%s' (config, spec, policy, hooks)"):format(kind)
  end
  local ok, vok, verr = sandbox.load(path, { budget = 1, env = { pogo = require "pogo" },
    read = function(value, src)
      kind = kind or M.guess(value)
      return validators[kind](value, path, src)
    end })
  if not ok then return nil, vok end
  if not vok then return nil, verr end
  return kind
end

--- Expands directories into their *.lua files, sorted.
local function expand(paths)
  local files = {}
  for _, p in ipairs(paths) do
    local st = sys.stat(p)
    if st and st.type == "directory" then
      for _, name in ipairs(sys.dir(p) or {}) do
        if name:match("%.lua$") then files[#files + 1] = { p .. "/" .. name, "spec" } end
      end
    else
      files[#files + 1] = { p }
    end
  end
  return files
end

--- `pogo check`: one line per file; 0 if all are valid, else 1.
function M.main(paths, kind, out, err)
  local failed = 0
  for _, f in ipairs(expand(paths)) do
    local k, msg = M.file(f[1], kind or f[2])
    if k then
      out(("ok %s (%s)\n"):format(f[1], k))
    else
      err(msg, "\n")
      failed = failed + 1
    end
  end
  return failed == 0 and 0 or 1
end

return M
