local helper = require "helper"

describe("#unit pogo.sandbox", function()
  local sandbox

  before_each(function()
    helper.stub_core()
    sandbox = helper.fresh "pogo.sandbox"
  end)

  it("runs a text chunk named after its file", function()
    local ok, v = sandbox.run("return 1 + 1", "f.lua", sandbox.strict(sandbox.base()))
    assert.is_true(ok)
    assert.are.equal(2, v)
  end)

  it("makes reading an undefined global an error naming file and line", function()
    local ok, err = sandbox.run("local a = 1\nreturn nope", "f.lua", sandbox.strict(sandbox.base()))
    assert.is_nil(ok)
    assert.are.equal("f.lua:2: undefined global 'nope'", err)
  end)

  it("keeps globals a file defines to its own environment", function()
    local env = sandbox.strict(sandbox.base())
    assert.is_true((sandbox.run("x = 5 return x", "f.lua", env)))
    assert.are.equal(5, rawget(env, "x"))
    assert.is_nil(rawget(_G, "x"))
  end)

  it("offers no io, os.execute, require or load", function()
    local env = sandbox.strict(sandbox.base())
    for _, name in ipairs { "io", "require", "load", "dofile", "loadfile" } do
      local ok, err = sandbox.run("return " .. name, "f.lua", env)
      assert.is_nil(ok)
      assert.matches("undefined global '" .. name .. "'", err)
    end
    local ok = sandbox.run("return os.execute", "f.lua", env)
    assert.is_true(ok)
    local _, v = sandbox.run("return os.execute", "f.lua", env)
    assert.is_nil(v)
  end)

  it("gives each file copies of the libraries, so one cannot patch another's", function()
    local env = sandbox.strict(sandbox.base())
    sandbox.run("string.upper = nil", "f.lua", env)
    assert.is_function(string.upper)
  end)

  it("refuses binary chunks", function()
    local ok, err = sandbox.run(string.dump(function() end), "f.lua", {})
    assert.is_nil(ok)
    assert.matches("binary chunks are not accepted", err)
  end)

  it("returns the first line as the message and the traceback apart", function()
    local ok, msg, tb = sandbox.run("error('bad')", "f.lua", sandbox.strict(sandbox.base()))
    assert.is_nil(ok)
    assert.are.equal("f.lua:1: bad", msg)
    assert.matches("stack traceback", tb)
  end)

  it("loads files and adds extra globals", function()
    local path = helper.tmpfile("return greeting")
    local ok, v = sandbox.load(path, { env = { greeting = "hi" } })
    assert.is_true(ok)
    assert.are.equal("hi", v)
    os.remove(path)
    local nok, err = sandbox.load("/nonexistent/x.lua")
    assert.is_nil(nok)
    assert.matches("No such file", err)
  end)
end)
