-- pogo.config: the node config, a Lua file returning a table.
--
-- Every key is checked against the schema below: unknown keys, wrong types
-- and bad values are errors naming the file, the line where the key is
-- written and the key. Missing keys get the documented defaults. Relative
-- paths are taken relative to the config file's directory.

local grammar = require "pogo.grammar"
local sandbox = require "pogo.sandbox"
local sys = require "pogo.core.sys"
local util = require "pogo.util"

local M = {}

--- Where sockets live when the config does not say: /run/pogo for root,
--- $XDG_RUNTIME_DIR/pogo or /tmp/pogo-UID for everyone else.
function M.default_run_dir()
  if sys.uid() == 0 then return "/run/pogo" end
  local xdg = os.getenv("XDG_RUNTIME_DIR")
  if xdg and xdg ~= "" then return xdg .. "/pogo" end
  return "/tmp/pogo-" .. sys.uid()
end

--- Where children's log files go: /var/log/pogo for root, else
--- <run_dir>/logs.
function M.default_log_dir(cfg)
  if sys.uid() == 0 then return "/var/log/pogo/" .. cfg.name end
  return cfg.run_dir .. "/logs/" .. cfg.name
end

local function resolve(base, path)
  if path:sub(1, 1) == "/" then return path end
  if base == "." then return path end
  return base .. "/" .. path
end

-- Checkers: value, ctx -> normalised value | nil, "must be ..." ---------------

