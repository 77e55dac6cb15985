-- Driver of fuzz_grammar: the lpeg grammars of pogo.grammar. The first
-- byte of the input picks the grammar, the rest is the text.
--
-- Oracles: every parser returns a value or nil and a string, never raises;
--   duration  a finite number >= 0; format_duration of it parses back to
--             at most it (the format truncates; checked below 1e15 s, past
--             2^63 s it prints floats with exponents)
--   size      an integer >= 0 that reads back as itself, bare and with "B"
--   address   a port from 1 to 65535; host:port (host bracketed when it has
--             a colon) reads back as the same address
--   argv      at least one word; the words quoted back (single quotes)
--             read back as the same words
--   pattern   a glob matches a line made from it ("*" -> "xyz", "?" -> "q",
--             "\c" -> c) with text around it

local root = ...
local check = dofile(root .. "/tests/fuzz/oracle.lua").check
local grammar = require "pogo.grammar"

-- Calls fn(s, ...); the value, or nil once the failure has been checked.
local function parse(name, fn, s, ...)
  local ok, v, err = pcall(fn, s, ...)
  check(ok, "%s(%q) raised: %s", name, s, tostring(v))
  if v == nil then
    check(type(err) == "string" and err ~= "", "%s(%q) failed without a message", name, s)
  end
  return v
end

local function duration(s)
  local d = parse("duration", grammar.duration, s)
  if d == nil then return end
  check(type(d) == "number" and d >= 0 and d < math.huge, "duration(%q) = %s", s, tostring(d))
  if d < 1e15 then
    local text = grammar.format_duration(d)
    local back = parse("duration", grammar.duration, text)
    check(back and back <= d * (1 + 1e-9), "duration(%q) = %s, formatted %q, reads back as %s", s, d, text, tostring(back))
  end
end

local function size(s)
  local n = parse("size", grammar.size, s)
  if n == nil then return end
  check(math.type(n) == "integer" and n >= 0, "size(%q) = %s", s, tostring(n))
  check(grammar.size(tostring(n)) == n and grammar.size(n .. "B") == n, "size(%q) = %d does not read back", s, n)
end

local function address(s, default_port)
  local a = parse("address", grammar.address, s, default_port)
  if a == nil then return end
  check(type(a.host) == "string" and math.type(a.port) == "integer" and a.port >= 1 and a.port <= 65535,
    "address(%q) = %s:%s", s, tostring(a.host), tostring(a.port))
  local text = (a.host:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(a.host, a.port)
  local b = parse("address", grammar.address, text)
  check(b and b.host == a.host and b.port == a.port, "address(%q) as %q does not read back", s, text)
end

local function quote(w) return "'" .. w:gsub("'", [['\'']]) .. "'" end

local function argv(s)
  local words = parse("argv", grammar.argv, s)
  if words == nil then return end
  check(#words > 0, "argv(%q) gave no words", s)
  local quoted = {}
  for i, w in ipairs(words) do
    check(type(w) == "string", "argv(%q) word %d is a %s", s, i, type(w))
    quoted[i] = quote(w)
  end
  local text = table.concat(quoted, " ")
  local again = parse("argv", grammar.argv, text)
  check(again and #again == #words, "argv(%q) quoted as %q does not read back", s, text)
  for i, w in ipairs(words) do check(again[i] == w, "argv(%q) word %d: %q reads back as %q", s, i, w, again[i]) end
end

-- A line the glob s must match: its literal text with a stand-in for each wildcard.
local function instance(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == "\\" then
      out[#out + 1] = s:sub(i + 1, i + 1)
      i = i + 2
    else
      out[#out + 1] = c == "*" and "xyz" or c == "?" and "q" or c
      i = i + 1
    end
  end
  return "before " .. table.concat(out) .. " after"
end

local function pattern(s)
  local p = parse("pattern", grammar.pattern, s)
  if p == nil then return end
  local line = instance(s)
  local ok, matched = pcall(grammar.match, p, line)
  check(ok, "match(%q, %q) raised: %s", s, line, tostring(matched))
  check(matched == true, "pattern %q does not match %q", s, line)
end

local GRAMMARS = {
  duration, size, address,
  function(s) return address(s, 4370) end,
  argv, pattern,
}

return function(input)
  if #input == 0 then return end
  GRAMMARS[input:byte(1) % #GRAMMARS + 1](input:sub(2))
end
