local pretty = require "pogo.pretty"

local format = pretty.format

local function addr(v)
  return string.format("%p", v)
end

describe("pretty.format scalars #unit", function()
  it("shows integers and floats as Lua does", function()
    assert.are.equal("1", format(1))
    assert.are.equal("1.0", format(1.0))
    assert.are.equal("-0.0", format(-0.0))
    assert.are.equal("0.5", format(0.5))
    assert.are.equal("1e+100", format(1e100))
    assert.are.equal(tostring(math.mininteger), format(math.mininteger))
  end)

  it("writes non-finite floats as Lua expressions", function()
    assert.are.equal("math.huge", format(math.huge))
    assert.are.equal("-math.huge", format(-math.huge))
    assert.are.equal("0/0", format(0 / 0))
  end)

  it("shows booleans and nil", function()
    assert.are.equal("true", format(true))
    assert.are.equal("false", format(false))
    assert.are.equal("nil", format(nil))
  end)

  it("quotes strings as valid Lua", function()
    assert.are.equal('"hello"', format("hello"))
    assert.are.equal('""', format(""))
    assert.are.equal([["a\nb\tc\\d\r"]], format("a\nb\tc\\d\r"))
    assert.are.equal([["\a\b\f\v"]], format("\a\b\f\v"))
    local s = "x\n\"y\"\0z\\"
    assert.are.equal(s, load("return " .. format(s))())
  end)

  it("prefers single quotes when that avoids escaping", function()
    assert.are.equal([['say "hi"']], format('say "hi"'))
    assert.are.equal([["it's \"x\""]], format("it's \"x\""))
    assert.are.equal([["it's"]], format("it's"))
  end)

  it("escapes control characters in hex, so a following digit is safe", function()
    assert.are.equal([["\x001"]], format("\0" .. "1"))
    assert.are.equal([["\x1b[31m"]], format("\27[31m"))
    assert.are.equal([["\x7f"]], format("\127"))
  end)

  it("keeps valid UTF-8 and escapes invalid bytes and C1 controls", function()
    assert.are.equal('"héllo → ✓ 😀"', format("héllo → ✓ 😀"))
    assert.are.equal([["\xff\xfe"]], format("\xff\xfe"))
    assert.are.equal([["\xc3("]], format("\xc3("))
    assert.are.equal([["\xed\xa0\x80"]], format("\xed\xa0\x80")) -- a surrogate
    assert.are.equal([["\u{85}"]], format("\u{85}"))
    local s = "é\xff\u{9b}"
    assert.are.equal(s, load("return " .. format(s))())
  end)

  it("shows functions, threads and userdata with their address", function()
    local f = function() end
    assert.are.equal("<function: " .. addr(f) .. ">", format(f))
    local co = coroutine.create(f)
    assert.are.equal("<thread: " .. addr(co) .. ">", format(co))
  end)
end)