local function is_list(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end

local function describe(v)
  if type(v) == "string" then return ("string %q"):format(v) end
  if type(v) == "table" then return "a table" end
  return ("%s %s"):format(type(v), tostring(v))
end

local check = {}

function check.name(v)
  if type(v) ~= "string" or not v:match("^[%w][%w%.%-_]*$") or #v > 63 then
    return nil, "must be a node name: letters, digits, '.', '-', '_', at most 63 characters"
  end
  return v
end

function check.address(v)
  if type(v) ~= "string" then return nil, 'must be an address like "0.0.0.0:4370"' end
  local a, err = grammar.address(v, 4370)
  if not a then return nil, err end
  return v
end

function check.addresses(v)
  if not is_list(v) then return nil, 'must be a list of addresses like { "10.0.0.2:4370" }' end
  for i, s in ipairs(v) do
    local _, err = check.address(s)
    if err then return nil, ("item %d %s"):format(i, err) end
  end
  return v
end

function check.path(v, ctx)
  if type(v) ~= "string" or v == "" then return nil, "must be a path (a non-empty string)" end
  return resolve(ctx.dir, v)
end

function check.tags(v)
  if not is_list(v) then return nil, 'must be a list of strings like { "web", "ssd" }' end
  for i, t in ipairs(v) do
    if type(t) ~= "string" or t == "" then
      return nil, ("item %d must be a non-empty string, got %s"):format(i, describe(t))
    end
  end
  return v
end

function check.weight(v)
  if type(v) ~= "number" or v <= 0 or v ~= v or v == math.huge then
    return nil, "must be a positive number"
  end
  return v
end

function check.duration(v)
  local secs, err = grammar.duration(v)
  if not secs then return nil, err end
  if secs <= 0 then return nil, "must be a positive duration" end
  return secs
end

function check.count(v)
  if math.type(v) ~= "integer" or v < 1 then return nil, "must be an integer >= 1" end
  return v
end

function check.level(v)
  for _, l in ipairs { "debug", "info", "warn", "error" } do
    if v == l then return v end
  end
  return nil, 'must be one of "debug", "info", "warn", "error"'
end

-- The schema: key -> { checker, default } -----------------------------------
-- A default may be a function of the config being built.

M.schema = {
  name        = { check.name, function() return sys.hostname() end },
  listen      = { check.address, "0.0.0.0:4370" },
  advertise   = { check.address, nil },
  seeds       = { check.addresses, function() return {} end },
  secret_file = { check.path, nil },
  tags        = { check.tags, function() return {} end },
  weight      = { check.weight, 1 },
  children    = { check.path, nil },
  placement   = { check.path, nil },
  hooks       = { check.path, nil },
  run_dir     = { check.path, function() return M.default_run_dir() end },
  control     = { check.path, function(c) return c.run_dir .. "/" .. c.name .. ".sock" end },
  log_dir     = { check.path, function(c) return M.default_log_dir(c) end },
  budget      = { check.duration, 0.25 },
  eval_budget = { check.duration, 5 },
  expect      = { check.count, nil },
  lease       = { check.duration, 2 },
  drain_timeout = { check.duration, 30 },
  log         = { "table", function() return {} end },
}

M.log_schema = {
  level = { check.level, "info" },
  file  = { check.path, nil },
}

-- Keys filled in an order where defaults can use earlier ones.
local ORDER = {
  "name", "listen", "advertise", "seeds", "secret_file", "tags", "weight",
  "children", "placement", "hooks", "run_dir", "control", "log_dir", "budget",
  "eval_budget", "expect", "lease", "drain_timeout", "log",
}

-- Error reporting --------------------------------------------------------------

-- The line where `key = ` is first written, so errors point at it.
local function line_of(src, key)
  local n = 1
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do
    if line:find("%f[%w_]" .. key .. "%s*=") or line:find('%["' .. key .. '"%]%s*=') then
      return n
    end
    n = n + 1
  end
end

-- " (did you mean 'x'?)" for an unknown key, or "".
local function hint(key, schema)
  local names = {}
  for k in pairs(schema) do names[#names + 1] = k end
  local best = util.suggest(key, names)
  return best and (" (did you mean '%s'?)"):format(best) or ""
end

local function fail(ctx, key, msg)
  local where = ctx.path
  local line = ctx.src and line_of(ctx.src, key:match("[%w_]+$"))
  if line then where = where .. ":" .. line end
  return nil, ("%s: '%s' %s"):format(where, key, msg)
end

local function validate_table(t, schema, order, ctx, prefix)
  local out = {}
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    if type(k) ~= "string" then
      return fail(ctx, prefix .. tostring(k), "is not a valid key (keys are names)")
    end
    if not schema[k] then
      local where = ctx.path
      local line = ctx.src and line_of(ctx.src, k)
      if line then where = where .. ":" .. line end
      return nil, ("%s: unknown key '%s%s'%s"):format(where, prefix, k, hint(k, schema))
    end
  end
  for _, k in ipairs(order) do
    local checker, default = schema[k][1], schema[k][2]
    local v = t[k]
    if v == nil then
      if type(default) == "function" then v = default(out) else v = default end
      out[k] = v
    elseif checker == "table" then
      if type(v) ~= "table" then
        return fail(ctx, prefix .. k, "must be a table, got " .. describe(v))
      end
      out[k] = v
    else
      local nv, err = checker(v, ctx)
      if nv == nil then
        return fail(ctx, prefix .. k, err .. (err:find(", got") and "" or ", got " .. describe(v)))
      end
      out[k] = nv
    end
  end
  return out
end

--- Validates a config table. ctx = { path=, src= }. Returns the normalised
--- config (defaults filled, paths absolute or relative to cwd) | nil, err.
function M.validate(t, ctx)
  ctx.dir = ctx.dir or util.dirname(ctx.path)
  if type(t) ~= "table" then
    return nil, ("%s: must return a table, got %s"):format(ctx.path, type(t))
  end
  local cfg, err = validate_table(t, M.schema, ORDER, ctx, "")
  if not cfg then return nil, err end
  local log, lerr = validate_table(cfg.log, M.log_schema, { "level", "file" }, ctx, "log.")
  if not log then return nil, lerr end
  cfg.log = log
  cfg.path = ctx.path
  return cfg
end

--- Loads and validates the config file at path. Returns cfg | nil, err.
function M.load(path, opts)
  opts = opts or {}
  local ok, cfg, err = sandbox.load(path, { budget = opts.budget or 1,
    read = function(value, src) return M.validate(value, { path = path, src = src }) end })
  if not ok then return nil, cfg end
  return cfg, err
end

-- Keys that cannot change without restarting the agent.
M.RESTART_KEYS = { "name", "listen", "advertise", "run_dir", "control", "secret_file" }

return M
