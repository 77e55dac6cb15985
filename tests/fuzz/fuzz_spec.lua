-- Driver of fuzz_spec: the input is the text of a child-spec file, loaded
-- as the agent's children directory loads it (pogo.spec.load_file: the
-- sandbox, the budget, validation and normalisation).
--
-- Oracles: load_file returns specs or nil and a message, never raises; a
-- message names the file; every spec it returns has the normal form the
-- supervisor relies on (pogo.spec's header: no field to test for nil); and
-- loading the same text again gives the same fingerprints (what a reload
-- compares), the clock and math.random being held still for the purpose.

local root = ...
local oracle = dofile(root .. "/tests/fuzz/oracle.lua")
local check, is_list_of = oracle.check, oracle.is_list_of
local spec = require "pogo.spec"

local PATH = "/fuzz/children.d/input.lua"
local BUDGET = 0.1      -- seconds; the agent's default is 0.25
local VERBOSE = os.getenv("FUZZ_VERBOSE")

-- The pogo API as spec files see it, minus what would start or stop
-- processes when a file calls it while loading.
local function disabled() return nil, "disabled in the fuzz target" end
local pogo = setmetatable({
  sup = setmetatable({ start = disabled, stop = disabled, restart = disabled },
    { __index = require("pogo").sup }),
}, { __index = require "pogo" })

-- What a file may read that changes between two loads of it.
local date = os.date
os.time = function() return 1700000000 end  -- luacheck: ignore 122
os.clock = function() return 0 end  -- luacheck: ignore 122
os.date = function(fmt, t) return date(fmt, t or 1700000000) end  -- luacheck: ignore 122

local function one_of(v, ...)
  for _, c in ipairs { ... } do
    if v == c then return true end
  end
  return false
end

local function number(v, lo) return type(v) == "number" and v == v and v >= lo end
local function integer(v, lo) return math.type(v) == "integer" and v >= lo end

-- The normal form promised in pogo.spec's header.
local function check_normal(s)
  local id = s.id
  check(type(id) == "string" and #id >= 1 and #id <= 128 and id:find("^[%w_.@:%-]+$"), "bad id %s", tostring(id))
  local function field(ok, name) check(ok, "child %s: bad normal %s: %s", id, name, tostring(s[name])) end
  field(is_list_of(s.cmd, "string") and #s.cmd > 0, "cmd")
  for _, a in ipairs(s.cmd) do field(a ~= "" and not a:find("\0", 1, true), "cmd") end
  field(type(s.env) == "table", "env")
  for k, v in pairs(s.env) do field(type(k) == "string" and type(v) == "string", "env") end
  field(type(s.clear_env) == "boolean", "clear_env")
  field(s.umask == nil or (integer(s.umask, 0) and s.umask <= 511), "umask")
  field(type(s.rlimits) == "table", "rlimits")
  for _, l in pairs(s.rlimits) do
    field(l.soft == "infinity" or integer(l.soft, 0), "rlimits")
    field(l.hard == "infinity" or (integer(l.hard, 0) and l.soft ~= "infinity" and l.soft <= l.hard), "rlimits")
  end
  field(one_of(s.restart, "permanent", "transient", "temporary"), "restart")
  field(is_list_of(s.success_codes, "number"), "success_codes")
  field(is_list_of(s.success_signals, "string"), "success_signals")
  for _, sig in ipairs(s.success_signals) do field(spec.SIGNALS[sig], "success_signals") end
  field(integer(s.max_restarts, 0), "max_restarts")
  field(number(s.max_seconds, 0) and s.max_seconds > 0, "max_seconds")
  field(number(s.cooldown, 0) and s.cooldown > 0, "cooldown")
  local b = s.backoff
  field(type(b) == "table" and number(b.initial, 0) and number(b.max, b.initial) and number(b.factor, 1)
    and number(b.jitter, 0) and b.jitter <= 1 and number(b.reset_after, 0), "backoff")
  field(type(s.shutdown) == "table" and number(s.shutdown.timeout, 0) and type(s.shutdown.brutal) == "boolean", "shutdown")
  field(spec.SIGNALS[s.stop_signal], "stop_signal")
  local r = s.readiness
  field(type(r) == "table" and one_of(r.kind, "immediate", "pattern", "tcp", "notify", "lua"), "readiness")
  if r.kind ~= "immediate" then field(number(r.timeout, 0) and r.timeout > 0, "readiness") end
  if r.kind == "pattern" then field(one_of(r.stream, "stdout", "stderr", "any") and r.pattern ~= nil, "readiness") end
  if r.kind == "tcp" then field(type(r.host) == "string" and integer(r.port, 1) and r.port <= 65535, "readiness") end
  if r.kind == "lua" then field(type(r.check) == "function", "readiness") end
  field(type(s.hooks) == "table", "hooks")
  for k, fn in pairs(s.hooks) do field(one_of(k, table.unpack(spec.HOOKS)) and type(fn) == "function", "hooks") end
  local log = s.log
  field(type(log) == "table" and integer(log.max_size, 1) and integer(log.max_files, 0) and integer(log.ring, 0), "log")
  field(is_list_of(s.tags, "string"), "tags")
  field(number(s.weight, 0) and s.weight > 0 and s.weight < math.huge, "weight")
  field(one_of(s.partition, "available", "quorum"), "partition")
  field(one_of(s.handoff, "make_before_break", "stop_first"), "handoff")
  field(s.node == nil or type(s.node) == "string", "node")
  field(s.file == PATH, "file")
end

local function load(src)
  math.randomseed(7)
  local ok, specs, err = pcall(spec.load_file, PATH, { budget = BUDGET, env = { pogo = pogo }, src = src })
  check(ok, "load_file raised: %s", tostring(specs))
  return specs, err
end

return function(src)
  local specs, err = load(src)
  if not specs then
    oracle.names_file(err, PATH)
    if VERBOSE then print(err) end
    return
  end
  local ids = {}
  for i, s in ipairs(specs) do
    check(not ids[s.id], "duplicate id %s", s.id)
    ids[s.id] = true
    check_normal(s)
    specs[i] = spec.fingerprint(s)
  end
  local again, aerr = load(src)
  -- The budget is wall-clock time: a loaded machine may cut the second load.
  if not again and aerr:find("ran past its budget", 1, true) then return end
  check(again and #again == #specs, "a second load of the same text failed or differs in length: %s", tostring(aerr))
  for i, s in ipairs(again) do
    local fp = spec.fingerprint(s)
    -- Addresses (tostring of a table or function) differ by design.
    check(fp == specs[i] or fp:find("0x%x+"), "a second load gives another fingerprint for %s:\n%s\n%s", s.id, specs[i], fp)
  end
  if VERBOSE then print(("%d specs"):format(#specs)) end
end
