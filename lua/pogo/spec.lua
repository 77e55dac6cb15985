-- pogo.spec: child specs - validation, the normal form, file loading and
-- fingerprints.
--
-- A spec file returns one spec table or a list of them. Every field is
-- checked; a bad one is an error naming the file (and the line where the
-- field is written, when it can be found), the child and the field, and
-- saying what was expected. Missing fields get the defaults below, so the
-- supervisor and the state machine in pogo.child never test for nil.
--
-- Normal form (defaults in brackets):
--   id              string of [%w_.@:-], 1..128 chars (required)
--   cmd             { "argv0", ... }  (a string is split by grammar.argv)
--   env             { NAME = "value" } [{}]; numbers become strings
--   clear_env       boolean [false]: start from an empty environment
--   cwd             path, relative ones resolved against the file's dir [nil]
--   user, group     name or integer id [nil]
--   umask           integer 0..0o777 [nil] (octal strings like "022" too)
--   rlimits         { nofile = { soft = n | "infinity", hard = ... } } [{}]
--   restart         "permanent" | "transient" | "temporary" ["permanent"]
--   success_codes   { 0 } [{0}]       success_signals  { "TERM" } [{}]
--   max_restarts    integer >= 0 [5]  max_seconds   seconds > 0 [10]
--   backoff         { initial = 0.1, max = 30, factor = 2, jitter = 0.1,
--                     reset_after = 10 }
--   cooldown        seconds > 0 [60]
--   shutdown        { timeout = 5, brutal = false } | { timeout = 0, brutal = true }
--   stop_signal     "TERM"
--   readiness       { kind = "immediate" }
--                 | { kind = "pattern", source = "...", pattern = <lpeg>,
--                     stream = "stdout" | "stderr" | "any", timeout = 30 }
--                 | { kind = "tcp", host = "127.0.0.1", port = n, timeout = 30, interval = 0.1 }
--                 | { kind = "notify", timeout = 30 }
--                 | { kind = "lua", check = fn, interval = 1, timeout = 30 }
--   hooks           { on_start = fn, ... } [{}]
--   log             { max_size = 10485760, max_files = 5, ring = 1000 }
--   tags {} weight 1 node nil   placement inputs (pogo.placement); node pins
--   partition       "available" | "quorum" ["available"] (pogo.dsup)
--   handoff         "make_before_break" | "stop_first": how a move happens
--   file            the path of the spec file (nil for specs not from a file)

local grammar = require "pogo.grammar"
local sandbox = require "pogo.sandbox"
local util = require "pogo.util"

local M = {}

-- Linux signal numbers; names are kept without the SIG prefix.
M.SIGNALS = {
  HUP = 1, INT = 2, QUIT = 3, ILL = 4, TRAP = 5, ABRT = 6, BUS = 7, FPE = 8,
  KILL = 9, USR1 = 10, SEGV = 11, USR2 = 12, PIPE = 13, ALRM = 14, TERM = 15,
  STKFLT = 16, CHLD = 17, CONT = 18, STOP = 19, TSTP = 20, TTIN = 21,
  TTOU = 22, URG = 23, XCPU = 24, XFSZ = 25, VTALRM = 26, PROF = 27,
  WINCH = 28, IO = 29, PWR = 30, SYS = 31,
}

local SIGNAL_BY_NUMBER = {}
for name, n in pairs(M.SIGNALS) do SIGNAL_BY_NUMBER[n] = name end

--- "SIGTERM", "term", "TERM" or 15 -> "TERM"; nil for anything else.
function M.signal_name(v)
  if type(v) == "number" then return SIGNAL_BY_NUMBER[v] end
  if type(v) ~= "string" then return nil end
  local name = v:upper():gsub("^SIG", "")
  return M.SIGNALS[name] and name or nil
end

M.HOOKS = { "on_start", "on_ready", "on_exit", "on_restart", "on_give_up", "on_stop" }

M.RLIMITS = {
  as = "size", core = "size", cpu = "seconds", data = "size", fsize = "size",
  memlock = "size", nofile = "count", nproc = "count", stack = "size",
}

-- Helpers -------------------------------------------------------------------

local function is_list(v)
  if type(v) ~= "table" then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) ~= type(b) then return type(a) < type(b) end
    if type(a) == "number" or type(a) == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

