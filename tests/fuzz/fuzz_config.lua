-- Driver of fuzz_config: the input is the text of a node config, loaded
-- by pogo.config.load as the agent loads it (the sandbox, the budget, the
-- schema).
--
-- Oracles: load returns a config or nil and a message, never raises; a
-- message names the file; a config has every key of the schema in its
-- normal form, and validating it again (as the table the file could have
-- returned) gives the same config.

local config = require "pogo.config"

local root = ...
local oracle = dofile(root .. "/tests/fuzz/oracle.lua")
local check, is_list_of = oracle.check, oracle.is_list_of
local DIR = root .. "/build/fuzz/work/fuzz_config"   -- where the input is written
assert(require("pogo.core.sys").mkdir(DIR, tonumber("700", 8)))
local PATH = DIR .. "/node.lua"
local BUDGET = 0.1      -- seconds; the agent's default is 1 for its config

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function positive(v) return type(v) == "number" and v > 0 end

local function check_normal(cfg)
  local function key(ok, name) check(ok, "bad normal %s: %s", name, tostring(cfg[name])) end
  key(type(cfg.name) == "string" and cfg.name:find("^[%w][%w%.%-_]*$") and #cfg.name <= 63, "name")
  key(type(cfg.listen) == "string", "listen")
  key(is_list_of(cfg.seeds, "string"), "seeds")
  key(is_list_of(cfg.tags, "string"), "tags")
  key(positive(cfg.weight) and cfg.weight < math.huge, "weight")
  for _, k in ipairs { "run_dir", "control", "log_dir" } do key(type(cfg[k]) == "string" and cfg[k] ~= "", k) end
  for _, k in ipairs { "budget", "eval_budget", "lease", "drain_timeout" } do key(positive(cfg[k]), k) end
  key(cfg.expect == nil or (math.type(cfg.expect) == "integer" and cfg.expect >= 1), "expect")
  key(type(cfg.log) == "table" and type(cfg.log.level) == "string", "log")
  key(cfg.path == PATH, "path")
end

return function(src)
  local f = assert(io.open(PATH, "wb"))
  f:write(src)
  f:close()
  local ok, cfg, err = pcall(config.load, PATH, { budget = BUDGET })
  check(ok, "config.load raised: %s", tostring(cfg))
  if not cfg then
    oracle.names_file(err, PATH)
    return
  end
  check_normal(cfg)
  local raw = {}
  for k, v in pairs(cfg) do raw[k] = v end
  raw.path = nil        -- added by validate, not a key of the file
  local again, aerr = config.validate(raw, { path = PATH })
  check(again, "the normal config does not validate: %s", tostring(aerr))
  check(same(again, cfg), "validating the normal config changed it")
end