describe("pretty.format tables #unit", function()
  it("shows empty tables and arrays in order", function()
    assert.are.equal("{}", format({}))
    assert.are.equal("{ 1, 2, 3 }", format({ 1, 2, 3 }))
    assert.are.equal('{ "a", true, 1.5 }', format({ "a", true, 1.5 }))
  end)

  it("shows keys after a hole with brackets", function()
    assert.are.equal("{ 1, 2, [4] = 4 }", format({ 1, 2, nil, 4 }))
    assert.are.equal("{ [2] = 2 }", format({ [2] = 2 }))
  end)

  it("writes identifier keys bare and others in brackets", function()
    assert.are.equal('{ name = "x" }', format({ name = "x" }))
    assert.are.equal('{ ["a b"] = 1 }', format({ ["a b"] = 1 }))
    assert.are.equal('{ ["end"] = 1 }', format({ ["end"] = 1 }))
    assert.are.equal('{ ["1x"] = 1 }', format({ ["1x"] = 1 }))
    assert.are.equal("{ _x9 = 1 }", format({ _x9 = 1 }))
    assert.are.equal("{ [1.5] = 1 }", format({ [1.5] = 1 }))
    assert.are.equal("{ [math.huge] = 1 }", format({ [math.huge] = 1 }))
    assert.are.equal("{ [true] = 1 }", format({ [true] = 1 }))
  end)

  it("sorts keys: numbers, then strings, then booleans, then the rest", function()
    local t = { "first", z = 1, a = 2, [10] = 3, [-1] = 4, [2.5] = 5, [true] = 6, [false] = 7, ["a b"] = 8 }
    assert.are.equal(
      '{ "first", [-1] = 4, [2.5] = 5, [10] = 3, a = 2, ["a b"] = 8, z = 1, [false] = 7, [true] = 6 }',
      format(t, { width = 200 }))
  end)

  it("orders other keys by type and stably", function()
    local f = function() end
    local k = { 1 }
    local t = { [k] = "t", [f] = "f", s = 1 }
    local out = format(t)
    assert.are.equal('{ s = 1, [<function: ' .. addr(f) .. '>] = "f", [{ 1 }] = "t" }', out)
    assert.are.equal(out, format(t))
  end)

  it("round-trips plain data through load", function()
    local t = { 1, 2, { x = "y" }, name = "web-1", ["a-b"] = { true, false }, [10] = 0.5 }
    assert.are.same(t, load("return " .. format(t))())
  end)

  it("keeps short tables on one line", function()
    assert.are.equal('{ a = { b = { 1, 2 } }, c = "d" }', format({ a = { b = { 1, 2 } }, c = "d" }))
  end)

  it("breaks tables wider than opts.width, one entry per line", function()
    local t = { name = "web-1", tags = { "web", "ssd" }, listen = "0.0.0.0:4370" }
    assert.are.equal('{ listen = "0.0.0.0:4370", name = "web-1", tags = { "web", "ssd" } }', format(t))
    assert.are.equal(table.concat({
      "{",
      '  listen = "0.0.0.0:4370",',
      '  name = "web-1",',
      '  tags = { "web", "ssd" }',
      "}",
    }, "\n"), format(t, { width = 40 }))
  end)

  it("breaks only the levels that do not fit, indenting by two", function()
    local t = { a = { b = { "xxxxxxxxxx", "yyyyyyyyyy" } }, c = 1 }
    assert.are.equal(table.concat({
      "{",
      "  a = {",
      "    b = {",
      '      "xxxxxxxxxx",',
      '      "yyyyyyyyyy"',
      "    }",
      "  },",
      "  c = 1",
      "}",
    }, "\n"), format(t, { width = 24 }))
  end)

  it("counts the width of UTF-8 text in characters", function()
    local t = { "ééééé" }
    assert.are.equal('{ "ééééé" }', format(t, { width = 11 }))
    assert.are.equal('{\n  "ééééé"\n}', format(t, { width = 10 }))
  end)

  it("marks cycles", function()
    local t = { name = "loop" }
    t.self = t
    assert.are.equal('{ name = "loop", self = <cycle table: ' .. addr(t) .. "> }", format(t))
    local a, b = {}, {}
    a.b, b.a = b, a
    assert.are.equal("{ b = { a = <cycle table: " .. addr(a) .. "> } }", format(a))
  end)

  it("marks cycles through keys", function()
    local t = {}
    t[t] = 1
    assert.are.equal("{ [<cycle table: " .. addr(t) .. ">] = 1 }", format(t))
  end)

  it("prints a shared table in full each time it is reached", function()
    local shared = { 1, 2 }
    assert.are.equal("{ a = { 1, 2 }, b = { 1, 2 } }", format({ a = shared, b = shared }))
    assert.are.equal("{ { 1, 2 }, { 1, 2 } }", format({ shared, shared }))
  end)

  it("marks cycles the same way when the table is broken over lines", function()
    local t = { pad = string.rep("x", 80) }
    t.self = t
    assert.are.equal(table.concat({
      "{",
      '  pad = "' .. string.rep("x", 80) .. '",',
      "  self = <cycle table: " .. addr(t) .. ">",
      "}",
    }, "\n"), format(t))
  end)

  it("stops at opts.depth (8 by default)", function()
    local t = { a = { b = { c = 1 } } }
    assert.are.equal("{ a = { b = {...} } }", format(t, { depth = 2 }))
    assert.are.equal("{ a = {...} }", format(t, { depth = 1 }))
    assert.are.equal("{...}", format(t, { depth = 0 }))
    assert.are.equal("{ a = {} }", format({ a = {} }, { depth = 1 }))
    local deep = { 1 }
    for _ = 1, 9 do deep = { deep } end
    assert.are.equal("{ { { { { { { { {...} } } } } } } } }", format(deep))
  end)

  it("shows at most opts.items entries per table (200 by default)", function()
    local t = {}
    for i = 1, 10 do t[i] = i end
    assert.are.equal("{ 1, 2, 3, ... (7 more) }", format(t, { items = 3 }))
    t.x = 1
    assert.are.equal("{ 1, 2, 3, ... (8 more) }", format(t, { items = 3 }))
    local big = {}
    for i = 1, 250 do big[i] = 0 end
    local out = format(big)
    assert.are.equal("  ... (50 more)\n}", out:sub(-17))
    assert.are.equal(200, select(2, out:gsub("0,", "")))
  end)

  it("puts the items marker on its own line when broken", function()
    local t = { string.rep("a", 30), string.rep("b", 30), string.rep("c", 30) }
    assert.are.equal(table.concat({
      "{",
      '  "' .. string.rep("a", 30) .. '",',
      '  "' .. string.rep("b", 30) .. '",',
      "  ... (1 more)",
      "}",
    }, "\n"), format(t, { items = 2, width = 40 }))
  end)

  it("does not call __index, __pairs or __len", function()
    local t = setmetatable({ 1 }, {
      __index = function() error("__index called") end,
      __pairs = function() error("__pairs called") end,
      __len = function() error("__len called") end,
    })
    assert.are.equal("{ 1 }", format(t))
  end)
end)

