-- Pretty printer for Lua values, for `pogo eval` and the REPL. The output
-- reads as Lua where the value can be written in Lua; everything else is
-- shown in angle brackets: <function: 0x...>, <cycle table: 0x...>.
local debug = require "debug"

local M = {}

local DEFAULTS = { width = 80, depth = 8, items = 200, color = false }

local RESERVED = {}
for w in ([[and break do else elseif end false for function goto if in
  local nil not or repeat return then true until while]]):gmatch("%a+") do
  RESERVED[w] = true
end

local COLOR = {
  string = "\27[32m", number = "\27[36m", boolean = "\27[35m", ["nil"] = "\27[35m",
}
local RESET = "\27[0m"

local ESCAPES = {
  ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t", ["\v"] = "\\v", ["\\"] = "\\\\",
}

-- Escapes what a terminal would act on and bytes that are not UTF-8; valid
-- UTF-8 text is kept as is so names and messages stay readable.
local function escape(s, q)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 128 then
      local ch = s:sub(i, i)
      if ESCAPES[ch] then
        out[#out + 1] = ESCAPES[ch]
      elseif ch == q then
        out[#out + 1] = "\\" .. q
      elseif c < 32 or c == 127 then
        out[#out + 1] = string.format("\\x%02x", c)
      else
        out[#out + 1] = ch
      end
      i = i + 1
    else
      local len = c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC0 and 2 or 1
      local seq = s:sub(i, i + len - 1)
      if len > 1 and #seq == len and utf8.len(seq) == 1 then
        local cp = utf8.codepoint(seq)
        -- C1 controls are valid UTF-8 but some terminals obey them.
        out[#out + 1] = cp <= 0x9F and string.format("\\u{%X}", cp) or seq
        i = i + len
      else
        out[#out + 1] = string.format("\\x%02x", c)
        i = i + 1
      end
    end
  end
  return table.concat(out)
end

-- Double quotes, unless only single quotes avoid escaping.
local function quote(s)
  local q = '"'
  if s:find('"', 1, true) and not s:find("'", 1, true) then q = "'" end
  return q .. escape(s, q) .. q
end

local function number(n)
  if math.type(n) == "integer" then return tostring(n) end
  if n ~= n then return "0/0" end
  if n == math.huge then return "math.huge" end
  if n == -math.huge then return "-math.huge" end
  return tostring(n)
end

-- Printed width: ANSI colours take no room, a UTF-8 character takes one.
local function width(s)
  local plain = s:gsub("\27%[[%d;]*m", "")
  return utf8.len(plain) or #plain
end

local function paint(st, kind, s)
  if st.color and COLOR[kind] then return COLOR[kind] .. s .. RESET end
  return s
end

local function address(v)
  return string.format("%p", v)
end

-- The __tostring or __name of a table or userdata, if it has one that works.
-- debug.getmetatable sees past a __metatable field.
local function label(v)
  local mt = debug.getmetatable(v)
  if not mt then return nil end
  if rawget(mt, "__tostring") == nil and type(rawget(mt, "__name")) ~= "string" then
    return nil
  end
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return "<" .. escape(s) .. ">" end
  return nil
end

local function atom(v, st)
  local t = type(v)
  if t == "string" then return paint(st, t, quote(v)) end
  if t == "number" then return paint(st, t, number(v)) end
  if t == "boolean" or t == "nil" then return paint(st, t, tostring(v)) end
  if t == "userdata" then return label(v) or "<userdata: " .. address(v) .. ">" end
  return "<" .. t .. ": " .. address(v) .. ">"
end

local RANK = { number = 1, string = 2, boolean = 3 }

-- Numbers, then strings, then booleans, then everything else grouped by
-- type; addresses only break ties that nothing else can.
local function key_before(a, b)
  local ta, tb = type(a), type(b)
  local ra, rb = RANK[ta] or 4, RANK[tb] or 4
  if ra ~= rb then return ra < rb end
  if ra == 1 or ra == 2 then return a < b end
  if ra == 3 then return not a and b end
  if ta ~= tb then return ta < tb end
  return address(a) < address(b)
end

-- The array part 1..n first, then the other keys sorted; cached per call
-- because a table may be laid out twice (flat attempt, then block).
local function entries(t, st)
  local cached = st.entries[t]
  if cached then return cached end
  local list, n = {}, 0
  while rawget(t, n + 1) ~= nil do
    n = n + 1
    list[n] = { value = rawget(t, n) }
  end
  local keys = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_before)
  for _, k in ipairs(keys) do list[#list + 1] = { key = k, value = rawget(t, k) } end
  local more = 0
  if #list > st.items then
    more = #list - st.items
    for i = #list, st.items + 1, -1 do list[i] = nil end
  end
  cached = { list = list, more = more }
  st.entries[t] = cached
  return cached
end

local flat

-- Keys are never coloured.
local function key_prefix(k, st, level)
  if k == nil then return "" end
  if type(k) == "string" and k:find("^[%a_][%w_]*$") and not RESERVED[k] then
    return k .. " = "
  end
  local color = st.color
  st.color = false
  local s = flat(k, st, level, math.huge)
  st.color = color
  return "[" .. s .. "] = "
end

-- The short forms of a table, or nil when it has to be laid out.
local function table_atom(t, st, level)
  local l = label(t)
  if l then return l end
  if st.path[t] then return "<cycle table: " .. address(t) .. ">" end
  if next(t) == nil then return "{}" end
  if level >= st.depth then return "{...}" end
  return nil
end

local function more_text(n)
  return string.format("... (%d more)", n)
end

-- One line, or nil as soon as it would exceed budget.
function flat(v, st, level, budget)
  local s
  if type(v) ~= "table" then
    s = atom(v, st)
  else
    s = table_atom(v, st, level)
    if not s then
      local e = entries(v, st)
      local parts, used = {}, 4 -- "{ " and " }"
      st.path[v] = true
      for i, item in ipairs(e.list) do
        local p = key_prefix(item.key, st, level + 1)
        local sv = flat(item.value, st, level + 1, budget - used - width(p))
        if not sv then
          st.path[v] = nil
          return nil
        end
        parts[i] = p .. sv
        used = used + width(parts[i]) + 2
        if used - 2 > budget then break end
      end
      st.path[v] = nil
      if e.more > 0 then parts[#parts + 1] = more_text(e.more) end
      s = "{ " .. table.concat(parts, ", ") .. " }"
    end
  end
  if width(s) > budget then return nil end
  return s
end

-- avail is what is left of the current line for v.
local function block(v, st, level, indent, avail)
  if type(v) ~= "table" then return atom(v, st) end
  local short = table_atom(v, st, level)
  if short then return short end
  local one = flat(v, st, level, avail)
  if one then return one end

  local e = entries(v, st)
  local inner = indent .. "  "
  local lines = { "{" }
  st.path[v] = true
  for i, item in ipairs(e.list) do
    local comma = (i < #e.list or e.more > 0) and "," or ""
    local p = key_prefix(item.key, st, level + 1)
    local room = st.width - #inner - width(p) - #comma
    lines[#lines + 1] = inner .. p .. block(item.value, st, level + 1, inner, room) .. comma
  end
  st.path[v] = nil
  if e.more > 0 then lines[#lines + 1] = inner .. more_text(e.more) end
  lines[#lines + 1] = indent .. "}"
  return table.concat(lines, "\n")
end

local function state(opts)
  opts = opts or {}
  local st = { path = {}, entries = {} }
  for k, d in pairs(DEFAULTS) do
    local v = opts[k]
    if v == nil then v = d end
    st[k] = v
  end
  return st
end

-- opts: width (80), depth (8: deeper tables show as {...}), items (200 per
-- table, then "... (N more)"), color (false: ANSI colours when true).
function M.format(value, opts)
  local st = state(opts)
  return block(value, st, 0, "", st.width)
end

-- Several values, one per line: how a REPL shows multiple returns.
-- packed is a table.pack() result so trailing nils are kept.
function M.list(packed, opts)
  local out = {}
  for i = 1, packed.n or #packed do out[i] = M.format(packed[i], opts) end
  return table.concat(out, "\n")
end

function M.values(...)
  return M.list(table.pack(...))
end

-- Exact Lua source for plain data -------------------------------------------------

local function literal(v, out, active, depth, path)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = ("%q"):format(v)
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif math.type(v) == "integer" then
    out[#out + 1] = v == math.mininteger and "math.mininteger" or ("%d"):format(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      return nil, ("%s: %s has no exact literal"):format(path, tostring(v))
    end
    out[#out + 1] = ("%.17g"):format(v)
  elseif t == "table" then
    if active[v] then return nil, path .. ": a cycle" end
    if depth > 64 then return nil, path .. ": nested too deeply" end
    active[v] = true
    local keys = {}
    for k in next, v do
      if type(k) ~= "string" and math.type(k) ~= "integer" then
        return nil, ("%s: a key of type %s"):format(path, type(k))
      end
      keys[#keys + 1] = k
    end
    table.sort(keys, function(a, b)
      if type(a) ~= type(b) then return type(a) == "number" end
      return a < b
    end)
    out[#out + 1] = "{"
    for _, k in ipairs(keys) do
      out[#out + 1] = type(k) == "string" and ("[%q]="):format(k) or ("[%d]="):format(k)
      local ok, err = literal(v[k], out, active, depth + 1, path .. "." .. tostring(k))
      if not ok then return nil, err end
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
    active[v] = nil
  else
    return nil, ("%s: a %s cannot be written as Lua source"):format(path, t)
  end
  return true
end

--- Lua source that evaluates to a copy of v (strings, numbers, booleans and
--- tables of them), or nil and an error naming the path of what cannot be
--- written (functions, userdata, cycles, NaN).
function M.literal(v)
  local out = {}
  local ok, err = literal(v, out, {}, 0, "value")
  if not ok then return nil, err end
  return table.concat(out)
end

return M