local function describe(v)
  local t = type(v)
  if t == "string" then return ("string %q"):format(v) end
  if t == "number" then
    if v ~= v then return "NaN" end
    local i = math.tointeger(v)
    return "number " .. (i and ("%d"):format(i) or tostring(v))
  end
  if t == "boolean" then return "boolean " .. tostring(v) end
  if t == "nil" then return "nothing" end
  return "a " .. t
end

-- Validation failures are thrown as tables carrying the field's key path
-- (for the message and to find the line) and caught once in normalise, so
-- nested checkers stay straight-line code.
local Invalid = {}

-- raw: msg is the whole complaint (it names the field itself).
local function bad(keys, msg, raw)
  error(setmetatable({ keys = keys, msg = msg, raw = raw }, Invalid), 0)
end

local function want(keys, what, v, detail)
  bad(keys, ("must be %s, got %s%s"):format(what, describe(v), detail and (": " .. detail) or ""))
end

local function sub(keys, k)
  local out = table.move(keys, 1, #keys, 1, {})
  out[#out + 1] = k
  return out
end

-- Grammar messages read 'expected X, got "v": detail'; restate them in
-- the voice of the other field errors: 'must be X, got string "v": detail'.
local function restate(msg, v)
  local shown = type(v) == "string" and ("%q"):format(v) or type(v) == "number" and tostring(v)
    or v == nil and "nothing" or "a " .. type(v)
  local got = ", got " .. shown
  local at = msg:find(got, 1, true)
  if not at then return "is invalid: " .. msg end
  local head = msg:sub(1, at - 1):gsub("^expected ", "must be ")
  return head .. ", got " .. describe(v) .. msg:sub(at + #got)
end

-- Fails on keys of t that are not in names, with a did-you-mean.
local function only(keys, t, names)
  for _, k in ipairs(sorted_keys(t)) do
    if type(k) ~= "string" then
      local msg = ("unexpected positional value [%s]: fields are named, like restart = \"transient\""):format(tostring(k))
      if #keys > 0 then
        msg = ("'%s' has a positional value [%s]: its fields are named"):format(table.concat(keys, "."), tostring(k))
      end
      bad(keys, msg, true)
    end
    local known = false
    for _, n in ipairs(names) do
      if n == k then known = true break end
    end
    if not known then
      local prefix = #keys > 0 and table.concat(keys, ".") .. "." or ""
      local near = util.suggest(k, names)
      bad(sub(keys, k), ("unknown field '%s%s'%s"):format(prefix, k,
        near and (" (did you mean '%s%s'?)"):format(prefix, near) or ""), true)
    end
  end
end

-- Value checkers: keys, value -> normal value (or throw) ---------------------

local function duration(keys, v, positive)
  local secs, err = grammar.duration(v)
  if not secs then bad(keys, restate(err, v)) end
  if positive and secs <= 0 then want(keys, "a duration greater than 0", v) end
  return secs
end

local function integer(keys, v, lo, hi, what)
  local n = type(v) == "number" and math.tointeger(v)
  if not n or n < lo or (hi and n > hi) then want(keys, what, v) end
  return n
end

local function one_of(keys, v, choices)
  for _, c in ipairs(choices) do
    if v == c then return v end
  end
  local quoted = {}
  for i, c in ipairs(choices) do quoted[i] = ('"%s"'):format(c) end
  local last = table.remove(quoted)
  want(keys, table.concat(quoted, ", ") .. " or " .. last, v)
end

local function signal(keys, v)
  local name = M.signal_name(v)
  if not name or type(v) ~= "string" then
    want(keys, 'a signal name like "TERM" or "SIGHUP"', v)
  end
  return name
end

local function boolean(keys, v)
  if type(v) ~= "boolean" then want(keys, "true or false", v) end
  return v
end

local function no_nul(keys, s, what)
  if s:find("\0", 1, true) then want(keys, what, s, "contains a NUL byte") end
  return s
end

local check = {}

local ID_WHAT = "a string of 1 to 128 letters, digits, '_', '.', '@', ':' or '-'"

function check.id(keys, v)
  if type(v) ~= "string" or #v < 1 or #v > 128 or not v:find("^[%w_.@:%-]+$") then
    want(keys, ID_WHAT, v)
  end
  return v
end

local CMD_WHAT = 'a list of arguments like { "/usr/bin/app", "--port", "80" } or a command string'

function check.cmd(keys, v)
  if type(v) == "string" then
    local argv, err = grammar.argv(v)
    if not argv then
      local prefix = ("invalid command %q: "):format(v)
      if err:sub(1, #prefix) == prefix then err = err:sub(#prefix + 1) end
      want(keys, CMD_WHAT, v, err)
    end
    for _, a in ipairs(argv) do no_nul(keys, a, CMD_WHAT) end
    return argv
  end
  if not is_list(v) then want(keys, CMD_WHAT, v) end
  if #v == 0 then want(keys, CMD_WHAT, v, "the list is empty") end
  local out = {}
  for i, a in ipairs(v) do
    if type(a) ~= "string" or a == "" or a:find("\0", 1, true) then
      bad(keys, ("item %d must be a non-empty string, got %s"):format(i, describe(a)))
    end
    out[i] = a
  end
  return out
end

function check.env(keys, v)
  if type(v) ~= "table" then want(keys, 'a table of names to values like { PORT = "80" }', v) end
  local out = {}
  for _, k in ipairs(sorted_keys(v)) do
    if type(k) ~= "string" or k == "" or k:find("[=\0]") then
      bad(keys, ("has a bad name %s: names are non-empty strings without '='"):format(describe(k)))
    end
    local val = v[k]
    local kk = sub(keys, k)
    if type(val) == "number" then
      local i = math.tointeger(val)
      if val ~= val or val == math.huge or val == -math.huge then want(kk, "a string or a number", val) end
      val = i and ("%d"):format(i) or tostring(val)
    elseif type(val) ~= "string" then
      want(kk, "a string or a number", val)
    end
    out[k] = no_nul(kk, val, "a string or a number")
  end
  return out
end

function check.cwd(keys, v, cx)
  if type(v) ~= "string" or v == "" then want(keys, "a directory path", v) end
  no_nul(keys, v, "a directory path")
  if v:sub(1, 1) == "/" or cx.dir == "." then return v end
  return cx.dir .. "/" .. v
end

local function principal(what)
  return function(keys, v)
    if type(v) == "number" then
      return integer(keys, v, 0, 4294967294, ("a %s name or a numeric id"):format(what))
    end
    if type(v) ~= "string" or not v:find("^[%w_][%w_.%-]*%$?$") or #v > 256 then
      want(keys, ("a %s name or a numeric id"):format(what), v)
    end
    return v
  end
end
check.user = principal("user")
check.group = principal("group")

local UMASK_WHAT = 'an octal string like "022" or an integer from 0 to 511'

-- Lua has no octal literals (umask = 022 is twenty-two), hence the string form.
function check.umask(keys, v)
  if type(v) == "string" then
    if not v:find("^0?[0-7][0-7]?[0-7]?$") then want(keys, UMASK_WHAT, v) end
    return tonumber(v, 8)
  end
  return integer(keys, v, 0, 511, UMASK_WHAT)
end

-- One rlimit value: an integer, "infinity", a size (byte limits) or a
-- duration (cpu seconds).
local function rlimit_value(keys, name, v)
  local kind = M.RLIMITS[name]
  local what = "an integer >= 0 or \"infinity\""
  if kind == "size" then what = 'a size like "64MiB", an integer >= 0 or "infinity"' end
  if kind == "seconds" then what = 'a duration like "1h", whole seconds or "infinity"' end
  if v == "infinity" or v == "unlimited" or v == math.huge then return "infinity" end
  if type(v) == "number" then return integer(keys, v, 0, nil, what) end
  if type(v) == "string" and kind == "size" then
    local n, err = grammar.size(v)
    if not n then want(keys, what, v, err:match(": (.*)$")) end
    return n
  end
  if type(v) == "string" and kind == "seconds" then
    local s = grammar.duration(v)
    local n = s and math.tointeger(s)
    if not n then want(keys, what, v) end
    return n
  end
  want(keys, what, v)
end

function check.rlimits(keys, v)
  if type(v) ~= "table" then want(keys, "a table like { nofile = 4096 }", v) end
  local names = sorted_keys(M.RLIMITS)
  only(keys, v, names)
  local out = {}
  for _, name in ipairs(names) do
    local val = v[name]
    local kk = sub(keys, name)
    if type(val) == "table" then
      local soft, hard = val.soft, val.hard
      if soft == nil and hard == nil then soft, hard = val[1], val[2] end
      if soft == nil or hard == nil then
        want(kk, "a value or a pair { soft, hard }", val)
      end
      soft, hard = rlimit_value(kk, name, soft), rlimit_value(kk, name, hard)
      if hard ~= "infinity" and (soft == "infinity" or soft > hard) then
        bad(kk, ("soft limit %s is above the hard limit %s"):format(soft, hard))
      end
      out[name] = { soft = soft, hard = hard }
    elseif val ~= nil then
      local n = rlimit_value(kk, name, val)
      out[name] = { soft = n, hard = n }
    end
  end
  return out
end

function check.restart(keys, v)
  return one_of(keys, v, { "permanent", "transient", "temporary" })
end

function check.success_codes(keys, v)
  if type(v) == "number" then v = { v } end
  if not is_list(v) then want(keys, "a list of exit codes like { 0, 143 }", v) end
  local out = {}
  for i, c in ipairs(v) do
    local n = type(c) == "number" and math.tointeger(c)
    if not n or n < 0 or n > 255 then
      bad(keys, ("item %d must be an exit code from 0 to 255, got %s"):format(i, describe(c)))
    end
    out[i] = n
  end
  return out
end

function check.success_signals(keys, v)
  if type(v) == "string" then v = { v } end
  if not is_list(v) then want(keys, 'a list of signal names like { "TERM", "HUP" }', v) end
  local out = {}
  for i, s in ipairs(v) do
    out[i] = type(s) == "string" and M.signal_name(s)
      or bad(keys, ('item %d must be a signal name like "TERM", got %s'):format(i, describe(s)))
  end
  return out
end

function check.max_restarts(keys, v)
  return integer(keys, v, 0, nil, "an integer >= 0")
end

function check.max_seconds(keys, v) return duration(keys, v, true) end
function check.cooldown(keys, v) return duration(keys, v, true) end

local BACKOFF = { "factor", "initial", "jitter", "max", "reset_after" }

function check.backoff(keys, v)
  if type(v) ~= "table" then want(keys, 'a table like { initial = "100ms", max = "30s" }', v) end
  only(keys, v, BACKOFF)
  local out = {
    initial = v.initial == nil and 0.1 or duration(sub(keys, "initial"), v.initial),
    max = v.max == nil and 30 or duration(sub(keys, "max"), v.max),
    factor = 2, jitter = 0.1,
    reset_after = v.reset_after == nil and 10 or duration(sub(keys, "reset_after"), v.reset_after),
  }
  if v.factor ~= nil then
    local f = v.factor
    if type(f) ~= "number" or f < 1 or f == math.huge then want(sub(keys, "factor"), "a number >= 1", f) end
    out.factor = f
  end
  if v.jitter ~= nil then
    local j = v.jitter
    if type(j) ~= "number" or not (j >= 0 and j <= 1) then
      want(sub(keys, "jitter"), "a fraction from 0 to 1 (0.1 = ±10%)", j)
    end
    out.jitter = j
  end
  if out.max < out.initial then
    want(sub(keys, "max"), ("a duration of at least backoff.initial (%s)"):format(
      grammar.format_duration(out.initial)), v.max)
  end
  return out
end

function check.shutdown(keys, v)
  if v == "brutal_kill" then return { timeout = 0, brutal = true } end
  local secs, err = grammar.duration(v)
  if not secs then
    if type(v) == "string" and not v:find("^[%s%d.]") then err = nil end
    want(keys, 'a duration like "5s" or "brutal_kill"', v, err and err:match(": (.*)$"))
  end
  return { timeout = secs, brutal = false }
end

function check.stop_signal(keys, v) return signal(keys, v) end

-- Readiness: one key names the kind; the others are its options.
local READINESS_KINDS = {
  { key = "pattern", kind = "pattern", options = { "stream", "timeout" } },
  { key = "tcp", kind = "tcp", options = { "interval", "timeout" } },
  { key = "notify", kind = "notify", options = { "timeout" } },
  { key = "check", kind = "lua", options = { "interval", "timeout" } },
}
local READINESS_KEYS = { "check", "interval", "notify", "pattern", "stream", "tcp", "timeout" }
local READINESS_WHAT = '"immediate" or a table with one of pattern, tcp, notify or check'

local function tcp_target(keys, v)
  local port = type(v) == "number" and v or type(v) == "string" and v:find("^%d+$") and tonumber(v)
  if port then
    return "127.0.0.1", integer(keys, port, 1, 65535, 'a port from 1 to 65535 or "host:port"')
  end
  local a, err = grammar.address(v)
  if not a then bad(keys, restate(err, v)) end
  return a.host == "" and "127.0.0.1" or a.host, a.port
end

function check.readiness(keys, v)
  if v == "immediate" then return { kind = "immediate" } end
  if type(v) ~= "table" then want(keys, READINESS_WHAT, v) end
  only(keys, v, READINESS_KEYS)
  local chosen
  for _, k in ipairs(READINESS_KINDS) do
    if v[k.key] ~= nil then
      if chosen then
        bad(keys, ("must name one kind, got both '%s' and '%s'"):format(chosen.key, k.key))
      end
      chosen = k
    end
  end
  if not chosen then want(keys, READINESS_WHAT, v) end
  for _, k in ipairs(READINESS_KEYS) do
    local allowed = k == chosen.key
    for _, o in ipairs(chosen.options) do allowed = allowed or o == k end
    if v[k] ~= nil and not allowed then
      bad(sub(keys, k), ("does not apply to %s readiness"):format(chosen.key))
    end
  end
  local out = { kind = chosen.kind }
  out.timeout = v.timeout == nil and 30 or duration(sub(keys, "timeout"), v.timeout, true)
  if chosen.kind == "pattern" then
    local compiled, err = grammar.pattern(v.pattern)
    if not compiled then
      want(sub(keys, "pattern"), 'a readiness pattern like "listening on *"', v.pattern,
        err:find(", got", 1, true) and err:match(": (.*)$") or err)
    end
    out.pattern = compiled
    out.source = type(v.pattern) == "string" and v.pattern or nil
    out.stream = v.stream == nil and "any" or one_of(sub(keys, "stream"), v.stream, { "stdout", "stderr", "any" })
  elseif chosen.kind == "tcp" then
    out.host, out.port = tcp_target(sub(keys, "tcp"), v.tcp)
    out.interval = v.interval == nil and 0.1 or duration(sub(keys, "interval"), v.interval, true)
  elseif chosen.kind == "notify" then
    if v.notify ~= true then want(sub(keys, "notify"), "true", v.notify) end
  else
    if type(v.check) ~= "function" then
      want(sub(keys, "check"), "a function(child) returning true once ready", v.check)
    end
    out.check = v.check
    out.interval = v.interval == nil and 1 or duration(sub(keys, "interval"), v.interval, true)
  end
  return out
end

function check.hooks(keys, v)
  if type(v) ~= "table" then want(keys, "a table of functions like { on_exit = function(child, status) end }", v) end
  only(keys, v, M.HOOKS)
  local out = {}
  for _, name in ipairs(M.HOOKS) do
    local fn = v[name]
    if fn ~= nil and type(fn) ~= "function" then want(sub(keys, name), "a function", fn) end
    out[name] = fn
  end
  return out
end

local LOG = { "max_files", "max_size", "ring" }

function check.log(keys, v)
  if type(v) ~= "table" then want(keys, 'a table like { max_size = "10MiB", max_files = 5 }', v) end
  only(keys, v, LOG)
  local out = { max_size = 10 * 1024 * 1024, max_files = 5, ring = 1000 }
  if v.max_size ~= nil then
    local n, err = grammar.size(v.max_size)
    if not n then bad(sub(keys, "max_size"), restate(err, v.max_size)) end
    if n <= 0 then want(sub(keys, "max_size"), "a size greater than 0", v.max_size) end
    out.max_size = n
  end
  if v.max_files ~= nil then
    out.max_files = integer(sub(keys, "max_files"), v.max_files, 0, nil, "an integer >= 0")
  end
  if v.ring ~= nil then
    out.ring = integer(sub(keys, "ring"), v.ring, 0, nil, "an integer >= 0 (lines kept in memory)")
  end
  return out
end

function check.tags(keys, v)
  if not is_list(v) then want(keys, 'a list of strings like { "web", "ssd" }', v) end
  local out = {}
  for i, t in ipairs(v) do
    if type(t) ~= "string" or t == "" then
      bad(keys, ("item %d must be a non-empty string, got %s"):format(i, describe(t)))
    end
    out[i] = t
  end
  return out
end

function check.weight(keys, v)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then want(keys, "a number greater than 0", v) end
  return v
end

function check.partition(keys, v)
  return one_of(keys, v, { "available", "quorum" })
end

function check.handoff(keys, v)
  return one_of(keys, v, { "make_before_break", "stop_first" })
end

function check.node(keys, v)
  if type(v) ~= "string" or not v:find("^[%w][%w%.%-_]*$") or #v > 63 then
    want(keys, "a node name: letters, digits, '.', '-', '_', at most 63 characters", v)
  end
  return v
end

-- Fields in the order they are checked, with their defaults (a function
-- builds a fresh table, so specs never share one).
local FIELDS = {
  { "id" }, { "cmd" },
  { "env", function() return {} end }, { "clear_env", false },
  { "cwd" }, { "user" }, { "group" }, { "umask" },
  { "rlimits", function() return {} end },
  { "restart", "permanent" },
  { "success_codes", function() return { 0 } end },
  { "success_signals", function() return {} end },
  { "max_restarts", 5 }, { "max_seconds", 10 },
  { "backoff", function() return check.backoff({ "backoff" }, {}) end },
  { "cooldown", 60 },
  { "shutdown", function() return { timeout = 5, brutal = false } end },
  { "stop_signal", "TERM" },
  { "readiness", function() return { kind = "immediate" } end },
  { "hooks", function() return {} end },
  { "log", function() return check.log({ "log" }, {}) end },
  { "tags", function() return {} end }, { "weight", 1 },
  { "partition", "available" }, { "handoff", "make_before_break" }, { "node" },
}
check.clear_env = boolean

M.FIELDS = {}
for i, f in ipairs(FIELDS) do M.FIELDS[i] = f[1] end
local REQUIRED = { id = ID_WHAT, cmd = CMD_WHAT }

-- Finding the line of a field ---------------------------------------------------

-- Table constructors of src as open -> close positions, so a field can be
-- looked for inside its own table; and the spans of strings and comments
-- (dead[i] = { from, to }), where a key must not be found.
local function constructors(src)
  local pairs_, stack, dead, i = {}, {}, {}, 1
  while true do
    local at, c = src:match("()([%-%[\"'{}])", i)
    if not at then break end
    i = at + 1
    if c == "-" and src:sub(at + 1, at + 1) == "-" then
      local eq = src:match("^%[(=*)%[", at + 2)
      local close = eq and src:find("]" .. eq .. "]", at + 4 + #eq, true)
      if eq then
        i = close and close + #eq + 2 or #src + 1
      else
        i = (src:find("\n", at, true) or #src) + 1
      end
      dead[#dead + 1] = { at, i - 1 }
    elseif c == "[" then
      local eq = src:match("^%[(=*)%[", at)
      if eq then
        local close = src:find("]" .. eq .. "]", at + 2 + #eq, true)
        i = close and close + #eq + 2 or #src + 1
        dead[#dead + 1] = { at, i - 1 }
      end
    elseif c == '"' or c == "'" then
      local j = at + 1
      while j <= #src do
        local d = src:sub(j, j)
        if d == "\\" then j = j + 1 elseif d == c or d == "\n" then break end
        j = j + 1
      end
      i = j + 1
      dead[#dead + 1] = { at, j }
    elseif c == "{" then
      stack[#stack + 1] = at
    elseif #stack > 0 then
      pairs_[table.remove(stack)] = at
    end
  end
  pairs_.dead = dead
  return pairs_
end

local function is_dead(tables, pos)
  for _, d in ipairs(tables.dead) do
    if d[1] <= pos and pos <= d[2] then return true end
  end
  return false
end

-- The innermost constructor around pos: open, close (the whole file if none).
local function enclosing(tables, src, pos)
  local lo, hi = 0, #src + 1
  for open, close in pairs(tables) do
    if type(open) == "number" and open < pos and pos < close and open > lo then lo, hi = open, close end
  end
  return lo, hi
end

local function pattern_quote(s)
  return (s:gsub("%p", "%%%0"))
end

-- Where `key =` (or ["key"] =) is written directly inside the region.
local function find_key(src, tables, key, lo, hi)
  local k = pattern_quote(key)
  for _, p in ipairs { "%f[%w_]" .. k .. "%s*=%f[^=]", '%[%s*["\']' .. k .. '["\']%s*%]%s*=%f[^=]' } do
    local i = lo + 1
    while true do
      local at, stop = src:find(p, i)
      if not at or at >= hi then break end
      if not is_dead(tables, at) and (lo == 0 or enclosing(tables, src, at) == lo) then
        return at, stop
      end
      i = stop + 1
    end
  end
end

local function line_at(src, pos)
  return select(2, src:sub(1, pos - 1):gsub("\n", "")) + 1
end

-- Where `id = <value>` is written, the nth time (duplicates).
local function find_id(src, tables, value, nth)
  local lit
  if type(value) == "string" then
    lit = "[\"']" .. pattern_quote(value) .. "[\"']"
  elseif type(value) == "number" then
    lit = pattern_quote(tostring(value)) .. "%f[^%w.]"
  else
    return nil
  end
  local i, n = 1, 0
  while true do
    local at = src:find("%f[%w_]id%s*=%s*" .. lit, i)
    if not at then return nil end
    if not is_dead(tables, at) then
      n = n + 1
      if n == (nth or 1) then return at end
    end
    i = at + 1
  end
end

-- The line of keys (a path like { "backoff", "initial" }) in the spec whose
-- id is written as id_value: search inside that spec's constructor, then
-- inside each nested table literal. Falls back to the deepest key found.
local function locate(src, id_value, keys, nth)
  if not src then return nil end
  local tables = constructors(src)
  local lo, hi = 0, #src + 1
  local found = find_id(src, tables, id_value, nth)
  if found then lo, hi = enclosing(tables, src, found) end
  for _, key in ipairs(keys) do
    local at, stop = find_key(src, tables, key, lo, hi)
    if not at then break end
    found = at
    local open = src:match("^%s*(){", stop + 1)
    if not open or not tables[open] then break end
    lo, hi = open, tables[open]
  end
  return found and line_at(src, found)
end

-- Normalising ----------------------------------------------------------------------

local function where(cx, id_value, keys, nth)
  local line = locate(cx.src, id_value, keys, nth)
  return line and ("%s:%d"):format(cx.path, line) or cx.path
end

local function who(cx, id)
  if id then return ("child '%s'"):format(id) end
  return ("item %d"):format(cx.index or 1)
end

--- Validates t and returns its normal form, or nil and a message naming the
--- file, line, child and field. ctx = { path = file, src = its text
--- (optional, for lines), index = position in the file's list }.
function M.normalise(t, ctx)
  ctx = ctx or {}
  local cx = { path = ctx.path or "(spec)", src = ctx.src, index = ctx.index or 1 }
  cx.dir = ctx.path and util.dirname(ctx.path) or "."
  if type(t) ~= "table" then
    return nil, ("%s: item %d must be a spec table, got %s"):format(cx.path, cx.index, describe(t))
  end
  local id
  local ok, err = pcall(function()
    if t.id == nil then
      error(setmetatable({ keys = { "id" }, missing = true,
        msg = ("must be %s, got nothing"):format(ID_WHAT) }, Invalid), 0)
    end
    id = check.id({ "id" }, t.id)
  end)
  if ok then
    local out = {}
    ok, err = pcall(function()
      only({}, t, M.FIELDS)
      for _, f in ipairs(FIELDS) do
        local name, default = f[1], f[2]
        local v = t[name]
        if v == nil and REQUIRED[name] then
          -- Not written anywhere: only the child's own line can be shown.
          error(setmetatable({ keys = { name }, missing = true,
            msg = ("must be %s, got nothing"):format(REQUIRED[name]) }, Invalid), 0)
        elseif v == nil then
          if type(default) == "function" then v = default() else v = default end
          out[name] = v
        else
          out[name] = check[name]({ name }, v, cx)
        end
      end
    end)
    if ok then
      out.file = ctx.path
      return out
    end
  end
  if getmetatable(err) ~= Invalid then error(err, 0) end
  local head = ("%s: %s: "):format(where(cx, id or t.id, err.missing and {} or err.keys), who(cx, id))
  if err.raw then return nil, head .. err.msg end
  return nil, ("%s'%s' %s"):format(head, table.concat(err.keys, "."), err.msg)
end

-- Tables and functions reachable from the extra globals (the pogo API) are
-- the agent's, not the file's: a fingerprint names them ("pogo.errors")
-- instead of reading them, since their contents change at run time and a
-- hook closing over `local pogo = pogo` must not look changed because of it.
local shared = setmetatable({}, { __mode = "k" })

local function share(v, name, depth)
  if (type(v) ~= "table" and type(v) ~= "function") or shared[v] or depth > 6 then return end
  shared[v] = name
  if type(v) == "table" then
    for k, x in next, v do
      if type(k) == "string" then share(x, name .. "." .. k, depth + 1) end
    end
  end
end

-- The specs of a file's value, normalised, or nil and the first error.
local function normalise_all(path, value, src)
  if type(value) ~= "table" then
    return nil, ("%s: a spec file must return a spec table or a list of them, got %s"):format(path, describe(value))
  end
  local list = value
  if not is_list(value) then
    if rawget(value, 1) ~= nil then
      return nil, ("%s: a spec file must return a spec table or a list of them, not a mix of both"):format(path)
    end
    list = { value }
  end
  local out, first = {}, {}
  for i, t in ipairs(list) do
    local spec, err = M.normalise(t, { path = path, src = src, index = i })
    if not spec then return nil, err end
    if first[spec.id] then
      local line = src and locate(src, spec.id, {}, 2)
      return nil, ("%s%s: child '%s': duplicate id (item %d has it too)"):format(
        path, line and ":" .. line or "", spec.id, first[spec.id])
    end
    first[spec.id] = i
    out[i] = spec
  end
  return out
end

--- Loads a spec file (one spec or a list of them) in the sandbox and
--- normalises every spec. All or nothing: the first error fails the file.
--- opts: budget (seconds), env (extra globals, e.g. pogo), src (the file's
--- text, when the caller has already read it).
function M.load_file(path, opts)
  opts = opts or {}
  for name, v in pairs(opts.env or {}) do share(v, name, 1) end
  local ok, specs, err = sandbox.load(path, { budget = opts.budget or 1, env = opts.env, src = opts.src,
    read = function(value, src) return normalise_all(path, value, src) end })
  if not ok then return nil, specs end
  return specs, err
end

-- Fingerprints -------------------------------------------------------------------

local MAX_DEPTH = 64

local serialise

local function serialise_function(fn, out, active, depth)
  local ok, code = pcall(string.dump, fn, true)
  if not ok then
    -- A C function: its identity is stable for the life of the process.
    out[#out + 1] = "c" .. tostring(fn)
    return
  end
  out[#out + 1] = ("f%q"):format(code)
  -- Two closures of one function differ by their upvalues (a hook made in
  -- a loop closes over its loop variable), so those are part of it. _ENV is
  -- the file's globals, shared runtime state: leaving it out keeps equal
  -- text giving equal fingerprints.
  out[#out + 1] = "("
  for i = 1, math.huge do
    local name, v = debug.getupvalue(fn, i)
    if not name then break end
    if name ~= "_ENV" then
      serialise(v, out, active, depth + 1)
      out[#out + 1] = ","
    end
  end
  out[#out + 1] = ")"
end

serialise = function(v, out, active, depth)
  local t = type(v)
  if depth > MAX_DEPTH then
    out[#out + 1] = "…"
  elseif shared[v] then
    out[#out + 1] = "g" .. shared[v]
  elseif t == "nil" then
    out[#out + 1] = "_"
  elseif t == "boolean" then
    out[#out + 1] = v and "T" or "F"
  elseif t == "number" then
    local i = math.tointeger(v)
    out[#out + 1] = i and ("i%d"):format(i) or ("n%.17g"):format(v)
  elseif t == "string" then
    out[#out + 1] = ("s%q"):format(v)
  elseif t == "function" then
    serialise_function(v, out, active, depth)
  elseif t == "table" then
    if active[v] then
      out[#out + 1] = "^" -- a cycle back to an enclosing table
      return
    end
    active[v] = true
    local entries = {}
    for k, val in next, v do
      -- The compiled readiness pattern is derived from its source text.
      if not (k == "pattern" and type(val) == "userdata" and type(rawget(v, "source")) == "string") then
        local ko = {}
        serialise(k, ko, active, depth + 1)
        entries[#entries + 1] = { table.concat(ko), val }
      end
    end
    table.sort(entries, function(a, b) return a[1] < b[1] end)
    out[#out + 1] = "{"
    for _, e in ipairs(entries) do
      out[#out + 1] = e[1]
      out[#out + 1] = "="
      serialise(e[2], out, active, depth + 1)
      out[#out + 1] = ";"
    end
    out[#out + 1] = "}"
    active[v] = nil
  else
    -- userdata (an lpeg pattern given as such) and threads: by identity,
    -- so a reload counts them as changed rather than missing a change.
    out[#out + 1] = "u" .. tostring(v)
  end
end

--- A canonical serialisation of a spec: equal for two loads of the same
--- text, different when any field changes. Used to restart on reload only
--- the children whose spec changed.
function M.fingerprint(spec)
  local out = {}
  serialise(spec, out, {}, 0)
  return table.concat(out)
end

return M
