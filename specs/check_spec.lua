local helper = require "helper"

describe("#unit pogo.check", function()
  local check

  before_each(function()
    helper.stub_core()
    check = helper.fresh "pogo.check"
  end)

  it("guesses the kind of a file from its value", function()
    assert.are.equal("policy", check.guess(function() end))
    assert.are.equal("policy", check.guess { place = function() end })
    assert.are.equal("spec", check.guess { id = "a", cmd = "x" })
    assert.are.equal("spec", check.guess { { id = "a" }, { id = "b" } })
    assert.are.equal("hooks", check.guess { on_start = function() end })
    assert.are.equal("config", check.guess { name = "n" })
  end)

  local function check_text(text, kind)
    local path = helper.tmpfile(text)
    local k, err = check.file(path, kind)
    os.remove(path)
    return k, err
  end

  it("accepts valid files of every kind", function()
    assert.are.equal("config", (check_text 'return { name = "n1" }'))
    assert.are.equal("spec", (check_text 'return { id = "a", cmd = { "sleep", "1" } }'))
    assert.are.equal("policy", (check_text 'return function(c, nodes) return nodes[1] end'))
    assert.are.equal("hooks", (check_text 'return { on_exit = function() end }'))
  end)

  it("refuses bad hooks, specs and policies with a reason", function()
    local _, err = check_text('return { on_start = 1 }', "hooks")
    assert.matches("hook 'on_start' must be a function", err)
    _, err = check_text('return { on_bogus = function() end }', "hooks")
    assert.matches("unknown hook 'on_bogus'", err)
    _, err = check_text('return { id = "", cmd = "x" }', "spec")
    assert.matches("'id' must be a string of 1 to 128", err)
    _, err = check_text('return 5', "policy")
    assert.matches("must return a function", err)
    _, err = check_text('return {}', "weird")
    assert.matches("unknown kind 'weird'", err)
  end)
end)
