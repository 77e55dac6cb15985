-- Grammars for the values users type in configs and child specs:
-- durations, sizes, addresses, command lines and readiness patterns.
-- Every parser returns the value, or nil and a message that says what was
-- expected, what was given and where (a 1-based byte position).
local lpeg = require "lpeg"

local M = {}

local P, R, S, V = lpeg.P, lpeg.R, lpeg.S, lpeg.V
local C, Cc, Cs, Ct, Cmt = lpeg.C, lpeg.Cc, lpeg.Cs, lpeg.Ct, lpeg.Cmt

local digit = R "09"
local alpha = R("az", "AZ")
local alnum = alpha + digit
local blank = S " \t\r\n\f\v"
local ws = blank ^ 0
local any = P(1)

-- One UTF-8 sequence, or a lone byte when the input is not valid UTF-8.
local cont = R "\128\191"
local utf8char = R "\0\127" + R "\194\223" * cont + R "\224\239" * cont * cont
  + R "\240\244" * cont * cont * cont + any

-- lpeg 1.0 has no labelled failures, so a failed expectation throws a table
-- out of lpeg.match (its stacks are Lua userdata: the longjmp is safe) and
-- run() turns it back into nil, detail.
local function fail(detail)
  return Cmt(P(true), function(s, i)
    local d = detail
    if type(d) == "function" then d = d(s, i) end
    error({ at = i, detail = d }, 0)
  end)
end

local function caught(ok, ...)
  if ok then return ... end
  local f = ...
  if type(f) == "table" and f.detail then return nil, f end
  error(f, 0)
end

local function run(patt, s)
  return caught(pcall(lpeg.match, patt, s))
end

local function shown(v)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then return v ~= v and "NaN" or tostring(v) end
  if t == "nil" then return "nothing" end
  return "a " .. t
end

local function message(headline, input, detail)
  local msg = headline .. ", got " .. shown(input)
  if detail then msg = msg .. ": " .. detail end
  return msg
end

-- The word (run of letters) at position i, for "unknown unit" messages.
local function word_at(s, i)
  return s:match("^[%a\181\194]+", i) or s:sub(i, i)
end

-- Durations -----------------------------------------------------------------

local DURATION = 'expected a duration like "250ms" or "1m30s"'

-- Sub-second units divide rather than multiply so that "250ms" is exactly
-- 0.25 and not 250 * 0.001.
local dunit = P "ns" * Cc(1, 1e9) + (P "us" + P "µs") * Cc(1, 1e6)
  + P "ms" * Cc(1, 1e3) + P "s" * Cc(1, 1) + P "m" * Cc(60, 1)
  + P "h" * Cc(3600, 1) + P "d" * Cc(86400, 1)

local decimal = C(digit ^ 1 * ("." * digit ^ 0) ^ -1 + "." * digit ^ 1) / tonumber

local function unknown_unit(s, i)
  if s:find("^[%a\181\194]", i) then
    return string.format("unknown unit %q at position %d (units: ns, us, ms, s, m, h, d)",
      word_at(s, i), i)
  end
  return string.format("expected a unit (ns, us, ms, s, m, h, d) at position %d", i)
end

local dpart = decimal * ws * (dunit * -alpha + fail(unknown_unit))

local function expected_number(_, i)
  return string.format("expected a number at position %d", i)
end

local duration = P {
  ws * (V "bare" + V "parts" + fail(expected_number)),
  bare = Ct(decimal * Cc(1, 1)) * ws * -1,
  parts = Ct((dpart * ws) ^ 1) * (-1 + fail(expected_number)),
}

local function whole_as_integer(v)
  return math.tointeger(v) or v
end

-- Bare numbers (Lua numbers or numeric strings) are seconds. Whole results
-- come back as integers. Words such as "infinity" are the caller's business;
-- a Lua math.huge passes through as a number.
function M.duration(s)
  if type(s) == "number" then
    if s ~= s then return nil, message(DURATION, s, "not a number") end
    if s < 0 then return nil, message(DURATION, s, "durations cannot be negative") end
    return whole_as_integer(s)
  end
  if type(s) ~= "string" then return nil, message(DURATION, s) end
  if s:find("^%s*$") then return nil, message(DURATION, s, "empty") end
  if s:find("^%s*%-") then return nil, message(DURATION, s, "durations cannot be negative") end
  local parts, f = run(duration, s)
  if not parts then
    return nil, message(DURATION, s, f and f.detail)
  end
  local total = 0
  for i = 1, #parts, 3 do
    total = total + parts[i] * parts[i + 1] / parts[i + 2]
  end
  -- Hundreds of digits overflow to inf, which no string should mean.
  if total == math.huge then return nil, message(DURATION, s, "too large") end
  return whole_as_integer(total)
end