describe("pretty.format metamethods #unit", function()
  it("shows __tostring of a table", function()
    local p = setmetatable({ x = 1, y = 2 }, { __tostring = function(s) return "Point(" .. s.x .. ", " .. s.y .. ")" end })
    assert.are.equal("<Point(1, 2)>", format(p))
    assert.are.equal("{ at = <Point(1, 2)> }", format({ at = p }))
  end)

  it("shows __name of a table", function()
    local t = setmetatable({}, { __name = "pogo.child" })
    assert.are.equal("<pogo.child: " .. addr(t) .. ">", format(t))
  end)

  it("shows __name or __tostring of userdata", function()
    assert.matches("^<file %(0x%x+%)>$", format(io.stdout))
    assert.are.equal("<file (closed)>", format((function()
      local f = io.tmpfile()
      f:close()
      return f
    end)()))
  end)

  it("escapes control characters from __tostring", function()
    local t = setmetatable({}, { __tostring = function() return "a\nb" end })
    assert.are.equal([[<a\nb>]], format(t))
  end)

  it("falls back to the plain table when __tostring fails", function()
    local t = setmetatable({ 1 }, { __tostring = function() error("boom") end })
    assert.are.equal("{ 1 }", format(t))
    local u = setmetatable({ 1 }, { __tostring = function() return {} end })
    assert.are.equal("{ 1 }", format(u))
  end)

  it("sees past __metatable", function()
    local t = setmetatable({}, { __metatable = "locked", __name = "secret" })
    assert.are.equal("<secret: " .. addr(t) .. ">", format(t))
    local plain = setmetatable({ 1 }, { __metatable = false })
    assert.are.equal("{ 1 }", format(plain))
  end)
end)

describe("pretty.format colours #unit", function()
  local G, C, M, R = "\27[32m", "\27[36m", "\27[35m", "\27[0m"

  it("is off by default", function()
    assert.is_nil(format({ "a", 1, true }):find("\27", 1, true))
  end)

  it("paints strings green, numbers cyan, booleans and nil magenta", function()
    assert.are.equal(G .. '"a"' .. R, format("a", { color = true }))
    assert.are.equal(C .. "1.5" .. R, format(1.5, { color = true }))
    assert.are.equal(M .. "false" .. R, format(false, { color = true }))
    assert.are.equal(M .. "nil" .. R, format(nil, { color = true }))
  end)

  it("leaves keys plain", function()
    assert.are.equal("{ " .. C .. "1" .. R .. ", a = " .. G .. '"x"' .. R .. ', ["b c"] = ' .. M .. "true" .. R .. " }",
      format({ 1, a = "x", ["b c"] = true }, { color = true }))
    assert.are.equal("{ [1.5] = " .. C .. "1" .. R .. " }", format({ [1.5] = 1 }, { color = true }))
  end)

  it("does not count colour codes against the width", function()
    local t = { "aaaa", "bbbb" }
    assert.are.equal("{ " .. G .. '"aaaa"' .. R .. ", " .. G .. '"bbbb"' .. R .. " }",
      format(t, { color = true, width = 18 }))
  end)
end)

describe("pretty.values #unit", function()
  it("puts one value per line", function()
    assert.are.equal('1\n"x"\n{ 2 }', pretty.values(1, "x", { 2 }))
  end)

  it("keeps nils, including trailing ones", function()
    assert.are.equal("nil\n1\nnil", pretty.values(nil, 1, nil))
  end)

  it("is empty for no values", function()
    assert.are.equal("", pretty.values())
  end)

  it("takes options through list", function()
    assert.are.equal("\27[36m1\27[0m\n\27[35mnil\27[0m", pretty.list(table.pack(1, nil), { color = true }))
  end)
end)