local function trunc(x)
  -- The epsilon keeps 0.29 * 1000 from printing as 289.
  return math.floor(x + 1e-6)
end

-- Short human form for uptimes and timeouts; M.duration parses it back.
-- Below a minute it keeps one decimal ("1.5s"); above, the two largest
-- units, truncated ("1m30s", "2h", "3d4h").
function M.format_duration(seconds)
  if type(seconds) ~= "number" then
    error("format_duration: expected a number, got " .. type(seconds), 2)
  end
  if seconds ~= seconds then return "nan" end
  if seconds < 0 then return "-" .. M.format_duration(-seconds) end
  if seconds == math.huge then return "inf" end
  if seconds == 0 then return "0s" end
  if seconds < 1e-6 then return trunc(seconds * 1e9) .. "ns" end
  if seconds < 1e-3 then return trunc(seconds * 1e6) .. "us" end
  if seconds < 1 then return trunc(seconds * 1e3) .. "ms" end
  if seconds < 60 then
    local tenths = trunc(seconds * 10)
    if tenths % 10 == 0 then return (tenths // 10) .. "s" end
    return string.format("%d.%ds", tenths // 10, tenths % 10)
  end
  local n = trunc(seconds)
  local units = { { "d", 86400 }, { "h", 3600 }, { "m", 60 }, { "s", 1 } }
  for i, u in ipairs(units) do
    if n >= u[2] then
      local out = (n // u[2]) .. u[1]
      local nxt = units[i + 1]
      if nxt then
        local rest = (n % u[2]) // nxt[2]
        if rest > 0 then out = out .. rest .. nxt[1] end
      end
      return out
    end
  end
end

-- Sizes ---------------------------------------------------------------------

local SIZE = 'expected a size like "512MiB" or "10GB"'

local function ipow(b, e)
  local r = 1
  for _ = 1, e do r = r * b end
  return r
end

-- Case-insensitive literal: units are, and a "b" suffix always means bytes.
local function ci(word)
  local p = P(true)
  for c in word:gmatch(".") do p = p * S(c:lower() .. c:upper()) end
  return p
end

local function sunit(prefix, power)
  return (ci(prefix .. "ib") + ci(prefix .. "i")) * Cc(ipow(1024, power))
    + (ci(prefix .. "b") + ci(prefix)) * Cc(ipow(1000, power))
end
local size_unit = sunit("k", 1) + sunit("m", 2) + sunit("g", 3) + sunit("t", 4)
  + sunit("p", 5) + ci "b" * Cc(1) + Cc(1)

local size = ws * (C(digit ^ 1) + fail(expected_number)) * ("." * C(digit ^ 0) + Cc "") * ws
  * (size_unit * ws * -1 + fail(function(s, i)
    if s:find("^%a", i) then
      return string.format("unknown unit %q at position %d (units: B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB)",
        word_at(s, i), i)
    end
    return string.format("unexpected %q at position %d", s:sub(i, i), i)
  end))

-- Decimals are computed in integers so "1.1KB" is exactly 1100.
function M.size(s)
  if type(s) == "number" then
    local n = math.tointeger(s)
    if s < 0 then return nil, message(SIZE, s, "sizes cannot be negative") end
    if not n then return nil, message(SIZE, s, "not a whole number of bytes") end
    return n
  end
  if type(s) ~= "string" then return nil, message(SIZE, s) end
  if s:find("^%s*$") then return nil, message(SIZE, s, "empty") end
  if s:find("^%s*%-") then return nil, message(SIZE, s, "sizes cannot be negative") end
  local int, frac, mult = run(size, s)
  if not int then
    local f = frac
    return nil, message(SIZE, s, f and f.detail)
  end
  frac = frac:gsub("0+$", "")
  local digits = (int .. frac):gsub("^0+", "")
  if #frac > 18 then return nil, message(SIZE, s, "too many decimal places") end
  -- tonumber gives a float past math.maxinteger: too large, however many digits.
  local mantissa = math.tointeger(tonumber(digits ~= "" and digits or "0"))
  if not mantissa or mantissa > math.maxinteger // mult then return nil, message(SIZE, s, "too large") end
  local scaled, scale = mantissa * mult, ipow(10, #frac)
  if scaled % scale ~= 0 then
    return nil, message(SIZE, s, "not a whole number of bytes")
  end
  return scaled // scale
end

-- Addresses -----------------------------------------------------------------

local ADDRESS = 'expected an address like "host:4370", "10.0.0.2:4370" or "[::1]:4370"'

-- No leading zeros: inet_aton reads "010" as octal.
local octet = Cmt(C(P "0" + R "19" * digit ^ -2), function(_, i, d)
  return tonumber(d) <= 255 and i
end)
local ipv4 = octet * "." * octet * "." * octet * "." * octet

-- RFC 1123 labels: letters, digits, inner hyphens.
local label = alnum * (P "-" ^ 0 * alnum) ^ 0
local hostname = label * ("." * label) ^ 0 * P "." ^ -1

local function is_ipv4(s)
  return lpeg.match(ipv4 * -1, s) ~= nil
end

local function is_hostname(s)
  if #s > 253 or not lpeg.match(hostname * -1, s) then return false end
  local last
  for l in s:gmatch("[^.]+") do
    if #l > 63 then return false end
    last = l
  end
  -- An all-numeric last label is a mistyped IPv4 address, not a name.
  return not last:find("^%d+$")
end

local xdigit = R("09", "af", "AF")
local h16 = xdigit * xdigit ^ -3

-- Split on "::" and count groups; an embedded IPv4 tail counts as two.
local function is_ipv6(s)
  local addr, zone = s:match("^([^%%]*)%%(.*)$")
  if addr then
    if not zone:find("^[%w%-_.]+$") then return false end
    s = addr
  end
  local function groups(side)
    if side == "" then return 0 end
    local n = 0
    local list = {}
    for g in (side .. ":"):gmatch("([^:]*):") do list[#list + 1] = g end
    for i, g in ipairs(list) do
      if i == #list and is_ipv4(g) then
        n = n + 2
      elseif lpeg.match(h16 * -1, g) then
        n = n + 1
      else
        return nil
      end
    end
    return n
  end
  local head, tail = s:match("^(.-)::(.*)$")
  if head then
    if tail:find("::", 1, true) then return false end
    -- An IPv4 tail is only allowed at the very end.
    if head:find("%.") then return false end
    local a, b = groups(head), groups(tail)
    return a ~= nil and b ~= nil and a + b <= 7
  end
  return groups(s) == 8
end

local function check_port(p, at)
  local n = p:find("^%d+$") and #p <= 5 and tonumber(p)
  if not n or n < 1 or n > 65535 then
    return nil, string.format("port must be a number from 1 to 65535, got %q at position %d", p, at)
  end
  return n
end

local function check_host(h)
  if is_ipv4(h) or is_hostname(h) then return true end
  if h:find("^[%d.]+$") then return nil, string.format("invalid IPv4 address %q", h) end
  return nil, string.format("invalid host name %q (RFC 1123: letters, digits, hyphens and dots)", h)
end

-- Returns { host = ..., port = integer }. host is "" for ":4370" (any
-- address) and an IPv6 address without brackets. default_port is used when
-- the port is omitted; without it a port is required.
function M.address(s, default_port)
  if default_port ~= nil then
    local dp = type(default_port) == "number" and math.tointeger(default_port)
    if not dp or dp < 1 or dp > 65535 then
      error("address: default_port must be an integer from 1 to 65535", 2)
    end
    default_port = dp
  end
  if type(s) ~= "string" then return nil, message(ADDRESS, s) end
  local lead, body = s:match("^(%s*)(.-)%s*$")
  local base = #lead -- so positions refer to the caller's string
  local function bad(detail) return nil, message(ADDRESS, s, detail) end
  local function need_default()
    if default_port then return default_port end
    return nil, "missing port (add \":PORT\")"
  end
  if body == "" then return bad("empty") end

  local host, port, err
  if body:sub(1, 1) == "[" then
    local close = body:find("]", 2, true)
    if not close then return bad("missing \"]\" after the IPv6 address") end
    host = body:sub(2, close - 1)
    if not is_ipv6(host) then return bad(string.format("invalid IPv6 address %q", host)) end
    local rest = body:sub(close + 1)
    if rest == "" then
      port, err = need_default()
    elseif rest:sub(1, 1) == ":" then
      port, err = check_port(rest:sub(2), base + close + 2)
    else
      return bad(string.format("expected \":PORT\" after \"]\" at position %d", base + close + 1))
    end
    if not port then return bad(err) end
    return { host = host, port = port }
  end

  local colons = select(2, body:gsub(":", ""))
  if colons >= 2 then
    if is_ipv6(body) then
      if default_port then return { host = body, port = default_port } end
      return bad('missing port (an IPv6 address takes one in brackets, like "[::1]:4370")')
    end
    if is_ipv6(body:match("^(.*):")) then
      return bad('IPv6 addresses must be bracketed when a port follows, like "[::1]:4370"')
    end
    return bad(string.format("invalid IPv6 address %q", body))
  end
  if colons == 1 then
    local at = body:find(":", 1, true)
    host = body:sub(1, at - 1)
    port, err = check_port(body:sub(at + 1), base + at + 1)
    if not port then return bad(err) end
  else
    host = body
    port, err = need_default()
    if not port then return bad(err) end
  end
  if host ~= "" then
    local ok, herr = check_host(host)
    if not ok then return bad(herr) end
  end
  return { host = host, port = port }
end

-- Command lines -------------------------------------------------------------

-- POSIX-shell-like word splitting, without a shell: no expansion of any
-- kind. "$VAR", "~", globs and "#" stay literal characters; pipes,
-- redirections, ";", "&", "(", ")" and backquotes are refused because
-- passing them as arguments would silently mean something else.

local function unterminated(kind)
  return Cmt(P(true), function(_, i)
    error({ at = i - 1, detail = string.format("unterminated %s quote starting at position %d", kind, i - 1) }, 0)
  end)
end

local squoted = (P "'" / "") * (1 - P "'") ^ 0 * (P "'" / "")
local dquoted = (P '"' / "") * ((P "\\\n" / "") + (P "\\" / "") * S '\\"$`' + (1 - P '"')) ^ 0
  * (P '"' / "")
local continuation = P "\\\n" / ""
local escaped = (P "\\" / "") * any
local operator = C(P "&&" + "||" + ">>" + "<<" + ">&" + "<&" + "$(" + S "|&;<>()`")
local special = S "'\"\\|&;<>()`" + blank
local plain = (1 - special - P "$(") ^ 1

local shell_op = Cmt(lpeg.Cp() * operator, function(_, _, at, op)
  error({ at = at, op = op, detail = string.format("%q at position %d is a shell operator", op, at) }, 0)
end)

local word = Cs((plain + squoted + dquoted + continuation + escaped
  + P "'" * unterminated "single" + P '"' * unterminated "double"
  + P "\\" * fail(function(_, i) return string.format("nothing to escape after the backslash at position %d", i - 1) end)
  + shell_op) ^ 1)
local gap = (blank + P "\\\n") ^ 0
local command = gap * Ct((word * gap) ^ 0) * -1

local function sh_suggestion(s)
  if s:find('[%c"\\]') then return '"..."' end
  return '"' .. s .. '"'
end

-- Returns the list of words; an empty command is an error.
function M.argv(s)
  if type(s) ~= "string" then return nil, message("expected a command string", s) end
  local words, f = run(command, s)
  if not words then
    if f and f.op then
      return nil, string.format(
        'invalid command %q: %s, and pogo does not run a shell; quote it, or use cmd = {"/bin/sh", "-c", %s}',
        s, f.detail, sh_suggestion(s))
    end
    return nil, string.format("invalid command %q: %s", s, f and f.detail or "unexpected input")
  end
  if #words == 0 then return nil, "empty command" end
  return words
end

-- Readiness patterns --------------------------------------------------------

-- Find p anywhere in the subject; the canonical lpeg search loop.
local function search(p)
  return P { p + any * V(1) }
end

local glob_token = P "\\" * C(any) / function(c) return { lit = c } end
  + P "*" ^ 1 / function() return { star = true } end
  + P "?" / function() return { one = true } end
  + P "\\" * -1 * fail(function(_, i)
    return string.format("nothing to escape after the backslash at position %d", i - 1)
  end)
  + C((1 - S "\\*?") ^ 1) / function(c) return { lit = c } end
local glob = Ct(glob_token ^ 0) * -1

-- Without anchors, the leftmost match of each "*"-separated segment is
-- always a right choice (later text can only shrink what follows), so a
-- chain of searches matches like a backtracking glob in linear passes.
local function compile(tokens)
  local patt, seg = P(true), P(true)
  for _, t in ipairs(tokens) do
    if t.star then
      patt, seg = patt * search(seg), P(true)
    elseif t.one then
      seg = seg * utf8char
    else
      seg = seg * P(t.lit)
    end
  end
  return patt * search(seg)
end

-- Glob-like patterns searched anywhere in a line: "*" is any run of
-- characters, "?" one UTF-8 character, a backslash makes the next character
-- literal. An lpeg pattern is accepted as is and searched the same way. The
-- result yields true on a match and drops any captures of its own.
function M.pattern(s)
  if lpeg.type(s) == "pattern" then
    return search(s) / 0 * Cc(true)
  end
  if type(s) ~= "string" then
    return nil, message('expected a readiness pattern like "listening on *"', s)
  end
  if s == "" then return nil, "empty readiness pattern" end
  local tokens, f = run(glob, s)
  if not tokens then
    return nil, message('expected a readiness pattern like "listening on *"', s, f and f.detail)
  end
  return compile(tokens) / 0 * Cc(true)
end

-- pat is a result of M.pattern (or a string it accepts).
function M.match(pat, line)
  if type(pat) == "string" then
    local p, err = M.pattern(pat)
    if not p then error(err, 2) end
    pat = p
  end
  if type(line) ~= "string" then return false end
  return lpeg.match(pat, line) == true
end

return M
